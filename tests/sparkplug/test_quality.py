"""Sparkplug tags the model has no use for, bad quality, and births that redefine held values."""

from __future__ import annotations

import math

import pytest

from agent.ingest import Reason
from agent.sparkplug.codec import Metric, encode, metric_quality, new_metric
from agent.sparkplug.host import Birth
from agent.sparkplug.sparkplug_b_pb2 import DataType
from tests.sparkplug.helpers import CHANNELS, TS_MS, Session, dbirth, make_session, nbirth


def dbirth_with(seq: int, extra: list[Metric], ts_ms: int = TS_MS) -> bytes:
    metrics = [new_metric(DataType.Double, float(i), name=c, alias=i + 1, ts_ms=ts_ms)
               for i, c in enumerate(CHANNELS)]
    return encode([*metrics, *extra], ts_ms, seq)


class TestIgnored:
    def test_births_define_tags_without_counting_them(self, s: Session) -> None:
        """A birth listing Boolean, String and unmapped tags counts nothing: definitions are not
        readings; its numeric model channels are readings as before."""
        s.send("NBIRTH", nbirth())
        out = s.send("DBIRTH", dbirth_with(1, [
            new_metric(DataType.Boolean, True, name="Running", alias=10),
            new_metric(DataType.String, "AUTO", name="Mode", alias=11),
            new_metric(DataType.Double, 4.2, name="Flow", alias=12)]), "pump-1")
        assert out.rejects == [] and len(out.readings) == 3

    def test_data_counts_each_ignored_tag_once(self, s: Session) -> None:
        """In data, a Boolean or String tag is `unsupported` and a number the model lacks is
        `unmapped`, once per reading; none of them is a rejection or asks for a rebirth."""
        s.send("NBIRTH", nbirth())
        s.send("DBIRTH", dbirth_with(1, [
            new_metric(DataType.Boolean, True, name="Running", alias=10),
            new_metric(DataType.String, "AUTO", name="Mode", alias=11),
            new_metric(DataType.Double, 4.2, name="Flow", alias=12)]), "pump-1")
        data = encode([new_metric(DataType.Boolean, False, alias=10, ts_ms=TS_MS + 1000),
                       new_metric(DataType.String, "MAN", alias=11, ts_ms=TS_MS + 1000),
                       new_metric(DataType.Double, 4.3, alias=12, ts_ms=TS_MS + 1000),
                       new_metric(DataType.Double, 9.0, alias=1, ts_ms=TS_MS + 1000)], TS_MS + 1000, 2)
        out = s.send("DDATA", data, "pump-1")
        assert out.rejects == [Reason.UNSUPPORTED, Reason.UNSUPPORTED, Reason.UNMAPPED]
        assert all(r.is_ignored and not r.is_rejection for r in out.rejects)
        assert [r.value for r in out.readings] == [9.0] and out.commands == []

    def test_unknown_datatype_is_still_bad_input(self, s: Session) -> None:
        """A datatype Sparkplug does not define is malformed input: rejected as `type`."""
        s.send("NBIRTH", nbirth())
        m = new_metric(DataType.Double, 1.0, name="temp", alias=1)
        m.datatype = 77
        out = s.send("DBIRTH", encode([m], TS_MS, 1), "pump-1")
        assert out.rejects == [Reason.TYPE] and Reason.TYPE.is_rejection


