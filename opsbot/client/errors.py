"""Errors on the client's side: the daemon's Error documents rebuilt as the core's classes.

A refusal the core raised as ``QuotaExceeded`` reaches the caller as a ``QuotaExceeded`` (with
its title, message, field errors and HTTP status), so a front handles it exactly as it would
in-process. Every rebuilt error is also a :class:`RemoteError`, which says it came over the wire
and keeps the kind the daemon named (``MethodNotAllowed``, ``Unauthorized``...) even when the
core has no class of that name.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from opsbot.client.wire import ErrorDocument
from opsbot.core import errors as core_errors
from opsbot.core.errors import FieldError, OpsbotError


class DaemonUnavailable(OpsbotError):
    """No daemon answers on the socket (or it may not be used): nothing was sent."""

    title = "Daemon not running"
    status = 503


class RemoteError(OpsbotError):
    """An error the daemon reported, rebuilt on this side."""

    def __init__(self, payload: dict[str, Any], status: int):
        try:
            doc = ErrorDocument.model_validate(payload)
        except ValidationError:
            doc = ErrorDocument(message=f"the daemon answered HTTP {status} with {payload!r}")
        super().__init__(doc.message, title=doc.title)
        self.status = status
        self.kind = doc.error
        self._errors = [FieldError(e.field, e.message) for e in doc.errors]
        self.field = self._errors[0].field if self._errors else None

    @property
    def errors(self) -> list[FieldError]:
        return list(self._errors)

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "error": self.kind}


def _core_classes() -> dict[str, type[OpsbotError]]:
    """The core's error classes by name, as the daemon names them in ``error``."""
    found: dict[str, type[OpsbotError]] = {}
    pending: list[type[OpsbotError]] = [OpsbotError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == core_errors.__name__:
            found[cls.__name__] = cls
        pending += cls.__subclasses__()
    return found


CORE_CLASSES = _core_classes()
#: Each core class as rebuilt from the wire: still that class for ``except``, and a RemoteError.
REMOTE_CLASSES: dict[str, type[RemoteError]] = {
    name: type(name, (cls, RemoteError), {"__module__": __name__})
    for name, cls in CORE_CLASSES.items()
    if cls is not OpsbotError
}


def error_from(payload: Any, status: int) -> RemoteError:
    """The exception an Error document stands for: the core's class of that name (a
    ``NotFound`` stays a ``NotFound``), else a plain RemoteError with the daemon's kind."""
    document = payload if isinstance(payload, dict) else {}
    cls = REMOTE_CLASSES.get(str(document.get("error", "")), RemoteError)
    exc = cls.__new__(cls)
    RemoteError.__init__(exc, document, status)
    return exc
