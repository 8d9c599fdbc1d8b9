"""Windows and labels: hand-checked failure labels, lives split at events, asset splits."""

from __future__ import annotations

import numpy as np

from training.data import AssetSeries, Event, History
from training.labels import build_windows, fit_normalisation
from training.split import split_assets, split_by_asset


def history(n: int, gaps: tuple[int, ...] = ()) -> History:
    grid = np.stack([np.arange(n, dtype=float), np.arange(n, dtype=float) * 2], axis=1)
    for g in gaps:
        grid[g] = np.nan
    return History(("a", "b"), 1.0, (AssetSeries("p1", 0, grid),), "fp")


class TestBuildWindows:
    def test_failure_label_is_failure_within_horizon(self) -> None:
        """A window ending at cell e is positive exactly when a failure falls in [e, e + horizon]."""
        ws = build_windows(history(40), [Event(30.0, "p1", "failure")], window=4, horizon=2,
                           fail_horizon=5, max_gap=0)
        labels = dict(zip(ws.end_cell.tolist(), ws.fail.tolist(), strict=True))
        assert labels[24] == 0 and labels[25] == 1 and labels[29] == 1 and labels[30] == 1
        assert labels[34] == 0  # after the failure: a new life, no failure ahead
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


class TestRul:
    def test_piecewise_linear_rul_by_hand(self) -> None:
        """RUL is cells to the failure, capped: failure at 30, cap 10 gives 10 before cell 20, then 30 - e."""
        ws = build_windows(history(40), [Event(30.0, "p1", "failure")], window=4, horizon=1,
                           fail_horizon=5, max_gap=0)
        target = dict(zip(ws.end_cell.tolist(), ws.rul_target(10.0).tolist(), strict=True))
        raw = dict(zip(ws.end_cell.tolist(), ws.rul.tolist(), strict=True))
        assert raw[3] == 27 and raw[25] == 5 and raw[30] == 0
        assert target[3] == 10 and target[19] == 10 and target[20] == 10 and target[21] == 9
        assert target[25] == 5 and target[30] == 0

    def test_censored_windows_get_the_cap_only_when_it_is_certain(self) -> None:
        """With no failure ahead, a window is labelled cap only if its life is observed for cap more cells."""
        ws = build_windows(history(40), [Event(30.0, "p1", "failure")], window=4, horizon=1,
                           fail_horizon=5, max_gap=0)
        target = dict(zip(ws.end_cell.tolist(), ws.rul_target(5.0).tolist(), strict=True))
        # The new life starts at cell 31; the data ends at cell 39.
        assert target[34] == 5 and np.isnan(target[35]) and np.isnan(target[39])

    def test_maintenance_ends_a_life_without_a_failure(self) -> None:
        """A repair is not a failure: windows before it get no RUL unless the cap is certain."""
        ws = build_windows(history(40), [Event(20.0, "p1", "maintenance")], window=4, horizon=1,
                           fail_horizon=5, max_gap=0)
        target = dict(zip(ws.end_cell.tolist(), ws.rul_target(8.0).tolist(), strict=True))
        assert target[12] == 8 and np.isnan(target[13]) and ws.fail.sum() == 0

    def test_padded_start_repeats_the_first_cell(self) -> None:
        """With pad_start, the first cells end windows too, padded with the asset's first cell."""
        ws = build_windows(history(10), [], window=4, horizon=1, fail_horizon=5, max_gap=0, pad_start=True)
        assert ws.end_cell.tolist() == list(range(10))
        norm = fit_normalisation(ws)
        x0 = ws.x(np.array([0]), norm)[0]
        assert (x0 == x0[0]).all()
        x1 = ws.x(np.array([1]), norm)[0]
        np.testing.assert_array_equal(x1[:3], np.repeat(x0[:1], 3, axis=0))
        assert not (x1[3] == x1[2]).all()


class TestSplitThreeWays:
    def test_no_asset_in_two_of_train_val_test(self) -> None:
        """A train/validation/test split is by asset: disjoint, complete, failures in each part."""
        assets = tuple(f"p{i:02d}" for i in range(20))
        failing = {f"p{i:02d}" for i in range(8)}
        s = split_by_asset(assets, failing, 0.2, seed=3, test_fraction=0.2)
        assert not (s.train & s.val) and not (s.train & s.test) and not (s.val & s.test)
        assert s.train | s.val | s.test == set(assets)
        assert s.train & failing and s.val & failing and s.test & failing
        assert len(s.test) == 4 and len(s.val) == 4

    def test_window_masks_follow_the_split(self) -> None:
        """Every window belongs to exactly one split, the one of its asset."""
        grid = np.arange(20, dtype=float)[:, None].repeat(2, axis=1)
        hist = History(("a", "b"), 1.0, tuple(AssetSeries(f"p{i}", 0, grid) for i in range(6)), "fp")
        ws = build_windows(hist, [], window=3, horizon=1, fail_horizon=2, max_gap=0)
        s = split_by_asset(ws.assets, set(), 0.34, seed=0, test_fraction=0.34)
        masks = [s.mask(ws, part) for part in ("train", "val", "test")]
        assert (np.sum(masks, axis=0) == 1).all()
        for m, part in zip(masks, ("train", "val", "test"), strict=True):
            assert {ws.assets[a] for a in ws.asset[m]} == set(getattr(s, part))
