"""Alerts: RFC 3339 timestamps, stable alert ids, the disk-backed outbox and the sender."""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from agent.alerts import AlertSender, Outbox, alert_id, encode, rfc3339_ms
from agent.metrics import Metrics

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", max_items=3)
    yield box
    box.close()


class TestRfc3339:
    def test_utc_milliseconds_z(self) -> None:
        """Epoch seconds print as UTC with exactly three fraction digits and a Z."""
        assert rfc3339_ms(1_767_225_600.0) == "2026-01-01T00:00:00.000Z"
        assert rfc3339_ms(1_767_225_600.25) == "2026-01-01T00:00:00.250Z"
        assert rfc3339_ms(0.0) == "1970-01-01T00:00:00.000Z"

    @given(st.floats(min_value=946_684_800.0, max_value=4_102_444_800.0))
    @settings(max_examples=200, deadline=None)
    def test_format_and_value(self, ts: float) -> None:
        """Every output matches the RFC 3339 ms pattern and parses back within a millisecond."""
        text = rfc3339_ms(ts)
        assert RFC3339_MS.match(text)
        assert abs(datetime.fromisoformat(text).timestamp() - ts) < 1e-3

    @given(whole=st.integers(-86_400, 4_102_444_800),
           frac=st.one_of(st.floats(0.0, 1.0, exclude_max=True),
                          st.sampled_from([0.0005, 0.0009995, 0.9995, 0.999_999_4, 0.999_999_5, 0.999_999_6,
                                           0.000_000_5, 0.123_456_5, 0.5])))
    @settings(max_examples=500, deadline=None)
    def test_same_text_as_datetime(self, whole: int, frac: float) -> None:
        """The fast path gives exactly what datetime's isoformat gives, also where the microsecond
        rounds up into the next millisecond or second."""
        ts = whole + frac
        want = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert rfc3339_ms(ts) == want


class TestAlertId:
    def test_deterministic_uuid(self) -> None:
        """The same transition always gets the same id, and it is a UUID."""
        a = alert_id("gw-01", "pump-1", 123, "warning", "ok")
        assert a == alert_id("gw-01", "pump-1", 123, "warning", "ok")
        assert str(uuid.UUID(a)) == a

    def test_distinct_for_different_transitions(self) -> None:
        """Changing any part of a transition changes its id."""
        base = ("gw-01", "pump-1", 123, "warning", "ok")
        variants = [("gw-02", "pump-1", 123, "warning", "ok"), ("gw-01", "pump-2", 123, "warning", "ok"),
                    ("gw-01", "pump-1", 124, "warning", "ok"), ("gw-01", "pump-1", 123, "critical", "ok"),
                    ("gw-01", "pump-1", 123, "warning", "critical")]
        ids = {alert_id(*v) for v in [base, *variants]}
        assert len(ids) == 1 + len(variants)


class TestEncode:
    def test_compact_and_refuses_nan(self) -> None:
        """Payloads are compact JSON, and a NaN cannot slip into one."""
        assert encode({"a": 1, "b": [1.5]}) == b'{"a":1,"b":[1.5]}'
        with pytest.raises(ValueError):
            encode({"risk": float("nan")})
        with pytest.raises(ValueError):
            encode({"signals": {"rul": float("inf")}})


class TestOutbox:
    def test_add_pending_ack(self, outbox: Outbox) -> None:
        """Added messages are pending oldest first until acknowledged."""
        i1 = outbox.add("vigil/alerts/a", b"1")
        i2 = outbox.add("vigil/alerts/b", b"2")
        assert i2 > i1
        assert [(p.id, p.topic, p.payload) for p in outbox.pending()] == [
            (i1, "vigil/alerts/a", b"1"), (i2, "vigil/alerts/b", b"2")]
        assert len(outbox) == 2
        outbox.ack(i1)
        assert [p.id for p in outbox.pending()] == [i2]
        assert len(outbox) == 1

    def test_pending_limit(self, outbox: Outbox) -> None:
        """pending(limit) gives only the oldest `limit` messages."""
        ids = [outbox.add("t", bytes([i])) for i in range(3)]
        assert [p.id for p in outbox.pending(limit=2)] == ids[:2]

    def test_ack_unknown_or_twice_changes_nothing(self, outbox: Outbox) -> None:
        """Acknowledging an unknown id, or the same id twice, keeps the count right."""
        i = outbox.add("t", b"x")
        outbox.add("t", b"y")
        outbox.ack(i)
        outbox.ack(i)
        outbox.ack(9999)
        assert len(outbox) == 1

    def test_full(self, outbox: Outbox) -> None:
        """The outbox is full at max_items and not after an ack."""
        ids = [outbox.add("t", b"x") for _ in range(3)]
        assert outbox.full
        outbox.ack(ids[0])
        assert not outbox.full

    def test_survives_reopening(self, tmp_path: Path) -> None:
        """A new Outbox on the same file sees what was pending, with the same ids."""
        path = tmp_path / "sub" / "outbox.db"
        first = Outbox(path, max_items=10)
        a = first.add("vigil/alerts/a", b"one")
        b = first.add("vigil/alerts/b", b"two")
        first.ack(a)
        first.close()
        second = Outbox(path, max_items=10)
        try:
            assert len(second) == 1
            assert [(p.id, p.payload) for p in second.pending()] == [(b, b"two")]
            c = second.add("vigil/alerts/c", b"three")
            assert c > b
        finally:
            second.close()

    def test_ids_not_reused_after_ack(self, outbox: Outbox) -> None:
        """An id acknowledged is never handed out again (a stale ack cannot drop a new alert)."""
        a = outbox.add("t", b"x")
        outbox.ack(a)
        assert outbox.add("t", b"y") != a

    @given(ops=st.lists(st.one_of(st.just(None), st.integers(0, 30)), max_size=30))
    @settings(max_examples=25, deadline=None)
    def test_any_add_ack_sequence(self, ops: list[int | None]) -> None:
        """Any interleaving of add and ack keeps len == added - acked and pending in insertion order."""
        with tempfile.TemporaryDirectory() as d:
            box = Outbox(Path(d) / "o.db", max_items=1000)
            try:
                model: list[tuple[int, bytes]] = []
                for n, op in enumerate(ops):
                    if op is None:
                        payload = str(n).encode()
                        model.append((box.add("t", payload), payload))
                    elif model:
                        box.ack(model.pop(op % len(model))[0])
                    assert len(box) == len(model)
                assert [(p.id, p.payload) for p in box.pending()] == model
            finally:
                box.close()


