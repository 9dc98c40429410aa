"""The Typer application, its command groups and the options every command shares.

Commands live in the modules of this package by group; each parses its flags, makes one call
(the control client's, or the core's for what needs no daemon) and renders the answer.
"""

from __future__ import annotations

from pathlib import Path

import typer

from opsbot.cli.output import State, home
from opsbot.client import ControlClient
from opsbot.core.app import Core
from opsbot.core.identity import User, local_user_name

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
key_app = typer.Typer(help="Service API keys.", no_args_is_help=True)
token_app = typer.Typer(
    help="Tokens: for the optional TCP control listener, and the gateway's /metrics scrape token.",
    no_args_is_help=True,
)
image_app = typer.Typer(help="The serving image of the docker runtimes.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(user_app, name="user")
app.add_typer(key_app, name="key")
app.add_typer(token_app, name="token")
app.add_typer(image_app, name="image")


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


def _service_name(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("give the service's name; `opsbot services` lists them")
    return value


NAME_ARG = typer.Argument(..., help="The service's name.", callback=_service_name)
OWNER_OPT = typer.Option(None, "--owner", help="The service's owner (admins; default: you).")


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


def core() -> Core:
    return Core(home())


def me(core: Core) -> User:
    return core.user(local_user_name())


def client() -> ControlClient:
    """The control client of the daemon serving this home (its unix socket)."""
    return ControlClient.for_home(home())


def daemon_client() -> ControlClient | None:
    """The daemon's client when one answers: registry changes then go through it, as the user
    its socket names (who may not write the store directly). Without one, the core does them
    here, as the local user."""
    control = client()
    return control if control.available() else None
