"""Ingest: topic templates, timestamps, and the json / json-multi decoders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import SubscriptionConfig
from agent.ingest import Decoder, Reading, Reason, TopicTemplate, parse_ts

CHANNELS = ("temp", "vib", "press")
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TS = 1_767_225_000.0


def sub(**kw: Any) -> SubscriptionConfig:
    args: dict[str, Any] = {"filter": "plant/+/+", "template": "plant/{asset}/{channel}"}
    args.update(kw)
    return SubscriptionConfig(**args)


def multi(**kw: Any) -> SubscriptionConfig:
    return sub(filter="plant/+", template="plant/{asset}", codec="json-multi", **kw)


def decode(cfg: SubscriptionConfig, topic: str, payload: bytes | str | Any,
           arrival: float = NOW) -> tuple[list[Reading], list[Reason]]:
    """Decode one message; payload may be bytes, text, or a JSON-able object."""
    if isinstance(payload, str):
        payload = payload.encode()
    elif not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    rejects: list[Reason] = []
    return Decoder(cfg, CHANNELS).decode(topic, payload, arrival, rejects), rejects


class TestTopicTemplate:
    def test_named_parts(self) -> None:
        """Named levels come back by name; literal levels must match exactly."""
        t = TopicTemplate.parse("plant/{line}/{asset}/{channel}")
        assert t.match("plant/l1/pump-7/temp") == {"line": "l1", "asset": "pump-7", "channel": "temp"}
        assert t.match("other/l1/pump-7/temp") is None

    def test_wrong_level_count(self) -> None:
        """A topic with more or fewer levels than the template does not match."""
        t = TopicTemplate.parse("plant/{asset}/{channel}")
        assert t.match("plant/a") is None
        assert t.match("plant/a/b/c") is None

    def test_literal_middle_level(self) -> None:
        """A literal level between named parts is checked."""
        t = TopicTemplate.parse("site/{asset}/sensors/{channel}")
        assert t.match("site/p1/sensors/temp") == {"asset": "p1", "channel": "temp"}
        assert t.match("site/p1/actuators/temp") is None


class TestParseTs:
    @pytest.mark.parametrize(("raw", "expected"), [
        (TS, TS),
        (int(TS), TS),
        (TS * 1000, TS),          # epoch ms by magnitude
        (1e11, 1e8),              # the ms heuristic starts at 1e11
        (99_999_999_999, 99_999_999_999.0),
        ("2026-01-01T00:00:00Z", NOW),
        ("2026-01-01T00:00:00.250Z", NOW + 0.25),
        ("2026-01-01T01:00:00+01:00", NOW),
        ("2025-12-31T19:00:00-05:00", NOW),
    ])
    def test_accepted(self, raw: Any, expected: float) -> None:
        """Epoch seconds, epoch milliseconds and RFC 3339 with Z or offsets all parse."""
        assert parse_ts(raw, "auto") == pytest.approx(expected)

    @pytest.mark.parametrize("raw", [
        "2026-01-01T00:00:00", True, False, None, float("nan"), float("inf"), "yesterday", [1], {},
    ])
    def test_rejected(self, raw: Any) -> None:
        """Naive RFC 3339, booleans, None, NaN, infinity and non-timestamps give None."""
        assert parse_ts(raw, "auto") is None

    def test_explicit_formats(self) -> None:
        """epoch_ms always divides, epoch_s never does, rfc3339 takes only strings."""
        assert parse_ts(5000, "epoch_ms") == 5.0
        assert parse_ts(TS * 1000, "epoch_s") == TS * 1000
        assert parse_ts(TS, "rfc3339") is None
        assert parse_ts("2026-01-01T00:00:00Z", "epoch_s") is None

    def test_huge_integer_is_rejected_not_raised(self) -> None:
        """An integer too large for a float is not a timestamp (and must not raise)."""
        assert parse_ts(10**400, "auto") is None


class TestDecoderJson:
    def test_reading(self) -> None:
        """{"ts","value"} on plant/{asset}/{channel} gives one reading on the model's channel."""
        got, why = decode(sub(), "plant/p1/vib", {"ts": TS, "value": 0.31})
        assert got == [Reading("p1", 1, TS, 0.31)]
        assert why == []

    def test_configured_field_names(self) -> None:
        """ts_field and value_field name the fields read."""
        got, _ = decode(sub(ts_field="t", value_field="v"), "plant/p1/temp", {"t": TS, "v": 7})
        assert got == [Reading("p1", 0, TS, 7.0)]

    def test_bare_number_means_arrival_time(self) -> None:
        """A bare JSON number is a value taken at arrival time."""
        got, why = decode(sub(), "plant/p1/temp", b"71.5", arrival=NOW + 3)
        assert got == [Reading("p1", 0, NOW + 3, 71.5)]
        assert why == []

    def test_arrival_ts_format_ignores_the_payload_ts(self) -> None:
        """With ts_format "arrival" the message's own ts is not used."""
        got, _ = decode(sub(ts_format="arrival"), "plant/p1/temp", {"value": 1.0}, arrival=NOW)
        assert got == [Reading("p1", 0, NOW, 1.0)]

    def test_fixed_channel(self) -> None:
        """A template without {channel} uses the subscription's fixed channel."""
        cfg = sub(filter="plant/+/pressure", template="plant/{asset}/pressure", channel="press")
        got, _ = decode(cfg, "plant/p1/pressure", {"ts": TS, "value": 2})
        assert got == [Reading("p1", 2, TS, 2.0)]

    @pytest.mark.parametrize(("payload", "reason"), [
        ('{"ts": 1767225000, "value": true}', Reason.TYPE),
        ('{"ts": 1767225000, "value": "12.5"}', Reason.TYPE),
        ('{"ts": 1767225000, "value": null}', Reason.TYPE),
        ('{"ts": 1767225000}', Reason.TYPE),
        ('{"ts": 1767225000, "value": NaN}', Reason.NONFINITE),
        ('{"ts": 1767225000, "value": Infinity}', Reason.NONFINITE),
        ('{"ts": 1767225000, "value": -Infinity}', Reason.NONFINITE),
        ('{"value": 1.0}', Reason.TS),
        ('{"ts": null, "value": 1.0}', Reason.TS),
        ('{"ts": "2026-01-01T00:00:00", "value": 1.0}', Reason.TS),
        ('{"ts": true, "value": 1.0}', Reason.TS),
        ('{"ts": 1767225000, "value": ', Reason.MALFORMED),
        ("[1, 2]", Reason.MALFORMED),
        ('"12.5"', Reason.MALFORMED),
        ("true", Reason.MALFORMED),
    ])
    def test_rejections(self, payload: str, reason: Reason) -> None:
        """Each kind of bad message is rejected once, with its reason and no reading."""
        got, why = decode(sub(), "plant/p1/temp", payload)
        assert got == []
        assert why == [reason]

    def test_not_utf8_is_malformed(self) -> None:
        """Bytes that are not text count once as malformed."""
        got, why = decode(sub(), "plant/p1/temp", b"\xff\xfe\xfa{")
        assert (got, why) == ([], [Reason.MALFORMED])

    @pytest.mark.parametrize("topic", ["factory/p1/temp", "plant/p1", "plant/p1/temp/x"])
    def test_topic_not_matching_template(self, topic: str) -> None:
        """A topic that does not fit the template is rejected as `topic`."""
        assert decode(sub(), topic, {"ts": TS, "value": 1})[1] == [Reason.TOPIC]

    @pytest.mark.parametrize("asset", ["a+b", "a#b", "a\x00b", ""])
    def test_bad_asset_name(self, asset: str) -> None:
        """Asset names with + # NUL (or empty) cannot reach a topic and are rejected as `name`."""
        assert decode(sub(), f"plant/{asset}/temp", {"ts": TS, "value": 1}) == ([], [Reason.NAME])

    def test_hash_filter_takes_only_the_template_depth(self) -> None:
        """Under a '#' filter, topics deeper or shallower than the template are rejected as `topic`."""
        cfg = sub(filter="plant/#")
        assert decode(cfg, "plant/p1/temp", {"ts": TS, "value": 1})[0] == [Reading("p1", 0, TS, 1.0)]
        assert decode(cfg, "plant/p1/temp/raw", {"ts": TS, "value": 1}) == ([], [Reason.TOPIC])
        assert decode(cfg, "plant/p1", {"ts": TS, "value": 1}) == ([], [Reason.TOPIC])

    def test_unknown_channel(self) -> None:
        """A channel the model does not have is ignored as `unmapped`, which is not a rejection."""
        assert decode(sub(), "plant/p1/rpm", {"ts": TS, "value": 1})[1] == [Reason.UNMAPPED]
        assert Reason.UNMAPPED.is_ignored and not Reason.UNMAPPED.is_rejection

    def test_channel_map_scale_offset(self) -> None:
        """channel_map renames a source channel; scale and offset (keyed by model channel) apply."""
        cfg = sub(channel_map={"tempF": "temp"}, scale={"temp": 0.5}, offset={"temp": -10.0})
        got, why = decode(cfg, "plant/p1/tempF", {"ts": TS, "value": 100})
        assert got == [Reading("p1", 0, TS, 40.0)]
        assert why == []

    def test_huge_integer_value_is_rejected_not_raised(self) -> None:
        """A JSON integer too large for a float is rejected with a reason instead of raising."""
        payload = b'{"ts": 1767225000, "value": 1' + b"0" * 400 + b"}"
        got, why = decode(sub(), "plant/p1/temp", payload)
        assert got == []
        assert len(why) == 1

    def test_huge_integer_ts_is_rejected_not_raised(self) -> None:
        """A JSON integer ts too large for a float is rejected as `ts` instead of raising."""
        payload = b'{"ts": 1' + b"0" * 400 + b', "value": 1.0}'
        assert decode(sub(), "plant/p1/temp", payload) == ([], [Reason.TS])

    def test_deeply_nested_json_is_malformed_not_raised(self) -> None:
        """A payload of deeply nested arrays (well under the size limit) is malformed, not a crash."""
        assert decode(sub(), "plant/p1/temp", b"[" * 50_000) == ([], [Reason.MALFORMED])


