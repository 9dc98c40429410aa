"""The opsbot command line: parses flags, calls the core, prints the result or the error.

It holds no rules of its own; every check lives in opsbot.core.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from opsbot.core.app import Core
from opsbot.core.config import default_home
from opsbot.core.errors import OpsbotError
from opsbot.core.identity import User, local_user_name
from opsbot.core.spec import load_spec_file, spec_to_dict

app = typer.Typer(
    help="Deploy ML models as real-time HTTP services on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
model_app = typer.Typer(
    help="The model registry: My Models and My Subscriptions.", no_args_is_help=True
)
user_app = typer.Typer(help="Users: link Slack accounts to local ones.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(user_app, name="user")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPT = typer.Option(False, "--json", help="Print JSON instead of a table.")


class State:
    home: Path | None = None


@app.callback()
def _root(
    home: Path | None = typer.Option(
        None,
        "--home",
        help="Data directory (default: $OPSBOT_HOME or the user data dir).",
        envvar="OPSBOT_HOME",
    ),
) -> None:
    State.home = home


def _core() -> Core:
    return Core(State.home or default_home())


def _me(core: Core) -> User:
    return core.user(local_user_name())


def print_error(exc: OpsbotError) -> None:
    err.print(f"[bold red]Error[/]: {exc.title}", markup=True)
    if exc.errors:
        for e in exc.errors:
            err.print(f"  {e.field}: {e.message}", markup=False)
    else:
        err.print(f"  {exc.message}", markup=False)


def reports_errors(fn: F) -> F:
    """Turn OpsbotError into a message on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OpsbotError as exc:
            print_error(exc)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- spec ---------------------------------------------------------------------------------


@app.command()
def validate(
    file: Path = typer.Option(..., "-f", "--file", help="Spec file, TOML or JSON."),
    as_json: bool = JSON_OPT,
) -> None:
    """Check a spec file without a daemon: the normalised spec, or every error with its field.

    Model versions are checked against the local registry when one exists.
    """
    core = _core()
    try:
        result = core.validate(_me(core), load_spec_file(file))
    except OpsbotError as exc:
        if as_json:
            _json([e.as_dict() for e in exc.errors] or [{"field": "spec", "message": exc.message}])
        else:
            print_error(exc)
        raise typer.Exit(1) from None
    normalised = spec_to_dict(result.spec)
    warnings = [w.as_dict() for w in result.warnings]
    if as_json:
        _json(
            {"spec": normalised, "warnings": warnings, "registry_checked": result.registry_checked}
        )
        return
    out.print(f"{file}: valid", style="green")
    if not result.registry_checked:
        out.print("note: no registry here yet, so model versions were not checked")
    for w in result.warnings:
        err.print(f"warning: {w.field}: {w.message}", markup=False)
    out.print(_toml(normalised), markup=False)


