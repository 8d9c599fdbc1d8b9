"""Event-time windows: grid cells, aggregation, forward fill, and the per-asset ring buffer."""

from __future__ import annotations

import sys
from array import array
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.alerts import rfc3339_ms
from agent.risk import SurpriseTracker
from agent.spec import Normalisation
from agent.windows import (
    AssetWindow,
    Update,
    cell_of,
    cells_of,
    fill_forward,
    sliding_windows,
    to_grid,
)
from tests.agent.conftest import format_1_window_arrays

P = 10.0
C0 = 176_722_560  # the cell of 2026-01-01T00:00:00Z at a 10 s period
T0 = C0 * P
NAN = np.nan


def grid_of(readings: list[tuple[float, int, float]], n_channels: int,
            agg: str = "last") -> tuple[int, np.ndarray]:
    """to_grid over (ts, channel, value) readings, in the given order."""
    ts = np.array([r[0] for r in readings], dtype=np.float64)
    ch = np.array([r[1] for r in readings], dtype=np.int64)
    val = np.array([r[2] for r in readings], dtype=np.float64)
    return to_grid(cells_of(ts, P), ch, val, ts, n_channels, agg)  # type: ignore[arg-type]


def same(a: np.ndarray | None, b: np.ndarray | None, atol: float = 0.0) -> bool:
    """Equal windows (both None, or equal arrays with NaN equal to NaN)."""
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0.0, atol=atol, equal_nan=True))


class TestCellOf:
    def test_exact_multiples_stay_in_their_cell(self) -> None:
        """A ts that is an exact multiple of the period falls in that cell, also for 0.1 s."""
        assert cell_of(T0, P) == C0
        assert cell_of(T0 + 3 * P, P) == C0 + 3
        assert cell_of(0.3, 0.1) == 3
        assert cell_of(0.7, 0.1) == 7

    def test_just_below_a_boundary_is_the_previous_cell(self) -> None:
        """A ts a millisecond before a cell boundary belongs to the cell before it."""
        assert cell_of(T0 + P - 0.001, P) == C0
        assert cell_of(T0 - 0.001, P) == C0 - 1

    @given(st.lists(st.floats(min_value=946_684_800.0, max_value=4_102_444_800.0), min_size=1,
                    max_size=20))
    @settings(max_examples=100, deadline=None)
    def test_vectorised_matches_scalar(self, ts: list[float]) -> None:
        """cells_of gives the same cell as cell_of for every timestamp."""
        arr = np.array(ts)
        assert cells_of(arr, P).tolist() == [cell_of(t, P) for t in ts]


class TestToGrid:
    def test_empty_input_gives_an_empty_grid(self) -> None:
        """No readings give start 0 and a grid with no rows."""
        start, grid = grid_of([], 3)
        assert start == 0
        assert grid.shape == (0, 3)

    def test_grid_starts_at_the_first_cell_with_nan_holes(self) -> None:
        """The grid starts at the smallest cell and holds NaN where no reading fell."""
        start, grid = grid_of([(T0 + 1, 0, 1.0), (T0 + 3 * P + 1, 1, 2.0)], 2)
        assert start == C0
        assert grid.shape == (4, 2)
        assert grid[0, 0] == 1.0 and grid[3, 1] == 2.0
        assert np.isnan(grid[1:3]).all() and np.isnan(grid[0, 1]) and np.isnan(grid[3, 0])

    def test_last_is_by_event_time_not_arrival_order(self) -> None:
        """With `last`, the reading with the latest ts wins whatever its position."""
        _, grid = grid_of([(T0 + 5, 0, 5.0), (T0 + 9, 0, 9.0), (T0 + 1, 0, 1.0)], 1)
        assert grid[0, 0] == 9.0

    def test_mean_averages_a_cell(self) -> None:
        """With `mean`, a cell holds the mean of its readings per channel."""
        _, grid = grid_of([(T0 + 1, 0, 1.0), (T0 + 2, 0, 2.0), (T0 + 3, 0, 6.0),
                           (T0 + 1, 1, 7.0)], 2, agg="mean")
        assert grid[0, 0] == pytest.approx(3.0)
        assert grid[0, 1] == 7.0

    def test_duplicates_count_once_in_the_mean(self) -> None:
        """A reading repeated with the same channel and ts is averaged in only once."""
        _, grid = grid_of([(T0 + 1, 0, 1.0), (T0 + 1, 0, 1.0), (T0 + 1, 0, 1.0),
                           (T0 + 2, 0, 4.0)], 1, agg="mean")
        assert grid[0, 0] == pytest.approx(2.5)

    def test_duplicate_keeps_the_first_value(self) -> None:
        """Of two readings with the same channel and ts, the first one is kept (as the agent does)."""
        _, grid = grid_of([(T0 + 1, 0, 1.0), (T0 + 1, 0, 100.0)], 1, agg="mean")
        assert grid[0, 0] == 1.0


