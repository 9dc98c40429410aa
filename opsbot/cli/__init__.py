"""The opsbot command line: parses flags, makes one call (the control client's, or the core's
for what needs no daemon), prints the result or the error. It holds no rules of its own.

The commands live in this package by group: ``deploy`` (validate, deploy, --dry-run),
``services`` (list, show, stop, start, delete, extend, auto stop), ``modify`` (update, history,
rollback), ``watch`` (predict, events, logs), ``models``, ``resources`` (flavors, nodes),
``access`` (keys, tokens, users), ``daemon`` (up, down, tui, image); ``output`` prints.
"""

from __future__ import annotations

import sys

import typer

# Importing a group's module registers its commands on ``app``.
from opsbot.cli import access, daemon, deploy, models, modify, resources, services, watch
from opsbot.cli.base import app
from opsbot.cli.output import State, err, print_json

GROUPS = (access, daemon, deploy, models, modify, resources, services, watch)
__all__ = ["GROUPS", "app", "main"]


def main() -> None:
    """The console script: usage errors (a bad flag or value) follow --json too."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors: bad flags and values
        if State.as_json or "--json" in sys.argv:
            param = getattr(exc, "param", None)
            print_json(
                {
                    "error": "UsageError",
                    "title": "Invalid usage",
                    "message": exc.format_message(),
                    "field": getattr(param, "name", None),
                    "errors": [],
                }
            )
        else:
            show = getattr(exc, "show", None)
            if show is not None:
                show()
            else:
                err.print(f"Error: {exc.format_message()}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
