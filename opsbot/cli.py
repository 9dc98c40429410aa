"""The opsbot command line: parses flags, calls the core, prints the result or the error.

It holds no rules of its own; every check lives in opsbot.core.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from opsbot.core import update as update_mod
from opsbot.core.app import Core
from opsbot.core.config import default_home
from opsbot.core.errors import FieldError, InvalidInput, OpsbotError, storage_error
from opsbot.core.events import Level
from opsbot.core.identity import User, local_user_name
from opsbot.core.runtimes.process import tail_lines
from opsbot.core.spec import load_spec_file, spec_to_dict
from opsbot.core.status import Status
from opsbot.core.timefmt import format_remaining
from opsbot.daemon.bodies import MAX_TAIL
from opsbot.daemon.client import Client, service_path
from opsbot.daemon.server import LOCK_NAME, Daemon

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


class State:
    home: Path | None = None
    #: --json was given: results and errors are JSON documents on stdout.
    as_json: bool = False


def _json_mode(value: bool) -> bool:
    State.as_json = value
    return value


JSON_OPT = typer.Option(
    False,
    "--json",
    help='Print one JSON document; errors too, as {"error", "title", "message", "field", '
    '"errors"} on stdout (exit code 1).',
    callback=_json_mode,
    is_eager=True,
)


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
    State.as_json = False  # until the command's own --json says otherwise


def _core() -> Core:
    return Core(State.home or default_home())


def _me(core: Core) -> User:
    return core.user(local_user_name())


def error_document(exc: OpsbotError) -> dict[str, Any]:
    """An error as ``--json`` prints it: the API's Error document plus the first field."""
    doc = exc.as_dict()
    doc["field"] = exc.errors[0].field if exc.errors else None
    return doc


def print_error(exc: OpsbotError) -> None:
    """One line (one per field when several are wrong), or the JSON document with --json."""
    if State.as_json:
        _json(error_document(exc))
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
    known = storage_error(exc, where=str(_home()))
    if known is not None:
        return known
    if isinstance(exc, sqlite3.Error):
        return OpsbotError(
            f"the store in {_home()} failed: {exc}; check the disk, then try again",
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


def _service_name(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("give the service's name; `opsbot services` lists them")
    return value


NAME_ARG = typer.Argument(..., help="The service's name.", callback=_service_name)


def _label(status: str) -> str:
    """A status as the reference page writes it: Running, Stopped."""
    try:
        return Status(status).label
    except ValueError:
        return status.capitalize()


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
    try:
        core = _core()  # inside: a bad config.toml or flavors.toml is reported, not raised
        result = core.validate(_me(core), load_spec_file(file))
    except OpsbotError as exc:
        print_error(exc)  # with --json, the Error document: every problem under "errors"
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


@app.command()
@reports_errors
def nodes(as_json: bool = JSON_OPT) -> None:
    """Each resource pool with its nodes: state, address, CPUs, memory, accelerators, what is
    free; and node pool labels that no pool names."""
    report = _client().request("GET", "/v1/nodes")
    if as_json:
        _json(report)
        return
    for pool in report["pools"]:
        out.print(f"pool {pool['name']} ({pool['kind']}): {pool['summary']}", markup=False)
        table = Table("node", "state", "address", "labels", "has", "free")
        for n in pool["nodes"]:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))
            table.add_row(
                n["name"],
                n["state"],
                n["addr"] or "-",
                labels,
                n["capacity_text"],
                n["free_text"] or "-",
                style=None if n["state"] == "ready" else "dim",
            )
        out.print(table if pool["nodes"] else "  no nodes")
    for warning in report["warnings"]:
        err.print(f"warning: {warning}", markup=False)


# -- models -------------------------------------------------------------------------------