class TestFillForward:
    def test_gap_up_to_max_gap_is_filled_with_last_value(self) -> None:
        """Missing cells at most max_gap after a value take that value and are whole."""
        grid = np.array([[1.0], [NAN], [NAN], [4.0]])
        filled, ok = fill_forward(grid, max_gap=2)
        assert filled[:, 0].tolist() == [1.0, 1.0, 1.0, 4.0]
        assert ok.tolist() == [True, True, True, True]

    def test_longer_gap_is_not_whole_until_a_new_value(self) -> None:
        """Cells more than max_gap after the last value stay NaN and are not whole."""
        grid = np.array([[1.0], [NAN], [NAN], [NAN], [5.0], [NAN]])
        filled, ok = fill_forward(grid, max_gap=2)
        assert filled[:3, 0].tolist() == [1.0, 1.0, 1.0]
        assert np.isnan(filled[3, 0])
        assert filled[4:, 0].tolist() == [5.0, 5.0]
        assert ok.tolist() == [True, True, True, False, True, True]

    def test_leading_cells_without_a_value_are_not_whole(self) -> None:
        """A channel that has never had a value leaves the leading cells not whole."""
        grid = np.array([[1.0, NAN], [2.0, NAN], [3.0, 7.0]])
        filled, ok = fill_forward(grid, max_gap=5)
        assert ok.tolist() == [False, False, True]
        assert np.isnan(filled[:2, 1]).all()

    def test_zero_max_gap_fills_nothing(self) -> None:
        """With max_gap 0 a missing cell is never filled."""
        filled, ok = fill_forward(np.array([[1.0], [NAN], [3.0]]), max_gap=0)
        assert np.isnan(filled[1, 0])
        assert ok.tolist() == [True, False, True]


class TestSlidingWindows:
    def test_all_whole_gives_every_end(self) -> None:
        """With every row whole, each row from window-1 on ends a window."""
        ok = np.ones(6, dtype=bool)
        assert sliding_windows(np.zeros((6, 1)), ok, 3).tolist() == [2, 3, 4, 5]

    def test_shorter_than_window_gives_none(self) -> None:
        """Fewer rows than the window give no window."""
        assert sliding_windows(np.zeros((2, 1)), np.ones(2, dtype=bool), 3).size == 0

    def test_a_bad_row_excludes_windows_covering_it(self) -> None:
        """No returned window covers a row that is not whole."""
        ok = np.array([True, True, True, False, True, True, True, True])
        assert sliding_windows(np.zeros((8, 1)), ok, 3).tolist() == [2, 6, 7]


def fill(w: AssetWindow, cell: int, value: float = 1.0, offset: float = 1.0) -> None:
    """Every channel of `cell`, at ts cell * P + offset."""
    for ch in range(w.n_channels):
        assert w.update(cell, ch, cell * P + offset, value) is Update.ACCEPTED


