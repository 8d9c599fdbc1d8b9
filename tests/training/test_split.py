"""Splits: by time within each asset (with a gap no window straddles), by asset, and the choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import AssetSeries, History
from training.labels import build_windows
from training.split import MIN_TRAIN_WINDOWS, MIN_VAL_WINDOWS, choose, split_by_time


def one_asset(n: int, assets: int = 1, window: int = 8, horizon: int = 2) -> object:
    rng = np.random.default_rng(0)
    series = tuple(AssetSeries(f"m{i}", 100 * i, rng.normal(size=(n, 3))) for i in range(assets))
    return build_windows(History(("a", "b", "c"), 60.0, series, "fp"), [], window=window, horizon=horizon,
                         fail_horizon=30, max_gap=0)


class TestTimeSplit:
    @settings(max_examples=25, deadline=None)
    @given(n=st.integers(600, 1500), assets=st.integers(1, 3), window=st.integers(2, 20),
           horizon=st.integers(1, 6), val=st.sampled_from([0.2, 0.25, 0.4]),
           test=st.sampled_from([0.0, 0.2]))
    def test_no_window_straddles_a_cut(self, n: int, assets: int, window: int, horizon: int, val: float,
                                       test: float) -> None:
        """Training windows (their cells and forecast targets) end before the gap, validation windows
        start after it: no cell is in two parts, and at least window + horizon cells lie between."""
        ws = one_asset(n, assets, window, horizon)
        split = split_by_time(ws, val, test)  # type: ignore[arg-type]
        masks = {p: split.mask(ws, p) for p in ("train", "val", "test")}  # type: ignore[arg-type]
        assert not (masks["train"] & masks["val"]).any() and not (masks["val"] & masks["test"]).any()
        for a in range(assets):
            mine = ws.asset == a  # type: ignore[attr-defined]
            first = ws.end_cell - window + 1  # type: ignore[attr-defined]
            last = ws.end_cell + horizon  # type: ignore[attr-defined]
            tr, va = masks["train"] & mine, masks["val"] & mine
            assert tr.any() and va.any()
            assert last[tr].max() + window + horizon < first[va].min()
            if test:
                te = masks["test"] & mine
                assert te.any() and last[va].max() + window + horizon < first[te].min()

    def test_every_asset_trains_and_validates_on_its_last_part(self) -> None:
        """Each asset's validation windows are its newest ones, about the share asked for."""
        ws = one_asset(1000, assets=2)
        split = split_by_time(ws, 0.25)  # type: ignore[arg-type]
        val = split.mask(ws, "val")  # type: ignore[arg-type]
        for a in (0, 1):
            mine = ws.asset == a  # type: ignore[attr-defined]
            assert ws.end_cell[val & mine].min() > ws.end_cell[split.mask(ws, "train") & mine].max()  # type: ignore[attr-defined]
            assert (val & mine).sum() / mine.sum() == pytest.approx(0.25, abs=0.03)
        assert split.kind == "time" and split.train == split.val == {"m0", "m1"}

    def test_too_short_says_how_much_more(self) -> None:
        """A history too short for both parts is refused with the cells and time it lacks."""
        ws = one_asset(60)
        why = r"history too short to train.*about \d+ more cells \(.* at the 60 s period"
        with pytest.raises(ValueError, match=why):
            split_by_time(ws, 0.25, period_s=60.0)  # type: ignore[arg-type]
        assert MIN_TRAIN_WINDOWS > MIN_VAL_WINDOWS > 0


def test_auto_splits_by_time_for_a_few_machines() -> None:
    """auto: a handful of unlabelled machines split by time; a fleet, or failures on enough
    assets to go round, by asset; an explicit choice is kept."""
    few = tuple(f"m{i}" for i in range(8))
    many = tuple(f"m{i}" for i in range(20))
    assert choose("auto", few, set()) == "time"
    assert choose("auto", many, set()) == "asset"
    assert choose("auto", few, set(few[:4])) == "asset"
    assert choose("auto", few, set(few[:3])) == "time"
    assert choose("asset", few[:2], set()) == "asset" and choose("time", many, set()) == "time"


def test_streaming_refuses_a_time_split_with_a_reason(tmp_path: object) -> None:
    """--stream splits by asset: asking it for a time split (or per-asset baselines) is refused
    with a one-line reason, not a traceback."""
    from pathlib import Path

    from training.fit import FitOptions, fit

    path = Path(str(tmp_path)) / "h.csv"
    path.write_text("ts,asset,channel,value\n" + "".join(f"{60 * k},p1,x,{k % 7}\n" for k in range(200)))
    for extra in ({"split": "time"}, {"baseline": "asset"}):
        with pytest.raises(ValueError, match="--stream splits by asset"):
            fit(FitOptions(history=path, out=Path(str(tmp_path)) / "m.pt", stream=True, progress=False,
                           **extra))  # type: ignore[arg-type]
