"""free_port: loopback ports for test servers that outgoing connections cannot take first."""

from __future__ import annotations

import random
import socket

import pytest

from sim.broker import _ephemeral_low, free_port


def test_ports_are_free_and_below_the_ephemeral_range() -> None:
    """Each port binds, and none is in the range the kernel draws source ports of outgoing
    connections from (a port from there could be taken before the server binds it)."""
    low = _ephemeral_low()
    ports = [free_port() for _ in range(20)]
    assert all(1024 <= p < low for p in ports)
    for p in ports[:3]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drawn port that something listens on is passed over for the next draw."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        spare = free_port()
        draws = iter([taken, taken, spare])
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: next(draws))
        assert free_port() == spare
