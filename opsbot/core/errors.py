"""Errors are data: a short title, a message that says what to do, and the field concerned.

Every front end renders the same objects: the CLI prints them, the TUI shows them beside a
field, Slack puts them under an input with ``response_action: errors``.
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    """One problem with one field. ``field`` is a dotted path such as ``models[1].version``."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class OpsbotError(Exception):
    """Base of every error opsbot reports to a person.

    ``title`` is a few words ("Quota reached"); ``message`` says what happened and what to do.
    ``status`` is the HTTP status the control API answers with.
    """

    title = "Error"
    status = 400

    def __init__(self, message: str, *, field: str | None = None, title: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if title is not None:
            self.title = title

    @property
    def errors(self) -> list[FieldError]:
        """The field errors this error carries (one, or none when no field is concerned)."""
        return [FieldError(self.field, self.message)] if self.field else []

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "title": self.title,
            "message": self.message,
            "errors": [e.as_dict() for e in self.errors],
        }

    def __str__(self) -> str:
        return self.message


class InvalidInput(OpsbotError):
    """Input that breaks one or more rules; carries every problem found, each with its field."""

    title = "Invalid input"
    status = 422

    def __init__(self, errors: list[FieldError], *, title: str | None = None):
        if not errors:
            raise ValueError("InvalidInput needs at least one FieldError")
        self._errors = list(errors)
        lines = [f"{e.field}: {e.message}" for e in self._errors]
        super().__init__("\n".join(lines), title=title)

    @property
    def errors(self) -> list[FieldError]:
        return list(self._errors)


class SpecInvalid(InvalidInput):
    """A deploy spec (form, file, flags or API body) that breaks the form's rules."""

    title = "Invalid deploy spec"


class ConfigInvalid(InvalidInput):
    """The config file or flavors file breaks its rules; nothing was started or changed."""

    title = "Invalid configuration"


class NotFound(OpsbotError):
    title = "Not found"
    status = 404


class Conflict(OpsbotError):
    """The request is valid but the current state forbids it (in use, wrong status, exists)."""

    title = "Conflict"
    status = 409


class PermissionDenied(OpsbotError):
    title = "Not allowed"
    status = 403


class QuotaExceeded(OpsbotError):
    title = "Quota reached"
    status = 429


class CapacityExceeded(OpsbotError):
    title = "Not enough capacity"
    status = 409


class ModelInvalid(OpsbotError):
    """A model directory that cannot be registered (missing files, wrong format)."""

    title = "Invalid model"
    status = 422


class StorageFull(OpsbotError):
    """The disk holding OPSBOT_HOME is full: nothing was recorded."""

    title = "Disk full"
    status = 507


class StorageUnavailable(OpsbotError):
    """OPSBOT_HOME cannot be written (read-only, not ours): nothing was recorded."""

    title = "Storage not writable"
    status = 503


def storage_error(exc: BaseException, where: str = "the opsbot home") -> OpsbotError | None:
    """What a failed write means for a person, or None when ``exc`` is no such failure.

    SQLite rolls the transaction back, so the store still holds what it held before: the
    caller reports this error, never a status the store did not record.
    """
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, sqlite3.OperationalError) and "disk is full" in text
    ):
        return StorageFull(
            f"the disk holding {where} is full, so nothing was changed; free space there "
            "(old logs, unused model versions) and try again"
        )
    if (isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)) or (
        isinstance(exc, sqlite3.OperationalError)
        and ("readonly" in text or "read-only" in text or "unable to open" in text)
    ):
        return StorageUnavailable(
            f"{where} cannot be written ({exc}), so nothing was changed; make it writable for "
            "this account, or choose another with --home / OPSBOT_HOME"
        )
    return None
