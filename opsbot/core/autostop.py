"""Auto stop: when a service stops by itself.

The Deploy form offers presets (1, 2, 4, 6 hours) and custom whole hours from 1 to 24; the API
and spec files may also give minutes, as the ModelArts API does. Written forms: ``"1h"``,
``"90m"``, ``"off"``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESET_HOURS: tuple[int, ...] = (1, 2, 4, 6)
DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60

_DURATION = re.compile(r"^\s*(\d+)\s*(h|hours?|m|min|minutes?)\s*$", re.IGNORECASE)

HINT = 'write "1h", "2h", "4h", "6h", any whole hours up to "24h", minutes such as "90m", or "off"'


class AutoStop(BaseModel):
    """Whether the service stops by itself, and how long after it starts."""

    # forbid: a misspelt key (`{hour = 3}`) must not silently become the default.
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Auto stop is on by default, as in ModelArts.")
    minutes: int = Field(
        DEFAULT_MINUTES,
        ge=1,
        le=MAX_MINUTES,
        description="Minutes from start until the service stops (1 to 1440).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return parse_auto_stop(value)

    def __str__(self) -> str:
        return format_auto_stop(self)

    @property
    def seconds(self) -> int:
        return self.minutes * 60


def parse_auto_stop(value: Any) -> Any:
    """Turn the written forms into the fields of AutoStop; leave anything else to pydantic.

    Raises ValueError with the accepted forms when text is not one of them.
    """
    if isinstance(value, AutoStop):
        return value
    if value is None or value is False:
        return {"enabled": False}
    if value is True:
        return {"enabled": True}
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "false", "no", "none", "disabled"):
            return {"enabled": False}
        if text in ("on", "true", "yes", "default"):
            return {"enabled": True}
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"{value!r} is not a duration: {HINT}")
        amount, unit = int(match.group(1)), match.group(2)[0]
        minutes = amount * 60 if unit == "h" else amount
        if not 1 <= minutes <= MAX_MINUTES:
            raise ValueError(f"{value!r} is outside 1 minute to 24 hours: {HINT}")
        return {"enabled": True, "minutes": minutes}
    if isinstance(value, int | float):
        # A bare number is ambiguous (hours in the form, minutes in the API): refuse it.
        raise ValueError(f"{value!r} has no unit: {HINT}")
    if isinstance(value, dict) and "hours" in value:
        rest = {k: v for k, v in value.items() if k != "hours"}
        hours = value["hours"]
        if isinstance(hours, bool) or not isinstance(hours, int):
            raise ValueError(f"hours must be a whole number from 1 to 24: {HINT}")
        return {**rest, "minutes": hours * 60}
    return value


def format_auto_stop(value: AutoStop) -> str:
    """The canonical written form: "off", "4h" or "90m"."""
    if not value.enabled:
        return "off"
    if value.minutes % 60 == 0:
        return f"{value.minutes // 60}h"
    return f"{value.minutes}m"
