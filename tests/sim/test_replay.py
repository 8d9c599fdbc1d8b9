"""`vigil-sim replay`: a history file to MQTT in event-time order, every message acknowledged."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.names import BrokerURL
from sim.cli import main
from sim.history import write_history
from sim.plant import CHANNELS, PlantConfig
from sim.publisher import Publisher, PublisherOptions
from tests.broker import Broker, free_port
from tests.sim.conftest import Subscriber

CFG = PlantConfig(n_assets=2, period_s=60.0, seed=7)
STEPS = 72  # 0.05 days at 60 s


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = write_history(CFG, 0.05, tmp_path_factory.mktemp("replay"), progress=False)
    return path


def csv_rows(path: Path) -> list[tuple[float, str, str, float]]:
    with path.open(newline="") as fh:
        return [(float(r["ts"]), r["asset"], r["channel"], float(r["value"]))
                for r in csv.DictReader(fh)]


def replay(path: Path, broker_url: str, prefix: str, *extra: str) -> int:
    return main(["replay", str(path), "--broker", broker_url, "--topic-prefix", prefix,
                 "--no-progress", *extra])


@pytest.mark.integration
class TestReplayDelivery:
    def test_json_delivers_every_row_in_order(
        self, broker: Broker, history: Path, prefix: str,
        subscribe: Callable[[str], Subscriber], capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Each row arrives once as {ts, value} on PREFIX/ASSET/CHANNEL, in file order."""
        sub = subscribe(f"{prefix}/#")
        assert replay(history, broker.url, prefix, "--speed", "0") == 0
        expected = csv_rows(history)
        assert len(expected) == STEPS * CFG.n_assets * len(CHANNELS)
        got = sub.wait_for(len(expected))
        assert [(m.topic, m.payload) for m in got] == [
            (f"{prefix}/{asset}/{channel}", {"ts": int(ts), "value": value})
            for ts, asset, channel, value in expected
        ]
        out = capsys.readouterr().out
        assert f"{len(expected)} messages published, {len(expected)} acknowledged" in out

    def test_json_multi_groups_channels_per_asset_and_ts(
        self, broker: Broker, history: Path, prefix: str,
        subscribe: Callable[[str], Subscriber],
    ) -> None:
        """One {ts, values} message per asset and timestamp, holding all its channels."""
        sub = subscribe(f"{prefix}/#")
        assert replay(history, broker.url, prefix, "--speed", "0", "--codec", "json-multi") == 0
        expected: dict[tuple[int, str], dict[str, float]] = {}
        for ts, asset, channel, value in csv_rows(history):
            expected.setdefault((int(ts), asset), {})[channel] = value
        got = sub.wait_for(len(expected))
        assert len(got) == STEPS * CFG.n_assets
        assert [(m.topic, m.payload) for m in got] == [
            (f"{prefix}/{asset}", {"ts": ts, "values": values})
            for (ts, asset), values in expected.items()
        ]

    def test_parquet_replays_like_csv(
        self, broker: Broker, tmp_path: Path, prefix: str,
        subscribe: Callable[[str], Subscriber],
    ) -> None:
        """A Parquet history delivers the same messages as its CSV twin."""
        csv_path, _ = write_history(CFG, 0.02, tmp_path / "c", progress=False)
        pq_path, _ = write_history(CFG, 0.02, tmp_path / "p", fmt="parquet", progress=False)
        from_csv = subscribe(f"{prefix}/csv/#")
        from_pq = subscribe(f"{prefix}/pq/#")
        assert replay(csv_path, broker.url, f"{prefix}/csv", "--speed", "0") == 0
        assert replay(pq_path, broker.url, f"{prefix}/pq", "--speed", "0") == 0
        n = len(csv_rows(csv_path))
        a, b = from_csv.wait_for(n), from_pq.wait_for(n)
        assert [m.payload for m in a] == [m.payload for m in b]

    def test_rfc3339_ts_become_epoch_seconds(
        self, broker: Broker, tmp_path: Path, prefix: str,
        subscribe: Callable[[str], Subscriber],
    ) -> None:
        """RFC 3339 timestamps in the file are published as epoch-second numbers."""
        path = tmp_path / "h.csv"
        path.write_text("ts,asset,channel,value\n2026-01-01T00:00:00Z,p1,temp,1.5\n"
                        "2026-01-01T00:00:01.250Z,p1,temp,2.5\n")
        sub = subscribe(f"{prefix}/#")
        assert replay(path, broker.url, prefix, "--speed", "inf") == 0
        assert [m.payload for m in sub.wait_for(2)] == [
            {"ts": 1_767_225_600, "value": 1.5}, {"ts": 1_767_225_601.25, "value": 2.5},
        ]

    def test_speed_scales_event_time_gaps(
        self, broker: Broker, history: Path, prefix: str,
    ) -> None:
        """At --speed X the replay takes at least the file's event-time span divided by X."""
        span = (STEPS - 1) * CFG.period_s
        speed = span / 0.3
        began = time.monotonic()
        assert replay(history, broker.url, prefix, "--speed", str(speed)) == 0
        assert time.monotonic() - began >= 0.3


@pytest.mark.integration
class TestReplayErrors:
    def test_unsorted_file_fails_naming_the_row(
        self, broker: Broker, tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A file whose ts goes backwards exits 2 with one line naming the row."""
        path = tmp_path / "h.csv"
        path.write_text("ts,asset,channel,value\n10,p1,t,1\n20,p1,t,2\n15,p1,t,3\n")
        assert replay(path, broker.url, prefix, "--speed", "0") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith("vigil-sim: error:") and "row 3" in err

    def test_unreachable_broker_exits_1(
        self, history: Path, capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Nothing listening on the broker port: exit 1 with one line, no traceback."""
        assert replay(history, f"mqtt://127.0.0.1:{free_port()}", "x") == 1
        err = capsys.readouterr().err
        assert err.startswith("vigil-sim: error: cannot connect") and err.count("\n") == 1


class TestReplayInputErrors:
    @pytest.mark.parametrize(
        ("args", "reason"),
        [
            (["replay", "/nonexistent/h.csv", "--broker", "mqtt://127.0.0.1:9"], "no such file"),
            (["replay", "h.csv", "--broker", "http://127.0.0.1:9"], "scheme must be"),
            (["replay", "h.csv", "--broker", "mqtt://127.0.0.1:9", "--speed", "-1"],
             "argument --speed"),
            (["replay", "h.csv", "--broker", "mqtt://127.0.0.1:9", "--codec", "xml"],
             "argument --codec"),
            (["replay", "h.csv", "--broker", "mqtt://127.0.0.1:9", "--topic-prefix", "a/+"],
             "topic prefix"),
        ],
    )
    def test_bad_input_exits_2_with_one_line(
        self, args: list[str], reason: str, capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Missing file, bad URL, negative speed, unknown codec or bad prefix: exit 2, one line."""
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("vigil-sim: error:") and reason in err and err.count("\n") == 1


@pytest.mark.integration
class TestPublisherWindow:
    def test_outstanding_messages_never_exceed_the_window(self, broker: Broker) -> None:
        """With a window of 5, no more than 5 messages are ever unacknowledged."""
        opts = PublisherOptions(BrokerURL.parse(broker.url), client_id="window-test", window=5)
        worst = 0
        with Publisher(opts, threading.Event()) as pub:
            for i in range(300):
                assert pub.publish("t-window/x", str(i).encode())
                worst = max(worst, pub.published - pub.acked)
            assert pub.drain(10.0)
            assert (pub.published, pub.acked) == (300, 300)
        assert 1 <= worst <= 5
