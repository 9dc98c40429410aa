"""The control API's request bodies and query parameters, defined once.

The handlers validate with these models and the OpenAPI document publishes their JSON schemas,
so the document cannot be looser than the code: unknown keys are refused (422), and a value of
the wrong type is refused rather than coerced (``true`` is not an object, ``"1"`` not a number).
"""

from __future__ import annotations

from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsbot.core.errors import FieldError, InvalidInput
from opsbot.core.events import Level
from opsbot.core.registry import FORMATS, ORIGINS
from opsbot.core.spec import Source

M = TypeVar("M", bound=BaseModel)

#: Choices and bounds of the query parameters, from the core where it defines them.
LEVELS: tuple[str, ...] = tuple(level.value for level in Level)
SOURCES: tuple[str, ...] = get_args(Source)
#: At most this many log lines per instance in one answer (the CLI's --tail too).
MAX_TAIL = 10_000
MAX_ID = 2**63 - 1


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PublishBody(Body):
    """Publish a model, or with ``public: false`` make it private again."""

    public: bool = Field(True, description="false makes the model private again")


class ExtendBody(Body):
    hours: int = Field(description="whole hours from now, as the auto stop presets allow")


class AutoStopBody(Body):
    auto_stop: str = Field(description='"off", "on", or a duration such as "4h"')


class RollbackBody(Body):
    to: int = Field(description="the snapshot number, from the history")
    dry_run: bool = Field(False, description="only answer the changes")


class UpdateBody(Body):
    """A whole new spec, or changes to the current one: exactly one of the two."""

    spec: dict[str, Any] | None = Field(None, description="a whole deploy spec (DeploySpec)")
    changes: dict[str, Any] | None = Field(None, description="changes (Changes)")


class ModelCreateBody(Body):
    name: str
    version: str
    path: str = Field(description="absolute path of a directory the caller may read")
    # The choices are the registry's, checked there with every other rule of a model; the
    # document lists them from the same constants.
    format: str = Field(json_schema_extra={"enum": list(FORMATS)})
    entry: str | None = Field(None, description="python: module:Class; image: the image")
    origin: str = Field("custom", json_schema_extra={"enum": list(ORIGINS)})
    description: str = ""


def parse(model: type[M], data: Any, where: str = "") -> M:
    """``data`` as ``model``; every problem as a field error (422) naming its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(
            [
                FieldError(
                    ".".join([*([where] if where else []), *(str(p) for p in e["loc"])]) or "body",
                    _message(e["type"], str(e["msg"])),
                )
                for e in exc.errors(include_url=False)
            ],
            title="Invalid request",
        ) from None


def _message(kind: str, msg: str) -> str:
    if kind == "extra_forbidden":
        return "unknown field; remove it (see /openapi.json for the fields)"
    if kind == "model_type":
        return "send a JSON object"
    return msg


def query_int(value: str | None, field: str, default: int, lowest: int, highest: int) -> int:
    """An integer query parameter within bounds (absent: ``default``); a clear 422 otherwise."""
    if value is None:
        return default
    text = value.strip()
    if not (text.isascii() and text.lstrip("-").isdigit()) or not lowest <= int(text) <= highest:
        raise InvalidInput(
            [FieldError(field, f"{value!r}: give a whole number from {lowest} to {highest}")],
            title="Invalid request",
        )
    return int(text)


def query_choice(value: str | None, field: str, choices: tuple[str, ...]) -> str | None:
    """One of ``choices`` (absent: None); a clear 422 otherwise, an empty value included."""
    if value is None:
        return None
    if value not in choices:
        raise InvalidInput(
            [FieldError(field, f"{value!r}: use one of {', '.join(choices)}")],
            title="Invalid request",
        )
    return value