def _daemon() -> Client | None:
    """The daemon's client when one answers: registry changes then go through it, as the user
    its socket names (who may not write the store directly). Without one, the core does them
    here, as the local user."""
    client = _client()
    return client if client.available() else None


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
    client = _daemon()
    with err.status(f"checking {name} {version}: loading the model and predicting a sample"):
        if client is not None:
            row = client.create_model(
                name, version, path, fmt, entry=entry, origin=origin, description=description
            )
        else:
            core = _core()
            row = core.create_model(
                _me(core),
                name,
                version,
                path,
                fmt,
                origin=origin,
                entry=entry,
                description=description,
            ).as_dict("mine")
    if as_json:
        _json(row)
    elif row["status"] == "normal":
        out.print(f"{name} {version} is Normal: it can be deployed", style="green")
    else:
        err.print(f"{name} {version} is Failed: {row['reason']}", markup=False)
    if row["status"] != "normal":
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
    as_json: bool = JSON_OPT,
) -> None:
    """Delete a model version (or the model); refused while a service uses it."""
    core = _core()
    gone = core.delete_model(_me(core), name, version)
    if as_json:
        _json([v.as_dict("mine") for v in gone])
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
    client = _daemon()
    if client is not None:
        done = client.publish_model(name, not unpublish)
    else:
        core = _core()
        me = _me(core)
        core.publish_model(me, name, not unpublish)
        done = {"owner": me.name, "name": name, "public": not unpublish}
    if as_json:
        _json(done)
        return
    out.print(f"{name} is {'private' if unpublish else 'published'}", markup=False)


@model_app.command("subscribe")
@reports_errors
def model_subscribe(
    ref: str = typer.Argument(..., help="OWNER/NAME of a published model."),
    as_json: bool = JSON_OPT,
) -> None:
    """Subscribe to a published model: it appears under My Subscriptions."""
    client = _daemon()
    if client is not None:
        client.subscribe(ref)
    else:
        core = _core()
        core.subscribe(_me(core), ref)
    if as_json:
        _json({"model": ref, "subscribed": True})
        return
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
def user_link(local_name: str, slack_user_id: str, as_json: bool = JSON_OPT) -> None:
    """Make a Slack user act as a local account (same services, same quota)."""
    core = _core()
    core.link_slack(_me(core), local_name, slack_user_id)
    if as_json:
        _json({"user": local_name, "slack_id": slack_user_id})
        return
    out.print(f"Slack user {slack_user_id} now acts as {local_name}", markup=False)


# -- the daemon ---------------------------------------------------------------------------

key_app = typer.Typer(help="Service API keys.", no_args_is_help=True)
token_app = typer.Typer(help="Tokens for the optional TCP control listener.", no_args_is_help=True)
app.add_typer(key_app, name="key")
app.add_typer(token_app, name="token")

ACTIVE_STATES = {"deploying", "stopping", "deleting"}


def _home() -> Path:
    return State.home or default_home()


def _client() -> Client:
    return Client(_home())