class TestDecoderJsonMulti:
    def test_one_object(self) -> None:
        """{"ts", "values": {...}} gives one reading per known channel."""
        got, why = decode(multi(), "plant/p1", {"ts": TS, "values": {"temp": 71.2, "vib": 0.31}})
        assert got == [Reading("p1", 0, TS, 71.2), Reading("p1", 1, TS, 0.31)]
        assert why == []

    def test_list_of_objects(self) -> None:
        """A list of such objects gives the readings of each, in order."""
        got, _ = decode(multi(), "plant/p1", [{"ts": TS, "values": {"temp": 1}},
                                              {"ts": TS + 10, "values": {"temp": 2}}])
        assert got == [Reading("p1", 0, TS, 1.0), Reading("p1", 0, TS + 10, 2.0)]

    def test_malformed_item_is_rejected_alone(self) -> None:
        """A bad item in a list is rejected as `malformed`; the good items still count."""
        got, why = decode(multi(), "plant/p1", [{"ts": TS, "values": {"temp": 1}}, 5,
                                                {"ts": TS, "values": 3}])
        assert got == [Reading("p1", 0, TS, 1.0)]
        assert why == [Reason.MALFORMED, Reason.MALFORMED]

    def test_per_value_reasons(self) -> None:
        """Each bad value in one message is rejected with its own reason."""
        got, why = decode(multi(), "plant/p1", '{"ts": 1767225000, "values": {"temp": 1, '
                                               '"vib": "x", "press": NaN, "rpm": 4, "a+b": 1}}')
        assert got == [Reading("p1", 0, TS, 1.0)]
        assert sorted(why) == sorted([Reason.TYPE, Reason.NONFINITE, Reason.UNMAPPED, Reason.NAME])

    def test_missing_ts(self) -> None:
        """An item without ts is rejected once as `ts`, whatever it holds."""
        assert decode(multi(), "plant/p1", {"values": {"temp": 1, "vib": 2}}) == ([], [Reason.TS])

    def test_configured_values_field(self) -> None:
        """values_field names the field holding the channels."""
        got, _ = decode(multi(values_field="v"), "plant/p1", {"ts": TS, "v": {"press": 3}})
        assert got == [Reading("p1", 2, TS, 3.0)]

    @pytest.mark.parametrize("payload", ["[]", '{"ts": 1767225000, "values": {}}'])
    def test_message_without_readings_is_counted(self, payload: str) -> None:
        """A message that holds no reading at all is not dropped silently: it gets a reason."""
        got, why = decode(multi(), "plant/p1", payload)
        assert got == []
        assert why != []


class TestDecoderFuzz:
    @pytest.mark.parametrize("cfg", [sub(), multi()], ids=["json", "json-multi"])
    @given(payload=st.one_of(
        st.binary(max_size=200),
        st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.sampled_from(["ts", "value", "values", "temp", "vib"]),
                                       kids, max_size=4),
                     max_leaves=12).map(lambda d: json.dumps(d).encode()),
    ))
    @settings(max_examples=300, deadline=None)
    def test_any_payload_never_raises(self, cfg: SubscriptionConfig, payload: bytes) -> None:
        """Arbitrary bytes or JSON never raise, and always give readings or at least one reason."""
        topic = "plant/p1/temp" if cfg.codec == "json" else "plant/p1"
        got, why = decode(cfg, topic, payload)
        # Messages holding no reading at all are test_message_without_readings_is_counted's case.
        assert got or why or _holds_no_reading(payload)
        assert all(isinstance(r, Reason) for r in why)


def _holds_no_reading(payload: bytes) -> bool:
    """A json-multi message that is `[]`, or items with a valid ts and empty `values`."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    items = doc if isinstance(doc, list) else [doc]
    return all(isinstance(i, dict) and i.get("values") == {} and parse_ts(i.get("ts"), "auto")
               is not None for i in items)
