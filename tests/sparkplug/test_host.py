"""The host-side state machine, rule by rule of Sparkplug 3.0 (§4 topics, §5 behaviour, §6.4 payloads)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ingest import Reading, Reason
from agent.sparkplug.codec import encode, new_metric, parse_payload
from agent.sparkplug.host import HostOptions, Output
from agent.sparkplug.reasons import SparkplugReason
from agent.sparkplug.sparkplug_b_pb2 import DataType
from tests.sparkplug.helpers import (
    ARRIVAL,
    TS_MS,
    Session,
    dbirth,
    ddata,
    make_session,
    nbirth,
    ndeath,
    topic,
)

NCMD = topic("NCMD")


def rebirths(out: Output) -> list[str]:
    """Topics of the rebirth requests in an output (each checked to be one)."""
    for c in out.commands:
        p = parse_payload(c.payload)
        assert p is not None and [m.name for m in p.metrics] == ["Node Control/Rebirth"]
    return [c.topic for c in out.commands]


def temps(out: Output) -> list[float]:
    return [r.value for r in out.readings if r.channel == 0]


class TestBirth:
    def test_dbirth_defines_aliases_and_carries_values(self, s: Session) -> None:
        """[tck-id-topics-dbirth-metrics] [tck-id-payloads-alias-birth-requirement] A DBIRTH's metrics
        (name, alias, datatype, value) become readings of the device's asset, and it is alive."""
        s.send("NBIRTH", nbirth())
        out = s.send("DBIRTH", dbirth(1, (1.0, 2.0, 3.0)), "pump-1")
        assert out.readings == [Reading("pump-1", i, TS_MS / 1000, v) for i, v in enumerate((1.0, 2.0, 3.0))]
        assert out.alive == ["pump-1"] and out.rejects == [] and out.commands == []

    def test_ddata_decoded_by_alias(self, s: Session) -> None:
        """[tck-id-payloads-alias-data-cmd-requirement] DDATA metrics carry only an alias; the host
        resolves it through the device's DBIRTH, with the metric's own UTC ms timestamp."""
        seq = s.born()
        out = s.send("DDATA", ddata(seq, {2: 0.25, 3: 6.5}, ts_ms=TS_MS + 60_000), "pump-1")
        assert out.readings == [Reading("pump-1", 1, TS_MS / 1000 + 60, 0.25),
                                Reading("pump-1", 2, TS_MS / 1000 + 60, 6.5)]

    def test_ddata_by_name_without_alias(self, s: Session) -> None:
        """[tck-id-payloads-name-requirement] A metric without alias is resolved by its name."""
        seq = s.born()
        payload = encode([new_metric(DataType.Double, 9.0, name="vib", ts_ms=TS_MS)], TS_MS, seq)
        assert s.send("DDATA", payload, "pump-1").readings == [Reading("pump-1", 1, TS_MS / 1000, 9.0)]

    def test_node_metrics_belong_to_the_node_asset(self, s: Session) -> None:
        """§4.2.1 NBIRTH/NDATA metrics are the edge node's own: its id is their asset."""
        s.send("NBIRTH", nbirth(extra=[new_metric(DataType.Float, 20.5, name="temp", alias=7)]))
        out = s.send("NDATA", encode([new_metric(DataType.Float, 21.5, alias=7)], TS_MS, 1))
        assert out.readings == [Reading("edge1", 0, TS_MS / 1000, 21.5)]

    def test_asset_name_format(self) -> None:
        """Assets can be named from group, node and device, so equal device ids on two nodes stay apart."""
        s = make_session(asset="{node}.{device}")
        seq = s.born()
        assert {r.asset for r in s.send("DDATA", ddata(seq), "pump-1").readings} == {"edge1.pump-1"}

    def test_session_metrics_are_not_readings_others_are_ignored(self, s: Session) -> None:
        """[tck-id-topics-nbirth-rebirth-metric] bdSeq and Node Control/* are bookkeeping, skipped
        silently; tags the model lacks are ignored, and a birth's definitions are not counted."""
        out = s.send("NBIRTH", nbirth(extra=[new_metric(DataType.String, "ACME", name="Properties/Make"),
                                             new_metric(DataType.Double, 1.0, name="Flow")]))
        assert out.readings == [] and out.rejects == []

    def test_new_nbirth_forgets_devices(self, s: Session) -> None:
        """§4.2.1.1 After a new NBIRTH a device stays unknown until its new DBIRTH: its data is
        `no_birth` and leads to a rebirth request."""
        s.born()
        s.send("NBIRTH", nbirth(bd_seq=1))
        out = s.send("DDATA", ddata(1), "pump-1")
        assert out.rejects == [SparkplugReason.NO_BIRTH] and rebirths(out) == [NCMD]

    def test_dbirth_again_redefines_aliases(self, s: Session) -> None:
        """[tck-id-payloads-alias-uniqueness] A device born again maps aliases as its latest DBIRTH says."""
        seq = s.born()
        s.send("DBIRTH", dbirth(seq, aliases=(11, 12, 13)), "pump-1")
        out = s.send("DDATA", ddata(seq + 1, {13: 4.0, 1: 1.0}), "pump-1")
        assert out.readings == [Reading("pump-1", 2, TS_MS / 1000 + 1, 4.0)]
        assert out.rejects == [SparkplugReason.ALIAS]


