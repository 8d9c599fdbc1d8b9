"""The detectors bench/real.py compares: Vigil through its own pipeline, and two baselines.

Vigil: a model file trained by `vigil-train fit`, the streams replayed through the agent's
`Pipeline` (its decoder, event-time windows, per-asset baselines, runtime, scoring and level
machine), message by message as json-multi payloads, with no broker in between.

The baselines see the same streams, are fitted on the same training rows of each asset, and
raise alerts through the agent's level machine on "score above threshold" with a dwell of
BASELINE_DWELL rows (the same cooldown as Vigil's), the threshold at the BASELINE_QUANTILE
quantile of the scores of the training rows:
- PCA T^2 + Q per asset (standardised channels; components for 90 % of the variance; an alarm
  when either statistic passes its threshold);
- River's HalfSpaceTrees (defaults; channels min-max scaled on the training rows), trained on
  the training rows, then scoring and learning each replayed row, as River runs it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import CollectorRegistry

from agent.config import AgentConfig, BrokerConfig, StateConfig, SubscriptionConfig
from agent.config import ModelConfig as ModelSection
from agent.metrics import Metrics
from agent.pipeline import AlertOut, Pipeline
from agent.risk import LevelMachine
from agent.runtime import load_model
from agent.spec import Thresholds
from events import Alert
from realdata import Stream

FloatArray = npt.NDArray[np.float64]
BASELINE_QUANTILE = 0.999
BASELINE_DWELL = 3
COOLDOWN = 30
BATCH = 256


def vigil(model: Path, streams: dict[str, Stream], channels: tuple[str, ...], period_s: float,
          sensitivity: float = 1.0) -> dict[str, list[Alert]]:
    """Every level change the agent's pipeline decides on each stream, by row."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-real-") as tmp:
        cfg = AgentConfig(
            broker=BrokerConfig(client_id="bench"), model=ModelSection(path=model, sensitivity=sensitivity),
            subscriptions=[SubscriptionConfig(filter="bench/+", template="bench/{asset}", codec="json-multi")],
            state=StateConfig(dir=Path(tmp)))
        pipe = Pipeline(cfg, load_model(model), Metrics(CollectorRegistry()))
        out: dict[str, list[Alert]] = {a: [] for a in streams}
        t0 = {a: float(s.ts[0]) for a, s in streams.items()}

        def take(alerts: list[AlertOut]) -> None:
            for a in alerts:
                row = round((a.ts - t0[a.asset]) / period_s)
                top = tuple(str(c["channel"]) for c in a.doc.get("top_channels", []))
                out[a.asset].append(Alert(row, a.level, a.previous, top))

        wall, mono = time.time(), time.monotonic()
        for asset, s in streams.items():
            topic = f"bench/{asset}"
            for ts, row in zip(s.ts.tolist(), s.values.tolist(), strict=True):
                payload = orjson.dumps({"ts": ts, "values": dict(zip(channels, row, strict=True))})
                pipe.ingest(0, topic, payload, wall, mono)
                if pipe.n_ready >= BATCH:
                    take(pipe.run_batch(BATCH).alerts)
            while pipe.n_ready:
                take(pipe.run_batch(BATCH).alerts)
        return out


def alerts_of(exceed: npt.NDArray[np.bool_]) -> list[Alert]:
    """Level changes of "score above threshold" through the agent's level machine."""
    machine = LevelMachine(Thresholds(0.5, 1.0, hysteresis=0.0, dwell=BASELINE_DWELL, cooldown=COOLDOWN))
    out = []
    for i, e in enumerate(exceed.tolist()):
        tr = machine.update(1.0 if e else 0.0, i)
        if tr is not None:
            out.append(Alert(i, tr.level.label, tr.previous.label))
    return out


class Pca:
    """Hotelling's T^2 and the squared prediction error Q of a PCA fitted on training rows."""

    def __init__(self, train: FloatArray, variance: float = 0.9) -> None:
        self.mean = train.mean(axis=0)
        self.std = np.where(train.std(axis=0) > 0, train.std(axis=0), 1.0)
        z = (train - self.mean) / self.std
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        lam = s**2 / max(len(z) - 1, 1)
        k = int(np.searchsorted(np.cumsum(lam) / max(lam.sum(), 1e-12), variance) + 1)
        self.p, self.lam = vt[:k].T, np.maximum(lam[:k], 1e-12)
        t2, q = self.scores(train)
        self.t2_max, self.q_max = np.quantile(t2, BASELINE_QUANTILE), np.quantile(q, BASELINE_QUANTILE)

    def scores(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        z = (x - self.mean) / self.std
        t = z @ self.p
        return (t**2 / self.lam).sum(axis=1), ((z - t @ self.p.T) ** 2).sum(axis=1)

    def alerts(self, x: FloatArray) -> list[Alert]:
        t2, q = self.scores(x)
        return alerts_of((t2 > self.t2_max) | (q > self.q_max))


def hst_alerts(train: FloatArray, stream: FloatArray, seed: int = 0) -> list[Alert]:
    """River's HalfSpaceTrees (defaults) on min-max scaled rows: trained on `train`, its
    threshold the BASELINE_QUANTILE quantile of the training rows' scores, then run over `stream`."""
    from river.anomaly import HalfSpaceTrees

    lo, hi = train.min(axis=0), train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    names = [f"x{i}" for i in range(train.shape[1])]

    def rows(x: FloatArray) -> list[dict[str, float]]:
        return [dict(zip(names, r, strict=True)) for r in np.clip((x - lo) / span, 0.0, 1.0).tolist()]

    model = HalfSpaceTrees(seed=seed)
    train_scores = []
    for r in rows(train):
        train_scores.append(model.score_one(r))
        model.learn_one(r)
    # The trees score nothing until their first window is full: judge the threshold after it.
    threshold = float(np.quantile(train_scores[len(train_scores) // 2:], BASELINE_QUANTILE))
    exceed = []
    for r in rows(stream):
        exceed.append(model.score_one(r) > threshold)
        model.learn_one(r)
    return alerts_of(np.asarray(exceed))

