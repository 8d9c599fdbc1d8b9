"""A training run killed outright takes its member worker processes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.training.test_fit import drifting_cmapss

REPO = Path(__file__).resolve().parents[2]


def _state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _state(pid)
    return st is not None and st[0] not in ("Z", "X")


def _workers(parent: int) -> list[int]:
    """Live multiprocessing workers (not the resource tracker) whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = _state(int(entry.name))
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if st is not None and st[1] == parent and b"spawn_main" in cmd and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return bool(cond())


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
    log = tmp_path / "fit.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=out)
    workers: list[int] = []
    try:
        assert _wait_for(lambda: len(_workers(proc.pid)) == 2, 60.0), "the run never started 2 workers"
        workers = _workers(proc.pid)
        if when == "training":
            assert _wait_for(lambda: b"member 1: epoch 2/" in log.read_bytes(), 60.0), log.read_text()
        proc.kill()
        proc.wait(timeout=10)
        assert _wait_for(lambda: not any(map(_alive, workers)), 15.0), \
            f"workers {[w for w in workers if _alive(w)]} outlived the killed run"
        assert not (tmp_path / "m.pt").exists()
    finally:
        proc.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
