"""Training on a report-by-exception history: `--hold` fills it as the agent's windows do.

A history recorded from a deadband source has the same gaps the agent saw. With the same hold,
every window training builds from it is the window the agent closed at that cell.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest

from agent.runtime import load_model
from agent.windows import AssetWindow, Update, cell_of, hold_cells
from tests.training.conftest import tiny_options
from training import cli
from training.data import load_history
from training.fit import fit
from training.labels import build_windows, fill_reach

DEADBAND = {"bearing_temp": 0.5, "vib_rms": 0.1, "motor_current": 0.5, "discharge_pressure": 0.1,
            "speed": 10.0}
HOLD_S = 1800.0  # 30 cells of 60 s
WINDOW = 12


@pytest.fixture(scope="module")
def sparse_history(small_history: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small history as a deadband publisher sends it (no heartbeat)."""
    table = pacsv.read_csv(small_history[0]).to_pylist()
    last: dict[tuple[str, str], float] = {}
    out = tmp_path_factory.mktemp("sparse") / "history.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "asset", "channel", "value"])
        for row in table:
            key = (row["asset"], row["channel"])
            if key not in last or abs(row["value"] - last[key]) > DEADBAND[row["channel"]]:
                last[key] = row["value"]
                w.writerow([row["ts"], row["asset"], row["channel"], row["value"]])
    return out


def test_training_windows_equal_the_agents_on_a_deadband_history(sparse_history: Path) -> None:
    """Every window `build_windows` makes with the hold is the one the agent, holding as long,
    closes at that cell from the same readings; without the hold far fewer windows are whole."""
    period = 60.0
    history = load_history(sparse_history, period_s=period)
    held = build_windows(history, [], window=WINDOW, horizon=2, fail_horizon=10,
                         max_gap=fill_reach(5, HOLD_S, period))
    plain = build_windows(history, [], window=WINDOW, horizon=2, fail_horizon=10, max_gap=5)
    assert len(held) > 2 * len(plain)
    rows = pacsv.read_csv(sparse_history).to_pylist()
    asset = history.assets[0].asset
    w = AssetWindow(len(history.channels), WINDOW, max_gap=5, lateness=3, hold=hold_cells(HOLD_S, period))
    closed = {}
    index = {c: i for i, c in enumerate(history.channels)}
    for r in sorted((r for r in rows if r["asset"] == asset), key=lambda r: r["ts"]):
        ts = float(r["ts"])
        assert w.update(cell_of(ts, period), index[r["channel"]], ts, float(r["value"])) is Update.ACCEPTED
        closed.update({c.end: c.window for c in w.take()})
    mine = np.flatnonzero(held.asset == 0)
    assert len(mine) > 100
    for i in mine:
        end = int(held.end_cell[i])
        if end == w.newest:
            continue  # the newest cell has not closed yet
        serving = closed[end]
        assert serving is not None, end
        # Equal as the model reads them (float32: the agent's ring keeps a reading rounded to it once).
        training = held.cells[held.rows(np.array([i]))][0]
        assert np.array_equal(np.asarray(serving, dtype=np.float32), training.astype(np.float32)), end


def test_fit_records_its_hold(small_history: tuple[Path, Path], tmp_path: Path) -> None:
    """`--hold 30m` parses to seconds and goes into the model file as `hold_s`."""
    args = cli.build_parser().parse_args(["fit", "--history", "h.csv", "--out", "m.pt", "--hold", "30m"])
    assert cli.fit_options(args).hold_s == HOLD_S
    spec, _ = fit(replace(tiny_options(small_history, tmp_path / "m.pt"), hold_s=HOLD_S))
    assert spec.hold_s == HOLD_S and load_model(tmp_path / "m.pt").spec.hold_s == HOLD_S
