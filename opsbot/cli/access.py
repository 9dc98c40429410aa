"""Access: service API keys, tokens for the TCP listener, Slack users linked to local ones."""

from __future__ import annotations

import typer

from opsbot.cli.base import (
    JSON_OPT,
    NAME_ARG,
    OWNER_OPT,
    client,
    core,
    key_app,
    me,
    token_app,
    user_app,
)
from opsbot.cli.output import document, err, out, print_json, reports_errors


@key_app.command("rotate")
@reports_errors
def key_rotate(
    name: str = NAME_ARG, owner: str | None = OWNER_OPT, as_json: bool = JSON_OPT
) -> None:
    """Give the service a new API key; returns once the gateway takes it and refuses the old
    one."""
    rotated = client().rotate_key(name, owner)
    if as_json:
        print_json(document(rotated))
        return
    out.print(f"new API key for {name}: {rotated.api_key}  (shown once)", markup=False)
    if rotated.warning:
        err.print(f"warning: {rotated.warning}", markup=False)


@token_app.command("create")
@reports_errors
def token_create(as_json: bool = JSON_OPT) -> None:
    """A token for the TCP control listener, acting as you."""
    made = client().create_token()
    if as_json:
        print_json(document(made))
        return
    out.print(f"token for {made.user}: {made.token}  (shown once)", markup=False)


@token_app.command("metrics")
@reports_errors
def token_metrics(
    rotate: bool = typer.Option(
        False, "--rotate", help="Make a new one; the gateway refuses the old from the next scrape."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """The token a Prometheus scraper sends to the gateway's /metrics (`Authorization: Bearer`),
    printed alone so it can go straight into the file Prometheus reads. An admin's (or the
    daemon account's)."""
    token = client().metrics_token(rotate=rotate)
    if as_json:
        print_json(document(token))
        return
    out.print(token.token, markup=False, soft_wrap=True)


@user_app.command("link")
@reports_errors
def user_link(local_name: str, slack_user_id: str, as_json: bool = JSON_OPT) -> None:
    """Make a Slack user act as a local account (same services, same quota)."""
    here = core()
    here.link_slack(me(here), local_name, slack_user_id)
    if as_json:
        print_json({"user": local_name, "slack_id": slack_user_id})
        return
    out.print(f"Slack user {slack_user_id} now acts as {local_name}", markup=False)