class TestAssetWindow:
    def test_update_accepts_then_flags_duplicates(self) -> None:
        """A new reading is ACCEPTED; the same channel and ts again is a DUPLICATE."""
        w = AssetWindow(2, 4, max_gap=2, lateness=3)
        assert w.update(10, 0, 100.0, 1.0) is Update.ACCEPTED
        assert w.update(10, 0, 100.0, 1.0) is Update.DUPLICATE
        assert w.update(10, 1, 100.0, 1.0) is Update.ACCEPTED

    def test_too_late_beyond_lateness(self) -> None:
        """A cell exactly `lateness` behind is accepted, one further is TOO_LATE."""
        w = AssetWindow(1, 4, max_gap=2, lateness=3)
        w.update(10, 0, 100.0, 1.0)
        assert w.update(7, 0, 70.0, 2.0) is Update.ACCEPTED
        assert w.update(6, 0, 60.0, 3.0) is Update.TOO_LATE
        assert np.isnan(w.cells(6, 1)).all()

    def test_late_reading_fills_a_hole(self) -> None:
        """A late reading for a cell that never had one lands in it."""
        w = AssetWindow(1, 2, max_gap=0, lateness=3)
        w.update(10, 0, 100.0, 1.0)
        w.update(12, 0, 120.0, 3.0)
        assert w.extract(12) is None
        w.update(11, 0, 110.0, 2.0)
        x = w.extract(12)
        assert x is not None and x[:, 0].tolist() == [2.0, 3.0]

    def test_last_keeps_the_latest_event_time(self) -> None:
        """With `last`, an older reading arriving after a newer one does not replace it."""
        w = AssetWindow(1, 2, max_gap=0, lateness=3)
        w.update(10, 0, 105.0, 5.0)
        assert w.update(10, 0, 101.0, 1.0) is Update.ACCEPTED
        assert w.cells(10, 1)[0, 0] == 5.0

    def test_mean_aggregates_a_cell(self) -> None:
        """With `mean`, the cell holds the mean of its readings."""
        w = AssetWindow(1, 2, max_gap=0, lateness=3, agg="mean")
        for ts, v in [(101.0, 1.0), (102.0, 2.0), (103.0, 6.0)]:
            w.update(10, 0, ts, v)
        assert w.cells(10, 1)[0, 0] == pytest.approx(3.0)

    def test_no_window_while_warming_up(self) -> None:
        """No window closes before `window` cells have passed since the first reading."""
        w = AssetWindow(2, 4, max_gap=2, lateness=3)
        for cell in range(10, 13):
            fill(w, cell)
        assert w.take() == []
        fill(w, 13)
        assert [c.end for c in w.take()] == [13]

    def test_closes_once_every_channel_has_a_value(self) -> None:
        """The newest cell closes when its last channel arrives, not before."""
        w = AssetWindow(2, 2, max_gap=2, lateness=3)
        fill(w, 10)
        w.take()
        w.update(11, 0, 110.0, 1.0)
        assert w.ready == []
        w.update(11, 1, 114.0, 1.0)
        closed = w.take()
        assert [(c.end, c.newest_ts) for c in closed] == [(11, 114.0)]
        assert closed[0].window is not None and closed[0].window.shape == (2, 2)

    def test_a_newer_cell_closes_the_previous_one(self) -> None:
        """A reading for a newer cell closes the newest one even with a channel missing."""
        w = AssetWindow(2, 2, max_gap=2, lateness=3)
        fill(w, 10)
        w.take()
        w.update(11, 0, 110.0, 7.0)
        w.update(12, 0, 120.0, 8.0)
        closed = w.take()
        assert [c.end for c in closed] == [11]
        assert closed[0].window is not None
        assert closed[0].window.tolist() == [[1.0, 1.0], [7.0, 1.0]]  # channel 1 filled forward

    def test_each_cell_closes_once(self) -> None:
        """A closed cell is not closed again by later readings into it or a newer cell."""
        w = AssetWindow(1, 2, max_gap=2, lateness=3)
        fill(w, 10)
        fill(w, 11)
        w.update(11, 0, 115.0, 2.0)
        w.update(12, 0, 120.0, 2.0)
        assert [c.end for c in w.take()] == [11, 12]

    def test_every_closed_window_is_queued(self) -> None:
        """However many cells pass between takes, every closed window waits, oldest first."""
        w = AssetWindow(1, 3, max_gap=2, lateness=3)
        for cell in range(10, 30):
            fill(w, cell, value=float(cell))
        closed = w.take()
        assert [c.end for c in closed] == list(range(12, 30))
        assert all(c.window is not None and c.window[-1, 0] == c.end for c in closed)
        assert w.take() == []

    def test_stride_skips_cells(self) -> None:
        """With stride 2, only every second cell closes a window."""
        w = AssetWindow(1, 2, max_gap=2, lateness=3, stride=2)
        for cell in range(10, 17):
            fill(w, cell)
        assert [c.end for c in w.take()] == [11, 13, 15]  # 16 waits for 17

    def test_window_is_taken_at_closing(self) -> None:
        """A late reading after a window closed changes later windows, not the closed one."""
        w = AssetWindow(1, 2, max_gap=2, lateness=3)
        fill(w, 10, value=1.0)
        fill(w, 11, value=1.0)
        w.update(10, 0, 109.0, 5.0)  # later ts in cell 10: `last` takes it
        fill(w, 12, value=1.0)
        closed = w.take()
        assert [c.window[0, 0] for c in closed if c.window is not None] == [1.0, 1.0]
        x = w.extract(11)
        assert x is not None and x[0, 0] == 5.0

    def test_extract_fills_short_gaps(self) -> None:
        """A window with a gap of at most max_gap comes back forward-filled."""
        w = AssetWindow(1, 4, max_gap=2, lateness=3)
        for cell, v in [(10, 1.0), (11, 2.0), (14, 5.0)]:
            w.update(cell, 0, cell * P, v)
        x = w.extract(14)
        assert x is not None
        assert x[:, 0].tolist() == [2.0, 2.0, 2.0, 5.0]

    def test_extract_none_for_a_gap_over_max_gap(self) -> None:
        """A window holding a gap longer than max_gap is not whole: extract gives None."""
        w = AssetWindow(1, 4, max_gap=2, lateness=3)
        for cell in (10, 11, 12, 16, 17):
            w.update(cell, 0, cell * P, 1.0)
        assert w.extract(17) is None
        for cell in (18, 19):
            w.update(cell, 0, cell * P, 1.0)
        assert w.extract(18) is None  # still covers cell 15
        assert w.extract(19) is not None

    def test_gap_closes_a_window_that_is_not_whole(self) -> None:
        """After a long gap the closing window comes with window None (stale), until whole again."""
        w = AssetWindow(1, 3, max_gap=1, lateness=3)
        for cell in (10, 11, 12, 16, 17, 18):
            fill(w, cell)
        assert [(c.end, c.window is None) for c in w.take()] == [
            (12, False), (16, True), (17, True), (18, False)]

    def test_extract_uses_lookback_before_the_window(self) -> None:
        """A value up to max_gap cells before the window start fills its first cells."""
        w = AssetWindow(1, 3, max_gap=2, lateness=3)
        w.update(10, 0, 100.0, 7.0)
        w.update(13, 0, 130.0, 9.0)
        x = w.extract(13)
        assert x is not None and x[:, 0].tolist() == [7.0, 7.0, 9.0]

    def test_jump_beyond_capacity_forgets_everything(self) -> None:
        """A jump ahead by more than the ring's capacity leaves no old cell behind."""
        w = AssetWindow(1, 2, max_gap=1, lateness=1)
        w.update(10, 0, 100.0, 1.0)
        w.update(10 + 2 * w.capacity, 0, 0.0, 2.0)
        assert np.isnan(w.cells(10 + 2 * w.capacity - 1, w.capacity)).all()

    def test_newest_ts(self) -> None:
        """newest_ts is the latest event time held in cells up to `end`, NaN when none."""
        w = AssetWindow(2, 4, max_gap=2, lateness=3)
        assert np.isnan(w.newest_ts(10))
        w.update(10, 0, 101.0, 1.0)
        w.update(10, 1, 104.0, 1.0)
        w.update(11, 0, 112.0, 1.0)
        assert w.newest_ts(10) == 104.0
        assert w.newest_ts(11) == 112.0
        assert w.newest_ts(12) == 112.0

    @pytest.mark.parametrize("agg", ["last", "mean"])
    def test_redelivery_of_an_older_reading_in_the_cell_is_a_duplicate(self, agg: str) -> None:
        """A redelivered reading that is not the cell's newest is never averaged in."""
        w = AssetWindow(1, 2, max_gap=1, lateness=2, agg=agg)  # type: ignore[arg-type]
        w.update(5, 0, 50.0, 1.0)
        w.update(5, 0, 50.5, 3.0)
        res = w.update(5, 0, 50.0, 1.0)  # QoS 1 redelivery of the first reading
        expected = 2.0 if agg == "mean" else 3.0
        assert w.cells(5, 1)[0, 0] == pytest.approx(expected)
        # `mean` holds every reading of the cell, so the redelivery is a duplicate; `last` holds
        # only the newest, and an older reading (redelivered or not) changes nothing.
        assert res is (Update.DUPLICATE if agg == "mean" else Update.ACCEPTED)


