"""Replay equivalence: the same recorded stream at 1x and at 100x yields the same alerts."""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.spec import Normalisation, Thresholds
from sim.plant import CHANNELS, Plant, PlantConfig, asset_name
from tests.agent.conftest import make_spec
from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, cli, logged, metric, running_agent, write_agent_config
from training.export import export
from training.model import Forecaster, ModelConfig

pytestmark = pytest.mark.integration

PERIOD = 0.25   # a fast grid, so a 1x replay of 80 cells takes 20 s
CELLS = 80
ASSETS = 3
WINDOW = 8


def record_stream(path: Path) -> np.ndarray:
    """80 cells of 3 simulated pumps, one asset forced to fail, as a long-format CSV."""
    plant = Plant(PlantConfig(n_assets=ASSETS, period_s=PERIOD, seed=4), start_ts=time.time() - 3600)
    rows = []
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "asset", "channel", "value"])
        for _ in range(CELLS):
            step = plant.step()
            for a in range(ASSETS):
                for c, ch in enumerate(CHANNELS):
                    w.writerow([f"{step.ts:.3f}", asset_name(a), ch, step.values[a, c]])
                rows.append(step.values[a])
    return np.array(rows)


def make_model(path: Path, data: np.ndarray) -> None:
    torch.manual_seed(3)
    spec = make_spec(channels=CHANNELS, thresholds=Thresholds(warning=0.405, critical=0.48,
                                                              hysteresis=0.001, dwell=2, cooldown=4))
    norm = Normalisation(tuple(float(v) for v in data.mean(0)), tuple(float(v) for v in data.std(0) + 1e-3))
    spec = dataclasses.replace(spec, period_s=PERIOD, window=WINDOW, normalisation=norm)
    model = Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=spec.horizon, hidden=8))
    probe = np.random.default_rng(0).normal(size=(2, WINDOW, len(CHANNELS))).astype(np.float32)
    export(model, spec, probe, path)


def run(speed: str, stream: Path, model: Path, broker: Broker, tmp: Path) -> list[dict]:
    tmp.mkdir()
    port = free_port()
    config = write_agent_config(tmp / "agent.toml", broker_url=broker.url, model=model,
                                state=tmp / "state", http_port=port, client_id="gw-replay")
    capture = Capture(broker.port, ["vigil/alerts/#"]).start()
    expected = ASSETS * (CELLS - WINDOW + 1)
    with running_agent(config, port, tmp / "agent.log") as agent:
        agent.wait_ready()
        cli("vigil-sim", "replay", str(stream), "--broker", broker.url, "--speed", speed,
            "--no-progress", timeout=120)
        wait_until(lambda: metric(agent.scrape(), "vigil_windows_inferred_total") == expected, 20,
                   what=f"{expected} windows scored")
        assert agent.terminate() == 0
        # Read once the agent has stopped: the last batch's alerts are decided, logged and sent
        # (the window count above runs ahead of them), and each must reach the consumer.
        raised = {e["alert_id"] for e in logged(agent.log(), "alert_raised")}
        wait_until(lambda: raised <= set(capture.ids()), 10, what="every raised alert received")
    capture.stop()
    return capture.json("vigil/alerts/")


def test_same_alerts_at_1x_and_100x(broker: Broker, tmp_path: Path) -> None:
    """Event time decides: replaying one stream in real time and at 100x gives the same alerts,
    ids included (compared per asset, since assets interleave freely)."""
    stream = tmp_path / "stream.csv"
    model = tmp_path / "model.pt"
    make_model(model, record_stream(stream))
    slow = run("1", stream, model, broker, tmp_path / "x1")
    fast = run("100", stream, model, broker, tmp_path / "x100")

    def key(alerts: list[dict]) -> dict[str, list[tuple]]:
        out: dict[str, list[tuple]] = {}
        for a in alerts:
            out.setdefault(a["asset"], []).append(
                (a["ts"], a["previous_level"], a["level"], a["risk"], a["alert_id"]))
        return out

    assert len(slow) >= 3, "the stream must produce transitions for the comparison to mean anything"
    assert key(slow) == key(fast)
