"""Modifying a service: `opsbot update` (flags or a whole spec), its history, rollback."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from opsbot.cli.base import JSON_OPT, NAME_ARG, OWNER_OPT, app, client
from opsbot.cli.deploy import env_pairs
from opsbot.cli.output import document, documents, label, out, print_json, reports_errors
from opsbot.core import update as update_mod
from opsbot.core.errors import FieldError, InvalidInput
from opsbot.core.spec import load_spec_file


@app.command()
@reports_errors
def update(
    name: str = NAME_ARG,
    file: Path | None = typer.Option(
        None,
        "-f",
        "--file",
        help="A whole new spec (TOML or JSON) instead of flags; the flags below are refused "
        "beside it.",
    ),
    traffic: str | None = typer.Option(
        None,
        "--traffic",
        help="Ratios as VERSION=PERCENT,...; e.g. 1.0.0=90,2.0.0=10. A new version is added.",
    ),
    remove: list[str] = typer.Option([], "--remove", help="Drop a VERSION; repeat for more."),
    instances: str | None = typer.Option(
        None, "--instances", help="N for every version, or VERSION=N,..."
    ),
    flavor: str | None = typer.Option(
        None, "--flavor", help="FLAVOR for every version, or VERSION=FLAVOR,..."
    ),
    env: list[str] = typer.Option([], "--env", help="NAME=VALUE for every version; repeat."),
    unset_env: list[str] = typer.Option([], "--unset-env", help="Remove variable NAME."),
    traffic_limit: int | None = typer.Option(None, "--traffic-limit", help="Requests/s."),
    description: str | None = typer.Option(None, "--description", help="At most 100 chars."),
    auto_stop: str | None = typer.Option(None, "--auto-stop", help='"2h", "off", ...'),
    rule: list[str] = typer.Option(
        [],
        "--rule",
        help="HEADER=VALUE->VERSION or HEADER~REGEX->VERSION, checked in order before the "
        "ratios; repeat (replaces the rules).",
    ),
    clear_rules: bool = typer.Option(False, "--clear-rules", help="Remove every rule."),
    owner: str | None = OWNER_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Modify a service: versions and ratios, instances, flavor, env, limit, rules, auto stop.

    New instances become ready before the old ones drain and stop; refused while Deploying.
    Give either -f or flags: beside -f, flags are refused (the file is the whole spec).
    """
    flags = {
        "--traffic": traffic,
        "--remove": remove or None,
        "--instances": instances,
        "--flavor": flavor,
        "--env": env or None,
        "--unset-env": unset_env or None,
        "--traffic-limit": traffic_limit,
        "--description": description,
        "--auto-stop": auto_stop,
        "--rule": rule or None,
        "--clear-rules": clear_rules or None,
    }
    if file is not None:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise InvalidInput(
                [
                    FieldError(
                        given[0].lstrip("-"),
                        f"{', '.join(given)} cannot go with -f: the file is the whole new spec; "
                        "edit the file, or leave -f out and give only flags",
                    )
                ]
            )
        payload: dict[str, Any] = {"spec": load_spec_file(file)}
    else:
        changes: dict[str, Any] = {
            "remove": remove,
            "env_set": env_pairs(env) if env else None,
            "env_unset": unset_env,
            "traffic_limit": traffic_limit,
            "description": description,
            "auto_stop": auto_stop,
        }
        if traffic is not None:
            changes["traffic"] = update_mod.parse_assignments(traffic, "traffic")
        if instances is not None:
            changes["instances"] = update_mod.parse_assignments(
                instances, "instances", default_key="*"
            )
        if flavor is not None:
            changes["flavor"] = update_mod.parse_assignments(flavor, "flavor", default_key="*")
        changes = {k: v for k, v in changes.items() if v not in (None, [], ())}
        if rule or clear_rules:
            # An empty list is the change --clear-rules asks for: it must not be dropped.
            changes["rules"] = [update_mod.parse_rule(r) for r in rule]
        payload = {"changes": changes}
    s = client().update(name, owner=owner, **payload)
    if as_json:
        print_json(document(s))
        return
    if not s.changes:
        out.print(f"{s.name}: nothing to change", markup=False)
        return
    out.print(f"{s.name}: modified (snapshot #{s.snapshot}), {label(s.status)}", markup=False)
    for line in s.changes:
        out.print(f"  {line}", markup=False)


@app.command()
@reports_errors
def history(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """The service's config snapshots, #1 the deploy; each line says what changed."""
    rows = client().history(name, owner)
    if as_json:
        print_json(documents(rows))
        return
    table = Table("#", "when", "by", "changes")
    for i, r in enumerate(rows):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        what = "deployed" if i == 0 else "; ".join(r.changes) or "(no change)"
        table.add_row(str(r.n), when, r.actor, what)
    out.print(table)


@app.command()
@reports_errors
def rollback(
    name: str = NAME_ARG,
    to: int = typer.Option(..., "--to", min=1, help="The snapshot number, from `opsbot history`."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the difference only."),
    owner: str | None = OWNER_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Bring a service back to snapshot N: shows the difference, then applies it."""
    control = client()
    preview = control.rollback_preview(name, to, owner)
    if not as_json:
        if not preview.changes:
            out.print(f"{name} already matches snapshot #{to}", markup=False)
            return
        out.print(f"{name}: back to snapshot #{to} changes", markup=False)
        for line in preview.changes:
            out.print(f"  {line}", markup=False)
    if dry_run:
        if as_json:
            print_json(document(preview))
        return
    s = control.rollback(name, to, owner)
    if as_json:
        print_json(document(s))
    else:
        out.print(
            f"{s.name}: rolled back (snapshot #{s.snapshot}), {label(s.status)}", markup=False
        )
