"""Sparkplug test helpers: a fake clock, a host over a three-channel model, and message builders."""

from __future__ import annotations

from dataclasses import dataclass

from agent.sparkplug.codec import BD_SEQ, REBIRTH, ChannelMap, encode, new_metric
from agent.sparkplug.host import Host, HostOptions, Output
from agent.sparkplug.sparkplug_b_pb2 import DataType, Payload

CHANNELS = ("temp", "vib", "press")
GROUP, NODE = "g1", "edge1"
ARRIVAL = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TS_MS = 1_767_225_000_000


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


def topic(kind: str, device: str | None = None, node: str = NODE) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{node}" + (f"/{device}" if device else "")


def nbirth(bd_seq: int = 0, seq: int = 0, extra: list[Payload.Metric] | None = None) -> bytes:
    metrics = [new_metric(DataType.Int64, bd_seq, name=BD_SEQ),
               new_metric(DataType.Boolean, False, name=REBIRTH), *(extra or [])]
    return encode(metrics, TS_MS, seq)


def ndeath(bd_seq: int | None) -> bytes:
    return encode([] if bd_seq is None else [new_metric(DataType.Int64, bd_seq, name=BD_SEQ)], TS_MS)


def dbirth(seq: int, values: tuple[float, ...] = (1.0, 2.0, 3.0), ts_ms: int = TS_MS,
           aliases: tuple[int, ...] = (1, 2, 3)) -> bytes:
    metrics = [new_metric(DataType.Double, v, name=c, alias=a, ts_ms=ts_ms)
               for c, v, a in zip(CHANNELS, values, aliases, strict=True)]
    return encode(metrics, ts_ms, seq)


def ddata(seq: int, values: dict[int, float] | None = None, ts_ms: int = TS_MS + 1000,
          historical: bool = False) -> bytes:
    """DDATA by alias; default: alias 1 (temp) = 5.0."""
    metrics = [new_metric(DataType.Double, v, alias=a, ts_ms=ts_ms, historical=historical)
               for a, v in (values or {1: 5.0}).items()]
    return encode(metrics, ts_ms, seq)


@dataclass
class Session:
    """A host with a fake clock, and the outputs it produced so far."""

    host: Host
    clock: FakeClock

    def send(self, kind: str, payload: bytes, device: str | None = None, node: str = NODE) -> Output:
        return self.host.receive(topic(kind, device, node), payload, ARRIVAL)

    def born(self, devices: tuple[str, ...] = ("pump-1",), bd_seq: int = 0) -> int:
        """NBIRTH and a DBIRTH per device; returns the next seq."""
        self.send("NBIRTH", nbirth(bd_seq))
        for i, d in enumerate(devices, start=1):
            self.send("DBIRTH", dbirth(i), d)
        return len(devices) + 1


def make_session(**options: object) -> Session:
    clock = FakeClock()
    host = Host(ChannelMap(CHANNELS), HostOptions(**options),  # type: ignore[arg-type]
                clock=clock, wall=lambda: ARRIVAL)
    return Session(host, clock)

