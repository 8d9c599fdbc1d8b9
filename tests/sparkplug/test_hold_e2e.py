"""Sparkplug report by exception through a real broker and a real agent.

An edge node with two devices: one publishes every metric each period, the other (as Ignition
does) only metrics that moved past their deadband, a fixed-speed pump's `speed` never after its
birth, beside Boolean, String and unmapped tags. The held device scores as many windows as the
full one; the tags it has no use for are counted as ignored, never as rejected; a death ends the
holding, and a rebirth that no longer lists `speed` leaves that device stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.sparkplug.codec import encode, new_metric
from agent.sparkplug.sparkplug_b_pb2 import DataType
from sim.plant import CHANNELS
from tests.agent.test_hold_e2e import PERIOD, ROWS, WINDOW, _epoch, by_exception, risks, rows, scored
from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, logged, metric, publish_all, running_agent, write_agent_config
from tests.sparkplug.helpers import nbirth, ndeath

pytestmark = pytest.mark.integration

GROUP, NODE = "hold-it", "edge-rbe"
FULL, HELD = "sp-full", "sp-held"
ALIAS = {ch: i + 1 for i, ch in enumerate(CHANNELS)}
RUNNING, MODE, FLOW = 20, 21, 22  # Boolean, String, and a number the model lacks


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")


class EdgeNode:
    """The node's messages in order, with its one seq counter across node and devices."""

    def __init__(self) -> None:
        self.seq = 0
        self.out: list[tuple[str, bytes]] = []

    def _next(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def nbirth(self, bd_seq: int) -> None:
        self.seq = 0
        self.out.append((topic("NBIRTH"), nbirth(bd_seq=bd_seq, seq=self._next())))

    def ndeath(self, bd_seq: int) -> None:
        self.out.append((topic("NDEATH"), ndeath(bd_seq)))

    def dbirth(self, device: str, ts: float, values: dict[str, float], extra: bool = False) -> None:
        ms = int(ts * 1000)
        metrics = [new_metric(DataType.Double, v, name=ch, alias=ALIAS[ch], ts_ms=ms)
                   for ch, v in values.items()]
        if extra:
            metrics += [new_metric(DataType.Boolean, True, name="Pump/Running", alias=RUNNING, ts_ms=ms),
                        new_metric(DataType.String, "AUTO", name="Pump/Mode", alias=MODE, ts_ms=ms),
                        new_metric(DataType.Double, 41.0, name="Pump/Flow", alias=FLOW, ts_ms=ms)]
        self.out.append((topic("DBIRTH", device), encode(metrics, ms, self._next())))

    def ddata(self, device: str, ts: float, values: dict[str, float], extra: tuple[int, ...] = ()) -> None:
        ms = int(ts * 1000)
        metrics = [new_metric(DataType.Double, v, alias=ALIAS[ch], ts_ms=ms) for ch, v in values.items()]
        kinds: dict[int, tuple[int, bool | str | float]] = {
            RUNNING: (DataType.Boolean, False), MODE: (DataType.String, "MAN"), FLOW: (DataType.Double, 40.0)}
        metrics += [new_metric(kinds[a][0], kinds[a][1], alias=a, ts_ms=ms) for a in extra]
        if metrics:
            self.out.append((topic("DDATA", device), encode(metrics, ms, self._next())))


def test_held_device_scores_like_the_full_one(trained: Path, broker: Broker, tmp_path: Path) -> None:
    t0, table = rows(seed=7)
    sparse = by_exception(table, heartbeat=None)  # pure report by exception: speed only in the birth
    assert all("speed" not in r for r in sparse[1:])
    node = EdgeNode()
    node.nbirth(0)
    node.dbirth(FULL, t0, table[0])
    node.dbirth(HELD, t0, table[0], extra=True)
    extras = {RUNNING: 0, MODE: 0, FLOW: 0}
    for k in range(1, ROWS):
        ts = t0 + k * PERIOD
        node.ddata(FULL, ts, table[k])
        extra = tuple(a for a, every in ((RUNNING, 7), (MODE, 11), (FLOW, 5)) if k % every == 0)
        for a in extra:
            extras[a] += 1
        node.ddata(HELD, ts, sparse[k], extra)
    node.ddata(HELD, t0 + ROWS * PERIOD, {"bearing_temp": table[-1]["bearing_temp"]})  # closes row 49's cell
    first = list(node.out)

    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-rbe-spb")
    config.write_text(config.read_text().replace(
        'filter = "plant/+/+"\ntemplate = "plant/{asset}/{channel}"\ncodec = "json"',
        f'filter = "spBv1.0/{GROUP}/#"\ncodec = "sparkplug"'))
    capture = Capture(broker.port, ["vigil/risk/#"]).start()
    expected = ROWS - WINDOW + 1
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        publish_all(broker.port, first, "edge-rbe")
        wait_until(lambda: scored(capture, FULL) == expected and scored(capture, HELD) == expected, 30,
                   what=f"{expected} windows of each device")
        text = agent.scrape()
        assert not any(d["stale"] for d in risks(capture, HELD))
        assert [d["ts"] for d in risks(capture, HELD)] == [d["ts"] for d in risks(capture, FULL)]
        # Boolean and String tags are `unsupported`, a number the model lacks `unmapped`, each once
        # per data message that carries it; the birth that listed them counts nothing.
        ignored = {r: metric(text, "vigil_readings_ignored_total", f'reason="{r}"')
                   for r in ("unsupported", "unmapped", "bad_quality")}
        assert ignored == {"unsupported": extras[RUNNING] + extras[MODE], "unmapped": extras[FLOW],
                           "bad_quality": 0}
        assert [line for line in text.splitlines() if line.startswith("vigil_readings_rejected_total{")
                and not line.endswith(" 0.0")] == []
        # The node dies: both devices stale, nothing held any longer. It is born again; the held
        # device's birth no longer lists `speed`, so it stays stale while the full one scores again.
        node.out = []
        node.ndeath(0)
        node.nbirth(1)
        back = ROWS + 2
        node.dbirth(FULL, t0 + back * PERIOD, table[0])
        node.dbirth(HELD, t0 + back * PERIOD, {ch: v for ch, v in table[0].items() if ch != "speed"})
        for k in range(back + 1, back + WINDOW + 2):
            node.ddata(FULL, t0 + k * PERIOD, table[k - back])
            node.ddata(HELD, t0 + k * PERIOD, {"bearing_temp": table[k - back]["bearing_temp"] + 1.0})
        publish_all(broker.port, node.out, "edge-rbe")
        reborn = t0 + back * PERIOD

        def after(device: str) -> list[dict[str, Any]]:
            return [d for d in risks(capture, device) if _epoch(d["ts"]) >= reborn]
        wait_until(lambda: any(not d["stale"] for d in after(FULL)), 30, what="the full device scored again")
        # Every window of the held device since is missing `speed`: it stays stale (one of one).
        wait_until(lambda: metric(agent.scrape(), "vigil_assets_stale") == 1, 10, what="one asset stale")
        log = agent.log()
        assert agent.terminate() == 0
    capture.stop()
    for device in (FULL, HELD):
        docs = risks(capture, device)
        assert any(d["stale"] for d in docs[expected:]), device  # the death's notice
    assert not any(not d["stale"] for d in after(HELD))
    # The model was trained without a hold; Sparkplug holds by default: the agent says so.
    warned = logged(log, "hold_differs_from_model")
    assert warned and warned[0]["model_hold_s"] == 0.0 and warned[0]["hold_s"] == 7 * 86400.0
