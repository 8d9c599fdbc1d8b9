"""Report by exception through a real broker and a real agent: JSON publishers with deadbands.

The plant engineer's scenario: 50 rows of a pump, sent in full by one publisher and only past
realistic deadbands by another. Without a hold the filtered pump never scores; with `hold` it
scores as many windows as the unfiltered one. A hold that runs out, a bad quality and tags the
model has no use for are each seen where an operator looks: the risk topic and /metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sim.plant import CHANNELS, Plant, PlantConfig
from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, cli, logged, metric, publish_all, running_agent, write_agent_config

pytestmark = pytest.mark.integration

PERIOD = 60.0  # the trained model's sample period
ROWS = 50
WINDOW = 30
DEADBAND = {"bearing_temp": 0.5, "vib_rms": 0.1, "motor_current": 0.5, "discharge_pressure": 0.1,
            "speed": 10.0}
HEARTBEAT = 10  # the publisher sends every tag at least every 10 rows (10 min), as many RBE publishers do
HELD = """
[[subscriptions]]
filter = "rbe/+/+"
template = "rbe/{asset}/{channel}"
codec = "json"
hold = "10m"
quality_field = "q"
"""


def rows(seed: int) -> tuple[float, list[dict[str, float]]]:
    """A healthy pump's 50 rows; a fixed-speed pump, so `speed` is constant."""
    t0 = (time.time() // PERIOD - ROWS - 200) * PERIOD  # on a cell boundary, well in the past
    plant = Plant(PlantConfig(n_assets=1, period_s=PERIOD, seed=seed), start_ts=t0)
    out = []
    for _ in range(ROWS):
        values = dict(zip(CHANNELS, (float(v) for v in plant.step().values[0]), strict=True))
        values["speed"] = 1480.0
        out.append(values)
    return t0, out


def by_exception(table: list[dict[str, float]], heartbeat: int | None = HEARTBEAT) -> list[dict[str, float]]:
    """What a deadband publisher sends of each row: tags that moved past their deadband since
    they were last sent, and any tag not sent for `heartbeat` rows (None: never)."""
    last: dict[str, tuple[int, float]] = {}
    out = []
    for k, row in enumerate(table):
        sent = {}
        for ch, v in row.items():
            prev = last.get(ch)
            if (prev is None or abs(v - prev[1]) > DEADBAND[ch]
                    or (heartbeat is not None and k - prev[0] >= heartbeat)):
                sent[ch] = v
                last[ch] = (k, v)
        out.append(sent)
    return out


def messages(prefix: str, asset: str, t0: float, table: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{asset}/{ch}", json.dumps({"ts": t0 + k * PERIOD, "value": v}).encode())
            for k, row in enumerate(table) for ch, v in row.items()]


def interleave(*streams: list[list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    """Row by row across publishers, as a live plant would send them."""
    return [m for group in zip(*streams, strict=True) for row in group for m in row]


def per_row(prefix: str, asset: str, t0: float, table: list[dict[str, Any]]) -> list[list[tuple[str, bytes]]]:
    return [messages(prefix, asset, t0 + k * PERIOD, [row]) for k, row in enumerate(table)]


def risks(capture: Capture, asset: str) -> list[dict[str, Any]]:
    return [d for d in capture.json("vigil/risk/") if d["asset"] == asset]


def scored(capture: Capture, asset: str) -> int:
    return sum(1 for d in risks(capture, asset) if not d["stale"])


def test_deadband_publisher_scores_like_the_full_one(trained: Path, broker: Broker, tmp_path: Path) -> None:
    """The full pump scores 21 windows (50 rows, window 30); the same rows through deadbands
    score 21 on the `hold = "10m"` subscription, the constant speed never making it stale, and
    none (a stale notice) on the subscription without a hold."""
    t0, table = rows(seed=5)
    sparse = by_exception(table)
    assert sum(len(r) for r in sparse) < 0.6 * 5 * ROWS  # the deadbands drop most readings
    assert [k for k, r in enumerate(sparse) if "speed" in r] == [0, 10, 20, 30, 40]
    closing = [{"bearing_temp": table[-1]["bearing_temp"]}]  # a newer row closes row 49's cell
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-rbe-json",
                                extra=HELD)
    capture = Capture(broker.port, ["vigil/risk/#"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        publish_all(broker.port, interleave(
            per_row("plant", "rbe-full", t0, table),
            per_row("rbe", "rbe-held", t0, sparse),
            per_row("plant", "rbe-plain", t0, sparse)), "rbe-publishers")
        publish_all(broker.port, messages("rbe", "rbe-held", t0 + ROWS * PERIOD, closing)
                    + messages("plant", "rbe-plain", t0 + ROWS * PERIOD, closing), "rbe-publishers")
        expected = ROWS - WINDOW + 1
        wait_until(lambda: scored(capture, "rbe-full") == expected and scored(capture, "rbe-held") == expected
                   and any(d["stale"] for d in risks(capture, "rbe-plain")), 30,
                   what=f"{expected} windows of the full and the held pump, a stale notice of the plain one")
        text = agent.scrape()
        assert agent.terminate() == 0
    capture.stop()
    assert metric(text, "vigil_windows_inferred_total") == 2 * expected
    assert not any(d["stale"] for d in risks(capture, "rbe-held"))
    assert scored(capture, "rbe-plain") == 0
    held_ts = [d["ts"] for d in risks(capture, "rbe-held")]
    assert held_ts == [d["ts"] for d in risks(capture, "rbe-full")]  # one window per cell, in order
    assert sum((metric(text, "vigil_readings_rejected_total", f'reason="{r}"') or 0)
               for r in ("late", "duplicate", "type", "ts")) == 0


def test_hold_limit_quality_and_ignored_tags(trained: Path, broker: Broker, tmp_path: Path) -> None:
    """One pump's motor current stops reporting: 10 min later (its hold) the pump is stale.
    Another's bearing temperature turns bad (`"q": "Bad"`): it is announced degraded at once
    and no longer scored. Tags the model lacks are ignored: `vigil_readings_ignored_total` counts
    them and the bad reading, `vigil_readings_rejected_total` stays at zero for every reason."""
    t0, table = rows(seed=6)
    sparse = by_exception(table)
    silent = [{k: v for k, v in r.items() if k != "motor_current" or n <= 30} for n, r in enumerate(sparse)]
    last_current = max(n for n, r in enumerate(silent) if "motor_current" in r)
    bad_row = 40
    degraded: list[dict[str, Any]] = [dict(r) for r in sparse]
    for n in range(bad_row, ROWS):
        degraded[n].pop("bearing_temp", None)
    degraded[bad_row]["bearing_temp"] = None  # sent as a bad-quality message
    for n in range(0, ROWS, 10):
        degraded[n]["temp_setpoint"] = 55.0  # not a model channel

    def row_messages(asset: str, table: list[dict[str, Any]]) -> list[list[tuple[str, bytes]]]:
        out = []
        for k, row in enumerate(table):
            ts = t0 + k * PERIOD
            out.append([(f"rbe/{asset}/{ch}", json.dumps(
                {"ts": ts, "value": None, "q": "Bad"} if v is None else {"ts": ts, "value": v, "q": 192}
            ).encode()) for ch, v in row.items()])
        return out

    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-rbe-limit",
                                extra=HELD)
    capture = Capture(broker.port, ["vigil/risk/#"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        publish_all(broker.port, interleave(row_messages("rbe-silent", silent),
                                            row_messages("rbe-bad", degraded)), "rbe-publishers-2")

        def seen() -> bool:
            return (any(d["stale"] for d in risks(capture, "rbe-silent"))
                    and any(d.get("degraded") for d in risks(capture, "rbe-bad")))
        wait_until(seen, 30, what="the silent pump stale and the bad one degraded")
        text = agent.scrape()
        log = agent.log()
        assert agent.terminate() == 0
    capture.stop()
    cell_ts = [t0 + k * PERIOD for k in range(ROWS)]
    # The silent pump: scored while its motor current holds, stale from the first cell past the hold.
    silent_docs = risks(capture, "rbe-silent")
    stale_at = min(_epoch(d["ts"]) for d in silent_docs if d["stale"])
    assert stale_at == cell_ts[last_current + 11]
    assert all(not d["stale"] for d in silent_docs if _epoch(d["ts"]) < stale_at)
    assert scored(capture, "rbe-silent") == last_current + 11 - (WINDOW - 1)
    # The bad one: announced degraded (and stale) with the bad reading, never scored after it.
    bad_docs = risks(capture, "rbe-bad")
    notice = next(d for d in bad_docs if d.get("degraded"))
    assert notice["degraded"] == ["bearing_temp"] and notice["stale"]
    assert all(_epoch(d["ts"]) < cell_ts[bad_row] for d in bad_docs if not d["stale"])
    assert scored(capture, "rbe-bad") > 0
    assert logged(log, "assets_degraded")
    # Counted where they belong.
    ignored = {r: metric(text, "vigil_readings_ignored_total", f'reason="{r}"')
               for r in ("unmapped", "unsupported", "bad_quality")}
    assert ignored == {"unmapped": 5, "unsupported": 0, "bad_quality": 1}
    rejected = [line for line in text.splitlines()
                if line.startswith("vigil_readings_rejected_total{") and not line.endswith(" 0.0")]
    assert rejected == []


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_check_config_refuses_a_bad_duration(tmp_path: Path) -> None:
    """A hold that is not a duration is refused with the key and the forms a duration takes."""
    config = tmp_path / "agent.toml"
    config.write_text('[model]\npath = "m.pt"\n\n[[subscriptions]]\nfilter = "rbe/+/+"\n'
                      'template = "rbe/{asset}/{channel}"\nhold = "10 minutes"\n')
    proc = cli("vigil-agent", "check-config", str(config), check=False)
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "subscriptions.0.hold" in line and '"90s", "30m", "12h", "3d"' in line
