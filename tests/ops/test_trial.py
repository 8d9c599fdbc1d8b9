"""The trial's verdicts: a candidate promoted only when at least as good, a guard restored only
when the promoted model did worse; the trial survives a checkpoint round trip."""

from __future__ import annotations

import json

from agent.trial import Tally, Trial, at_least_as_good


def trial(role: str, live: Tally, shadow: Tally) -> Trial:
    return Trial(role, "shadow-v", "live-v", 0.0, {"live": live, "shadow": shadow})  # type: ignore[arg-type]


class TestVerdicts:
    def test_nothing_before_the_trial_length(self) -> None:
        t = trial("candidate", Tally(false_alarms=3), Tally())
        assert t.verdict(99.0, 100.0) is None
        v = t.verdict(100.0, 100.0)
        assert v is not None and v.action == "promote"

    def test_a_candidate_with_more_misses_or_false_alarms_is_dropped(self) -> None:
        for shadow, why in ((Tally(missed=1), "missed 1"), (Tally(false_alarms=2), "2 false alarms")):
            v = trial("candidate", Tally(false_alarms=1), shadow).verdict(200.0, 100.0)
            assert v is not None and v.action == "drop" and why in v.reason

    def test_a_shorter_lead_time_is_worse(self) -> None:
        ok, why = at_least_as_good(Tally(lead_times=[600.0]), Tally(lead_times=[3600.0]))
        assert not ok and "lead time" in why
        assert at_least_as_good(Tally(lead_times=[3600.0, 7200.0]), Tally(lead_times=[3600.0]))[0]
        assert at_least_as_good(Tally(), Tally(lead_times=[3600.0]))[0]  # nothing to compare

    def test_a_guard_is_restored_only_when_the_promoted_model_did_worse(self) -> None:
        worse = trial("guard", Tally(false_alarms=2), Tally(false_alarms=0)).verdict(200.0, 100.0)
        assert worse is not None and worse.action == "rollback"
        same = trial("guard", Tally(false_alarms=1), Tally(false_alarms=1)).verdict(200.0, 100.0)
        assert same is not None and same.action == "keep"

    def test_the_trial_starts_at_its_first_verdict_call_without_a_start(self) -> None:
        t = Trial("candidate", "s", "l", None)
        assert t.verdict(1000.0, 100.0) is None and t.started == 1000.0
        assert t.verdict(1100.0, 100.0) is not None

    def test_checkpoint_round_trip(self) -> None:
        t = trial("guard", Tally(1, 2, 3, [60.0]), Tally(0, 1, 0, []))
        again = Trial.from_json(json.loads(json.dumps(t.to_json())))
        assert again == t


def test_events_and_learning_share_the_readings_time_bounds() -> None:
    """One rule for readings' and events' event time: not before the floor, not ahead of the clock."""
    from agent.config import WindowsConfig
    from agent.events import PlantEvent, within_time_bounds

    w = WindowsConfig()
    now = 1_800_000_000.0
    assert w.out_of_bounds(now, now) is None
    assert w.out_of_bounds(now + 301, now) == "future" and w.out_of_bounds(0.0, now) == "too_old"
    ev = PlantEvent("pump-1", 0.0, "maintenance_start")
    assert within_time_bounds(ev, w, now) == "ts is before 2000-01-01 ([windows] ts_floor)"
    repair = PlantEvent("pump-1", now, "repair")
    assert within_time_bounds(repair, w, now) == repair
