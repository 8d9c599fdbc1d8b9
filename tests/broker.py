"""Test-side names for the private broker (the implementation lives in `sim.broker`)."""

from sim.broker import Broker, free_port, wait_until

__all__ = ["Broker", "free_port", "wait_until"]
