"""A private Mosquitto (demo, benchmarks, tests) on a free loopback port, stopped by its PID."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral range.

    A port the kernel hands out for bind(0) comes from the ephemeral range, where it is free
    again as soon as it is returned: an outgoing connection made before our server binds it
    (the agent's own MQTT client, a test's capture client) can be given the same number as its
    source port, and the bind then fails (seen in CI: "Address already in use"). Ports below the
    range are never picked for outgoing connections.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()  # no seed: a concurrent session must not draw the same ports
    for _ in range(200):
        port = rng.randrange(max(1024, low - 16384), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # crowded below: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; the common default elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_until(cond: object, timeout: float, interval: float = 0.02, what: str = "condition") -> None:
    """Poll `cond()` until it is truthy; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """One mosquitto process we own. Limits are explicit so nothing is dropped silently."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    password_file: Path | None = None   # then anonymous clients are refused
    acl_file: Path | None = None
    tls: tuple[Path, Path, Path] | None = None  # CA, server certificate, server key
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts://localhost' if self.tls else 'mqtt://127.0.0.1'}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (f"cafile {self.tls[0]}\ncertfile {self.tls[1]}\nkeyfile {self.tls[2]}\n"
               if self.tls else "")
            + (f"allow_anonymous false\npassword_file {self.password_file}\n"
               if self.password_file else "allow_anonymous true\n")
            + (f"acl_file {self.acl_file}\n" if self.acl_file else "")
            +
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            # Default per-client queue (1000) drops QoS 1 silently; tests must not.
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "max_queued_bytes 0\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            # Started as root, mosquitto drops to its own user and then cannot read our
            # private temp files (passwords, certificates, its own log).
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_conf
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) mosquitto on the same port and wait until it accepts TCP."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self._write_conf()
        self.proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: _port_open(self.port) or self.proc.poll() is not None, timeout,
                   what=f"mosquitto on port {self.port}")
        if self.proc.poll() is not None:
            log = (self.workdir / "mosquitto.log")
            raise RuntimeError(f"mosquitto exited: {log.read_text() if log.exists() else ''}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop our mosquitto by PID (SIGKILL to simulate a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def signal(self, sig: int) -> None:
        """Send a signal to our mosquitto (SIGHUP reloads its ACL and password files)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
