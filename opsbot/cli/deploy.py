"""Deploying: check a spec (`opsbot validate`), deploy one (`opsbot deploy`), or show what a
deploy would be and change nothing (`opsbot deploy --dry-run`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from opsbot.cli.base import JSON_OPT, app, client, core, daemon_client, me
from opsbot.cli.output import (
    document,
    err,
    label,
    out,
    print_error,
    print_json,
    reports_errors,
    toml_text,
)
from opsbot.client import ControlClient, wire
from opsbot.core.errors import FieldError, InvalidInput, OpsbotError
from opsbot.core.spec import load_spec_file, spec_to_dict


@app.command()
def validate(
    file: Path = typer.Option(..., "-f", "--file", help="Spec file, TOML or JSON."),
    as_json: bool = JSON_OPT,
) -> None:
    """Check a spec file without a daemon: the normalised spec, or every error with its field.

    Model versions are checked against the local registry when one exists.
    """
    try:
        here = core()  # inside: a bad config.toml or flavors.toml is reported, not raised
        result = here.validate(me(here), load_spec_file(file))
    except OpsbotError as exc:
        print_error(exc)  # with --json, the Error document: every problem under "errors"
        raise typer.Exit(1) from None
    normalised = spec_to_dict(result.spec)
    warnings = [w.as_dict() for w in result.warnings]
    if as_json:
        print_json(
            {"spec": normalised, "warnings": warnings, "registry_checked": result.registry_checked}
        )
        return
    out.print(f"{file}: valid", style="green")
    if not result.registry_checked:
        out.print("note: no registry here yet, so model versions were not checked")
    for w in result.warnings:
        err.print(f"warning: {w.field}: {w.message}", markup=False)
    out.print(toml_text(normalised), markup=False)


def env_pairs(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(
                [FieldError("env", f"{pair!r} is not NAME=VALUE; write e.g. --env LOG_LEVEL=info")]
            )
        env[name] = value
    return env


@app.command()
@reports_errors
def deploy(
    file: Path | None = typer.Option(None, "-f", "--file", help="Spec file (TOML or JSON)."),
    name: str | None = typer.Option(None, "--name", help="Service name."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Model: NAME from My Models, or OWNER/NAME from My Subscriptions (then no "
        "--source is needed).",
    ),
    version: str | None = typer.Option(None, "--version", help="Model version (Normal)."),
    source: str | None = typer.Option(
        None,
        "--source",
        help="mine or subscribed; left out, it follows --model (OWNER/NAME: subscribed).",
    ),
    flavor: str | None = typer.Option(None, "--flavor", help="Flavor id: see `opsbot flavors`."),
    instances: int | None = typer.Option(
        None, "--instances", min=1, max=128, help="Compute nodes, 1-128."
    ),
    traffic_limit: int | None = typer.Option(
        None, "--traffic-limit", help="Requests per second for the service (default 100)."
    ),
    auto_stop: str | None = typer.Option(
        None, "--auto-stop", help='"1h" (default), "2h", "4h", "6h", up to "24h", "90m", "off".'
    ),
    env: list[str] = typer.Option([], "--env", help="NAME=VALUE; repeat for more."),
    description: str | None = typer.Option(None, "--description", help="At most 100 chars."),
    pool: str | None = typer.Option(None, "--pool", help="Resource pool (default public)."),
    wait: bool = typer.Option(False, "--wait", help="Block until Running or Failed."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check everything a deploy checks and print the information to confirm; deploy "
        "nothing.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Deploy a model as a real-time service (one version by flags, any spec with -f).

    With -f, --name, --traffic-limit, --auto-stop, --description and --pool override the
    file's values; the per-version flags (--model, --version, --source, --flavor,
    --instances, --env) are refused: write them in the file.
    """
    if dry_run and wait:
        raise InvalidInput(
            [FieldError("wait", "--wait cannot go with --dry-run: nothing is deployed to wait for")]
        )
    per_version = {
        "--model": model,
        "--version": version,
        "--source": source,
        "--flavor": flavor,
        "--instances": instances,
        "--env": env or None,
    }
    if file is not None:
        given = [flag for flag, value in per_version.items() if value is not None]
        if given:
            raise InvalidInput(
                [
                    FieldError(
                        given[0].lstrip("-"),
                        f"{', '.join(given)} cannot go with -f (which versions would they "
                        "change?); write them in the spec file",
                    )
                ]
            )
        data: dict[str, Any] = dict(load_spec_file(file))
    else:
        missing = [
            flag
            for flag, value in (("--name", name), ("--model", model), ("--version", version))
            if not value
        ]
        if missing:
            raise InvalidInput(
                [
                    FieldError(
                        missing[0].lstrip("-"),
                        f"{', '.join(missing)} required; e.g. opsbot deploy --name iris-one "
                        "--model iris --version 1.0.0 (or a spec file with -f)",
                    )
                ]
            )
        # No --source: the core reads the model reference (OWNER/NAME is a subscription).
        entry: dict[str, Any] = {"model": model, "version": version}
        for key, value in (("source", source), ("flavor", flavor), ("instances", instances)):
            if value is not None:
                entry[key] = value
        if env:
            entry["env"] = env_pairs(env)
        data = {"name": name, "models": [entry]}
    for key, value in (
        ("name", name),
        ("traffic_limit", traffic_limit),
        ("auto_stop", auto_stop),
        ("description", description),
        ("resource_pool", pool),
    ):
        if value is not None:
            data[key] = value
    if dry_run:
        _print_dry_run(_checked(data), as_json)
        return
    control = client()
    created = control.deploy(data)
    for w in created.warnings:
        err.print(f"warning: {w.field}: {w.message}", markup=False)
    result: wire.ServiceInfo = created
    if wait:
        result = _wait(control, created.name, quiet=as_json)
    if as_json:
        print_json({**document(result), "api_key": created.api_key})
    else:
        out.print(f"service {result.name}: {label(result.status)}", markup=False)
        out.print(f"URL:     {result.url}", markup=False)
        out.print(
            f"API key: {created.api_key}  (shown once; rotate with `opsbot key rotate`)",
            markup=False,
        )
        if result.status == "failed":
            out.print(f"reason:  {result.reason}", markup=False)
    if result.status == "failed":
        raise typer.Exit(1)


def _checked(data: dict[str, Any]) -> wire.Validated:
    """The spec checked as a deploy checks it, by the daemon when one answers (as the user its
    socket names), else by the core here (against the local registry when there is one)."""
    control = daemon_client()
    if control is not None:
        return control.validate(data)
    here = core()
    return wire.Validated.model_validate(here.validate(me(here), data).as_dict())


def _print_dry_run(checked: wire.Validated, as_json: bool) -> None:
    """The reference page's "After confirming the entered information": what would be
    deployed, a line per field, secrets masked; nothing was changed."""
    if as_json:
        print_json(document(checked))
        return
    out.print("Dry run: nothing was deployed. A deploy would confirm:", markup=False)
    width = max(len(line.label) for line in checked.summary)
    for line in checked.summary:
        out.print(f"  {line.label:<{width}}  {line.value}", markup=False)
    if not checked.registry_checked:
        out.print("note: no registry here yet, so model versions were not checked")
    for w in checked.warnings:
        err.print(f"warning: {w.field}: {w.message}", markup=False)


def _wait(client: ControlClient, name: str, quiet: bool = False) -> wire.ServiceDetail:
    """Poll until the service leaves Deploying, with a progress bar on stderr."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task(f"deploying {name}", total=100)
        while True:
            service = client.service(name)
            progress.update(task, completed=service.progress)
            if service.status != "deploying":
                return service
            time.sleep(0.5)
