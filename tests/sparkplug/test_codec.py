"""Sparkplug B wire format: topics, payloads, datatypes, timestamps, channel mapping, rebirth requests."""

from __future__ import annotations

import pytest

from agent.ingest import Reading, Reason
from agent.sparkplug.codec import (
    KNOWN_TYPES,
    ChannelMap,
    MessageType,
    Topic,
    bd_seq_of,
    encode,
    event_ts,
    metric_value,
    new_metric,
    parse_payload,
    parse_topic,
    rebirth_request,
)
from agent.sparkplug.sparkplug_b_pb2 import DataType, Payload
from tests.sparkplug.helpers import ARRIVAL, CHANNELS, TS_MS


class TestTopics:
    def test_node_and_device_topics(self) -> None:
        """[tck-id-topic-structure] namespace/group_id/message_type/edge_node_id/[device_id] is parsed."""
        assert parse_topic("spBv1.0/g/NDATA/n") == Topic("g", MessageType.NDATA, "n")
        assert parse_topic("spBv1.0/g/DDATA/n/d") == Topic("g", MessageType.DDATA, "n", "d")
        assert str(Topic("g", MessageType.DBIRTH, "n", "d")) == "spBv1.0/g/DBIRTH/n/d"

    def test_state_topic(self) -> None:
        """§4.2.3 spBv1.0/STATE/host_id is a host state topic, not an edge node's."""
        assert parse_topic("spBv1.0/STATE/host-1") == Topic("", MessageType.STATE, "host-1")

    @pytest.mark.parametrize("topic", [
        "spAv1.0/g/NDATA/n",        # [tck-id-topic-structure-namespace-a]: only spBv1.0
        # [tck-id-topic-structure-namespace-device-id-non-associated-message-types]
        "spBv1.0/g/NDATA/n/d",
        "spBv1.0/g/DDATA/n",        # [tck-id-topic-structure-namespace-device-id-associated-message-types]
        "spBv1.0/g/XDATA/n",        # not a message type
        "spBv1.0/g/NDATA",          # too short
        "spBv1.0/g/DDATA/n/d/x",    # too deep
        "spBv1.0//NDATA/n",         # empty group
        "spBv1.0/g/NDATA/",         # empty edge node id
        "plant/p1/temp",
    ])
    def test_wrong_topics(self, topic: str) -> None:
        """§4.1 Topics outside the Sparkplug B namespace structure are not Sparkplug topics."""
        assert parse_topic(topic) is None


class TestPayload:
    @pytest.mark.parametrize("data", [b"\xff\xff\xff", b'{"ts": 1, "value": 2}', b"\x0a\xff\xff\xff\xff\x0f"])
    def test_malformed_protobuf(self, data: bytes) -> None:
        """§6.4.1 Bytes that are not a Sparkplug B protobuf decode to None, never raise."""
        assert parse_payload(data) is None

    def test_unknown_fields_tolerated(self) -> None:
        """§6.4.5 A payload with fields this schema does not know (extensions) still decodes."""
        data = encode([new_metric(DataType.Double, 1.0, name="x")], TS_MS, 7) + b"\xa8\x06\x01"  # field 101
        p = parse_payload(data)
        assert p is not None and p.seq == 7 and p.metrics[0].double_value == 1.0

    def test_bd_seq(self) -> None:
        """[tck-id-payloads-nbirth-bdseq] The bdSeq metric is found by name, whatever its integer type."""
        for dt in (DataType.Int64, DataType.UInt64, DataType.Int32):
            p = Payload()
            p.metrics.append(new_metric(dt, 17, name="bdSeq"))
            assert bd_seq_of(p) == 17
        assert bd_seq_of(Payload()) is None