class TestSequence:
    def test_seq_wraps_at_255(self, s: Session) -> None:
        """[tck-id-payloads-sequence-num-incrementing] seq runs 0..255 and the message after 255 is 0."""
        seq = s.born()
        got: list[float] = []
        for k in range(600):
            out = s.send("DDATA", ddata((seq + k) % 256, {1: float(k)}), "pump-1")
            assert out.rejects == [] and out.commands == []
            got += temps(out)
        assert got == [float(k) for k in range(600)]

    def test_passed_seq_is_rejected(self, s: Session) -> None:
        """[tck-id-topics-ddata-seq-num] A seq already passed (duplicate, too late) is dropped: `sequence`."""
        seq = s.born()
        s.send("DDATA", ddata(seq), "pump-1")
        out = s.send("DDATA", ddata(seq), "pump-1")
        assert out.readings == [] and out.rejects == [SparkplugReason.SEQUENCE]

    def test_missing_or_out_of_range_seq_is_malformed(self, s: Session) -> None:
        """[tck-id-payloads-sequence-num-always-included] A data message without seq, or with seq
        beyond 255, is malformed."""
        s.born()
        assert s.send("DDATA", encode([], TS_MS), "pump-1").rejects == [Reason.MALFORMED]
        assert s.send("DDATA", encode([], TS_MS, 256), "pump-1").rejects == [Reason.MALFORMED]

    def test_nbirth_restarts_the_sequence(self, s: Session) -> None:
        """[tck-id-topics-nbirth-seq-num] [tck-id-payloads-sequence-num-zero-nbirth] NBIRTH has seq 0
        and the next message is 1, whatever came before."""
        s.born()
        for k in range(5):
            s.send("DDATA", ddata(3 + k), "pump-1")
        s.send("NBIRTH", nbirth())
        out = s.send("DBIRTH", dbirth(1), "pump-1")
        assert out.rejects == [] and len(out.readings) == 3


