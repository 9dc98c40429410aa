"""Watching a service: predictions through the gateway, events, instance logs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from opsbot.cli.base import JSON_OPT, NAME_ARG, OWNER_OPT, app, client
from opsbot.cli.output import document, documents, out, print_json, reports_errors
from opsbot.client import wire
from opsbot.core.errors import FieldError, InvalidInput
from opsbot.core.events import Level
from opsbot.daemon.bodies import MAX_TAIL


@app.command()
@reports_errors
def predict(
    name: str = NAME_ARG,
    data: str = typer.Option(
        ...,
        "--data",
        "-d",
        help="JSON body, or @FILE; e.g. '{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}'",
    ),
    owner: str | None = OWNER_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Send a prediction through the gateway (as the owner; no key needed)."""
    text = _read_data(data)
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            [FieldError("data", f'not JSON ({exc}); e.g. {{"instances": [[1, 2]]}}')]
        ) from None
    reply = client().predict(name, text.encode(), owner)
    if as_json:
        print_json(document(reply))
    else:
        out.print(
            f"HTTP {reply.status} from version {reply.version or '-'} in {reply.latency_ms} ms",
            markup=False,
        )
        out.print(json.dumps(reply.response, indent=2), markup=False)
    if reply.status >= 400:
        raise typer.Exit(1)


def _read_data(data: str) -> str:
    """The --data value, or the text of the file named after @."""
    if not data.startswith("@"):
        return data
    path = Path(data[1:]).expanduser()
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidInput(
            [FieldError("data", f"cannot read {path}: {why}; give @FILE of a JSON file")]
        ) from None


@app.command()
@reports_errors
def events(
    name: str | None = typer.Argument(None, help="Service name (default: all you can see)."),
    level: Level | None = typer.Option(None, help="normal or abnormal."),
    since: str | None = typer.Option(None, help="Only newer than this: 30m, 1h, 2d."),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Keep printing new events (with --json: one JSON object per line, as they come).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Events: every change of state, with level, who and why."""
    control = client()
    wanted = level.value if level is not None else None
    rows = control.events(name, level=wanted, since=since)
    if as_json and not follow:
        print_json(documents(rows))  # one document, as every other --json
        return
    for e in rows:
        _print_event(e, as_json)
    if not follow:
        return
    # live: the daemon streams events (server-sent events) from the last one printed on
    after = max((e.id for e in rows), default=0)
    for e in control.follow_events(service=name, level=wanted, after_id=after or None):
        _print_event(e, as_json)


def _print_event(e: wire.EventInfo, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document(e)) + "\n")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        out.print(
            f"{when} {e.level:<8} {e.service or '-':<20} {e.kind:<18} {e.message} (by {e.actor})",
            markup=False,
        )
    sys.stdout.flush()


@app.command()
@reports_errors
def logs(
    name: str = NAME_ARG,
    tail: int = typer.Option(100, min=1, max=MAX_TAIL, help=f"Lines per instance, 1-{MAX_TAIL}."),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Keep printing new lines (with --json: one JSON string per line).",
    ),
    owner: str | None = OWNER_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """The log lines of the service's instances."""
    control = client()
    seen: list[str] = []
    while True:
        lines = control.logs(name, tail, owner)
        if as_json and not follow:
            print_json(lines)
            return
        for line in new_lines(seen, lines):
            if as_json:
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
                continue
            out.print(line, markup=False, highlight=False)
        seen = lines
        if not follow:
            return
        time.sleep(1)


def new_lines(before: list[str], after: list[str]) -> list[str]:
    """Lines of ``after`` not yet printed: after the longest suffix of ``before`` it starts with."""
    for k in range(min(len(before), len(after)), 0, -1):
        if before[-k:] == after[:k]:
            return after[k:]
    return after if before != after else []
