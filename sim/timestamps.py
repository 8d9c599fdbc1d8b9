"""Event-time parsing and formatting: epoch seconds or RFC 3339 text, always UTC."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from agent.errors import ConfigError

# 2026-01-01T00:00:00Z: a fixed, period-aligned origin so default histories are reproducible.
DEFAULT_START_TS = 1_767_225_600.0


def parse_time(text: str) -> float:
    """Epoch seconds from epoch-seconds or RFC 3339 (with a zone) text; ConfigError otherwise."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ConfigError(f"time {text!r} is not a finite number")
        return value
    try:
        # fromisoformat in 3.11 takes the RFC 3339 forms, 'Z' included, and lowercase t/z.
        parsed = datetime.fromisoformat(text.upper())
    except ValueError as exc:
        raise ConfigError(f"time {text!r} is neither epoch seconds nor RFC 3339") from exc
    if parsed.tzinfo is None:
        # A zone-less time means something different on every gateway; refuse to guess.
        raise ConfigError(f"time {text!r} has no zone offset (add 'Z' or '+00:00')")
    return parsed.timestamp()


def format_rfc3339(ts: float) -> str:
    """RFC 3339 UTC text with milliseconds, e.g. 2026-01-01T00:00:00.000Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def json_ts(ts: float) -> int | float:
    """`ts` as a JSON number: an int when it is a whole second, so payloads stay short."""
    return int(ts) if float(ts).is_integer() else round(float(ts), 6)
