"""Shared fixtures: a private Mosquitto per session or per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.procs import cli


def _require_mosquitto() -> None:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise RuntimeError("mosquitto is not installed; .ci/run installs it (apt-get install mosquitto)")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One private broker for the whole session (tests use distinct topic prefixes)."""
    _require_mosquitto()
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test, which the test may kill and restart."""
    _require_mosquitto()
    b = Broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained in seconds on simulated history (shared by end-to-end tests)."""
    d = tmp_path_factory.mktemp("trained")
    cli("vigil-sim", "history", "--assets", "10", "--days", "14", "--seed", "3", "--out", str(d))
    cli("vigil-train", "fit", "--history", str(d / "history.csv"), "--events", str(d / "events.csv"),
        "--epochs", "4", "--windows-per-epoch", "12000", "--hidden", "24", "--seed", "1",
        "--quiet", "--out", str(d / "model.pt"))
    return d / "model.pt"