class TestReorder:
    def test_out_of_order_within_timeout_released_in_order(self, s: Session) -> None:
        """§5.9 [tck-id-operational-behavior-host-reordering-start] and [...-success]: a message ahead
        of its turn is held; when the missing one arrives in time both go out in seq order."""
        seq = s.born()
        held = s.send("DDATA", ddata(seq + 1, {1: 2.0}), "pump-1")
        assert held.readings == [] and held.rejects == []
        s.clock.advance(1.9)
        out = s.send("DDATA", ddata(seq, {1: 1.0}), "pump-1")
        assert temps(out) == [1.0, 2.0]
        s.clock.advance(10.0)
        assert s.host.tick() == Output()  # the timer was stopped: no rebirth

    def test_out_of_order_across_the_wrap(self, s: Session) -> None:
        """§5.9 seq 0 arriving before 255 is ahead by one, not behind by 255."""
        seq = s.born()
        for k in range(seq, 255):
            s.send("DDATA", ddata(k), "pump-1")
        assert s.send("DDATA", ddata(0, {1: 0.0}), "pump-1").readings == []
        assert temps(s.send("DDATA", ddata(255, {1: 255.0}), "pump-1")) == [255.0, 0.0]

    def test_gap_beyond_timeout_requests_rebirth(self, s: Session) -> None:
        """§5.9 [tck-id-operational-behavior-host-reordering-rebirth] [...-host-reordering-param]
        A gap still open after the reorder timeout leads to an NCMD rebirth request; what was held
        is released in order, and the stream goes on after the gap."""
        seq = s.born()
        s.send("DDATA", ddata(seq + 2, {1: 3.0}), "pump-1")
        s.send("DDATA", ddata(seq + 1, {1: 2.0}), "pump-1")
        s.clock.advance(1.99)
        assert s.host.tick() == Output()
        s.clock.advance(0.01)
        out = s.host.tick()
        assert temps(out) == [2.0, 3.0] and rebirths(out) == [NCMD]
        assert temps(s.send("DDATA", ddata(seq + 3, {1: 4.0}), "pump-1")) == [4.0]

    def test_zero_timeout_requests_rebirth_at_once(self) -> None:
        """§5.9 With a reorder timeout of zero a gap is not waited for."""
        s = make_session(reorder_timeout_s=0.0)
        seq = s.born()
        out = s.send("DDATA", ddata(seq + 1, {1: 2.0}), "pump-1")
        assert temps(out) == [2.0] and rebirths(out) == [NCMD]

    def test_held_messages_are_bounded(self) -> None:
        """Memory stays bounded: one message beyond max_pending closes the gap at once."""
        s = make_session(max_pending=3)
        seq = s.born()
        outs = [s.send("DDATA", ddata(seq + k, {1: float(k)}), "pump-1") for k in range(1, 5)]
        assert all(o.readings == [] for o in outs[:3])
        assert temps(outs[3]) == [1.0, 2.0, 3.0, 4.0] and rebirths(outs[3]) == [NCMD]


class TestRebirth:
    def test_data_before_birth(self, s: Session) -> None:
        """§5.17 A host that sees DATA with no BIRTH (it connected mid-session) asks for a rebirth
        once the reorder timeout passes; the held data is dropped as `no_birth`."""
        out = s.send("DDATA", ddata(17), "pump-1")
        assert out == Output()
        s.clock.advance(2.0)
        out = s.host.tick()
        assert out.rejects == [SparkplugReason.NO_BIRTH] and rebirths(out) == [NCMD]

    def test_late_nbirth_places_held_births(self, s: Session) -> None:
        """§5.9 A DBIRTH that overtook its NBIRTH (clustered brokers) is held and processed after it."""
        s.send("DBIRTH", dbirth(1, (4.0, 5.0, 6.0)), "pump-1")
        out = s.send("NBIRTH", nbirth())
        assert [r.value for r in out.readings] == [4.0, 5.0, 6.0] and out.alive == ["pump-1"]
        s.clock.advance(5.0)
        assert s.host.tick() == Output()

    def test_unknown_alias(self, s: Session) -> None:
        """[tck-id-payloads-alias-data-cmd-requirement] An alias no birth defined is `unknown_alias`
        and leads to a rebirth request; the known metrics of the message still count."""
        seq = s.born()
        out = s.send("DDATA", ddata(seq, {1: 1.0, 99: 2.0}), "pump-1")
        assert temps(out) == [1.0] and out.rejects == [SparkplugReason.ALIAS] and rebirths(out) == [NCMD]

    def test_rebirth_requests_are_rate_limited(self, s: Session) -> None:
        """Rebirth requests to one edge node go out at most once per rebirth_interval_s."""
        seq = s.born()
        sent = [rebirths(s.send("DDATA", ddata(seq + k, {99: 1.0}), "pump-1")) for k in range(3)]
        assert sent == [[NCMD], [], []] and s.host.rebirths_suppressed == 2
        s.clock.advance(10.0)
        assert rebirths(s.send("DDATA", ddata(seq + 3, {99: 1.0}), "pump-1")) == [NCMD]

    def test_rate_limit_is_per_node(self, s: Session) -> None:
        """Each edge node has its own rebirth budget."""
        seq = s.born()
        s.send("NDATA", ddata(17), node="edge2")
        s.clock.advance(2.0)
        assert rebirths(s.host.tick()) == [topic("NCMD", node="edge2")]
        out = s.send("DDATA", ddata(seq, {99: 1.0}), "pump-1")
        assert rebirths(out) == [NCMD]

    def test_no_rebirth_when_not_allowed(self) -> None:
        """A host that may not command edge nodes (send_rebirth = false) requests nothing."""
        s = make_session(send_rebirth=False)
        seq = s.born()
        out = s.send("DDATA", ddata(seq, {99: 1.0}), "pump-1")
        assert out.rejects == [SparkplugReason.ALIAS] and out.commands == []

    def test_rebirth_restores_decoding(self, s: Session) -> None:
        """[tck-id-operational-behavior-data-commands-rebirth-action-2] The births that answer a
        rebirth request (same bdSeq) define the aliases again and data flows."""
        s.send("DDATA", ddata(40), "pump-1")
        s.clock.advance(2.0)
        assert rebirths(s.host.tick()) == [NCMD]
        seq = s.born()
        assert temps(s.send("DDATA", ddata(seq, {1: 8.0}), "pump-1")) == [8.0]