def _toml(data: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(data)


# -- flavors ------------------------------------------------------------------------------


@app.command()
@reports_errors
def flavors(
    pool: str = typer.Option("public", help="Resource pool to check the flavors against."),
    as_json: bool = JSON_OPT,
) -> None:
    """List the flavors (specifications), marking those no node can host, with the reason."""
    statuses = _core().flavor_statuses(pool)
    if as_json:
        _json([s.as_dict() for s in statuses])
        return
    table = Table("id", "specification", "models", "available")
    for s in statuses:
        table.add_row(
            s.flavor.id,
            s.flavor.name,
            ", ".join(s.flavor.allows),
            "yes" if s.available else f"no: {s.reason}",
            style=None if s.available else "dim",
        )
    out.print(table)


# -- models -------------------------------------------------------------------------------


def _model_row(source: str, v: Any) -> dict[str, Any]:
    return v.as_dict(source)  # type: ignore[no-any-return]


@model_app.command("create")
@reports_errors
def model_create(
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Option(..., "--version", "-v", help="Version, such as 1.0.0."),
    path: Path = typer.Option(..., "--path", help="Directory holding the model files."),
    fmt: str = typer.Option(..., "--format", help="sklearn, onnx or python."),
    entry: str | None = typer.Option(
        None, help="python format: module:Class (default model:Model)."
    ),
    origin: str = typer.Option("custom", help="custom, or exeml for ExeML-trained models."),
    description: str = typer.Option("", help="At most 100 characters."),
    as_json: bool = JSON_OPT,
) -> None:
    """Register a model version: it is Building, then Normal once it loaded and answered."""
    core = _core()
    with err.status(f"checking {name} {version}: loading the model and predicting a sample"):
        mv = core.create_model(
            _me(core),
            name,
            version,
            path,
            fmt,
            origin=origin,
            entry=entry,
            description=description,
        )
    if as_json:
        _json(mv.as_dict("mine"))
    elif mv.status == "normal":
        out.print(f"{name} {version} is Normal: it can be deployed", style="green")
    else:
        err.print(f"{name} {version} is Failed: {mv.reason}", markup=False)
    if mv.status != "normal":
        raise typer.Exit(1)


@model_app.command("list")
@reports_errors
def model_list(
    source: str | None = typer.Option(None, help="mine or subscribed (default: both)."),
    as_json: bool = JSON_OPT,
) -> None:
    """List My Models and My Subscriptions with each version's status."""
    core = _core()
    if source not in (None, "mine", "subscribed"):
        raise typer.BadParameter("use mine or subscribed", param_hint="--source")
    rows = core.models(_me(core), source)  # type: ignore[arg-type]
    if as_json:
        _json([_model_row(s, v) for s, v in rows])
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
    core = _core()
    owner, _, short = name.rpartition("/")
    rows = [
        (s, v)
        for s, v in core.models(_me(core))
        if v.name == short and (not owner or v.owner == owner)
    ]
    if not rows:
        from opsbot.core.errors import NotFound

        raise NotFound(f"no model {name}: see `opsbot model list`")
    if as_json:
        _json([_model_row(s, v) for s, v in rows])
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
) -> None:
    """Delete a model version (or the model); refused while a service uses it."""
    core = _core()
    gone = core.delete_model(_me(core), name, version)
    out.print(f"deleted {', '.join(f'{v.name} {v.version}' for v in gone)}", markup=False)


@model_app.command("publish")
@reports_errors
def model_publish(
    name: str,
    unpublish: bool = typer.Option(False, "--unpublish", help="Make it private again."),
) -> None:
    """Make a model visible to every user, who can then subscribe to it."""
    core = _core()
    core.publish_model(_me(core), name, not unpublish)
    out.print(f"{name} is {'private' if unpublish else 'published'}", markup=False)


@model_app.command("subscribe")
@reports_errors
def model_subscribe(
    ref: str = typer.Argument(..., help="OWNER/NAME of a published model."),
) -> None:
    """Subscribe to a published model: it appears under My Subscriptions."""
    core = _core()
    core.subscribe(_me(core), ref)
    out.print(f"subscribed to {ref}", markup=False)


@model_app.command("examples")
@reports_errors
def model_examples(as_json: bool = JSON_OPT) -> None:
    """Create the iris example models (two versions, one also as ONNX) and publish them."""
    core = _core()
    made = core.create_examples(_me(core), lambda what: err.print(f"creating {what}", markup=False))
    if as_json:
        _json([v.as_dict("mine") for v in made])
        return
    if not made:
        out.print("the example models exist already: see `opsbot model list`")
    for v in made:
        out.print(
            f"{v.name} {v.version} ({v.format}): {v.status.capitalize()} {v.reason}", markup=False
        )


# -- users --------------------------------------------------------------------------------


@user_app.command("link")
@reports_errors
def user_link(local_name: str, slack_user_id: str) -> None:
    """Make a Slack user act as a local account (same services, same quota)."""
    core = _core()
    core.link_slack(_me(core), local_name, slack_user_id)
    out.print(f"Slack user {slack_user_id} now acts as {local_name}", markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
