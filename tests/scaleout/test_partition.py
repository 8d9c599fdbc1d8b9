"""Scale-out: two agents on one broker with partition 0/2 and 1/2 split the plant exactly."""

from __future__ import annotations

import subprocess
import zlib
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, Capture, running_agent, write_agent_config

pytestmark = pytest.mark.integration

ASSETS = [f"pump-{i:03d}" for i in range(1, 9)]


def test_two_partitions_serve_every_asset_exactly_once(trained: Path, broker: Broker,
                                                        tmp_path: Path) -> None:
    """With a warning threshold every asset crosses, each asset's alerts come from exactly one
    of the two agents, the one its stable hash names, and together they cover the plant."""
    capture = Capture(broker.port, ["vigil/alerts/#"]).start()
    with ExitStack() as stack:
        agents = []
        for i in range(2):
            port = free_port()
            d = tmp_path / f"a{i}"
            d.mkdir()
            cfg = write_agent_config(
                d / "agent.toml", broker_url=broker.url, model=trained, state=d / "state",
                http_port=port, client_id=f"gw-part-{i}",
                extra=f'\n[assets]\npartition = "{i}/2"\n')
            # Every window crosses this threshold, so every asset raises a warning.
            cfg.write_text(cfg.read_text().replace("[model]\n", "[model]\nwarning = 0.000001\n"))
            agents.append(stack.enter_context(running_agent(cfg, port, d / "agent.log")))
        for a in agents:
            a.wait_ready()
        sim = subprocess.run(
            [str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets", str(len(ASSETS)),
             "--speed", "1200", "--duration", "6", "--seed", "2"], capture_output=True, timeout=60)
        assert sim.returncode == 0, sim.stderr

        def covered() -> bool:
            return {a["asset"] for a in capture.json("vigil/alerts/")} >= set(ASSETS)
        wait_until(covered, 20, what="an alert for every asset")
        for a in agents:
            assert a.terminate() == 0
    capture.stop()
    by_asset: dict[str, set[str]] = {}
    for a in capture.json("vigil/alerts/"):
        by_asset.setdefault(a["asset"], set()).add(a["agent_id"])
    assert set(by_asset) == set(ASSETS)
    for asset, agent_ids in by_asset.items():
        assert agent_ids == {f"gw-part-{zlib.crc32(asset.encode()) % 2}"}, (asset, agent_ids)
    assert {next(iter(v)) for v in by_asset.values()} == {"gw-part-0", "gw-part-1"}
