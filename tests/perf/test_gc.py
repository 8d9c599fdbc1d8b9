"""Start-up objects are frozen out of the cyclic collector (agent.app.freeze_long_lived)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agent.app import freeze_long_lived


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object reference cycle that only the cyclic collector can free; a weak ref to it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session gets its collector back
    gc.collect()


def test_freeze_collects_first_then_keeps_collections_off_what_lived(unfrozen: None) -> None:
    """Garbage from start-up is collected before the freeze; what is alive then is frozen (a full
    collection no longer walks it); what serving creates afterwards is still collected."""
    gc.collect()
    garbage = cycle()
    kept = Node()
    kept.other = kept  # alive at start-up, and a cycle: the collector would walk it every time
    freeze_long_lived()
    assert garbage() is None  # collected by the freeze's own collection
    assert gc.get_freeze_count() > 1000  # everything alive: modules, functions, kept ...
    assert not any(o is kept for o in gc.get_objects())  # no generation holds it any more
    later = cycle()
    gc.collect()
    assert later() is None
