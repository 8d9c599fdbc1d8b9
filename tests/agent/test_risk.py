"""Risk: surprise scores, their probability, the combination, and the level machine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.risk import (
    Level,
    LevelMachine,
    SurpriseTracker,
    Transition,
    combine,
    surprise_probability,
    surprise_z2,
    top_channels,
)
from agent.spec import Combiner, SurpriseStats, Thresholds

T = Thresholds(warning=0.5, critical=0.8, hysteresis=0.05, dwell=2, cooldown=10)
STATS = SurpriseStats(ewma_alpha=0.5, quantiles=(0.0, 1.0, 2.0, 3.0, 4.0))
PROB = st.floats(min_value=0.0, max_value=1.0)


def run(m: LevelMachine, risks: list[float], start: int = 0) -> list[Transition | None]:
    """Feed consecutive windows (one cell apart) and collect what the machine returns."""
    return [m.update(r, start + i) for i, r in enumerate(risks)]


def transitions(out: list[Transition | None]) -> list[tuple[int, Level, Level]]:
    return [(t.cell, t.previous, t.level) for t in out if t is not None]


class TestSurpriseZ2:
    def test_zero_when_observed_is_the_mean(self) -> None:
        """Observations equal to the forecast mean score zero on every channel."""
        mean = np.array([[1.0, 2.0], [3.0, 4.0]])
        assert surprise_z2(mean, np.zeros_like(mean), mean).tolist() == [0.0, 0.0]

    def test_scales_with_inverse_variance(self) -> None:
        """The score is (obs - mean)^2 / exp(logvar), averaged over cells."""
        mean = np.zeros((2, 1))
        obs = np.array([[2.0], [2.0]])
        assert surprise_z2(mean, np.zeros((2, 1)), obs)[0] == pytest.approx(4.0)
        assert surprise_z2(mean, np.full((2, 1), math.log(4.0)), obs)[0] == pytest.approx(1.0)

    def test_uses_only_the_overlap(self) -> None:
        """With fewer observed cells than forecast, only the first forecast cells count."""
        mean = np.array([[0.0], [100.0]])
        z = surprise_z2(mean, np.zeros((2, 1)), np.array([[1.0]]))
        assert z[0] == pytest.approx(1.0)


class TestSurpriseTracker:
    mean = np.zeros((2, 2))
    logvar = np.zeros((2, 2))

    def test_none_before_a_second_forecast(self) -> None:
        """The first window only stores a forecast: there is nothing to compare yet."""
        tr = SurpriseTracker(alpha=0.5)
        assert tr.update(10, np.ones((2, 2)), self.mean, self.logvar) is None

    def test_compares_new_cells_with_the_earlier_forecast(self) -> None:
        """The next window scores its newest cell against the first row of the earlier forecast."""
        tr = SurpriseTracker(alpha=0.5)
        tr.update(10, np.zeros((2, 2)), np.array([[1.0, 0.0], [9.0, 9.0]]), self.logvar)
        got = tr.update(11, np.array([[5.0, 5.0], [3.0, 0.0]]), self.mean, self.logvar)
        assert got is not None and got.tolist() == pytest.approx([4.0, 0.0])

    def test_ewma(self) -> None:
        """Later scores are smoothed: ewma += alpha * (z2 - ewma)."""
        tr = SurpriseTracker(alpha=0.25)
        tr.update(0, np.zeros((2, 2)), self.mean, self.logvar)
        first = tr.update(1, np.array([[0.0, 0.0], [2.0, 2.0]]), self.mean, self.logvar)
        second = tr.update(2, np.array([[0.0, 0.0], [4.0, 4.0]]), self.mean, self.logvar)
        assert first is not None and first.tolist() == [4.0, 4.0]
        assert second is not None and second.tolist() == pytest.approx([4.0 + 0.25 * 12.0] * 2)

    def test_two_cells_since_the_forecast(self) -> None:
        """Two cells after the forecast, both rows of the forecast are compared."""
        tr = SurpriseTracker(alpha=1.0)
        tr.update(0, np.zeros((2, 1)), np.zeros((2, 1)), np.zeros((2, 1)))
        got = tr.update(2, np.array([[1.0], [3.0]]), np.zeros((2, 1)), np.zeros((2, 1)))
        assert got is not None and got[0] == pytest.approx(5.0)

    def test_reset_after_a_gap_longer_than_the_horizon(self) -> None:
        """A gap between forecasts longer than the horizon forgets the smoothed score."""
        tr = SurpriseTracker(alpha=0.5)
        tr.update(0, np.zeros((2, 2)), self.mean, self.logvar)
        assert tr.update(1, np.ones((2, 2)), self.mean, self.logvar) is not None
        assert tr.update(4, np.ones((2, 2)), self.mean, self.logvar) is None
        assert tr.update(5, np.ones((2, 2)), self.mean, self.logvar) is not None

    def test_same_cell_again_keeps_the_score(self) -> None:
        """A second forecast for the same cell neither scores nor resets."""
        tr = SurpriseTracker(alpha=0.5)
        tr.update(0, np.zeros((2, 2)), self.mean, self.logvar)
        got = tr.update(1, np.ones((2, 2)), self.mean, self.logvar)
        again = tr.update(1, np.full((2, 2), 7.0), self.mean, self.logvar)
        assert got is not None and again is not None and again.tolist() == got.tolist()


class TestSurpriseProbability:
    def test_clamps_outside_the_quantiles(self) -> None:
        """Scores below the lowest quantile give 0, above the highest give 1."""
        assert surprise_probability(-5.0, STATS) == 0.0
        assert surprise_probability(100.0, STATS) == 1.0

    def test_interpolates_the_empirical_cdf(self) -> None:
        """Between quantiles the probability is linear in the score."""
        assert surprise_probability(2.0, STATS) == pytest.approx(0.5)
        assert surprise_probability(0.5, STATS) == pytest.approx(0.125)

    @given(a=st.floats(-10, 10), b=st.floats(-10, 10))
    @settings(max_examples=200, deadline=None)
    def test_monotone_within_unit_interval(self, a: float, b: float) -> None:
        """A larger score never gives a smaller probability, and all lie in [0, 1]."""
        lo, hi = sorted((a, b))
        p_lo, p_hi = surprise_probability(lo, STATS), surprise_probability(hi, STATS)
        assert 0.0 <= p_lo <= p_hi <= 1.0


class TestCombine:
    def test_surprise_only_without_fail_prob(self) -> None:
        """Without a failure probability, risk depends on the surprise signal alone."""
        c = Combiner(w_fail=3.0, w_surprise=1.0, bias=0.0)
        assert combine(None, 0.3, c) == pytest.approx(0.3)
        assert combine(None, 0.9, c) == pytest.approx(0.9)

    def test_bias_only_without_signals(self) -> None:
        """With neither signal the risk is sigmoid(bias)."""
        assert combine(None, None, Combiner(1.0, 1.0, 0.0)) == pytest.approx(0.5)

    def test_extremes_stay_finite(self) -> None:
        """Probabilities of exactly 0 and 1 give a risk strictly inside (0, 1)."""
        c = Combiner(w_fail=100.0, w_surprise=100.0, bias=0.0)
        assert 0.0 <= combine(0.0, 0.0, c) < 1e-6
        assert 1.0 - 1e-6 < combine(1.0, 1.0, c) <= 1.0

    @given(pf=st.tuples(PROB, PROB), ps=st.tuples(PROB, PROB),
           w=st.tuples(st.floats(0, 5), st.floats(0, 5), st.floats(-3, 3)))
    @settings(max_examples=200, deadline=None)
    def test_monotone_in_each_signal(self, pf: tuple[float, float], ps: tuple[float, float],
                                     w: tuple[float, float, float]) -> None:
        """With non-negative weights, raising either signal never lowers the risk."""
        c = Combiner(*w)
        f_lo, f_hi = sorted(pf)
        s_lo, s_hi = sorted(ps)
        assert combine(f_lo, s_lo, c) <= combine(f_hi, s_lo, c)
        assert combine(f_lo, s_lo, c) <= combine(f_lo, s_hi, c)
        assert 0.0 <= combine(f_lo, s_lo, c) <= 1.0


class TestLevelMachine:
    def test_starts_ok(self) -> None:
        """A new machine is at ok and stays there under low risk."""
        m = LevelMachine(T)
        assert m.level is Level.OK
        assert transitions(run(m, [0.1] * 20)) == []

    def test_hysteresis_no_flapping(self) -> None:
        """Risk hovering at the warning threshold with noise under the margin raises once and never drops."""
        rng = np.random.default_rng(7)
        risks = (T.warning + rng.uniform(-0.04, 0.04, size=500)).tolist()
        got = transitions(run(LevelMachine(T), risks))
        assert len(got) == 1
        assert got[0][1:] == (Level.OK, Level.WARNING)

    def test_without_margin_it_would_flap(self) -> None:
        """The same noise with a zero margin does change level more than once (the test has teeth)."""
        t0 = Thresholds(warning=0.5, critical=0.8, hysteresis=0.0, dwell=2, cooldown=0)
        rng = np.random.default_rng(7)
        risks = (0.5 + rng.uniform(-0.04, 0.04, size=500)).tolist()
        assert len(transitions(run(LevelMachine(t0), risks))) > 1

    def test_dwell_needs_consecutive_windows(self) -> None:
        """A level changes only after `dwell` consecutive windows call for it."""
        t3 = Thresholds(warning=0.5, critical=0.8, hysteresis=0.05, dwell=3, cooldown=0)
        m = LevelMachine(t3)
        assert transitions(run(m, [0.6, 0.6, 0.1, 0.6, 0.6])) == []
        out = m.update(0.6, 5)
        assert out == Transition(5, Level.WARNING, Level.OK, 0.6)

    def test_dwell_applies_going_down(self) -> None:
        """Dropping back to ok also needs `dwell` windows below the lowered threshold."""
        m = LevelMachine(T)
        run(m, [0.6, 0.6])
        assert m.level is Level.WARNING
        assert m.update(0.1, 2) is None
        assert m.update(0.1, 3) == Transition(3, Level.OK, Level.WARNING, 0.1)

    def test_escalation_and_back_down(self) -> None:
        """ok -> warning -> critical -> warning -> ok, each with the right previous level."""
        m = LevelMachine(T)
        got = transitions(run(m, [0.6, 0.6, 0.9, 0.9, 0.6, 0.6, 0.1, 0.1]))
        assert got == [(1, Level.OK, Level.WARNING), (3, Level.WARNING, Level.CRITICAL),
                       (5, Level.CRITICAL, Level.WARNING), (7, Level.WARNING, Level.OK)]

    def test_straight_to_critical(self) -> None:
        """A risk above critical from ok jumps straight to critical."""
        got = transitions(run(LevelMachine(T), [0.95, 0.95]))
        assert got == [(1, Level.OK, Level.CRITICAL)]

    def test_critical_holds_within_the_margin(self) -> None:
        """Just below critical but within the margin, critical holds."""
        m = LevelMachine(T)
        run(m, [0.9, 0.9])
        assert transitions(run(m, [0.77] * 10, start=2)) == []
        assert m.level is Level.CRITICAL

    def test_cooldown_suppresses_a_quick_re_raise(self) -> None:
        """A re-raise to the same level within `cooldown` cells is held back, then allowed."""
        m = LevelMachine(T)  # raises at cell 1, back to ok at cell 3
        assert transitions(run(m, [0.6, 0.6, 0.1, 0.1])) == [(1, Level.OK, Level.WARNING),
                                                             (3, Level.WARNING, Level.OK)]
        held = run(m, [0.6] * 6, start=4)  # cells 4..9: dwell met at 5, but 5 - 1 < 10
        assert transitions(held) == []
        assert m.level is Level.OK
        assert m.update(0.6, 11) == Transition(11, Level.WARNING, Level.OK, 0.6)

    def test_cooldown_counts_cells_not_windows(self) -> None:
        """Cells skipped between windows count towards the cooldown."""
        m = LevelMachine(T)
        run(m, [0.6, 0.6, 0.1, 0.1])
        assert m.update(0.6, 30) is None
        assert m.update(0.6, 31) == Transition(31, Level.WARNING, Level.OK, 0.6)

    @given(risks=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=60), data=st.data())
    @settings(max_examples=100, deadline=None)
    def test_state_restore_round_trip(self, risks: list[float], data: st.DataObject) -> None:
        """A machine restored from a JSON checkpoint decides exactly as the original would."""
        split = data.draw(st.integers(0, len(risks)))
        a = LevelMachine(T)
        run(a, risks[:split])
        b = LevelMachine(T)
        b.restore(json.loads(json.dumps(a.state())))
        assert b.level == a.level
        assert run(b, risks[split:], start=split) == run(a, risks[split:], start=split)


class TestTopChannels:
    def test_highest_first(self) -> None:
        """Channels come out ordered by score, highest first, at most n."""
        got = top_channels(np.array([0.5, 3.0, 1.25, 0.1]), ("a", "b", "c", "d"), n=3)
        assert got == [{"channel": "b", "score": 3.0}, {"channel": "c", "score": 1.25},
                       {"channel": "a", "score": 0.5}]

    def test_none_gives_empty(self) -> None:
        """Without per-channel scores there are no top channels."""
        assert top_channels(None, ("a",)) == []
