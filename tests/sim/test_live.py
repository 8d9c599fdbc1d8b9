"""`vigil-sim live`: readings to MQTT at N x speed, forced failures, clean stop on SIGTERM."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sim.cli import main
from sim.live import default_start, publish_at
from sim.plant import CHANNELS
from sim.timestamps import parse_time
from tests.broker import Broker, wait_until
from tests.sim.conftest import Subscriber

SUMMARY = re.compile(r"(\d+) messages published, (\d+) acknowledged, (\d+) failures")
EVENT = re.compile(r"^(\S+Z) (pump-\d{3}) (failure|maintenance)$")
VIGIL_SIM = Path(sys.executable).parent / "vigil-sim"


class TestDefaultStart:
    def test_start_lies_duration_times_speed_in_the_past(self) -> None:
        """With a duration the run starts duration*speed ago, aligned down to the period."""
        assert default_start(1_000_000.0, 60.0, 100.0, 30.0) == 996_960.0

    def test_without_duration_starts_a_day_ago(self) -> None:
        """Without a duration (or at infinite speed) the run starts one day back."""
        assert default_start(1_000_020.0, 60.0, 1.0, None) == 913_620.0
        assert default_start(1_000_020.0, 60.0, math.inf, 5.0) == 913_620.0


class TestPublishAt:
    def test_follows_speed_while_in_the_past(self) -> None:
        """Well behind the wall clock, a step one hour in goes out 3600/speed s after the start."""
        assert publish_at(ts=3600.0, start_ts=0.0, wall0=1e9, speed=60.0) == 1e9 + 60.0

    def test_slows_to_real_time_once_caught_up(self) -> None:
        """A step whose event time is ahead of its schedule waits for the wall clock to reach it."""
        wall0 = 1e9
        assert publish_at(ts=wall0 + 10.0, start_ts=wall0 - 100.0, wall0=wall0,
                          speed=1000.0) == wall0 + 10.0


@pytest.mark.integration
class TestLive:
    def test_publishes_readings_and_a_forced_failure(
        self, broker: Broker, prefix: str, subscribe: Callable[[str], Subscriber],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Readings arrive as {ts, value} on PREFIX/ASSET/CHANNEL and --fail makes pump-002 fail."""
        sub = subscribe(f"{prefix}/#")
        rc = main(["live", "--broker", broker.url, "--assets", "3", "--seed", "1",
                   "--speed", "3600", "--duration", "1.5", "--fail", "pump-002",
                   "--fail-within", "900", "--topic-prefix", prefix])
        assert rc == 0
        lines = capsys.readouterr().out.splitlines()
        events = [m.groups() for m in map(EVENT.match, lines) if m]
        failed_at = [parse_time(ts) for ts, asset, ev in events
                     if (asset, ev) == ("pump-002", "failure")]
        assert len(failed_at) == 1
        summary = SUMMARY.search(lines[-1])
        assert summary is not None
        published, acked, failures = map(int, summary.groups())
        assert published == acked > 0 and failures >= 1

        got = sub.wait_for(published)
        assert len(got) == published
        topic = re.compile(rf"^{re.escape(prefix)}/pump-00[123]/({'|'.join(CHANNELS)})$")
        now = time.time()
        for m in got:
            assert topic.match(m.topic), m.topic
            assert set(m.payload) == {"ts", "value"}
            assert isinstance(m.payload["value"], float)
            # Event time never runs ahead of the wall clock.
            assert isinstance(m.payload["ts"], int) and m.payload["ts"] <= now
        # A failed pump goes quiet (repair takes hours) while the others keep reporting.
        assert max(m.payload["ts"] for m in got if "/pump-002/" in m.topic) < failed_at[0]
        assert max(m.payload["ts"] for m in got if "/pump-001/" in m.topic) > failed_at[0]

    def test_unknown_fail_asset_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--fail naming an asset the plant does not have is bad input: exit 2, one line."""
        rc = main(["live", "--broker", "mqtt://127.0.0.1:9", "--assets", "2",
                   "--fail", "pump-009", "--duration", "1"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "pump-009" in err and err.count("\n") == 1

    def test_subprocess_stops_cleanly_on_sigterm(
        self, broker: Broker, prefix: str, subscribe: Callable[[str], Subscriber],
    ) -> None:
        """The real vigil-sim binary publishes until SIGTERM, then exits 0 with all acked."""
        assert VIGIL_SIM.exists(), f"{VIGIL_SIM} not installed (pip install -e .)"
        sub = subscribe(f"{prefix}/#")
        proc = subprocess.Popen(
            [str(VIGIL_SIM), "live", "--broker", broker.url, "--assets", "2", "--speed", "600",
             "--topic-prefix", prefix],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_until(lambda: len(sub.snapshot()) >= 20 or proc.poll() is not None, 20.0,
                       what="first live readings")
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        summary = SUMMARY.search(out)
        assert summary is not None, out
        published, acked, _ = map(int, summary.groups())
        assert published == acked >= 20
        assert len(sub.wait_for(published)) == published
