"""The model registry: My Models and My Subscriptions.

Writes go through the daemon when one answers (as the user its socket names); reads and, with
no daemon, writes use the core here, as the local user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from opsbot.cli.base import JSON_OPT, core, daemon_client, me, model_app
from opsbot.cli.output import document, err, out, print_json, reports_errors
from opsbot.client import wire
from opsbot.core.errors import NotFound


def _model_row(source: str, v: Any) -> dict[str, Any]:
    return v.as_dict(source)  # type: ignore[no-any-return]


@model_app.command("create")
@reports_errors
def model_create(
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Option(..., "--version", "-v", help="Version, such as 1.0.0."),
    path: Path = typer.Option(..., "--path", help="Directory holding the model files."),
    fmt: str = typer.Option(..., "--format", help="sklearn, onnx, python or image."),
    entry: str | None = typer.Option(
        None, help="python format: module:Class (default model:Model); image format: the image."
    ),
    origin: str = typer.Option("custom", help="custom, or exeml for ExeML-trained models."),
    description: str = typer.Option("", help="At most 100 characters."),
    as_json: bool = JSON_OPT,
) -> None:
    """Register a model version: it is Building, then Normal once it loaded and answered."""
    client = daemon_client()
    with err.status(f"checking {name} {version}: loading the model and predicting a sample"):
        if client is not None:
            made = client.create_model(
                name, version, path, fmt, entry=entry, origin=origin, description=description
            )
        else:
            here = core()
            made = wire.ModelInfo.model_validate(
                here.create_model(
                    me(here),
                    name,
                    version,
                    path,
                    fmt,
                    origin=origin,
                    entry=entry,
                    description=description,
                ).as_dict("mine")
            )
    if as_json:
        print_json(document(made))
    elif made.status == "normal":
        out.print(f"{name} {version} is Normal: it can be deployed", style="green")
    else:
        err.print(f"{name} {version} is Failed: {made.reason}", markup=False)
    if made.status != "normal":
        raise typer.Exit(1)


@model_app.command("list")
@reports_errors
def model_list(
    source: str | None = typer.Option(None, help="mine or subscribed (default: both)."),
    as_json: bool = JSON_OPT,
) -> None:
    """List My Models and My Subscriptions with each version's status."""
    here = core()
    if source not in (None, "mine", "subscribed"):
        raise typer.BadParameter("use mine or subscribed", param_hint="--source")
    rows = here.models(me(here), source)  # type: ignore[arg-type]
    if as_json:
        print_json([_model_row(s, v) for s, v in rows])
        return
    table = Table("source", "model", "version", "format", "status", "owner", "published")
    for s, v in rows:
        status = v.status.capitalize() + (f": {v.reason}" if v.reason else "")
        table.add_row(s, v.name, v.version, v.format, status, v.owner, "yes" if v.public else "")
    out.print(table)


@model_app.command("show")
@reports_errors
def model_show(
    name: str = typer.Argument(..., help="NAME, or OWNER/NAME for a subscribed model."),
    as_json: bool = JSON_OPT,
) -> None:
    """Show every version of one model."""
    here = core()
    owner, _, short = name.rpartition("/")
    rows = [
        (s, v)
        for s, v in here.models(me(here))
        if v.name == short and (not owner or v.owner == owner)
    ]
    if not rows:
        raise NotFound(f"no model {name}: see `opsbot model list`")
    if as_json:
        print_json([_model_row(s, v) for s, v in rows])
        return
    for s, v in rows:
        out.print(
            f"{v.ref} {v.version} [{s}] {v.format} {v.status.capitalize()} {v.reason}", markup=False
        )
        out.print(f"  path: {v.path}", markup=False)


@model_app.command("delete")
@reports_errors
def model_delete(
    name: str,
    version: str | None = typer.Option(
        None, "--version", "-v", help="One version; without it, the whole model."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Delete a model version (or the model); refused while a service uses it."""
    here = core()
    gone = here.delete_model(me(here), name, version)
    if as_json:
        print_json([v.as_dict("mine") for v in gone])
        return
    out.print(f"deleted {', '.join(f'{v.name} {v.version}' for v in gone)}", markup=False)


@model_app.command("publish")
@reports_errors
def model_publish(
    name: str,
    unpublish: bool = typer.Option(False, "--unpublish", help="Make it private again."),
    as_json: bool = JSON_OPT,
) -> None:
    """Make a model visible to every user, who can then subscribe to it."""
    client = daemon_client()
    if client is not None:
        done = client.publish_model(name, not unpublish)
    else:
        here = core()
        actor = me(here)
        here.publish_model(actor, name, not unpublish)
        done = wire.Published(owner=actor.name, name=name, public=not unpublish)
    if as_json:
        print_json(document(done))
        return
    out.print(f"{name} is {'private' if unpublish else 'published'}", markup=False)


@model_app.command("subscribe")
@reports_errors
def model_subscribe(
    ref: str = typer.Argument(..., help="OWNER/NAME of a published model."),
    as_json: bool = JSON_OPT,
) -> None:
    """Subscribe to a published model: it appears under My Subscriptions."""
    client = daemon_client()
    if client is not None:
        client.subscribe(ref)
    else:
        here = core()
        here.subscribe(me(here), ref)
    if as_json:
        print_json({"model": ref, "subscribed": True})
        return
    out.print(f"subscribed to {ref}", markup=False)


@model_app.command("examples")
@reports_errors
def model_examples(as_json: bool = JSON_OPT) -> None:
    """Create the iris example models (two versions, one also as ONNX) and publish them."""
    here = core()
    made = here.create_examples(me(here), lambda what: err.print(f"creating {what}", markup=False))
    if as_json:
        print_json([v.as_dict("mine") for v in made])
        return
    if not made:
        out.print("the example models exist already: see `opsbot model list`")
    for v in made:
        out.print(
            f"{v.name} {v.version} ({v.format}): {v.status.capitalize()} {v.reason}", markup=False
        )


# -- users --------------------------------------------------------------------------------
