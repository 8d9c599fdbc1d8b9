"""The simulator's Sparkplug edge node: births, aliases, seq, deaths, and the host reading it back."""

from __future__ import annotations

import pytest

from agent.sparkplug.codec import ChannelMap, parse_payload, parse_topic, rebirth_request
from agent.sparkplug.host import Host, Output
from agent.sparkplug.sparkplug_b_pb2 import DataType, Payload
from sim.cli import main
from sim.plant import CHANNELS
from sim.sparkplug import EdgeNode, is_rebirth_request

ASSETS = ("pump-001", "pump-002")
ROW = [70.0, 2.0, 40.0, 6.0, 1400.0]
TS = 1_767_225_600.0


def decoded(message: tuple[str, bytes]) -> tuple[str, Payload]:
    topic, data = message
    p = parse_payload(data)
    assert p is not None
    return topic, p


class TestEdgeNode:
    def test_births(self) -> None:
        """[tck-id-topics-nbirth-seq-num] [...-nbirth-bdseq-included] [...-nbirth-rebirth-metric]
        NBIRTH has seq 0, the bdSeq and `Node Control/Rebirth` false without alias; a DBIRTH per
        pump that is up follows with names, aliases, datatypes and values ([tck-id-payloads-dbirth-order])."""
        edge = EdgeNode("g", "n", ASSETS, bd_seq=3)
        msgs = [decoded(m) for m in edge.births(TS, [ROW, ROW], [True, False])]
        assert [t for t, _ in msgs] == ["spBv1.0/g/NBIRTH/n", "spBv1.0/g/DBIRTH/n/pump-001"]
        (_, nb), (_, db) = msgs
        assert nb.seq == 0 and [(m.name, m.HasField("alias")) for m in nb.metrics] == [
            ("bdSeq", False), ("Node Control/Rebirth", False)]
        assert nb.metrics[0].long_value == 3 and nb.metrics[1].boolean_value is False
        assert db.seq == 1 and [m.name for m in db.metrics] == list(CHANNELS)
        assert all(m.datatype == DataType.Double and m.HasField("alias") for m in db.metrics)

    def test_aliases_unique_across_the_node(self) -> None:
        """[tck-id-payloads-alias-uniqueness] No two metrics of one edge node share an alias."""
        edge = EdgeNode("g", "n", ASSETS)
        births = [decoded(m)[1] for m in edge.births(TS, [ROW, ROW], [True, True])[1:]]
        aliases = [m.alias for p in births for m in p.metrics]
        assert len(aliases) == len(set(aliases)) == 2 * len(CHANNELS)

    def test_data_by_alias_and_seq_wrap(self) -> None:
        """[tck-id-payloads-alias-data-cmd-requirement] [tck-id-payloads-sequence-num-incrementing]
        DDATA carries aliases only, and seq counts up to 255 and wraps to 0."""
        edge = EdgeNode("g", "n", ASSETS[:1])
        edge.births(TS, [ROW], [True])
        seqs = []
        for k in range(300):
            (msg,) = edge.step(TS + k, [ROW], [True])
            topic, p = decoded(msg)
            assert topic == "spBv1.0/g/DDATA/n/pump-001"
            assert all(not m.name and m.HasField("alias") for m in p.metrics)
            seqs.append(p.seq)
        assert seqs == [(2 + k) % 256 for k in range(300)]

    def test_pump_down_and_up(self) -> None:
        """[tck-id-operational-behavior-device-ddeath] A pump that fails gets a DDEATH; back up, a DBIRTH."""
        edge = EdgeNode("g", "n", ASSETS)
        edge.births(TS, [ROW, ROW], [True, True])
        kinds = [parse_topic(t) for t, _ in edge.step(TS + 60, [ROW, ROW], [True, False])]
        assert [(k.type, k.device) for k in kinds if k] == [("DDATA", "pump-001"), ("DDEATH", "pump-002")]
        assert edge.step(TS + 120, [ROW, ROW], [True, False])[1:] == []
        kinds = [parse_topic(t) for t, _ in edge.step(TS + 180, [ROW, ROW], [True, True])]
        assert [(k.type, k.device) for k in kinds if k] == [("DDATA", "pump-001"), ("DBIRTH", "pump-002")]

    def test_ndeath(self) -> None:
        """[tck-id-topics-ndeath-payload] [tck-id-topics-ndeath-seq] NDEATH: the bdSeq only, no seq."""
        topic, p = decoded(EdgeNode("g", "n", ASSETS, bd_seq=9).ndeath())
        assert topic == "spBv1.0/g/NDEATH/n" and not p.HasField("seq")
        assert [(m.name, m.long_value) for m in p.metrics] == [("bdSeq", 9)]

    def test_rebirth_request_recognised(self) -> None:
        """§5.17 The edge node recognises the host's rebirth request, and nothing else as one."""
        assert is_rebirth_request(rebirth_request(1))
        assert not is_rebirth_request(b"\xff\xff") and not is_rebirth_request(b"")

    def test_host_reads_the_edge_node(self) -> None:
        """The host decodes every pump's every channel from the edge node's births and data."""
        edge = EdgeNode("g", "n", ASSETS)
        host = Host(ChannelMap(CHANNELS), clock=lambda: 0.0)
        out = Output()
        for step, msgs in enumerate([edge.births(TS, [ROW, ROW], [True, True]),
                                     edge.step(TS + 60, [ROW, ROW], [True, True])]):
            for topic, data in msgs:
                got = host.receive(topic, data, TS)
                assert got.rejects == [] and got.commands == [], step
                out.readings += got.readings
        assert {(r.asset, r.channel) for r in out.readings} == {
            (a, c) for a in ASSETS for c in range(len(CHANNELS))}
        assert len(out.readings) == 2 * 2 * len(CHANNELS)


class TestCommand:
    @pytest.mark.parametrize("args", [["--group", "STATE"], ["--node", "a/b"], ["--fail", "pump-009"]])
    def test_bad_arguments(self, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """`vigil-sim sparkplug` exits 2 with one line on a bad group, node id or --fail asset."""
        rc = main(["sparkplug", "--broker", "mqtt://127.0.0.1:1", "--assets", "2", *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("vigil-sim: error:")
