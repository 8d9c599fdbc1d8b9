"""A tiny simulated history and a model fitted on it, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from sim.history import write_history
from sim.plant import PlantConfig
from training.fit import FitOptions


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """One torch thread: tiny models run fastest so, and a shared 2-core machine is not oversubscribed."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six pumps over eight days: small enough to train on in seconds, with failures in it."""
    out = tmp_path_factory.mktemp("hist")
    return write_history(PlantConfig(n_assets=6, seed=5, onset_mean_s=2 * 86400), 8, out,
                         progress=False)


def tiny_options(history: tuple[Path, Path], out: Path, seed: int = 0) -> FitOptions:
    return FitOptions(history=history[0], events=history[1], out=out, window=12, horizon=2,
                      fail_horizon=720, hidden=8, epochs=2, windows_per_epoch=3000, seed=seed,
                      threads=1, progress=False)


# A history that fails and repairs within days, in every layout a history may come in.
LAYOUT_PLANT = PlantConfig(n_assets=5, period_s=600.0, seed=3, onset_mean_s=86400, life_min_s=43200,
                           life_max_s=86400, downtime_min_s=7200, downtime_max_s=14400)
LAYOUT_DAYS = 4


@pytest.fixture(scope="session")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """The same simulated history as one Parquet file, a plain folder of three files, and folders
    partitioned by asset and by date: name -> (history path, events path)."""
    out = tmp_path_factory.mktemp("layouts")
    found = {p: write_history(LAYOUT_PLANT, LAYOUT_DAYS, out / p, fmt="parquet", progress=False, partition=p)
             for p in ("none", "asset", "date")}
    table = pq.read_table(found["none"][0])
    plain = out / "plain"
    plain.mkdir()
    third = table.num_rows // 3
    for k in range(3):
        pq.write_table(table.slice(k * third, third if k < 2 else None), plain / f"part-{k}.parquet")
    return {"file": found["none"], "plain": (plain, found["none"][1]), "asset": found["asset"],
            "date": found["date"]}
