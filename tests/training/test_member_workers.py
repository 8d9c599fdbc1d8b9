"""A training run killed outright takes its member worker processes with it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.test_fit import drifting_cmapss

REPO = Path(__file__).resolve().parents[2]


def _workers(parent: int) -> list[int]:
    """Multiprocessing workers (not the resource tracker) whose parent is `parent`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            found.append(int(entry.name))
    return found


class Output:
    """The run's stderr, read as it comes: each wait blocks on the pipe, up to a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.fd, self.text = proc.stderr.fileno(), b""

    def wait(self, done: object, timeout: float) -> bool:
        """Read until `done()` holds (checked after each chunk) or `timeout` seconds pass."""
        assert callable(done)
        end = time.monotonic() + timeout
        while not done():
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return bool(done())
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return bool(done())
            self.text += chunk
        return True


def _all_exit(pidfds: list[int], timeout: float) -> bool:
    """Block until every process behind `pidfds` has exited, or `timeout` seconds pass."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    end, left = time.monotonic() + timeout, set(pidfds)
    while left and time.monotonic() < end:
        for fd, _ in poller.poll(max(end - time.monotonic(), 0) * 1000):
            left.discard(fd)
            poller.unregister(fd)
    return not left


@pytest.mark.parametrize("when", ["starting", "training"])
def test_member_workers_exit_when_the_run_is_killed(tmp_path: Path, when: str) -> None:
    """`kill -9` of `vigil-train fit`, while its workers start (still importing torch) or while
    they train, leaves no worker training members for nobody."""
    train = tmp_path / "train_FD009.txt"
    train.write_text(drifting_cmapss({u: 40 + 3 * u for u in range(1, 9)}, seed=0))
    # Far more epochs than the test waits for: the workers are never done when the run dies.
    cmd = [sys.executable, "-m", "training", "fit", "--format", "cmapss", "--history", str(train),
           "--out", str(tmp_path / "m.pt"), "--window", "10", "--hidden", "8", "--epochs", "1000",
           "--patience", "1000", "--windows-per-epoch", "2000", "--members", "2", "--threads", "2",
           "--val-fraction", "0.3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = Output(proc)
    pidfds: list[int] = []
    try:
        # Printed just before the pool starts; its workers are spawned (not yet initialised)
        # by the time the submits behind it return, well within the first epoch line's wait.
        assert out.wait(lambda: b"training 2 members in 2 processes" in out.text, 60.0), out.text
        if when == "training":
            assert out.wait(lambda: b"member 1: epoch 2/" in out.text, 60.0), out.text
        workers = _workers(proc.pid)
        if len(workers) < 2:  # the submits may not have returned yet: the next output comes after
            out.wait(lambda: len(_workers(proc.pid)) == 2, 10.0)
            workers = _workers(proc.pid)
        assert len(workers) == 2, out.text
        # Opened before the kill: a pidfd names the process itself, never a reused pid.
        pidfds = [os.pidfd_open(w) for w in workers]
        proc.kill()
        proc.wait(timeout=10)
        assert _all_exit(pidfds, 15.0), f"workers {workers} outlived the killed run"
        assert not (tmp_path / "m.pt").exists()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
        for fd in pidfds:
            if not select.select([fd], [], [], 0)[0]:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
