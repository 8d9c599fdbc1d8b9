"""End to end: the agent records what it accepts ([record]), and the recording refits a model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from agent.cli import check_config
from agent.runtime import load_model
from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, cli, logged, metric, publish_all, running_agent, write_agent_config

pytestmark = pytest.mark.integration

Row = tuple[float, str, str, float]


def record_config(tmp_path: Path, broker: Broker, model: Path, port: int, client_id: str, **record: object
                  ) -> Path:
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {"enabled": True, **record}.items())
    return write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=model,
                              state=tmp_path / "state", http_port=port, client_id=client_id,
                              extra=f'\n[record]\ndir = "{tmp_path / "rec"}"\n{table}\n')


def recorded(directory: Path) -> list[Row]:
    """The recording as one dataset, in file then row order."""
    t = ds.dataset(directory, format="parquet").to_table()
    return list(zip(*(t[c].to_pylist() for c in ("ts", "asset", "channel", "value")), strict=True))


def test_recording_is_exactly_what_was_accepted_and_a_clean_stop_flushes_it(
        trained: Path, broker: Broker, tmp_path: Path) -> None:
    """Readings sent over MQTT, some of them rejected (duplicate, late, future, too old, wrong
    type, unknown channel), are recorded exactly as accepted - ts and values to the bit - and
    only those; nothing is on disk until SIGTERM flushes the buffer."""
    port = free_port()
    config = record_config(tmp_path, broker, trained, port, "gw-record", rotate_s=3600)
    assert check_config(config)["records"] == {"dir": str(tmp_path / "rec"), "max_bytes": 5 << 30}
    channels = load_model(trained).spec.channels
    now = time.time()
    t0 = float(int(now // 3600 * 3600) - 7200)  # a cell boundary two hours ago
    accepted: list[Row] = []
    sends: list[tuple[str, dict[str, object]]] = []
    for k in range(6):
        for i, ch in enumerate(channels):
            value = round(20.0 + k * 0.37 + i / 3, 6) + 1e-9 * k
            ts = t0 + k * 60 + 0.123456
            sends.append((f"plant/pump-{k % 2 + 1}/{ch}", {"ts": ts, "value": value}))
            accepted.append((ts, f"pump-{k % 2 + 1}", ch, value))
    first = sends[0]
    sends += [
        first,                                                                   # duplicate
        (f"plant/pump-1/{channels[0]}", {"ts": now + 3600, "value": 1.0}),       # future
        (f"plant/pump-1/{channels[0]}", {"ts": 946684000, "value": 1.0}),        # too_old
        (f"plant/pump-1/{channels[0]}", {"ts": t0 - 86400, "value": 1.0}),       # late
        (f"plant/pump-1/{channels[0]}", {"ts": t0 + 400, "value": "1.5"}),       # type
        ("plant/pump-1/humidity", {"ts": t0 + 400, "value": 1.0}),               # unmapped (ignored)
    ]
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        publish_all(broker.port, [(t, json.dumps(doc).encode()) for t, doc in sends], "record-publisher")

        def counted() -> bool:
            text = agent.scrape()
            rejected = sum(metric(text, "vigil_readings_rejected_total", f'reason="{r}"') or 0
                           for r in ("duplicate", "future", "too_old", "late", "type"))
            ignored = metric(text, "vigil_readings_ignored_total", 'reason="unmapped"')
            return (metric(text, "vigil_readings_accepted_total") == len(accepted)
                    and (rejected, ignored) == (5, 1))
        wait_until(counted, 15, what="every reading accepted or rejected")
        assert list((tmp_path / "rec").rglob("*.parquet")) == []  # still in the buffer
        assert agent.terminate() == 0
    assert recorded(tmp_path / "rec") == accepted
    assert logged(agent.log(), "recording")[0]["dir"] == str(tmp_path / "rec")


def test_a_recording_trains_a_model_with_vigil_train_fit(trained: Path, broker: Broker,
                                                         tmp_path: Path) -> None:
    """The issue's test: the agent records a simulated plant published over MQTT into several
    files; after it stops, `vigil-train fit --history <recording dir> --format long` trains a
    model from the folder directly, and the agent loads it, with the recorded channels."""
    port = free_port()
    config = record_config(tmp_path, broker, trained, port, "gw-refit", file_rows=5000)
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        sim = cli("vigil-sim", "live", "--broker", broker.url, "--assets", "4", "--speed", "3000",
                  "--duration", "15", "--seed", "5", timeout=120)
        published = int(re.search(r"(\d+) messages published", sim.stdout).group(1))  # type: ignore[union-attr]
        wait_until(lambda: metric(agent.scrape(), "vigil_readings_accepted_total") == published, 20,
                   what="every simulated reading accepted")
        assert agent.terminate() == 0
    files = sorted((tmp_path / "rec").rglob("part-*.parquet"))
    rows = recorded(tmp_path / "rec")
    assert published > 10_000 and len(rows) == published and len(files) >= 3
    started = time.monotonic()
    out = tmp_path / "refit.pt"
    cli("vigil-train", "fit", "--history", str(tmp_path / "rec"), "--format", "long", "--window", "8",
        "--horizon", "2", "--epochs", "1", "--windows-per-epoch", "300", "--hidden", "8", "--seed", "1",
        "--quiet", "--out", str(out))
    model = load_model(out)
    assert model.spec.channels == tuple(sorted({r[2] for r in rows}))
    assert set(model.spec.channels) == set(load_model(trained).spec.channels)
    assert model.spec.period_s == 60.0  # the simulator's period, inferred from the recording
    print(f"{len(rows)} readings in {len(files)} files; refit in {time.monotonic() - started:.1f}s")


def test_a_killed_agent_leaves_only_whole_files(trained: Path, broker: Broker, tmp_path: Path) -> None:
    """SIGKILL while files are being written: every file in the recording reads whole, and the
    next start takes stock of them (and would remove a half-written temporary file)."""
    port = free_port()
    config = record_config(tmp_path, broker, trained, port, "gw-kill", file_rows=500)
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        sim = subprocess.Popen([str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets", "4",
                                "--speed", "3000", "--duration", "30", "--seed", "6"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: len(list((tmp_path / "rec").rglob("part-*.parquet"))) >= 4, 30,
                       interval=0.05, what="files being written")
            assert agent.proc is not None
            os.kill(agent.proc.pid, signal.SIGKILL)
            agent.proc.wait(10)
        finally:
            sim.kill()
            sim.wait(10)
    files = {f: f.stat().st_size for f in (tmp_path / "rec").rglob("part-*.parquet")}
    assert all(pq.read_table(f).num_rows >= 500 for f in files)
    before = recorded(tmp_path / "rec")
    # Another client id: a new session, so what the broker kept for the dead one stays there.
    config = record_config(tmp_path, broker, trained, port, "gw-kill-2", file_rows=500)
    with running_agent(config, port, tmp_path / "agent2.log") as again:
        again.wait_ready()
        wait_until(lambda: metric(again.scrape(), "vigil_record_disk_bytes") == sum(files.values()), 10,
                   what="the files counted at start")
        assert again.terminate() == 0
    assert {f: f.stat().st_size for f in (tmp_path / "rec").rglob("part-*.parquet")} == files
    assert recorded(tmp_path / "rec") == before
