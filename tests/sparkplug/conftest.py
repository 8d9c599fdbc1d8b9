"""Sparkplug fixtures; the helpers live in tests/sparkplug/helpers.py."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def s() -> Any:
    """A host with a 2 s reorder timeout and a 10 s rebirth interval (a helpers.Session)."""
    from tests.sparkplug.helpers import make_session

    return make_session()
