"""How the CLI prints: results as text or one JSON document, errors as one line (or JSON)."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from opsbot.core.config import default_home
from opsbot.core.errors import OpsbotError, storage_error
from opsbot.core.status import Status
from opsbot.core.timefmt import format_remaining

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


class State:
    home: Path | None = None
    #: --json was given: results and errors are JSON documents on stdout.
    as_json: bool = False


def home() -> Path:
    return State.home or default_home()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def document(answer: BaseModel) -> dict[str, Any]:
    """An answer of the control API as ``--json`` prints it: the keys the daemon sent."""
    return answer.model_dump(mode="json", exclude_unset=True)


def documents(answers: Iterable[BaseModel]) -> list[dict[str, Any]]:
    return [document(a) for a in answers]


def error_document(exc: OpsbotError) -> dict[str, Any]:
    """An error as ``--json`` prints it: the API's Error document plus the first field."""
    doc = exc.as_dict()
    doc["field"] = exc.errors[0].field if exc.errors else None
    return doc


def print_error(exc: OpsbotError) -> None:
    """One line (one per field when several are wrong), or the JSON document with --json."""
    if State.as_json:
        print_json(error_document(exc))
        return
    if len(exc.errors) > 1:
        err.print(f"[bold red]Error[/]: {exc.title}", markup=True)
        for e in exc.errors:
            err.print(f"  {e.field}: {e.message}", markup=False)
        return
    text = f"{exc.errors[0].field}: {exc.errors[0].message}" if exc.errors else exc.message
    err.print("[bold red]Error[/]: ", end="", markup=True)
    err.print(f"{exc.title}: {text}", markup=False)


def as_opsbot_error(exc: OSError | sqlite3.Error) -> OpsbotError:
    """A file or storage failure as the error a person reads: what, where, what to do."""
    known = storage_error(exc, where=str(home()))
    if known is not None:
        return known
    if isinstance(exc, sqlite3.Error):
        return OpsbotError(
            f"the store in {home()} failed: {exc}; check the disk, then try again",
            title="Store error",
        )
    where = f" {exc.filename}" if exc.filename else ""
    return OpsbotError(
        f"cannot use{where}: {exc.strerror or exc}; check the path and its permissions",
        title="File error",
    )


def reports_errors(fn: F) -> F:
    """Turn OpsbotError (and file errors) into one message and exit code 1: never a
    traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OpsbotError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
        except (OSError, sqlite3.Error) as exc:
            print_error(as_opsbot_error(exc))
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def label(status: str) -> str:
    """A status as the reference page writes it: Running, Stopped."""
    try:
        return Status(status).label
    except ValueError:
        return status.capitalize()


def auto_stop_text(remaining_s: float | None, auto_stop: str) -> str:
    if remaining_s is not None:
        return f"in {format_remaining(remaining_s)}"
    return auto_stop


def figure(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def stats_cells(stats: dict[str, float] | None) -> list[str]:
    if not stats:
        return ["", ""]
    mib, limit = stats["memory_bytes"] / 2**20, stats["memory_limit_bytes"] / 2**30
    memory = f"{mib:.0f} MiB" + (f" / {limit:g} GiB" if limit else "")
    return [f"{stats['cpu_percent']:.1f}%", memory]


def toml_text(data: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(data)
