"""Durations as people write them ("90s", "30m", "1h", "2d") and remaining time as shown."""

from __future__ import annotations

import re

from opsbot.core.errors import FieldError, InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE)


def parse_duration_s(text: str, *, field: str = "duration") -> float:
    """Seconds in "45s", "30m", "1h" or "2d"; InvalidInput naming the field otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInput(
            [FieldError(field, f"{text!r} is not a duration; write e.g. 45s, 30m, 1h or 2d")]
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def format_remaining(seconds: float | None) -> str:
    """ "1h 05m", "4m 10s", "0s"; an empty string when there is no deadline."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
