"""Tiny run-to-failure problems for the training-loop tests (a plain module: torchrun workers import it)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from training.data import AssetSeries, Event, History
from training.labels import Inputs, build_windows, fit_normalisation

Split = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.bool_]]


def run_to_failure(n: int, first_life: int, step: int, seed: int, is_train: Split) -> tuple[Inputs, Inputs]:
    """`n` assets living first_life, first_life + step, ... cells, two channels (one drifting towards
    failure, one noise); windows of 8, horizon 2; split by `is_train(asset index)`; normalised on train."""
    rng = np.random.default_rng(seed)
    series, events = [], []
    for i in range(n):
        life = first_life + step * i
        t = np.arange(life, dtype=float)
        grid = np.stack([np.exp(t / life * 2) + rng.normal(0, 0.1, life), rng.normal(0, 1, life)], axis=1)
        series.append(AssetSeries(f"a{i:02d}", 0, grid))
        events.append(Event(float(life - 1), f"a{i:02d}", "failure"))
    ws = build_windows(History(("x", "y"), 1.0, tuple(series), "fp"), events, window=8, horizon=2,
                       fail_horizon=10, max_gap=0)
    train = is_train(ws.asset)
    train_ws, val_ws = ws.subset(train), ws.subset(~train)
    norm = fit_normalisation(train_ws)
    return train_ws.inputs(norm), val_ws.inputs(norm)
