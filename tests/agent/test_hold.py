"""Report by exception in the windows: held values, their limit, cuts and bad quality.

The property at the heart of it: with a hold, every window the agent closes equals the one
training builds with `fill_forward(grid, max(max_gap, hold))` over the same readings.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.risk import LevelMachine, SurpriseTracker
from agent.spec import Thresholds
from agent.state import dump_asset, load_asset
from agent.windows import AssetWindow, Update, cell_of, fill_forward, fill_held, hold_cells
from tests.agent.test_windows import C0, P, _training_window, same

_VALUES = st.integers(min_value=-1000, max_value=1000).map(float)


@st.composite
def _sparse_stream(draw: st.DrawFn) -> list[tuple[float, int, float]]:
    """Two channels reported by exception: often one channel alone, silent stretches shorter and
    longer than the ring and the hold, and some readings late."""
    out: list[tuple[float, int, float]] = []
    seen: set[tuple[float, int]] = set()
    clock = 0
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        clock += draw(st.sampled_from([0, 1, 1, 2, 3, 5, 9, 13, 21]))
        back = draw(st.sampled_from([0, 0, 0, 1, 2, 5]))  # lateness is 3: some are too late
        cell = max(clock - back, 0)
        for ch in draw(st.sampled_from([(0,), (1,), (0,), (1,), (0, 1)])):
            ts = (C0 + cell) * P + draw(st.integers(0, 9990)) * 0.001
            if (ts, ch) not in seen:
                seen.add((ts, ch))
                out.append((ts, ch, draw(_VALUES)))
    return out


def held_window(hold: int = 12, window: int = 4, stride: int = 1) -> AssetWindow:
    # capacity = 4 + 2 + 3 + 1 = 10 cells: a hold of 12 reaches past the ring.
    return AssetWindow(2, window, max_gap=2, lateness=3, hold=hold, stride=stride)


class TestServingEqualsTraining:
    @pytest.mark.parametrize("hold", [3, 12, 40])
    @given(stream=_sparse_stream())
    @settings(max_examples=60, deadline=None)
    def test_held_windows_equal_training_windows(self, hold: int,
                                                 stream: list[tuple[float, int, float]]) -> None:
        """Each closed window (gap cells included), and each window extractable after every
        reading, equals to_grid + fill_forward(max(max_gap, hold)) over the readings accepted
        so far: holding beyond the ring gives what training's forward fill gives."""
        w = held_window(hold)
        reach = max(2, hold)
        accepted: list[tuple[float, int, float]] = []
        for r in stream:
            if w.update(cell_of(r[0], P), r[1], r[0], r[2]) is Update.ACCEPTED:
                accepted.append(r)
            for closed in w.take():
                want = _training_window(accepted, closed.end, 4, reach, "last")
                assert same(closed.window, want), ("closed", closed.end)
            for end in range(w.newest - 3, w.newest + 1):
                want = _training_window(accepted, end, 4, reach, "last")
                assert same(w.extract(end), want), (end, w.newest)

    @given(stream=_sparse_stream())
    @settings(max_examples=40, deadline=None)
    def test_update_cell_closes_the_same_windows(self, stream: list[tuple[float, int, float]]) -> None:
        """The per-message path (`update_cell`) closes the same windows as `update`, gaps included."""
        a, b = held_window(), held_window()
        for ts, ch, v in stream:
            a.update(cell_of(ts, P), ch, ts, v)
            b.update_cell(cell_of(ts, P), ts, [ch], [v], [])
        got_a, got_b = a.take(), b.take()
        assert [c.end for c in got_a] == [c.end for c in got_b]
        assert all(same(x.window, y.window) for x, y in zip(got_a, got_b, strict=True))


def fill_cell(w: AssetWindow, cell: int, values: dict[int, float]) -> None:
    for ch, v in values.items():
        assert w.update(C0 + cell, ch, (C0 + cell) * P + 1.0, v) is Update.ACCEPTED


class TestHold:
    def test_hold_cells(self) -> None:
        """A hold in seconds becomes whole cells after the value's own; 0 is none."""
        assert hold_cells(600.0, 10.0) == 60
        assert hold_cells(65.0, 10.0) == 6
        assert hold_cells(0.3, 0.1) == 3
        assert hold_cells(0.0, 10.0) == 0

    def test_a_constant_channel_is_held_and_gap_cells_close(self) -> None:
        """Channel 1 reports once; channel 0 reports every other cell. With a hold every cell
        closes a whole window; without one, none is whole past max_gap."""
        held, plain = held_window(hold=30), AssetWindow(2, 4, max_gap=2, lateness=3)
        for w in (held, plain):
            fill_cell(w, 0, {0: 1.0, 1: 50.0})
            for cell in range(2, 20, 2):
                fill_cell(w, cell, {0: float(cell)})
        got = held.take()
        # Every cell from the first whole window on (cell 18 waits for a newer cell).
        assert [c.end - C0 for c in got] == list(range(3, 18))
        assert all(c.window is not None for c in got)
        last = got[-1].window
        assert last is not None and last[:, 1].tolist() == [50.0] * 4
        assert last[:, 0].tolist() == [14.0, 14.0, 16.0, 16.0]
        late = [c for c in plain.take() if c.end - C0 >= 8]
        assert late and all(c.window is None for c in late)

    def test_hold_limit_ends_the_hold(self) -> None:
        """Past `hold` cells after its value, a channel that did not report is no longer held."""
        w = held_window(hold=12)
        fill_cell(w, 0, {0: 1.0, 1: 2.0})
        for cell in range(1, 20):
            fill_cell(w, cell, {0: float(cell)})
        by_end = {c.end - C0: c.window for c in w.take()}
        assert by_end[12] is not None and by_end[12][-1, 1] == 2.0
        assert by_end[13] is None and by_end[18] is None

    def test_a_silent_stretch_closes_each_cell_once(self) -> None:
        """An asset silent for 8 cells: its next reading closes the 8 cells between (held), and
        windows deep in the stretch share one array (identical held rows)."""
        w = held_window(hold=30)
        for cell in range(0, 4):
            fill_cell(w, cell, {0: 1.0 + cell, 1: 2.0})
        w.take()
        fill_cell(w, 12, {0: 9.0})
        got = w.take()
        assert [c.end - C0 for c in got] == list(range(4, 12))  # cell 3 closed when whole
        deep = [c.window for c in got if c.end - C0 >= 3 + 4]
        assert deep and all(d is deep[0] for d in deep)
        assert deep[0] is not None and deep[0].tolist() == [[4.0, 2.0]] * 4

    def test_stride_applies_to_gap_cells(self) -> None:
        """With stride 3 the cells of a gap close every third cell, like any other."""
        w = held_window(hold=30, stride=3)
        for cell in range(0, 4):
            fill_cell(w, cell, {0: 1.0, 1: 2.0})
        fill_cell(w, 14, {0: 9.0})
        ends = [c.end for c in w.take()]
        assert all(b - a == 3 for a, b in itertools.pairwise(ends))