class FakeLink:
    """Records publishes and hands out message ids like paho does."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        self.sent.append((topic, payload, qos))
        return len(self.sent)


class NullLog:
    def error(self, event: str, **kw: object) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sender(box: Outbox, **kw: Any) -> tuple[AlertSender, FakeLink, CollectorRegistry]:
    registry = CollectorRegistry()
    link = FakeLink()
    return AlertSender(box, link, Metrics(registry), NullLog(), **kw), link, registry


class TestAlertSender:
    def test_persists_then_publishes_qos1(self, outbox: Outbox) -> None:
        """An alert is in the outbox and handed to the link at QoS 1."""
        s, link, registry = sender(outbox)
        assert s.send("vigil/alerts/p1", b"{}", "warning")
        assert link.sent == [("vigil/alerts/p1", b"{}", 1)]
        assert len(outbox) == 1
        assert registry.get_sample_value("vigil_outbox_depth") == 1.0

    def test_leaves_the_outbox_only_on_ack(self, outbox: Outbox) -> None:
        """drain removes exactly the acknowledged alerts."""
        s, _, registry = sender(outbox)
        s.send("a", b"1", "warning")
        s.send("b", b"2", "warning")
        assert s.drain() == 0
        s.acks.append((2, True))  # PUBACK for the second message id
        assert s.drain() == 1
        assert [p.payload for p in outbox.pending()] == [b"1"]
        assert registry.get_sample_value("vigil_outbox_depth") == 1.0

    def test_refused_ack_is_retried(self, outbox: Outbox) -> None:
        """A PUBACK with a failure reason keeps the alert and hands it over again after retry_s."""
        clock = Clock()
        s, link, _ = sender(outbox, retry_s=5.0, clock=clock)
        s.send("a", b"1", "warning")
        s.acks.append((1, False))
        assert s.drain() == 0
        assert len(outbox) == 1
        clock.now = 4.0
        s.pump()
        assert len(link.sent) == 1
        clock.now = 6.0
        s.pump()
        assert [p for _, p, _ in link.sent] == [b"1", b"1"]
        s.acks.append((2, True))
        assert s.drain() == 1
        assert len(outbox) == 0

    def test_full_outbox_drops_only_returns_to_ok(self, outbox: Outbox) -> None:
        """With the outbox full, an `ok` alert is dropped and counted; a warning is still kept."""
        s, link, registry = sender(outbox)
        for _ in range(3):
            s.send("a", b"w", "warning")
        assert outbox.full
        assert not s.send("a", b"ok", "ok")
        assert registry.get_sample_value("vigil_alerts_dropped_total", {"level": "ok"}) == 1.0
        assert s.send("a", b"crit", "critical")
        assert len(outbox) == 4
        assert [p for _, p, _ in link.sent] == [b"w", b"w", b"w", b"crit"]

    def test_resume_is_rate_limited(self, tmp_path: Path) -> None:
        """What an earlier run left is re-sent no faster than resend_per_s."""
        path = tmp_path / "o.db"
        first = Outbox(path, max_items=100)
        for i in range(10):
            first.add("t", bytes([i]))
        first.close()
        box = Outbox(path, max_items=100)
        try:
            clock = Clock()
            s, link, _ = sender(box, resend_per_s=4.0, clock=clock)
            assert s.resume() == 10
            s.pump()
            assert link.sent == []
            clock.now = 0.5
            s.pump()
            assert len(link.sent) == 2
            clock.now = 100.0
            s.pump()
            assert len(link.sent) == 6  # the budget is capped at one second's worth
            assert [p for _, p, _ in link.sent] == [bytes([i]) for i in range(6)]
            assert s.in_flight == 10
        finally:
            box.close()
