"""systemd's sd_notify protocol: readiness, watchdog heartbeats and stopping, without libsystemd.

The protocol is one datagram of `KEY=VALUE` lines sent to the unix socket named by
`$NOTIFY_SOCKET` (https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html).
Outside systemd the variable is unset and every function here does nothing, so the agent
calls them unconditionally.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):  # an abstract socket: the name starts with NUL
        return "\0" + path[1:]
    return path if path.startswith("/") else None  # vsock and other forms are not for us


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; returns whether a message was sent.

    Never raises: a supervisor that went away must not take the agent down with it.
    """
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def notify_ready(status: str = "ready", env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd start-up is complete (Type=notify): connected, subscribed, model loaded."""
    return notify(f"READY=1\nSTATUS={status}", env)


def notify_status(status: str, env: Mapping[str, str] | None = None) -> bool:
    """Set the one-line status that `systemctl status` shows."""
    return notify(f"STATUS={status}", env)


def notify_watchdog(env: Mapping[str, str] | None = None) -> bool:
    """One watchdog heartbeat: proof that the worker loop still turns."""
    return notify("WATCHDOG=1", env)


def notify_stopping(env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd a clean shutdown has begun."""
    return notify("STOPPING=1\nSTATUS=stopping", env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds ($WATCHDOG_USEC), or None when no watchdog is armed for us.

    Heartbeats should come at least twice per interval (see `Heartbeat`).
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec / 1_000_000


class Heartbeat:
    """Rate-limits watchdog pings so a busy loop may call `beat()` on every turn.

    Pings at most every half watchdog interval, as sd_watchdog_enabled(3) advises; a no-op
    without a watchdog.
    """

    def __init__(self, interval_s: float | None, env: Mapping[str, str] | None = None) -> None:
        self.period_s = None if interval_s is None else interval_s / 2
        self.env = env
        self._last: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Heartbeat:
        return cls(watchdog_interval(env), env)

    def beat(self, now: float) -> bool:
        """Ping if half an interval has passed since the last ping (`now`: time.monotonic())."""
        if self.period_s is None:
            return False
        if self._last is not None and now - self._last < self.period_s:
            return False
        self._last = now
        return notify_watchdog(self.env)
