"""The operations loop's pure logic: flood and chatter trackers, lead-time books, PSI, parsing."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting import MAX_PENDING, LeadTimeBook
from agent.alarms import ChatterTracker, FloodTracker
from agent.commands import Command, parse_command, sender_of
from agent.drift import DriftTracker, psi, reference_edges
from agent.events import EventLog, PlantEvent, parse_event
from training.data import load_events


class TestFlood:
    def test_begins_past_threshold_and_ends_at_half(self) -> None:
        """The 11th alarm in 600 s begins a flood (once); it ends when the count falls to 5."""
        f = FloodTracker(threshold=10, window_s=600.0)
        changes = [f.alarm(float(t)) for t in range(11)]
        assert [c is not None for c in changes] == [False] * 10 + [True]
        assert f.active and f.alarm(11.0) is None
        f.held_back("a")
        f.held_back("a")
        assert f.tick(300.0) is None          # all 12 still within the window
        ended = f.tick(606.5)                 # alarms at t <= 6.5 have left: 5 remain
        assert ended is not None and not ended.active and ended.suppressed == 2 and ended.assets == ["a"]
        assert not f.active

    @given(st.lists(st.floats(0, 10_000, allow_nan=False), max_size=200))
    @settings(max_examples=100, deadline=None)
    def test_count_is_alarms_within_the_window(self, times: list[float]) -> None:
        """Whatever the order, the count equals the alarms in (newest - window, newest]."""
        f = FloodTracker(threshold=1000, window_s=600.0)
        for t in times:
            f.alarm(t)
        if times:
            newest = max(times)
            assert f.count == sum(1 for t in times if t > newest - 600.0)


class TestChatter:
    def test_more_than_n_changes_in_window(self) -> None:
        """Four changes within 600 s with toggles=3 is chatter; spaced out it is not; it calms down."""
        c = ChatterTracker(toggles=3, window_s=600.0)
        assert [c.change("a", t) for t in (0.0, 10.0, 20.0, 30.0)] == [False, False, False, True]
        assert [c.change("b", t) for t in (0.0, 700.0, 1400.0, 2100.0)] == [False] * 4
        assert c.chattering == {"a"}
        assert c.tick(650.0) == ["a"] and c.chattering == set()


class TestLeadTimeBook:
    def test_failure_takes_the_first_alert_within_the_horizon(self) -> None:
        """Lead time from the earliest alert within the horizon; alerts after the failure stay."""
        b = LeadTimeBook()
        b.raised("p", "old", 0.0, 100.0)     # 150 s before the failure: outside its horizon
        b.raised("p", "a1", 80.0, 100.0)
        b.raised("p", "a2", 120.0, 100.0)
        b.raised("p", "later", 200.0, 100.0)
        out = b.failure("p", 150.0)
        assert out.lead_time_s == 70.0 and out.confirmed == 2
        assert [r.alert_id for r in b.pending["p"]] == ["old", "later"]

    def test_miss_repair_and_false_alarm(self) -> None:
        b = LeadTimeBook(grace_s=10.0)
        assert b.failure("q", 5.0).lead_time_s is None
        b.raised("q", "x", 0.0, 60.0)
        assert b.repair("q", 65.0) == 1          # within horizon + grace
        b.raised("q", "y", 100.0, 60.0)
        assert b.expire(170.0) == []              # 100 + 60 + 10 is not yet passed
        gone = b.expire(170.5)
        assert [(a, r.alert_id) for a, r in gone] == [("q", "y")] and "q" not in b.pending

    def test_same_alert_held_once_and_bounded(self) -> None:
        b = LeadTimeBook()
        b.raised("p", "a", 1.0, 10.0)
        b.raised("p", "a", 1.0, 10.0)
        assert len(b.pending["p"]) == 1
        early = [r for i in range(MAX_PENDING + 5) for r in b.raised("p", f"n{i}", 2.0 + i, 10.0)]
        assert len(b.pending["p"]) == MAX_PENDING and len(early) == 6

    def test_dump_and_load_round_trip(self) -> None:
        b = LeadTimeBook()
        b.raised("p", "a", 1.0, 10.0)
        c = LeadTimeBook()
        c.load("p", b.dump("p"))
        assert c.pending == b.pending


class TestPsi:
    def test_reference_bins_are_equally_likely(self) -> None:
        edges = reference_edges(10.0, 2.0, 4)
        assert np.allclose(edges, [10.0 - 2.0 * 0.6744898, 10.0, 10.0 + 2.0 * 0.6744898], atol=1e-6)

    def test_psi_zero_when_equal_and_grows_with_shift(self) -> None:
        exp = np.full(10, 0.1)
        assert psi(np.full(10, 50), exp) == 0.0
        rng = np.random.default_rng(0)
        shifts = []
        for shift in (0.0, 0.5, 1.0, 2.0):
            d = DriftTracker(("x",), (0.0,), (1.0,), bins=10, window_s=3600.0, min_samples=100)
            v = rng.normal(shift, 1.0, 5000)
            d.add(["a"] * 5000, np.arange(5000.0) * 0.5, v[:, None])
            shifts.append(d.values()["x"])
        assert shifts[0] < 0.02 and shifts == sorted(shifts) and shifts[-1] > 1.0

    def test_window_forgets_old_inputs(self) -> None:
        """Inputs older than the window (event time) leave the histogram."""
        d = DriftTracker(("x",), (0.0,), (1.0,), bins=10, window_s=1200.0, min_samples=10)
        rng = np.random.default_rng(1)
        d.add(["a"] * 500, np.arange(500.0) * 2, rng.normal(5.0, 1.0, (500, 1)))   # drifted, early
        assert d.values()["x"] > 1.0
        d.add(["a"] * 2000, 5000.0 + np.arange(2000.0) * 0.5, rng.normal(0.0, 1.0, (2000, 1)))  # healthy
        assert d.values()["x"] < 0.05
        assert DriftTracker(("x",), (0.0,), (1.0,), min_samples=10).values() == {}
        short = DriftTracker(("x",), (0.0,), (1.0,), window_s=1200.0, min_samples=10)
        # Spans less than half the window:
        short.add(["a"] * 500, np.arange(500.0), rng.normal(5.0, 1.0, (500, 1)))
        assert short.values() == {}


class TestPerAssetDrift:
    def test_each_asset_is_judged_on_its_own(self) -> None:
        """Of three assets, the one whose inputs moved drifts; the two like training do not, and
        an asset with too few inputs yet is not judged at all."""
        d = DriftTracker(("x", "y"), (0.0, 0.0), (1.0, 1.0), window_s=3600.0, min_samples=100)
        rng = np.random.default_rng(5)
        t = np.arange(2000.0)
        for asset, shift in (("a", 0.0), ("b", 0.0), ("moved", 2.5)):
            d.add([asset] * 2000, t, rng.normal(0.0, 1.0, (2000, 2)) + np.array([shift, 0.0]))
        d.add(["new"] * 20, 2000.0 + np.arange(20.0), rng.normal(9.0, 1.0, (20, 2)))
        names, v = d.per_asset()
        assert sorted(names) == ["a", "b", "moved"]
        assert d.drifting(0.25) == [("moved", round(float(v[names.index("moved")].max()), 4))]
        assert d.values()["x"] > 1.0 and d.values()["y"] < 0.1

    def test_survives_a_restart(self, tmp_path: Path) -> None:
        """The histograms written to the state file and read back judge as before."""
        from agent.state import Checkpoint

        d = DriftTracker(("x",), (0.0,), (1.0,), window_s=3600.0, min_samples=50)
        rng = np.random.default_rng(6)
        d.add(["p1"] * 500 + ["p2"] * 500, np.tile(np.arange(500.0) * 4, 2),
              np.concatenate([rng.normal(0, 1, (500, 1)), rng.normal(3, 1, (500, 1))]))
        buf = io.BytesIO()
        np.savez(buf, **d.state())  # type: ignore[arg-type]
        ck = Checkpoint(tmp_path / "state.sqlite")
        ck.save_blob("trial", b"{}")
        ck.save_blob("drift:v1", buf.getvalue(), family="drift:")
        ck.save_blob("drift:v2", buf.getvalue(), family="drift:")  # another model's replaces it
        assert ck.load_blob("drift:v1") is None
        assert ck.load_blob("trial") == b"{}"  # not of the family: kept
        blob = ck.load_blob("drift:v2")
        ck.close()
        assert blob is not None
        again = DriftTracker(("x",), (0.0,), (1.0,), window_s=3600.0, min_samples=50)
        with np.load(io.BytesIO(blob)) as z:
            assert again.restore({k: z[k] for k in z.files}) == 2
        assert again.per_asset()[0] == d.per_asset()[0]
        np.testing.assert_allclose(again.per_asset()[1], d.per_asset()[1])


class TestParsing:
    def test_event(self) -> None:
        ev = parse_event("pump-1", b'{"ts": "2026-01-01T00:00:00Z", "event": "repair", "work_order": 42}')
        assert ev == PlantEvent("pump-1", 1_767_225_600.0, "repair", "42")
        assert parse_event("pump-1", b'{"ts": 1, "event": "explode"}') == (
            "event must be one of maintenance_start, maintenance_end, failure, repair")
        assert isinstance(parse_event("pump-1", b'{"event": "failure"}'), str)
        assert isinstance(parse_event("pump-1", b"[1]"), str)
        assert isinstance(parse_event("pump+1", b'{"ts": 1767225600, "event": "failure"}'), str)

    def test_commands(self) -> None:
        ack = Command("ack", "p1", {"alert_id": None}, "al")
        assert parse_command("v", "gw", "v/cmd/p1/ack", b"", "al") == ack
        cmd = parse_command("v", "gw", "v/cmd/p1/shelve", b'{"for_s": 60}')
        assert isinstance(cmd, Command) and cmd.args["for_s"] == 60.0
        cmd = parse_command("v", "gw", "v/cmd/p1/shelve", b'{"until": "2026-01-01T00:00:00Z"}')
        assert isinstance(cmd, Command) and cmd.args["until"] == 1_767_225_600.0
        promote = Command("promote", "", {}, "unknown")
        assert parse_command("v", "gw", "v/agents/gw/cmd/promote", b"") == promote
        for topic, payload in (("v/cmd/p1/shelve", b"{}"), ("v/cmd/p1/shelve", b'{"for_s": -1}'),
                               ("v/cmd/p1/shelve", b'{"for_s": true}'), ("v/cmd/p1/reboot", b"{}"),
                               ("v/cmd/p1/ack", b'{"alert_id": 3}'), ("v/cmd/p1/ack", b"nope"),
                               ("v/agents/other/cmd/promote", b"")):
            assert isinstance(parse_command("v", "gw", topic, payload), str), topic

    def test_sender(self) -> None:
        assert sender_of([("trace", "x"), ("Operator", "alice")]) == "alice"
        assert sender_of([("client_id", "hmi-3")]) == "hmi-3"
        assert sender_of(None) == "unknown"


def test_events_file_is_what_training_reads(tmp_path: Path) -> None:
    """The agent's events.csv loads with training's load_events, CMMS events mapped to its kinds."""
    log = EventLog(tmp_path / "events.csv")
    for i, kind in enumerate(("maintenance_start", "maintenance_end", "failure", "repair")):
        log.append(PlantEvent("pump,1" if i == 0 else "pump-2", 1_767_225_600.0 + i, kind, "WO,1"))
    EventLog(tmp_path / "events.csv")  # reopening does not write a second header
    got = load_events(tmp_path / "events.csv")
    assert [(e.asset, e.event) for e in got] == [("pump,1", "maintenance"), ("pump-2", "maintenance"),
                                                 ("pump-2", "failure"), ("pump-2", "maintenance")]
    assert all(math.isclose(e.ts, 1_767_225_600.0 + i) for i, e in enumerate(got))


class TestQuantileReference:
    def test_bins_from_quantiles_and_ties(self) -> None:
        """Distinct quantiles give equal shares; tied ones merge into one edge carrying their mass."""
        from agent.drift import quantile_bins

        edges, shares = quantile_bins((0.0, 1.0, 2.0, 3.0, 4.0))
        assert edges.tolist() == [1.0, 2.0, 3.0] and np.allclose(shares, 0.25)
        edges, shares = quantile_bins((0.0, 5.0, 5.0, 5.0, 9.0))
        assert edges.tolist() == [5.0] and np.allclose(shares, [0.75, 0.25])

    def test_training_quantiles_make_a_skewed_channel_quiet(self) -> None:
        """Inputs drawn like training give a low PSI against stored quantiles even when skewed,
        where the normal approximation would cry drift; a shift still shows."""
        rng = np.random.default_rng(3)
        train = rng.lognormal(0.0, 1.0, 20_000)
        q = tuple(float(v) for v in np.quantile(train, np.linspace(0, 1, 11)))
        live = rng.lognormal(0.0, 1.0, (3000, 1))
        t = np.arange(3000.0)
        ref = DriftTracker(("x",), (float(train.mean()),), (float(train.std()),), window_s=4000.0,
                           min_samples=10, quantiles=(q,))
        normal = DriftTracker(("x",), (float(train.mean()),), (float(train.std()),), window_s=4000.0,
                              min_samples=10)
        ref.add(["a"] * 3000, t, live)
        normal.add(["a"] * 3000, t, live)
        assert ref.values()["x"] < 0.02 < 0.25 < normal.values()["x"]
        shifted = DriftTracker(("x",), (0.0,), (1.0,), window_s=4000.0, min_samples=10, quantiles=(q,))
        shifted.add(["a"] * 3000, t, live * 3.0)
        assert shifted.values()["x"] > 0.25