# -- properties -------------------------------------------------------------------------------

_VALUES = st.integers(min_value=-1000, max_value=1000).map(float)


@st.composite
def _near_readings(draw: st.DrawFn) -> list[tuple[float, int, float]]:
    """Distinct (channel, ts) readings of 2 channels, all within 3 cells of each other."""
    n = draw(st.integers(min_value=1, max_value=25))
    keys = draw(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3 * 100 + 99)),
                         min_size=n, max_size=n, unique=True))
    return [(T0 + k * P / 100.0, ch, draw(_VALUES)) for ch, k in keys]


@st.composite
def _stream(draw: st.DrawFn) -> list[tuple[float, int, float]]:
    """An event-time stream of 2 channels: advancing cells with gaps and late readings."""
    out: list[tuple[float, int, float]] = []
    seen: set[tuple[float, int]] = set()
    clock = 0
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        clock += draw(st.sampled_from([0, 1, 1, 1, 1, 2, 4, 9]))
        back = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 5]))  # lateness is 3: some are too late
        cell = max(clock - back, 0)
        for ch in draw(st.sampled_from([(0,), (1,), (0, 1), (0, 1), (1, 0)])):
            ts = (C0 + cell) * P + draw(st.integers(0, 9990)) * 0.001  # any order within a cell
            if (ts, ch) not in seen:  # distinct (channel, ts): duplicates are tested apart
                seen.add((ts, ch))
                out.append((ts, ch, draw(_VALUES)))
    return out


