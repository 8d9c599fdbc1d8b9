"""Windows and labels: hand-checked failure labels, lives split at events, asset splits."""

from __future__ import annotations

import numpy as np

from training.data import AssetSeries, Event, History
from training.labels import build_windows, fit_normalisation, split_assets


def history(n: int, gaps: tuple[int, ...] = ()) -> History:
    grid = np.stack([np.arange(n, dtype=float), np.arange(n, dtype=float) * 2], axis=1)
    for g in gaps:
        grid[g] = np.nan
    return History(("a", "b"), 1.0, (AssetSeries("p1", 0, grid),), "fp")


class TestBuildWindows:
    def test_failure_label_is_failure_within_horizon(self) -> None:
        """A window ending at cell e is positive exactly when a failure falls in (e, e + horizon]."""
        ws = build_windows(history(40), [Event(30.0, "p1", "failure")], window=4, horizon=2,
                           fail_horizon=5, max_gap=0)
        labels = dict(zip(ws.end_cell.tolist(), ws.fail.tolist(), strict=True))
        assert labels[24] == 0 and labels[25] == 1 and labels[29] == 1
        # Windows may not span the failure: none ends after it while starting at or before it.
        assert all(not (e - 3 <= 30 < e) for e in ws.end_cell.tolist())

    def test_windows_skip_long_gaps_and_fill_short_ones(self) -> None:
        """A gap up to max_gap is filled forward; a longer one breaks the windows covering it."""
        ws = build_windows(history(30, gaps=(10,)), [], window=4, horizon=1, fail_horizon=5, max_gap=1)
        assert 12 in ws.end_cell.tolist()
        row = ws.x(np.array([ws.end_cell.tolist().index(12)]), fit_normalisation(ws))
        assert row.shape == (1, 4, 2)
        ws2 = build_windows(history(30, gaps=(10, 11)), [], window=4, horizon=1, fail_horizon=5,
                            max_gap=1)
        assert not {11, 12, 13} & set(ws2.end_cell.tolist())

    def test_forecast_targets_are_the_next_cells(self) -> None:
        """y holds the H cells after the window, normalised like x."""
        ws = build_windows(history(20), [], window=3, horizon=2, fail_horizon=5, max_gap=0)
        norm = fit_normalisation(ws)
        i = ws.end_cell.tolist().index(5)
        y = ws.y(np.array([i]), norm)[0]
        expected = (np.array([[6, 12], [7, 14]]) - np.array(norm.mean)) / np.array(norm.std)
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        assert ws.has_target[i] and not ws.has_target[ws.end_cell.tolist().index(19)]


class TestSplit:
    def test_no_asset_in_two_splits_and_failures_on_both_sides(self) -> None:
        """Splits are by asset, disjoint, complete, and spread failing assets over both."""
        assets = tuple(f"p{i}" for i in range(10))
        failing = {"p1", "p2", "p3", "p4"}
        train, val = split_assets(assets, failing, 0.25, seed=0)
        assert not train & val and train | val == set(assets)
        assert train & failing and val & failing

    def test_split_is_reproducible(self) -> None:
        """The same seed gives the same split."""
        assets = tuple(f"p{i}" for i in range(12))
        assert split_assets(assets, {"p1"}, 0.25, 7) == split_assets(assets, {"p1"}, 0.25, 7)