class TestDeath:
    def test_ndeath_with_matching_bdseq(self, s: Session) -> None:
        """[tck-id-operational-behavior-edge-node-termination-host-action-ndeath-node-tags-stale] and
        [...-ndeath-devices-tags-stale]: an NDEATH whose bdSeq is the NBIRTH's marks every device's
        asset (and the node's own, if it had readings) stale; the session is over."""
        seq = s.born(("pump-1", "pump-2"), bd_seq=5)
        out = s.send("NDEATH", ndeath(5))
        assert out.stale == ["pump-1", "pump-2"] and out.rejects == []
        assert s.host.online() == {}
        assert s.send("DDATA", ddata(seq), "pump-1").readings == []  # held: no birth any more

    def test_ndeath_marks_node_asset_stale_when_used(self, s: Session) -> None:
        """[tck-id-operational-behavior-edge-node-termination-host-action-ndeath-node-tags-stale]
        Node-level metrics that produced readings make the node's asset stale too."""
        s.send("NBIRTH", nbirth(bd_seq=2, extra=[new_metric(DataType.Double, 1.0, name="temp")]))
        assert s.send("NDEATH", ndeath(2)).stale == ["edge1"]

    def test_ndeath_with_mismatched_bdseq_is_ignored(self, s: Session) -> None:
        """[tck-id-payloads-ndeath-bdseq] §5.4 An NDEATH from an older connection (its will arriving
        after the new NBIRTH) has another bdSeq: it is ignored and data keeps flowing."""
        seq = s.born(bd_seq=7)
        out = s.send("NDEATH", ndeath(6))
        assert out == Output() and s.host.deaths_ignored == 1
        assert temps(s.send("DDATA", ddata(seq, {1: 3.0}), "pump-1")) == [3.0]
        assert s.send("NDEATH", ndeath(None)) == Output()  # no bdSeq at all: not this session's either

    def test_ndeath_of_unknown_node_is_ignored(self, s: Session) -> None:
        """An NDEATH for an edge node never born here changes nothing."""
        assert s.send("NDEATH", ndeath(0), node="ghost") == Output()
        assert s.host.n_nodes == 0

    def test_ndeath_releases_held_messages_first(self, s: Session) -> None:
        """What an edge node said before its death still counts: held messages go out, then stale."""
        seq = s.born(bd_seq=1)
        s.send("DDATA", ddata(seq + 1, {1: 2.0}), "pump-1")
        out = s.send("NDEATH", ndeath(1))
        assert temps(out) == [2.0] and out.stale == ["pump-1"] and out.commands == []

    def test_ddeath(self, s: Session) -> None:
        """[tck-id-operational-behavior-edge-node-termination-host-action-ddeath-devices-tags-stale]
        A DDEATH marks only that device's asset stale; its later data needs a new DBIRTH."""
        seq = s.born(("pump-1", "pump-2"))
        out = s.send("DDEATH", encode([], TS_MS, seq), "pump-1")
        assert out.stale == ["pump-1"]
        assert temps(s.send("DDATA", ddata(seq + 1, {1: 1.0}), "pump-2")) == [1.0]
        out = s.send("DDATA", ddata(seq + 2), "pump-1")
        assert out.rejects == [SparkplugReason.NO_BIRTH] and rebirths(out) == [NCMD]


