"""Shared fixtures: a private Mosquitto per session or per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import Broker


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
