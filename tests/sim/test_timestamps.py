"""Event-time text: epoch seconds and RFC 3339 in, RFC 3339 UTC out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from sim.timestamps import DEFAULT_START_TS, format_rfc3339, json_ts, parse_time


class TestParseTime:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("1767225600", 1_767_225_600.0),
            ("1767225600.25", 1_767_225_600.25),
            ("2026-01-01T00:00:00Z", 1_767_225_600.0),
            ("2026-01-01T02:00:00+02:00", 1_767_225_600.0),
            ("2026-01-01t00:00:00.5z", 1_767_225_600.5),
        ],
    )
    def test_accepts_epoch_and_rfc3339(self, text: str, expected: float) -> None:
        """Epoch seconds and RFC 3339 with a zone parse to the same epoch seconds."""
        assert parse_time(text) == expected

    @pytest.mark.parametrize("text", ["2026-01-01T00:00:00", "tomorrow", "inf", ""])
    def test_rejects_zone_less_or_garbage(self, text: str) -> None:
        """A time without a zone, a word, or infinity raises ConfigError."""
        with pytest.raises(ConfigError):
            parse_time(text)

    @given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
    def test_format_round_trips_to_the_millisecond(self, ts: float) -> None:
        """Formatting then parsing returns the time to within a millisecond."""
        assert abs(parse_time(format_rfc3339(ts)) - ts) <= 0.001


def test_default_start_is_2026() -> None:
    """The default history origin is 2026-01-01T00:00:00Z."""
    assert format_rfc3339(DEFAULT_START_TS) == "2026-01-01T00:00:00.000Z"


def test_json_ts_keeps_whole_seconds_integral() -> None:
    """Whole seconds become ints in JSON; fractions stay floats."""
    assert json_ts(100.0) == 100 and isinstance(json_ts(100.0), int)
    assert json_ts(100.5) == 100.5
