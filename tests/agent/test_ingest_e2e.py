"""Bad input through a real broker: every malformed form is rejected and counted by reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import metric, publish_all, running_agent, write_agent_config

pytestmark = pytest.mark.integration

EXTRA = """
[[subscriptions]]
filter = "multi/+"
template = "multi/{asset}"
codec = "json-multi"

[[subscriptions]]
filter = "deep/#"
template = "deep/{asset}/{channel}"
codec = "json"

[windows]
max_assets = 3
"""


def test_each_bad_form_counted_under_its_reason(trained: Path, broker: Broker, tmp_path: Path) -> None:
    """Malformed, mistyped, non-finite, untimed, future, ancient, late, duplicate, oversize,
    mis-shaped topics, bad names, unknown channels and assets beyond the limit are each counted
    under their reason; the agent stays up and ready."""
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-ingest",
                                extra=EXTRA)
    now = time.time()
    t = "plant/pump-001/bearing_temp"
    sends: list[tuple[str, bytes]] = [
        (t, json.dumps({"ts": now - 600, "value": 40.0}).encode()),       # accepted, sets watermark
        (t, json.dumps({"ts": now - 600, "value": 40.0}).encode()),       # duplicate
        (t, b"{not json"),                                                 # malformed
        (t, json.dumps({"ts": now, "value": True}).encode()),              # type
        (t, json.dumps({"ts": now, "value": "41.5"}).encode()),            # type
        (t, b'{"ts": 1767225600, "value": NaN}'),                          # nonfinite
        (t, json.dumps({"value": 1.0}).encode()),                          # ts
        (t, json.dumps({"ts": "yesterday", "value": 1.0}).encode()),       # ts
        (t, json.dumps({"ts": now + 3600, "value": 1.0}).encode()),        # future
        (t, json.dumps({"ts": 946684000, "value": 1.0}).encode()),         # too_old (1999)
        (t, json.dumps({"ts": now - 600 - 3600, "value": 1.0}).encode()),  # late (60 cells back)
        (t, b'{"ts": 1, "value": ' + b"1" * 70000 + b"}"),                 # payload_size
        ("plant/pump-001/humidity", json.dumps({"ts": now - 600, "value": 1.0}).encode()),  # unmapped
        ("deep/pump-001/speed/extra", json.dumps({"ts": now - 600, "value": 1.0}).encode()),  # topic
        ("multi/pump-002", json.dumps({"ts": now - 600, "values": {"a/b": 1.0, "speed": 1000.0}}).encode()),
        ("multi/pump-002", json.dumps([{"ts": now - 540, "values": {"speed": 1.0}}, 7]).encode()),
        ("plant/pump-003/speed", json.dumps({"ts": now - 600, "value": 1.0}).encode()),
        ("plant/pump-004/speed", json.dumps({"ts": now - 600, "value": 1.0}).encode()),  # asset_limit
        ("plant/pump-001/speed", json.dumps({"ts": now - 600, "value": 1200.0}).encode()),  # known: ok
    ]
    expected = {"duplicate": 1, "malformed": 2, "type": 2, "nonfinite": 1, "ts": 2, "future": 1,
                "too_old": 1, "late": 1, "payload_size": 1, "topic": 1, "name": 1, "asset_limit": 1}
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        publish_all(broker.port, sends, "bad-publisher")

        def counted() -> bool:
            text = agent.scrape()
            # The last message is accepted: wait for it too, not just for the rejections before it.
            return metric(text, "vigil_readings_accepted_total") == 5 and all(
                metric(text, "vigil_readings_rejected_total", f'reason="{r}"') == n
                for r, n in expected.items()) and metric(
                text, "vigil_readings_ignored_total", 'reason="unmapped"') == 1
        try:
            wait_until(counted, 15, what="every rejection counted")
        finally:
            text = agent.scrape()
            got = {r: metric(text, "vigil_readings_rejected_total", f'reason="{r}"') for r in expected}
            print(got)
        assert metric(text, "vigil_readings_accepted_total") == 5
        assert agent.proc is not None and agent.proc.poll() is None
        agent.wait_ready(timeout=5)
        assert "readings_rejected" in agent.log()
