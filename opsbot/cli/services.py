"""Services: list, show, stop, start, delete, extend and auto stop."""

from __future__ import annotations

import typer
from rich import box
from rich.table import Table

from opsbot.cli.base import JSON_OPT, NAME_ARG, OWNER_OPT, app, client
from opsbot.cli.output import (
    auto_stop_text,
    document,
    documents,
    figure,
    label,
    out,
    print_json,
    reports_errors,
    stats_cells,
)
from opsbot.client import wire
from opsbot.core.errors import FieldError, InvalidInput
from opsbot.core.timefmt import format_remaining


def _versions(service: wire.ServiceInfo) -> str:
    return ", ".join(f"{m.model} {m.version} {m.traffic_ratio}%" for m in service.models)


@app.command("services")
@reports_errors
def services_cmd(
    everyone: bool = typer.Option(False, "--all", "-a", help="Everyone's services."),
    as_json: bool = JSON_OPT,
) -> None:
    """List services: status, versions and traffic split, auto-stop countdown, URL."""
    rows = client().services(everyone)
    if as_json:
        print_json(documents(rows))
        return
    table = Table("name", "owner", "status", "versions", "auto stop", "url")
    for s in rows:
        status = label(s.status) + (f" {s.progress}%" if s.status == "deploying" else "")
        table.add_row(
            s.name, s.owner, status, _versions(s), auto_stop_text(s.remaining_s, s.auto_stop), s.url
        )
    out.print(table)


@app.command()
@reports_errors
def show(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """One service: status, URL, versions, instances (with CPU and memory), auto stop."""
    s = client().service(name, owner, stats=True)
    if as_json:
        print_json(document(s))
        return
    lines = [
        ("name", s.name),
        ("owner", s.owner),
        ("status", label(s.status) + (f" ({s.reason})" if s.reason else "")),
        ("url", s.url),
        ("auto stop", auto_stop_text(s.remaining_s, s.auto_stop)),
        ("traffic limit", f"{s.traffic_limit}/s"),
        ("pool", s.resource_pool),
        ("description", s.description),
    ]
    for key, value in lines:
        out.print(f"{key:>14}: {value}", markup=False)
    numbers = {(v.model, v.version): v for v in s.versions}
    version_of = {v.idx: v.version for v in s.versions}
    several = len({m.model for m in s.models}) > 1
    versions = Table(
        "version",
        "ratio",
        "ready",
        "calls",
        "failed",
        "p50 ms",
        "p99 ms",
        "cpu",
        "memory",
        title="versions",
        box=box.SIMPLE,
    )
    for m in s.models:
        v = numbers.get((m.model, m.version))
        versions.add_row(
            f"{m.model} {m.version}" if several else m.version,
            f"{m.traffic_ratio}%",
            f"{v.ready if v else '?'}/{m.instances}",
            figure(v and v.calls),
            figure(v and v.failures),
            figure(None if v is None or v.p50_ms is None else round(v.p50_ms, 1)),
            figure(None if v is None or v.p99_ms is None else round(v.p99_ms, 1)),
            figure(v and v.cpu_percent, "%"),
            figure(v and v.memory_bytes and round(v.memory_bytes / 2**20), " MiB"),
        )
    out.print(versions)
    for m in s.models:
        env = ", ".join(f"{k}={value}" for k, value in m.env.items())
        out.print(
            f"{m.model} {m.version}: {m.instances} x {m.flavor}" + (f", env {env}" if env else ""),
            markup=False,
        )
    for i, r in enumerate(s.rules):
        test = f"= {r.equals}" if r.equals is not None else f"~ {r.matches}"
        out.print(f"rule {i + 1}: {r.header} {test} -> {r.version}", markup=False)
    with_stats = any(inst.stats is not None for inst in s.instances)  # if the runtime tells
    columns = ["version", "n", "state", "node", "restarts", "reason"]
    table = Table(*columns, *(["cpu", "memory"] if with_stats else []))
    for inst in s.instances:
        row = [
            version_of.get(inst.version_index, str(inst.version_index)),
            str(inst.n),
            inst.state,
            inst.node,
            str(inst.restarts),
            inst.reason,
        ]
        if with_stats:
            row += stats_cells(inst.stats)
        table.add_row(*row)
    out.print(table)
    # Addresses on lines of their own, whole: a unix socket's path does not fit a table column
    # on an 80-column terminal, and cut short it could not be copied.
    for inst in s.instances:
        where = version_of.get(inst.version_index, str(inst.version_index))
        out.print(f"{where} #{inst.n} at {inst.address}", markup=False, soft_wrap=True)


def _said(service: wire.ServiceInfo, as_json: bool) -> None:
    if as_json:
        print_json(document(service))
    else:
        out.print(f"{service.name}: {label(service.status)}", markup=False)


@app.command()
@reports_errors
def stop(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """Stop a service (its instances stop; it keeps its name, key and settings)."""
    _said(client().stop(name, owner), as_json)


@app.command()
@reports_errors
def start(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """Start a Stopped or Failed service again."""
    _said(client().start(name, owner), as_json)


@app.command()
@reports_errors
def delete(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """Delete a service: instances stop, then the service and its key are gone."""
    _said(client().delete(name, owner), as_json)


@app.command()
@reports_errors
def extend(
    name: str = NAME_ARG,
    hours: str = typer.Argument(..., help="1h, 2h, 4h, 6h or any whole hours up to 24h."),
    owner: str | None = OWNER_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Add HOURS to a running service's time left, up to 24 h from now (reminder moves too)."""
    text = hours.strip().lower().removesuffix("h")
    if not text.isdigit():
        raise InvalidInput([FieldError("hours", f"{hours!r}: write whole hours such as 2h")])
    s = client().extend(name, int(text), owner)
    if as_json:
        print_json(document(s))
    else:
        out.print(f"{s.name}: stops in {format_remaining(s.remaining_s or 0)}", markup=False)


@app.command()
@reports_errors
def autostop(
    name: str = NAME_ARG,
    value: str = typer.Argument(..., help='"off", "on", or a duration: 1h, 2h, 4h, 6h, 90m.'),
    owner: str | None = OWNER_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Turn a service's auto stop off, on again, or on with a new duration."""
    s = client().set_auto_stop(name, value, owner)
    if as_json:
        print_json(document(s))
    else:
        out.print(f"{s.name}: auto stop {auto_stop_text(s.remaining_s, s.auto_stop)}", markup=False)