class TestHistorical:
    def test_historical_metrics_flagged(self, s: Session) -> None:
        """§6.4.6 Metrics with is_historical = true come out apart from live readings, at their own
        event time, so the pipeline windows them but raises no live alert."""
        seq = s.born()
        payload = ddata(seq, {1: 7.0, 2: 0.5}, ts_ms=TS_MS - 3_600_000, historical=True)
        out = s.send("DDATA", payload, "pump-1")
        assert out.readings == []
        assert out.historical == [Reading("pump-1", 0, TS_MS / 1000 - 3600, 7.0),
                                  Reading("pump-1", 1, TS_MS / 1000 - 3600, 0.5)]


class TestRejects:
    def test_wrong_topics(self, s: Session) -> None:
        """§4.1 A topic outside the Sparkplug B namespace is rejected as `topic`."""
        for t in ("plant/p1/temp", "spBv1.0/g1/NDATA/edge1/extra", "spBv1.0/g1/BOGUS/edge1"):
            assert s.host.receive(t, nbirth(), ARRIVAL).rejects == [Reason.TOPIC]

    def test_commands_and_states_are_not_data(self, s: Session) -> None:
        """§4.2 NCMD, DCMD and STATE messages (ours among them) yield nothing, not even rejections."""
        s.born()
        for t in (topic("NCMD"), topic("DCMD", "pump-1"), "spBv1.0/STATE/host"):
            assert s.host.receive(t, b'{"online": true}', ARRIVAL) == Output()

    def test_malformed_protobuf(self, s: Session) -> None:
        """§6.4.1 A payload that is not a Sparkplug B protobuf is `malformed`, and no node is created."""
        assert s.send("NBIRTH", b"\xff\xff\xff").rejects == [Reason.MALFORMED]
        assert s.host.n_nodes == 0

    def test_unprintable_ids(self, s: Session) -> None:
        """[tck-id-topic-structure-namespace-valid-edge-node-id] An id unfit for an asset name is `name`."""
        assert s.send("NBIRTH", nbirth(), node="edge\x01").rejects == [Reason.NAME]

    def test_unknown_datatype_in_birth(self, s: Session) -> None:
        """[tck-id-payloads-metric-datatype-value] A metric of an unknown datatype is rejected as `type`."""
        s.send("NBIRTH", nbirth())
        bad = encode([new_metric(DataType.Double, 1.0, name="temp", alias=1)], TS_MS, 1)
        p = parse_payload(bad)
        assert p is not None
        p.metrics[0].datatype = 77
        out = s.send("DBIRTH", p.SerializeToString(), "pump-1")
        assert out.readings == [] and out.rejects == [Reason.TYPE]

    def test_node_limit(self) -> None:
        """Memory stays bounded: edge nodes beyond max_nodes are rejected as `asset_limit`."""
        s = make_session(max_nodes=1)
        s.send("NBIRTH", nbirth())
        assert s.send("NBIRTH", nbirth(), node="edge2").rejects == [Reason.ASSET_LIMIT]

    def test_options_are_checked(self) -> None:
        """An asset format with unknown placeholders is refused at start-up."""
        for bad in ("{asset}", "fixed", "{device"):
            try:
                HostOptions(asset=bad)
            except ValueError:
                continue
            raise AssertionError(f"{bad!r} accepted")

    @settings(max_examples=300, deadline=None)
    @given(kind=st.sampled_from(["NBIRTH", "DBIRTH", "NDATA", "DDATA", "DDEATH", "NDEATH"]),
           data=st.binary(max_size=200))
    def test_arbitrary_bytes_never_raise(self, kind: str, data: bytes) -> None:
        """Bad input is counted, never fatal: any bytes on any Sparkplug topic give an Output."""
        s = make_session()
        s.born()
        device = "pump-1" if kind.startswith("D") else None
        s.send(kind, data, device)
        s.clock.advance(5.0)
        s.host.tick()

    @settings(max_examples=300, deadline=None)
    @given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
    def test_corrupted_births_never_raise(self, flips: list[tuple[int, int]]) -> None:
        """Births with corrupted bytes (names, aliases, datatypes, values) never raise."""
        s = make_session()
        s.send("NBIRTH", nbirth())
        data = bytearray(dbirth(1))
        for pos, byte in flips:
            data[pos % len(data)] = byte
        s.send("DBIRTH", bytes(data), "pump-1")
        s.send("DDATA", ddata(2), "pump-1")