def _feed(w: AssetWindow, readings: list[tuple[float, int, float]]) -> list[Update]:
    return [w.update(cell_of(ts, P), ch, ts, v) for ts, ch, v in readings]


def _training_window(readings: list[tuple[float, int, float]], end: int, window: int,
                     max_gap: int, agg: str) -> np.ndarray | None:
    """What training builds for the window ending at cell `end`: to_grid, fill_forward, rows."""
    start, grid = grid_of(readings, 2, agg)
    filled, ok = fill_forward(grid, max_gap)
    lo, hi = end - window + 1 - start, end - start
    if lo < 0 or not ok[lo : hi + 1].all():
        return None
    return filled[lo : hi + 1]


class TestAssetWindowProperties:
    @pytest.mark.parametrize("agg", ["last", "mean"])
    @given(readings=_near_readings(), data=st.data())
    @settings(max_examples=60, deadline=None)
    def test_arrival_order_does_not_matter(self, agg: str, readings: list[tuple[float, int, float]],
                                           data: st.DataObject) -> None:
        """Any arrival order of readings within the allowed lateness gives the same windows."""
        shuffled = data.draw(st.permutations(readings))
        a = AssetWindow(2, 3, max_gap=2, lateness=3, agg=agg)  # type: ignore[arg-type]
        b = AssetWindow(2, 3, max_gap=2, lateness=3, agg=agg)  # type: ignore[arg-type]
        assert Update.TOO_LATE not in _feed(a, readings)
        assert Update.TOO_LATE not in _feed(b, shuffled)
        assert a.newest == b.newest
        tol = 1e-9 if agg == "mean" else 0.0
        for end in range(a.newest - 3, a.newest + 1):
            assert same(a.extract(end), b.extract(end), tol)
            assert same(a.cells(end, 3), b.cells(end, 3), tol)

    @pytest.mark.parametrize("agg", ["last", "mean"])
    @given(stream=_stream())
    @settings(max_examples=40, deadline=None)
    def test_serving_windows_equal_training_windows(
            self, agg: str, stream: list[tuple[float, int, float]]) -> None:
        """Each closed window, and each window extractable after every reading, equals to_grid +
        fill_forward over the readings accepted so far."""
        w = AssetWindow(2, 4, max_gap=2, lateness=3, agg=agg)  # type: ignore[arg-type]
        accepted: list[tuple[float, int, float]] = []
        tol = 1e-9 if agg == "mean" else 0.0
        for r in stream:
            if w.update(cell_of(r[0], P), r[1], r[0], r[2]) is Update.ACCEPTED:
                accepted.append(r)
            for closed in w.take():  # what the agent scores, taken when the cell closed
                want = _training_window(accepted, closed.end, 4, 2, agg)
                assert same(closed.window, want, tol), ("closed", closed.end)
            for end in range(w.newest - 3, w.newest + 1):
                want = _training_window(accepted, end, 4, 2, agg)
                assert same(w.extract(end), want, tol), (end, w.newest)

    @given(stream=_stream(), late=st.lists(st.tuples(st.integers(4, 40), st.integers(0, 1), _VALUES),
                                           min_size=1, max_size=10))
    @settings(max_examples=60, deadline=None)
    def test_too_late_readings_change_nothing(
            self, stream: list[tuple[float, int, float]],
            late: list[tuple[int, int, float]]) -> None:
        """Readings older than newest - lateness are TOO_LATE and leave the window as it was."""
        w = AssetWindow(2, 4, max_gap=2, lateness=3)
        _feed(w, stream)
        newest = w.newest
        before = w.cells(newest, w.capacity)
        last_closed, ready = w.last_closed, len(w.ready)
        for back, ch, v in late:
            cell = newest - back
            assert w.update(cell, ch, cell * P + 0.5, v) is Update.TOO_LATE
        assert w.newest == newest
        assert same(w.cells(newest, w.capacity), before)
        assert (w.last_closed, len(w.ready)) == (last_closed, ready)


