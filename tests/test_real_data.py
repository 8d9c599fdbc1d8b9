"""A plant's own history, as most plants have it: one machine, no failure labels, channels at very
different scales, several operating conditions. It trains, and the agent alerts on a fault."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from agent.baseline import robust_spread
from sim.history import write_history
from sim.plant import PlantConfig
from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, cli, publish_all, running_agent, write_agent_config
from training.data import load_history
from training.fit import FitOptions, fit

PERIOD = 60.0
FAULTY = "vib_rms"


def read_long(path: Path) -> dict[str, list[tuple[float, float]]]:
    """One asset's readings by channel: (ts, value) in time order."""
    out: dict[str, list[tuple[float, float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["channel"], []).append((float(row["ts"]), float(row["value"])))
    return out


@pytest.mark.integration
def test_one_machine_trains_and_its_model_alerts_on_an_injected_fault(broker: Broker, tmp_path: Path) -> None:
    """Three days of one pump's readings and no events train a model (split by time); the agent
    serving it on a real broker stays quiet on the pump's normal readings, alerts once vibration
    jumps, and names vibration first among the alert's drivers."""
    write_history(PlantConfig(n_assets=1, seed=21, onset_mean_s=1e9), 3, tmp_path / "h", progress=False)
    history = tmp_path / "h" / "history.csv"
    model = tmp_path / "model.pt"
    out = cli("vigil-train", "fit", "--history", str(history), "--window", "12", "--horizon", "2",
              "--epochs", "3", "--windows-per-epoch", "4000", "--hidden", "16", "--seed", "1", "--quiet",
              "--out", str(model))
    assert json.loads(out.stdout)["model"] == str(model)
    summary = json.loads(model.with_suffix(".summary.json").read_text())
    assert summary["split"] == "time" and summary["train_assets"] == summary["val_assets"] == ["pump-001"]

    # The pump's last two hours again, moved on in time, then with its vibration four times as high.
    readings = read_long(history)
    last = max(ts for ts, _ in readings[FAULTY])
    shift = 3 * 3600.0
    cells = sorted({ts for ts, _ in readings[FAULTY] if ts > last - 2 * 3600})
    fault_from = cells[-30] + shift
    messages = []
    for ch, series in readings.items():
        for ts, v in series:
            if ts > last - 2 * 3600:
                value = v * 4.0 if ch == FAULTY and ts + shift >= fault_from else v
                messages.append((ts + shift, ch, value))
    messages.sort()
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=model,
                                state=tmp_path / "state", http_port=port, client_id="gw-one")
    capture = Capture(broker.port, ["vigil/alerts/#"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        publish_all(broker.port, [(f"plant/pump-001/{ch}", json.dumps({"ts": ts, "value": v}).encode())
                                  for ts, ch, v in messages], "one-pub")
        wait_until(lambda: any(a["level"] != "ok" for a in capture.json("vigil/alerts/")), 30,
                   what="an alert on the injected fault")
        assert agent.terminate() == 0
    capture.stop()
    raised = [a for a in capture.json("vigil/alerts/") if a["level"] != "ok"]
    first = raised[0]
    assert datetime.fromisoformat(first["ts"].replace("Z", "+00:00")).timestamp() >= fault_from
    assert first["top_channels"][0]["channel"] == FAULTY


def test_training_on_outliers_and_mixed_scales_converges(tmp_path: Path) -> None:
    """Channels six orders of magnitude apart, a constant one, a quantised one, a counter and 1 %
    wild outliers: every loss is finite and the training loss falls."""
    rng = np.random.default_rng(0)
    n, assets = 1500, 3
    lines = ["ts,asset,tiny,big,flat,steps,counter,noisy"]
    for a in range(assets):
        t = np.arange(n)
        slow = np.sin(2 * np.pi * t / 240.0 + a)
        cols = np.stack([1e-3 * (slow + 0.1 * rng.normal(size=n)),
                         1e6 * (3 + slow + 0.1 * rng.normal(size=n)), np.full(n, 42.0), np.round(5 * slow),
                         1e8 + np.cumsum(rng.integers(0, 3, n)), slow + rng.normal(size=n)], axis=1)
        wild = rng.random(cols.shape) < 0.01
        cols[wild] *= 1000.0
        lines += [f"{1767225600 + k * PERIOD:.0f},m{a}," + ",".join(f"{v:.9g}" for v in cols[k]) for k in t]
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(lines) + "\n")
    _, summary = fit(FitOptions(history=path, fmt="wide", out=tmp_path / "m.pt", window=16, horizon=2,
                                hidden=16, epochs=4, windows_per_epoch=3000, threads=1, progress=False))
    curve = summary["curve"]
    assert all(np.isfinite([c["train_loss"], c["val_loss"]]).all() for c in curve)
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]
    assert summary["best_epoch"] > 1 and summary["warnings"] == []


def test_six_operating_points_score_as_well_as_one(tmp_path: Path) -> None:
    """Pumps switching between six duty points, whose levels swamp wear: the six regimes are found,
    each keeps its own spread once normalised (one normalisation for all would shrink a wear
    signal of one spread to a fraction), and the model forecasts about as well as one trained on
    pumps held at one duty point."""
    results = {}
    for points in (1, 6):
        cfg = PlantConfig(n_assets=6, period_s=300.0, seed=8, operating_points=points)
        history, _ = write_history(cfg, 6, tmp_path / f"p{points}", progress=False)
        spec, summary = fit(FitOptions(
            history=history, out=tmp_path / f"p{points}.pt", regime_channels=("speed",), window=12, horizon=2,
            hidden=16, epochs=4, windows_per_epoch=4000, threads=1, progress=False, split="asset",
            baseline="fleet"))
        results[points] = summary
        if points == 6:
            grid = np.concatenate([s.grid for s in load_history(history, channels=spec.channels).assets])
            raw = grid[np.isfinite(grid).all(axis=1)]
            regime, z = spec.normalisation.regime_of(raw), spec.normalise(raw)
            others = [i for i, c in enumerate(spec.channels) if c != "speed"]
            spreads = np.array([robust_spread(z[regime == k][:, others]) for k in range(6)])
            assert spreads.min() > 0.6 and 0.7 < np.median(spreads) < 1.6, spreads
    assert results[6]["regimes"] == 6 and results[1]["regimes"] == 1
    one, six = (results[p]["validation"]["forecast_rmse"] for p in (1, 6))
    assert six < 1.5 * one, (one, six)


def test_evaluate_scores_each_window_as_the_agent_does(tmp_path: Path) -> None:
    """A model without labels, with per-asset baselines, the state signal and per-asset statistics:
    `vigil-train evaluate`'s risk of every window is the risk the agent's pipeline publishes for it."""
    from prometheus_client import CollectorRegistry

    from agent.config import AgentConfig, BrokerConfig, StateConfig, SubscriptionConfig
    from agent.config import ModelConfig as ModelSection
    from agent.metrics import Metrics
    from agent.pipeline import Pipeline
    from agent.runtime import load_model
    from training.evaluate import evaluate_file

    rng = np.random.default_rng(4)
    n = 900
    lines = ["ts,asset,a,b,c"]
    for k, (level, scale) in enumerate(((0.0, 1.0), (500.0, 40.0))):
        t = np.arange(n)
        x = level + scale * np.stack([np.sin(t / 30.0), np.cos(t / 45.0), rng.normal(size=n)], axis=1)
        x[700:720, 1] += 6 * scale  # an incident in the validation part
        lines += [f"{1767225600 + i * PERIOD:.0f},m{k}," + ",".join(f"{v:.6f}" for v in x[i]) for i in t]
    path = tmp_path / "h.csv"
    path.write_text("\n".join(lines) + "\n")
    model = tmp_path / "m.pt"
    spec, _ = fit(FitOptions(history=path, fmt="wide", out=model, window=10, horizon=2, hidden=8, epochs=2,
                             windows_per_epoch=2000, threads=1, progress=False, baseline="asset"))
    assert spec.level is not None and spec.baseline is not None and set(spec.profiles) == {"m0", "m1"}
    ev = evaluate_file(model, path, fmt="wide")
    want = {(ev.ws.assets[a], int(c)): r for a, c, r in zip(ev.ws.asset, ev.ws.end_cell, ev.scored.risk,
                                                             strict=True)}
    sub = SubscriptionConfig(filter="e/+", template="e/{asset}", codec="json-multi")
    cfg = AgentConfig(broker=BrokerConfig(client_id="eq"), model=ModelSection(path=model),
                      subscriptions=[sub], state=StateConfig(dir=tmp_path / "state"))
    pipe = Pipeline(cfg, load_model(model), Metrics(CollectorRegistry()))
    got = {}
    for line in lines[1:]:
        ts, asset, *vals = line.split(",")
        body = json.dumps({"ts": float(ts), "values": dict(zip("abc", map(float, vals), strict=True))})
        pipe.ingest(0, f"e/{asset}", body.encode(), float(ts) + 1e6, 0.0)
        for r in pipe.run_batch(64).risks:
            got[(r.asset, int(r.ts // PERIOD))] = r.doc["risk"]
    common = set(got) & set(want)
    assert len(common) > 0.9 * len(want)
    assert max(abs(got[k] - want[k]) for k in common) < 1e-5
