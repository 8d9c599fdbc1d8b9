"""vigil-agent's command line: check-config output, one-line errors, clean SIGTERM."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.broker import Broker, free_port
from tests.procs import cli, running_agent, write_agent_config


@pytest.fixture
def config(trained: Path, broker: Broker, tmp_path: Path) -> Path:
    return write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                              state=tmp_path / "state", http_port=free_port())


class TestCheckConfig:
    def test_prints_subscriptions_and_model(self, config: Path, trained: Path) -> None:
        """check-config shows each subscription with an example topic and the model's summary."""
        out = json.loads(cli("vigil-agent", "check-config", str(config)).stdout)
        assert out["subscriptions"][0]["example_topic"] == "plant/pump-001/bearing_temp"
        assert out["model"]["channels"] == ["bearing_temp", "discharge_pressure", "motor_current",
                                            "speed", "vib_rms"]
        assert out["publishes"]["alerts"] == "vigil/alerts/{asset}"
        assert out["agent_id"] == "gw-test"

    def test_says_which_thresholds_are_in_force(self, config: Path) -> None:
        """Without overrides the model's calibration is in force; a config's [model] warning
        replaces it and says so; a critical below that warning is raised to it."""
        out = json.loads(cli("vigil-agent", "check-config", str(config)).stdout)["thresholds_in_force"]
        assert out["source"] == {"warning": "the model's calibration", "critical": "the model's calibration"}
        assert (out["warning"], out["critical"]) == (out["model_calibrated"]["warning"],
                                                     out["model_calibrated"]["critical"])
        assert out["critical"] > out["warning"]
        overrides = "[model]\nwarning = 0.97\ncritical = 0.9\n"
        config.write_text(config.read_text().replace("[model]\n", overrides))
        out = json.loads(cli("vigil-agent", "check-config", str(config)).stdout)["thresholds_in_force"]
        assert (out["warning"], out["critical"]) == (0.97, 0.97)
        assert out["source"] == {"warning": "[model] warning in the config",
                                 "critical": "raised to the warning in force"}

    @pytest.mark.parametrize(("edit", "needle"), [
        (lambda t: t.replace('url = "mqtt', 'url = "http'), "broker.url"),
        (lambda t: t.replace("[outputs]", "[outputs]\ncolour = 1"), "outputs.colour: unknown key"),
        (lambda t: t.replace('template = "plant/{asset}/{channel}"', 'template = "plant/{asset}"'),
         "subscriptions.0"),
        (lambda t: t + "\n[[[broken", "not valid TOML"),
    ])
    def test_broken_config_is_one_line(self, config: Path, edit: object, needle: str) -> None:
        """A broken config exits 2 with one line naming the key, never a traceback."""
        config.write_text(edit(config.read_text()))  # type: ignore[operator]
        proc = cli("vigil-agent", "check-config", str(config), check=False)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr

    def test_unloadable_model_is_one_line(self, broker: Broker, tmp_path: Path) -> None:
        """A model file that is not a Vigil model is refused with a clear reason."""
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"\x00garbage")
        config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=bad,
                                    state=tmp_path / "state", http_port=free_port())
        proc = cli("vigil-agent", "run", "--config", str(config), check=False)
        assert proc.returncode == 2 and "not a TorchScript file" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.integration
class TestRun:
    def test_sigterm_exits_zero_quickly_and_says_offline(self, config: Path, tmp_path: Path) -> None:
        """SIGTERM: out within 5 s with exit code 0, having logged its stop."""
        port = int(config.read_text().split("127.0.0.1:")[-1].split('"')[0])
        with running_agent(config, port, tmp_path / "agent.log") as agent:
            agent.wait_ready()
            t0 = time.monotonic()
            assert agent.terminate(timeout=10) == 0
            assert time.monotonic() - t0 < 5.0
            assert "agent_stopped" in agent.log()