# -- memory per asset -------------------------------------------------------------------------

def _footprint(*objs: object) -> int:
    """Bytes held by the per-asset containers among `objs`' attributes (arrays, views, lists),
    leaving out those shared between instances (`first` is compared with a second instance)."""
    a, b = objs
    total = 0
    for name, value in vars(a).items():
        if isinstance(value, np.ndarray | array | memoryview | list) and value is not vars(b).get(name):
            total += sys.getsizeof(value)
    return total


class TestFootprint:
    def test_window_and_forecast_bytes_per_asset_stay_small(self) -> None:
        """DESIGN: memory is a fixed base plus about 10 KiB per asset. The window of 14 channels
        and 30 cells (the reference contract, max_gap 5, lateness 10) and the forecast the
        surprise tracker keeps [5, 14] take under 6 KiB; float64 rings and event times for
        every slot (the earlier layout) took about 13.5 KiB."""
        kw: dict[str, Any] = {"max_gap": 5, "lateness": 10}
        w, other = AssetWindow(14, 30, **kw), AssetWindow(14, 30, **kw)
        for cell in range(100, 160):
            fill(w, cell)
        w.take()
        tracker = SurpriseTracker(0.1)
        forecast = np.zeros((5, 14), dtype=np.float32)  # as the pipeline keeps it
        tracker.update(159, np.zeros((5, 14)), forecast.copy(), forecast.copy())
        assert tracker.mean is not None and tracker.logvar is not None
        held = _footprint(w, other) + sys.getsizeof(tracker.mean) + sys.getsizeof(tracker.logvar)
        assert held <= 6 * 1024, held


class TestFloat32Values:
    def test_last_rounds_a_value_once_to_float32(self) -> None:
        """`last` keeps a value as float32 (what the model computes in); a whole window comes
        out as float32 holding that value exactly (half the memory while it waits to be scored;
        the pipeline widens a batch to float64 in one go)."""
        w = AssetWindow(1, 1, max_gap=0, lateness=1)
        w.update(10, 0, 100.0, 0.1)
        x = w.extract(10)
        assert x is not None and x.dtype == np.float32 and x[0, 0] == np.float32(0.1)

    def test_precise_keeps_a_counter_exact(self) -> None:
        """A channel whose offset dwarfs its spread (a counter near 1e8 that moves by units)
        would lose its units in float32: such a model's windows keep float64."""
        w = AssetWindow(1, 1, max_gap=0, lateness=1, precise=True)
        w.update(10, 0, 100.0, 123_456_789.0)
        x = w.extract(10)
        assert x is not None and x[0, 0] == 123_456_789.0 != float(np.float32(123_456_789.0))

    def test_which_models_need_precise_windows(self) -> None:
        plain = Normalisation(mean=(55.0, 1480.0), std=(2.0, 10.0))
        counter = Normalisation(mean=(55.0, 1.2e8), std=(2.0, 40.0))
        assert plain.float32_exact and not counter.float32_exact

    def test_mean_is_averaged_in_float64(self) -> None:
        """`mean` keeps its running average in float64: no float32 rounding at every reading."""
        w = AssetWindow(1, 1, max_gap=0, lateness=1, agg="mean")
        for i, v in enumerate([0.1, 0.2, 0.4]):
            w.update(10, 0, 100.0 + i, v)
        assert w.cells(10, 1)[0, 0] == pytest.approx((0.1 + 0.2 + 0.4) / 3, rel=1e-15)