@app.command()
@reports_errors
def up(
    runtime: str | None = typer.Option(
        None, help="process (default), docker or swarm; overrides config.toml."
    ),
    gateway_port: int | None = typer.Option(
        None,
        min=0,
        max=65535,
        help="Gateway port (default from config.toml: 8780; 0 picks a free one). A port another "
        "program holds is refused, naming it.",
    ),
    listen: str | None = typer.Option(
        None, help="Also serve the control API on HOST:PORT (callers need a user token)."
    ),
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Run in the background; return once it answers."
    ),
    examples: bool = typer.Option(True, help="Create the iris example models on first start."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the daemon: control API, controller, gateway. Model instances outlive it."""
    home = _home()
    if detach:
        started = _detach(home, runtime, gateway_port, listen, examples)
        if as_json:
            _json(started)
        return
    Daemon(
        home,
        runtime=runtime,
        gateway_port=gateway_port,
        api_listen=listen,
        examples=examples,
        say=lambda m: err.print(m, markup=False),
    ).run()


def _detach(
    home: Path, runtime: str | None, gateway_port: int | None, listen: str | None, examples: bool
) -> dict[str, Any]:
    """Start the daemon in the background; what it answers once it does (whoami, pid, log)."""
    client = Client(home)
    if client.available():
        err.print(f"an opsbot daemon already answers on {client.socket}", markup=False)
        return {**client.request("GET", "/v1/whoami"), "pid": None, "already_running": True}
    if examples:
        core = Core(home)
        core.create_examples(_me(core), lambda w: err.print(f"example model: {w}", markup=False))
    argv = [sys.executable, "-m", "opsbot", "--home", str(home), "up", "--no-examples"]
    for flag, value in (
        ("--runtime", runtime),
        ("--gateway-port", gateway_port),
        ("--listen", listen),
    ):
        if value is not None:
            argv += [flag, str(value)]
    log_path = home / "logs" / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    with err.status("starting the daemon"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                # Its own one-line error (port busy, home not writable) says it best.
                lines = tail_lines(log_path, 8)
                said = [ln for ln in lines if ln.startswith("Error: ")]
                why = said[-1].removeprefix("Error: ") if said else " / ".join(lines[-3:])
                raise OpsbotError(
                    f"the daemon exited at start: {why} (log: {log_path})",
                    title="Daemon not started",
                )
            if client.available():
                me = client.request("GET", "/v1/whoami")
                err.print(
                    f"opsbot daemon running (pid {proc.pid}), runtime {me['runtime']}, "
                    f"gateway {me['gateway_url']}; log: {log_path}",
                    markup=False,
                )
                return {**me, "pid": proc.pid, "log": str(log_path)}
            time.sleep(0.2)
    raise OpsbotError(f"the daemon did not answer within 60 s; see {log_path}")


@app.command()
@reports_errors
def down(as_json: bool = JSON_OPT) -> None:
    """Stop the daemon (SIGTERM). Model instances keep running; `opsbot up` adopts them."""
    lock = _home() / LOCK_NAME
    client = _client()
    if not client.available():
        if as_json:
            _json({"stopped": None})
        else:
            err.print("no opsbot daemon is running", markup=False)
        return
    pid = int(lock.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    if as_json:
        _json({"stopped": pid})
    else:
        err.print(f"daemon {pid} stopped", markup=False)


# -- services -----------------------------------------------------------------------------


def _env_pairs(pairs: list[str]) -> dict[str, str]:
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
    model: str | None = typer.Option(None, "--model", help="Model: NAME or OWNER/NAME."),
    version: str | None = typer.Option(None, "--version", help="Model version (Normal)."),
    source: str | None = typer.Option(None, "--source", help="mine (default) or subscribed."),
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
    as_json: bool = JSON_OPT,
) -> None:
    """Deploy a model as a real-time service (one version by flags, any spec with -f).

    With -f, --name, --traffic-limit, --auto-stop, --description and --pool override the
    file's values; the per-version flags (--model, --version, --source, --flavor,
    --instances, --env) are refused: write them in the file.
    """
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
        entry: dict[str, Any] = {"model": model, "version": version}
        for key, value in (("source", source), ("flavor", flavor), ("instances", instances)):
            if value is not None:
                entry[key] = value
        if env:
            entry["env"] = _env_pairs(env)
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
    client = _client()
    created = client.request("POST", "/v1/services", data)
    for w in created.get("warnings", []):
        err.print(f"warning: {w['field']}: {w['message']}", markup=False)
    result = created
    if wait:
        result = _wait(client, created["name"], quiet=as_json)
        result["api_key"] = created["api_key"]
    if as_json:
        _json(result)
    else:
        out.print(f"service {result['name']}: {_label(result['status'])}", markup=False)
        out.print(f"URL:     {result['url']}", markup=False)
        out.print(
            f"API key: {created['api_key']}  (shown once; rotate with `opsbot key rotate`)",
            markup=False,
        )
        if result["status"] == "failed":
            out.print(f"reason:  {result['reason']}", markup=False)
    if result["status"] == "failed":
        raise typer.Exit(1)


def _wait(client: Client, name: str, quiet: bool = False) -> dict[str, Any]:
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
            progress.update(task, completed=service.get("progress", 0))
            if service["status"] != "deploying":
                return service
            time.sleep(0.5)


def _versions(service: dict[str, Any]) -> str:
    return ", ".join(
        f"{m['model']} {m['version']} {m['traffic_ratio']}%" for m in service["models"]
    )


@app.command("services")
@reports_errors
def services_cmd(
    everyone: bool = typer.Option(False, "--all", "-a", help="Everyone's services."),
    as_json: bool = JSON_OPT,
) -> None:
    """List services: status, versions and traffic split, auto-stop countdown, URL."""
    rows = _client().services(everyone)
    if as_json:
        _json(rows)
        return
    table = Table("name", "owner", "status", "versions", "auto stop", "url")
    for s in rows:
        status = _label(s["status"]) + (f" {s['progress']}%" if s["status"] == "deploying" else "")
        table.add_row(
            s["name"],
            s["owner"],
            status,
            _versions(s),
            _auto_stop_text(s),
            s["url"],
        )
    out.print(table)


def _auto_stop_text(service: dict[str, Any]) -> str:
    if service.get("remaining_s") is not None:
        return f"in {format_remaining(service['remaining_s'])}"
    return str(service.get("auto_stop", ""))


OWNER_OPT = typer.Option(None, "--owner", help="The service's owner (admins; default: you).")


@app.command()
@reports_errors
def show(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """One service: status, URL, versions, instances (with CPU and memory), auto stop."""
    s = _client().request("GET", service_path(name), query={"owner": owner, "stats": "true"})
    if as_json:
        _json(s)
        return
    lines = [
        ("name", s["name"]),
        ("owner", s["owner"]),
        ("status", _label(s["status"]) + (f" ({s['reason']})" if s["reason"] else "")),
        ("url", s["url"]),
        ("auto stop", _auto_stop_text(s)),
        ("traffic limit", f"{s['traffic_limit']}/s"),
        ("pool", s["resource_pool"]),
        ("description", s["description"]),
    ]
    for key, value in lines:
        out.print(f"{key:>14}: {value}", markup=False)
    numbers = {(v["model"], v["version"]): v for v in s.get("versions", [])}
    label = {v["idx"]: v["version"] for v in s.get("versions", [])}
    several = len({m["model"] for m in s["models"]}) > 1
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
    for m in s["models"]:
        v = numbers.get((m["model"], m["version"]), {})
        versions.add_row(
            f"{m['model']} {m['version']}" if several else m["version"],
            f"{m['traffic_ratio']}%",
            f"{v.get('ready', '?')}/{m['instances']}",
            _figure(v.get("calls")),
            _figure(v.get("failures")),
            _figure(v.get("p50_ms") and round(v["p50_ms"], 1)),
            _figure(v.get("p99_ms") and round(v["p99_ms"], 1)),
            _figure(v.get("cpu_percent"), "%"),
            _figure(v.get("memory_bytes") and round(v["memory_bytes"] / 2**20), " MiB"),
        )
    out.print(versions)
    for m in s["models"]:
        env = ", ".join(f"{k}={v}" for k, v in m["env"].items())
        out.print(
            f"{m['model']} {m['version']}: {m['instances']} x {m['flavor']}"
            + (f", env {env}" if env else ""),
            markup=False,
        )
    for i, r in enumerate(s.get("rules", [])):
        test = f"= {r['equals']}" if r.get("equals") is not None else f"~ {r['matches']}"
        out.print(f"rule {i + 1}: {r['header']} {test} -> {r['version']}", markup=False)
    instances = s.get("instances", [])
    with_stats = any("stats" in inst for inst in instances)  # from the runtime, if it tells
    columns = ["version", "n", "state", "node", "port", "restarts", "reason"]
    table = Table(*columns, *(["cpu", "memory"] if with_stats else []))
    for inst in instances:
        row = [
            label.get(inst["version_index"], str(inst["version_index"])),
            str(inst["n"]),
            inst["state"],
            inst.get("node", ""),
            str(inst["port"] or ""),
            str(inst["restarts"]),
            inst["reason"],
        ]
        if with_stats:
            row += _stats_cells(inst.get("stats"))
        table.add_row(*row)
    out.print(table)


def _figure(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _stats_cells(stats: dict[str, float] | None) -> list[str]:
    if not stats:
        return ["", ""]
    mib, limit = stats["memory_bytes"] / 2**20, stats["memory_limit_bytes"] / 2**30
    memory = f"{mib:.0f} MiB" + (f" / {limit:g} GiB" if limit else "")
    return [f"{stats['cpu_percent']:.1f}%", memory]


def _simple_action(verb: str, name: str, owner: str | None, as_json: bool) -> None:
    client = _client()
    if verb == "delete":
        s = client.request("DELETE", service_path(name), query={"owner": owner})
    else:
        s = client.action(name, verb, owner)
    if as_json:
        _json(s)
    else:
        out.print(f"{s['name']}: {_label(s['status'])}", markup=False)


@app.command()
@reports_errors
def stop(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """Stop a service (its instances stop; it keeps its name, key and settings)."""
    _simple_action("stop", name, owner, as_json)


@app.command()
@reports_errors
def start(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """Start a Stopped or Failed service again."""
    _simple_action("start", name, owner, as_json)


@app.command()
@reports_errors
def delete(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """Delete a service: instances stop, then the service and its key are gone."""
    _simple_action("delete", name, owner, as_json)


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
    client = _client()
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
            "env_set": _env_pairs(env) if env else None,
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
    s = client.request("POST", service_path(name, "update"), payload, query={"owner": owner})
    if as_json:
        _json(s)
        return
    if not s["changes"]:
        out.print(f"{s['name']}: nothing to change", markup=False)
        return
    out.print(
        f"{s['name']}: modified (snapshot #{s['snapshot']}), {_label(s['status'])}", markup=False
    )
    for line in s["changes"]:
        out.print(f"  {line}", markup=False)


@app.command()
@reports_errors
def history(name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT) -> None:
    """The service's config snapshots, #1 the deploy; each line says what changed."""
    rows = _client().request("GET", service_path(name, "history"), query={"owner": owner})
    if as_json:
        _json(rows)
        return
    table = Table("#", "when", "by", "changes")
    before: dict[str, Any] | None = None
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        what = "deployed" if before is None else "; ".join(update_mod.spec_diff(before, r["spec"]))
        table.add_row(str(r["n"]), when, r["actor"], what or "(no change)")
        before = r["spec"]
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
    client = _client()
    path = service_path(name, "rollback")
    preview = client.request("POST", path, {"to": to, "dry_run": True}, query={"owner": owner})
    if not as_json:
        if not preview["changes"]:
            out.print(f"{name} already matches snapshot #{to}", markup=False)
            return
        out.print(f"{name}: back to snapshot #{to} changes", markup=False)
        for line in preview["changes"]:
            out.print(f"  {line}", markup=False)
    if dry_run:
        if as_json:
            _json(preview)
        return
    s = client.request("POST", path, {"to": to}, query={"owner": owner})
    if as_json:
        _json(s)
    else:
        out.print(
            f"{s['name']}: rolled back (snapshot #{s['snapshot']}), {_label(s['status'])}",
            markup=False,
        )


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
    reply = _client().request(
        "POST", service_path(name, "predict"), query={"owner": owner}, raw=text.encode()
    )
    if as_json:
        _json(reply)
    else:
        out.print(
            f"HTTP {reply['status']} from version {reply['version'] or '-'} "
            f"in {reply['latency_ms']} ms",
            markup=False,
        )
        out.print(json.dumps(reply["response"], indent=2), markup=False)
    if reply["status"] >= 400:
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
    client = _client()
    path = service_path(name, "events") if name is not None else "/v1/events"
    wanted = level.value if level is not None else None
    rows = client.request("GET", path, query={"level": wanted, "since": since})
    after = max((e["id"] for e in rows), default=0)
    if as_json and not follow:
        _json(rows)  # one document, as every other --json
        return
    for e in rows:
        _print_event(e, as_json)
    if not follow:
        return
    # live: the daemon streams events (server-sent events) from the last one printed on
    stream = client.stream(
        "/v1/events/stream", {"service": name, "level": wanted, "after_id": after or None}
    )
    for e in stream:
        _print_event(e, as_json)


