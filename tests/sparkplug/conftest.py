"""Sparkplug fixtures; the helpers live in tests/sparkplug/helpers.py.

Each test module starts with `pytest.importorskip("google.protobuf")`: until pyproject lists
the protobuf runtime (docs/sparkplug.md), a fresh environment could not import agent.sparkplug,
and the skip says why instead of failing collection.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def s() -> Any:
    """A host with a 2 s reorder timeout and a 10 s rebirth interval (a helpers.Session)."""
    from tests.sparkplug.helpers import make_session

    return make_session()