class TestEventTimes:
    @given(period=st.sampled_from([0.1, 0.25, 1.0, 10.0, 60.0, 900.0, 3600.0, 86_400.0]),
           start_ms=st.integers(946_684_800_000, 4_102_444_800_000),
           offsets=st.lists(st.integers(0, 86_400_000), min_size=1, max_size=8))
    @settings(max_examples=200, deadline=None)
    def test_ms_timestamps_stay_exact(self, period: float, start_ms: int, offsets: list[int]) -> None:
        """Millisecond event times in a cell of any period from 0.1 s to a day: readings 1 ms
        apart are distinct (not duplicates), the newest wins, and newest_ts is that event time
        exactly, so risk and alert messages carry the same RFC 3339 millisecond."""
        cell = cell_of(start_ms / 1000.0, period)
        period_ms = round(period * 1000)
        stamps = sorted({(cell * period_ms + o % period_ms) / 1000.0 for o in offsets})
        stamps = [t for t in stamps if cell_of(t, period) == cell]
        assume(stamps)
        w = AssetWindow(1, 2, max_gap=0, lateness=2)
        for i, t in enumerate(stamps):  # in time order, each the newest: a resend is a duplicate
            assert w.update(cell, 0, t, float(i)) is Update.ACCEPTED
            assert w.update(cell, 0, t, float(i)) is Update.DUPLICATE
        back = AssetWindow(1, 2, max_gap=0, lateness=2)
        for i, t in enumerate(reversed(stamps)):  # newest first: the older ones must not win
            assert back.update(cell, 0, t, float(i)) is Update.ACCEPTED
        for x in (w, back):
            assert x.newest_ts(cell) == stamps[-1]
            assert rfc3339_ms(x.newest_ts(cell)) == rfc3339_ms(stamps[-1])
        assert w.cells(cell, 1)[0, 0] == len(stamps) - 1 and back.cells(cell, 1)[0, 0] == 0.0

    def test_newest_ts_of_a_late_cell(self) -> None:
        """A late reading into a cell within `lateness` has its event time kept for that cell."""
        w = AssetWindow(2, 4, max_gap=2, lateness=3)
        w.update(10, 0, 105.0, 1.0)
        w.update(13, 0, 135.0, 1.0)
        w.update(10, 1, 107.0, 1.0)
        assert w.newest_ts(10) == 107.0
        assert w.newest_ts(13) == 135.0
        assert w.update(10, 1, 107.0, 1.0) is Update.DUPLICATE


class TestOldCheckpoint:
    def test_format_1_arrays_restore_and_go_on_the_same(self) -> None:
        """A window restored from arrays of the earlier layout closes the same windows, with the
        same event times and duplicates, as one that saw every reading."""
        rng = np.random.default_rng(3)
        readings = [(c, ch, c * P + 1.0 + ch * 0.25, float(rng.normal()))
                    for c in range(10, 40) for ch in range(2) if (c, ch) != (37, 1)]
        live = AssetWindow(2, 4, max_gap=2, lateness=3)
        for c, ch, t, v in readings:
            live.update(c, ch, t, v)
        live.take()
        arrays = format_1_window_arrays(live, readings)
        assert arrays["ts"].shape == arrays["values"].shape  # the old layout
        restored = AssetWindow(2, 4, max_gap=2, lateness=3)
        restored.restore(arrays, live.state()[1])
        assert same(restored.cells(39, restored.capacity), live.cells(39, live.capacity))
        assert restored.newest_ts(39) == live.newest_ts(39)
        more = [(37, 1, 371.5, 2.0), (39, 0, 391.0, 9.0), (40, 0, 401.0, 1.0), (40, 1, 401.5, 2.0),
                (38, 1, 381.25, 3.0), (42, 0, 421.0, 4.0), (42, 1, 421.0, 5.0)]
        for c, ch, t, v in more:
            assert restored.update(c, ch, t, v) is live.update(c, ch, t, v)
            got, want = restored.take(), live.take()
            assert [(x.end, x.newest_ts) for x in got] == [(x.end, x.newest_ts) for x in want]
            assert all(same(x.window, y.window) for x, y in zip(got, want, strict=True))
        sa, sb = restored.state(), live.state()
        assert sa[1] == sb[1]
        assert all(np.array_equal(sa[0][k], sb[0][k], equal_nan=True) for k in sa[0])
