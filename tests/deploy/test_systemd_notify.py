"""agent.systemd speaks sd_notify to a real unix datagram socket, and stays silent outside systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import systemd
from tests.broker import Broker, free_port, wait_until
from tests.deploy.conftest import isolated_config
from tests.procs import BIN, http_get


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.0)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_path() -> Iterator[str]:
    # A short folder: a unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="sd-") as d:
        yield os.path.join(d, "notify")


@pytest.fixture
def listener(notify_path: str) -> Iterator[NotifySocket]:
    s = NotifySocket(notify_path)
    yield s
    s.close()


class TestNotify:
    def test_ready_sends_ready_and_status(self, listener: NotifySocket, notify_path: str) -> None:
        """notify_ready sends READY=1 with a STATUS line to the socket named by NOTIFY_SOCKET."""
        assert systemd.notify_ready("serving 3 assets", env={"NOTIFY_SOCKET": notify_path})
        assert listener.messages() == ["READY=1\nSTATUS=serving 3 assets"]

    def test_watchdog_stopping_and_status(self, listener: NotifySocket, notify_path: str) -> None:
        """notify_watchdog, notify_stopping and notify_status send one datagram each, in order."""
        env = {"NOTIFY_SOCKET": notify_path}
        assert systemd.notify_watchdog(env)
        assert systemd.notify_status("reconnecting", env)
        assert systemd.notify_stopping(env)
        assert listener.messages() == ["WATCHDOG=1", "STATUS=reconnecting", "STOPPING=1\nSTATUS=stopping"]

    def test_abstract_socket(self) -> None:
        """A NOTIFY_SOCKET starting with '@' names a socket in the abstract namespace."""
        name = f"vigil-test-{os.getpid()}-{free_port()}"
        s = NotifySocket("\0" + name)
        try:
            assert systemd.notify_ready(env={"NOTIFY_SOCKET": "@" + name})
            assert s.messages() == ["READY=1\nSTATUS=ready"]
        finally:
            s.close()

    def test_noop_without_notify_socket(self) -> None:
        """Without NOTIFY_SOCKET (not under systemd) every call is a no-op returning False."""
        assert not systemd.notify_ready(env={})
        assert not systemd.notify_watchdog(env={"NOTIFY_SOCKET": ""})
        assert not systemd.notify_stopping(env={"NOTIFY_SOCKET": "relative/path"})

    def test_gone_socket_does_not_raise(self, notify_path: str) -> None:
        """A NOTIFY_SOCKET that nobody listens on returns False instead of raising."""
        assert not systemd.notify_ready(env={"NOTIFY_SOCKET": notify_path})


class TestWatchdogInterval:
    def test_interval_from_usec(self) -> None:
        """WATCHDOG_USEC is read as seconds."""
        assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0

    def test_interval_for_this_pid_only(self) -> None:
        """A WATCHDOG_PID naming another process means the watchdog is not ours."""
        env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
        assert systemd.watchdog_interval(env) == 1.0
        assert systemd.watchdog_interval({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) is None

    @pytest.mark.parametrize("usec", ["", "0", "-5", "abc"])
    def test_no_interval(self, usec: str) -> None:
        """An unset, zero, negative or malformed WATCHDOG_USEC means no watchdog."""
        assert systemd.watchdog_interval({"WATCHDOG_USEC": usec} if usec else {}) is None


class TestHeartbeat:
    def test_pings_at_most_every_half_interval(self, listener: NotifySocket, notify_path: str) -> None:
        """beat() on every loop turn sends WATCHDOG=1 at most once per half watchdog interval."""
        hb = systemd.Heartbeat.from_env({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "10000000"})
        sent = [hb.beat(t) for t in (100.0, 101.0, 104.9, 105.0, 109.0, 110.0)]
        assert sent == [True, False, False, True, False, True]
        assert listener.messages() == ["WATCHDOG=1"] * 3

    def test_silent_without_watchdog(self, listener: NotifySocket, notify_path: str) -> None:
        """Without WATCHDOG_USEC, beat() never sends."""
        hb = systemd.Heartbeat.from_env({"NOTIFY_SOCKET": notify_path})
        assert not hb.beat(0.0) and not hb.beat(1000.0)
        assert listener.messages() == []


@pytest.mark.integration
def test_agent_notifies_ready_and_watchdog(trained: Path, broker: Broker, tmp_path: Path,
                                           listener: NotifySocket, notify_path: str) -> None:
    """`vigil-agent run` under a notify socket sends READY=1 once ready, WATCHDOG=1 heartbeats,
    and STOPPING=1 on SIGTERM — what deploy/systemd's Type=notify + WatchdogSec rely on."""
    port = free_port()
    config = isolated_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                             state=tmp_path / "state", http_port=port, name="notify")
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    seen: list[str] = []

    def got(prefix: str) -> bool:
        seen.extend(listener.messages())
        return any(m.startswith(prefix) for m in seen)

    with (tmp_path / "agent.log").open("wb") as log:
        proc = subprocess.Popen([str(BIN / "vigil-agent"), "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200 or proc.poll() is not None,
                   30, interval=0.1, what="agent /readyz")
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
        wait_until(lambda: got("READY=1"), 3, what="READY=1")  # sent as /readyz turns 200
        wait_until(lambda: got("WATCHDOG=1"), 3, what="WATCHDOG=1")  # every 1 s (WATCHDOG_USEC / 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert got("STOPPING=1")