def _print_event(e: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(e) + "\n")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
        out.print(
            f"{when} {e['level']:<8} {e['service'] or '-':<20} {e['kind']:<18} "
            f"{e['message']} (by {e['actor']})",
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
    client = _client()
    seen: list[str] = []
    while True:
        lines = client.request(
            "GET", service_path(name, "logs"), query={"tail": tail, "owner": owner}
        )
        if as_json and not follow:
            _json(lines)
            return
        for line in _new_lines(seen, lines):
            if as_json:
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
                continue
            out.print(line, markup=False, highlight=False)
        seen = lines
        if not follow:
            return
        time.sleep(1)


def _new_lines(before: list[str], after: list[str]) -> list[str]:
    """Lines of ``after`` not yet printed: after the longest suffix of ``before`` it starts with."""
    for k in range(min(len(before), len(after)), 0, -1):
        if before[-k:] == after[:k]:
            return after[k:]
    return after if before != after else []


@app.command()
@reports_errors
def tui() -> None:
    """The live dashboard (Textual), for a terminal or `ssh -t box opsbot tui`."""
    from opsbot.tui.app import run  # Textual loads only for this command

    run(_home())


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
    s = _client().request(
        "POST", service_path(name, "extend"), {"hours": int(text)}, query={"owner": owner}
    )
    if as_json:
        _json(s)
    else:
        out.print(f"{s['name']}: stops in {format_remaining(s['remaining_s'])}", markup=False)


@app.command()
@reports_errors
def autostop(
    name: str = NAME_ARG,
    value: str = typer.Argument(..., help='"off", "on", or a duration: 1h, 2h, 4h, 6h, 90m.'),
    owner: str | None = OWNER_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Turn a service's auto stop off, on again, or on with a new duration."""
    s = _client().request(
        "POST", service_path(name, "autostop"), {"auto_stop": value}, query={"owner": owner}
    )
    if as_json:
        _json(s)
    else:
        out.print(f"{s['name']}: auto stop {_auto_stop_text(s)}", markup=False)


@key_app.command("rotate")
@reports_errors
def key_rotate(
    name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT
) -> None:
    """Give the service a new API key; returns once the gateway takes it and refuses the old
    one."""
    reply = _client().request("POST", service_path(name, "key"), query={"owner": owner})
    if as_json:
        _json(reply)
        return
    out.print(f"new API key for {name}: {reply['api_key']}  (shown once)", markup=False)
    if reply.get("warning"):
        err.print(f"warning: {reply['warning']}", markup=False)


@token_app.command("create")
@reports_errors
def token_create(as_json: bool = JSON_OPT) -> None:
    """A token for the TCP control listener, acting as you."""
    reply = _client().request("POST", "/v1/tokens")
    if as_json:
        _json(reply)
        return
    out.print(f"token for {reply['user']}: {reply['token']}  (shown once)", markup=False)


image_app = typer.Typer(help="The serving image of the docker runtimes.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("build")
@reports_errors
def image_build(
    force: bool = typer.Option(False, help="Rebuild the root filesystem even if cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the tag."),
    as_json: bool = JSON_OPT,
) -> None:
    """Build the serving image from Debian packages (no registry pull) and `docker import` it
    as opsbot-serving:<content hash> and :latest; skipped when that image exists. The root
    filesystem is cached in $OPSBOT_CACHE_DIR (default ~/.cache/opsbot)."""
    from opsbot.core.images import ensure_image
    from opsbot.core.runtimes.docker import connect

    client = connect()
    if quiet or as_json:
        built = ensure_image(client, force=force)
    else:
        with err.status("serving image") as status:

            def progress(line: str) -> None:
                err.print(line, markup=False)
                status.update(line[:80])

            built = ensure_image(client, force=force, on_progress=progress)
    if as_json:
        _json({"tag": built.tag, "built": built.built, "seconds": built.seconds})
        return
    if not quiet:
        what = f"built in {built.seconds:.0f} s" if built.built else "already built"
        err.print(f"{built.tag}: {what}", markup=False)
    out.print(built.tag, markup=False)


def main() -> None:
    """The console script: usage errors (a bad flag or value) follow --json too."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors: bad flags and values
        if State.as_json or "--json" in sys.argv:
            param = getattr(exc, "param", None)
            _json(
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
