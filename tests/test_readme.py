"""The README's examples work: its configs load, its walkthrough runs as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config
from tests.broker import Broker, free_port
from tests.procs import BIN, running_agent, write_agent_config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_complete_config_example_loads(tmp_path: Path) -> None:
    """The first TOML block under "Configuration" loads, with the defaults it claims."""
    text = README.read_text()
    section = text[text.index("## Configuration"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    path = tmp_path / "agent.toml"
    path.write_text(block.group(1))
    cfg = load_config(path, env={})
    assert cfg.http.listen == "127.0.0.1:9108"
    assert cfg.windows.max_assets == 10_000 and cfg.windows.max_payload_bytes == 65_536
    assert cfg.state.checkpoint_interval_s == 10 and cfg.outputs.prefix == "vigil"
    assert (cfg.metrics.per_asset, cfg.metrics.per_asset_limit) == ("top", 500)


def test_every_toml_example_loads(tmp_path: Path) -> None:
    """Every TOML example in the README is valid (fragments get a model path and a subscription)."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        text = block if "[model]" in block else '[model]\npath = "m.pt"\n\n' + block
        if "[[subscriptions]]" not in text:
            text += '\n[[subscriptions]]\nfilter = "p/+/+"\ntemplate = "p/{asset}/{channel}"\n'
        path = tmp_path / f"example{i}.toml"
        path.write_text(text)
        load_config(path, env={})


@pytest.mark.integration
def test_a_model_from_your_own_history_works_as_written(broker: Broker, tmp_path: Path) -> None:
    """The walkthrough's commands, run as written (the agent's config beside them, on a private
    broker): the model trains on one machine, the report is written, the agent serves it."""
    section = README.read_text()
    section = section[section.index("## A model from your own history"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [shlex.split(line.split("#")[0]) for line in block.group(1).splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["vigil-sim", "history"], ["vigil-train", "fit"],
                                         ["vigil-train", "evaluate"], ["vigil-agent", "check-config"],
                                         ["vigil-agent", "run"]]
    port = free_port()
    # Its own client id: a persistent session of another test's agent must not hand it a backlog.
    write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=Path("models/pump.pt"),
                       state=tmp_path / "state", http_port=port, client_id="gw-readme")
    for args in commands[:-1]:
        proc = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        if args[:2] == ["vigil-agent", "check-config"]:
            assert "pump.pt" in proc.stdout and "thresholds" in proc.stdout
    summary = json.loads((tmp_path / "models" / "pump.summary.json").read_text())
    assert summary["split"] == "time" and summary["warnings"] == []
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Forecast error per channel" in report and (tmp_path / "report" / "risk_timelines.png").exists()
    assert commands[-1] == ["vigil-agent", "run", "--config", "agent.toml"]
    with running_agent(tmp_path / "agent.toml", port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        assert agent.terminate() == 0