class TestValues:
    @pytest.mark.parametrize(("datatype", "value"), [
        (DataType.Int8, -23), (DataType.Int8, 127), (DataType.Int16, -32768), (DataType.Int32, -1),
        (DataType.Int64, -(2**63)), (DataType.UInt8, 255), (DataType.UInt16, 65535),
        (DataType.UInt32, 2**32 - 1), (DataType.UInt64, 2**53), (DataType.Double, 71.25),
        (DataType.Float, 0.5),
    ])
    def test_numeric_round_trip(self, datatype: int, value: float) -> None:
        """§6.4.16 Every numeric datatype decodes to its value, signed types by two's complement."""
        assert metric_value(new_metric(datatype, value), datatype) == float(value)

    def test_signed_values_sign_extended_to_32_bits(self) -> None:
        """§6.4.17 An Int8 -1 sent as a 32-bit two's complement uint32 (as Tahu Java does) is still -1."""
        m = Payload.Metric(datatype=DataType.Int8, int_value=0xFFFFFFFF)
        assert metric_value(m, DataType.Int8) == -1.0
        m = Payload.Metric(datatype=DataType.Int32, long_value=2**64 - 5)
        assert metric_value(m, DataType.Int32) == -5.0

    @pytest.mark.parametrize("datatype", [DataType.Boolean, DataType.String, DataType.Text,
                                          DataType.DateTime, DataType.UUID])
    def test_non_numeric_datatypes_are_type(self, datatype: int) -> None:
        """§6.4.16 Booleans, strings, texts, dates and UUIDs are not measurements: reason `type`."""
        value = {DataType.Boolean: True, DataType.DateTime: TS_MS}.get(datatype, "x")
        assert metric_value(new_metric(datatype, value), datatype) is Reason.TYPE

    def test_unknown_datatype_is_type(self) -> None:
        """[tck-id-payloads-metric-datatype-value] A datatype outside the enumeration is `type`."""
        assert 99 not in KNOWN_TYPES
        m = Payload.Metric(datatype=99, double_value=1.0)
        assert metric_value(m, 99) is Reason.TYPE

    def test_null_and_mismatched_values_are_type(self) -> None:
        """§6.4.6 is_null, no value, or a value field that does not fit the datatype is `type`."""
        assert metric_value(new_metric(DataType.Double, None), DataType.Double) is Reason.TYPE
        assert metric_value(Payload.Metric(datatype=DataType.Int32), DataType.Int32) is Reason.TYPE
        m = Payload.Metric(datatype=DataType.Int32, string_value="12")
        assert metric_value(m, DataType.Int32) is Reason.TYPE
        m = Payload.Metric(datatype=DataType.Double, int_value=3)
        assert metric_value(m, DataType.Double) is Reason.TYPE


class TestTimestamps:
    def test_metric_then_payload_then_arrival(self) -> None:
        """[tck-id-payloads_metric_timestamp_in_UTC] UTC ms, the metric's, else the payload's, else arrival"""
        p = Payload(timestamp=TS_MS)
        assert event_ts(new_metric(DataType.Double, 1.0, ts_ms=TS_MS + 500), p, ARRIVAL) == TS_MS / 1000 + 0.5
        assert event_ts(new_metric(DataType.Double, 1.0), p, ARRIVAL) == TS_MS / 1000
        assert event_ts(new_metric(DataType.Double, 1.0), Payload(), ARRIVAL) == ARRIVAL


class TestChannelMap:
    def test_map_scale_offset(self) -> None:
        """Metric names map onto model channels by channel_map, then scale and offset apply."""
        cm = ChannelMap(CHANNELS, {"Pump/Temp F": "temp"}, scale={"temp": 0.5}, offset={"temp": -16.0})
        assert cm.reading("p1", "Pump/Temp F", 100.0, 5.0) == Reading("p1", 0, 5.0, 34.0)
        assert cm.reading("p1", "vib", 0.3, 5.0) == Reading("p1", 1, 5.0, 0.3)
        assert cm.reading("p1", "Pump/Unknown", 1.0, 5.0) is Reason.UNMAPPED
        assert cm.reading("p1", "vib", 1e300, 5.0) is Reason.NONFINITE


class TestRebirthRequest:
    def test_ncmd_payload(self) -> None:
        """§5.17 [tck-id-operational-behavior-data-commands-ncmd-rebirth-name] and [...-value]: one
        Boolean metric `Node Control/Rebirth` = true, a timestamp, no seq ([tck-id-payloads-ncmd-seq])."""
        p = parse_payload(rebirth_request(TS_MS))
        assert p is not None
        assert p.timestamp == TS_MS and not p.HasField("seq")
        (m,) = p.metrics
        assert (m.name, m.datatype, m.WhichOneof("value"), m.boolean_value) == (
            "Node Control/Rebirth", DataType.Boolean, "boolean_value", True)