class TestCuts:
    def test_cut_ends_the_hold_of_every_channel(self) -> None:
        """A death cuts every channel: a window reaching past the cut is not whole until each
        channel reports again, then whole again."""
        w = held_window(hold=30)
        for cell in range(0, 6):
            fill_cell(w, cell, {0: 1.0, 1: 2.0})
        w.take()
        w.cut(C0 + 6)
        fill_cell(w, 7, {0: 3.0})
        fill_cell(w, 8, {0: 3.0})
        first = w.take()
        assert [c.end - C0 for c in first] == [6, 7]  # cell 5 closed when whole
        assert first[0].window is None and first[1].window is None  # cells 6, 7 lack channel 1
        fill_cell(w, 9, {1: 4.0})
        fill_cell(w, 16, {0: 3.0})
        got = {c.end - C0: c.window for c in w.take()}
        assert got[11] is None  # window 8..11: cell 8 still lacks channel 1
        held = got[12]  # window 9..12: channel 1 held from cell 9, after the cut
        assert held is not None and held[:, 1].tolist() == [4.0] * 4 and held[:, 0].tolist() == [3.0] * 4

    def test_bad_quality_cuts_one_channel_and_a_good_value_ends_it(self) -> None:
        """A bad reading of channel 1 stops its hold (windows not whole) and marks it degraded;
        a newer good reading clears both."""
        w = held_window(hold=30)
        for cell in range(0, 5):
            fill_cell(w, cell, {0: 1.0, 1: 2.0})
        w.take()
        w.mark_bad(1, C0 + 5, (C0 + 5) * P + 2.0)
        assert w.degraded == [1]
        for cell in range(5, 8):
            fill_cell(w, cell, {0: 1.0})
        assert all(c.window is None for c in w.take())
        w.mark_good([1], (C0 + 5) * P + 1.0)  # older than the bad reading: still bad
        assert w.degraded == [1]
        fill_cell(w, 8, {1: 7.0})
        w.mark_good([1], (C0 + 8) * P + 1.0)
        assert w.degraded == []
        fill_cell(w, 12, {0: 1.0})
        got = {c.end - C0: c.window for c in w.take()}
        assert got[11] is not None and got[11][:, 1].tolist() == [7.0] * 4

    def test_cuts_and_held_values_survive_a_checkpoint(self) -> None:
        """A restored window holds the values that left the ring, keeps its cuts and bad channels."""
        w = held_window(hold=30)
        for cell in range(0, 5):
            fill_cell(w, cell, {0: 1.0, 1: 2.0})
        for cell in range(5, 16):
            fill_cell(w, cell, {0: float(cell)})  # channel 1's value leaves the ring
        w.mark_bad(0, C0 + 16, (C0 + 16) * P)
        t = Thresholds(warning=0.5, critical=0.8, hysteresis=0.05, dwell=2, cooldown=5)
        blob = dump_asset(w, LevelMachine(t), SurpriseTracker(0.2), False, 0.0)
        back = held_window(hold=30)
        load_asset(blob, back, LevelMachine(t), SurpriseTracker(0.2))
        assert back.degraded == [0]
        assert same(back.extract(C0 + 15), w.extract(C0 + 15))
        assert back.extract(C0 + 15) is not None
        assert same(back.extract(C0 + 17), w.extract(C0 + 17)) and w.extract(C0 + 17) is None


class TestFillHeld:
    def test_equals_fill_forward_with_the_prior_value_as_a_row(self) -> None:
        """fill_held over cells after a prior value equals fill_forward with that value in place."""
        rng = np.random.default_rng(3)
        grid = np.where(rng.random((40, 3)) < 0.3, rng.normal(size=(40, 3)), np.nan)
        grid[0] = [1.0, 2.0, 3.0]
        want, ok = fill_forward(grid, 6)
        # The prior is each channel's newest value before cell 10 (not its filled value).
        prior_c = np.array([max(i for i in range(10) if not np.isnan(grid[i, c])) for c in range(3)])
        prior_v = grid[prior_c, np.arange(3)]
        got, ok2 = fill_held(grid[10:], 10, prior_v, prior_c, 6, None)
        assert same(got, want[10:]) and (ok2 == ok[10:]).all()