class TestQuality:
    @pytest.mark.parametrize(("quality", "good"), [
        (192, True), ("Good", True), (None, True), (0, False), (500, False), (64, False),
        (-2147483136, False), ("Bad_Stale", False)])
    def test_quality_property(self, s: Session, quality: int | str | None, good: bool) -> None:
        """The Quality property as Ignition sends it: 192 (OPC DA and Ignition "good") or "Good"
        is good; anything else (bad 0, stale 500, uncertain 64, Ignition 8 bad codes) is not,
        and the reading comes out as `bad_quality` instead of a value."""
        s.send("NBIRTH", nbirth())
        s.send("DBIRTH", dbirth(1), "pump-1")
        m = new_metric(DataType.Double, 5.0, alias=1, ts_ms=TS_MS + 1000, quality=quality)
        assert metric_quality(m) == quality
        out = s.send("DDATA", encode([m], TS_MS + 1000, 2), "pump-1")
        if good:
            assert [r.value for r in out.readings] == [5.0] and out.bad == [] and out.rejects == []
        else:
            assert out.readings == [] and out.rejects == [Reason.QUALITY]
            assert [(b.asset, b.channel, b.ts) for b in out.bad] == [("pump-1", 0, (TS_MS + 1000) / 1000)]
            assert math.isnan(out.bad[0].value)

    def test_is_null_is_bad_quality(self, s: Session) -> None:
        """A null value (how Ignition reports a tag of bad quality) is `bad_quality`, not `type`."""
        s.send("NBIRTH", nbirth())
        s.send("DBIRTH", dbirth(1), "pump-1")
        out = s.send("DDATA", encode([new_metric(DataType.Double, None, alias=2, ts_ms=TS_MS + 1000)],
                                     TS_MS + 1000, 2), "pump-1")
        assert out.rejects == [Reason.QUALITY] and [b.channel for b in out.bad] == [1]

    def test_good_quality_is_configurable(self) -> None:
        """`good_quality` names the good values (here OPC UA's StatusCode Good, 0)."""
        s = make_session(good_quality=(0,))
        s.send("NBIRTH", nbirth())
        s.send("DBIRTH", dbirth(1), "pump-1")
        ok = s.send("DDATA", encode([new_metric(DataType.Double, 5.0, alias=1, ts_ms=TS_MS + 1000,
                                                quality=0)], TS_MS + 1000, 2), "pump-1")
        bad = s.send("DDATA", encode([new_metric(DataType.Double, 5.0, alias=1, ts_ms=TS_MS + 2000,
                                                 quality=192)], TS_MS + 2000, 3), "pump-1")
        assert len(ok.readings) == 1 and bad.rejects == [Reason.QUALITY]


class TestBirths:
    def test_birth_lists_its_model_channels(self, s: Session) -> None:
        """A DBIRTH reports which model channels it lists (the ones that go on holding); an NBIRTH
        ends the devices of the last session (none of their channels holds)."""
        s.send("NBIRTH", nbirth())
        out = s.send("DBIRTH", encode([new_metric(DataType.Double, 1.0, name="temp", alias=1, ts_ms=TS_MS),
                                       new_metric(DataType.Double, 3.0, name="press", alias=3, ts_ms=TS_MS)],
                                      TS_MS, 1), "pump-1")
        assert out.births == [Birth("pump-1", TS_MS / 1000, frozenset({0, 2}))]
        again = s.send("NBIRTH", nbirth(bd_seq=1))
        assert Birth("pump-1", TS_MS / 1000, None) in again.births

    def test_birth_values_stand_at_the_birth(self, s: Session) -> None:
        """Ignition stamps each metric of a birth with when it last changed: with a hold, the value
        stands at the birth's time, so a tag constant for hours is a current value, not a late one."""
        s.send("NBIRTH", nbirth())
        hours_ago = TS_MS - 3 * 3600 * 1000
        out = s.send("DBIRTH", encode([new_metric(DataType.Double, 1480.0, name="temp", alias=1,
                                                  ts_ms=hours_ago)], TS_MS, 1), "pump-1")
        assert [r.ts for r in out.readings] == [TS_MS / 1000]
        plain = make_session(hold=False)
        plain.send("NBIRTH", nbirth())
        out = plain.send("DBIRTH", encode([new_metric(DataType.Double, 1480.0, name="temp", alias=1,
                                                      ts_ms=hours_ago)], TS_MS, 1), "pump-1")
        assert [r.ts for r in out.readings] == [hours_ago / 1000]
