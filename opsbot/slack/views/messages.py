"""Messages: DMs about deploys and modifications, alerts and reminders."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opsbot.core.errors import FieldError
from opsbot.core.spec import masked_env
from opsbot.slack.views.blocks import (
    A_EXTEND_1,
    A_EXTEND_4,
    Block,
    _bullets,
    _button,
    _clip,
    _md,
    _section,
)
from opsbot.slack.views.services import action_value


def modified_message(
    name: str, changes: Sequence[str], snapshot: int | None, *, rolled_to: int | None = None
) -> tuple[str, list[Block]]:
    """What a modification (or a rollback) changed, and the snapshot it made."""
    if snapshot is None:
        text = f"Nothing changed in {name}: the form matched its current configuration."
        return text, [_section(f":information_source: {text}")]
    did = f"Rolled {name} back to #{rolled_to}" if rolled_to is not None else f"Modified {name}"
    text = f"{did} (snapshot #{snapshot}): {'; '.join(changes)}"
    body = (
        f":pencil2: *{did}* (snapshot #{snapshot}).\n{_bullets(changes)}\n"
        "Instances that change start before the old ones drain; traffic moves within seconds."
    )
    return _clip(text, 3000), [_section(body)]


def deploying_message(name: str, warnings: Sequence[FieldError] = ()) -> tuple[str, list[Block]]:
    text = f"Deploying {name}… I will update this message when it is Running."
    blocks = [_section(f":hourglass_flowing_sand: {text}")]
    if warnings:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _md(_clip("Warnings: " + "; ".join(w.message for w in warnings), 2000))
                ],
            }
        )
    return text, blocks


def running_message(svc: Mapping[str, Any], api_key: str | None) -> tuple[str, list[Block]]:
    """The deploy DM once Running: URL, a curl example and (here only) the key."""
    url = str(svc["url"])
    key = api_key or "$KEY"
    curl = (
        f"curl -X POST {url} -H 'X-Auth-Token: {key}' -H 'Content-Type: application/json' "
        "-d '{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}'"
    )
    text = f"{svc['name']} is Running at {url}"
    blocks = [
        _section(f":large_green_circle: *{svc['name']}* is Running.\n*URL:* `{url}`"),
        _section(f"*Try it:*\n```{curl}```"),
    ]
    note = (
        "The key is shown only here; keep it secret."
        if api_key
        else "The key was not kept across a restart of opsbot (it is stored only as a hash): "
        f"get a new one with `opsbot key rotate {svc['name']}`."
    )
    blocks.append({"type": "context", "elements": [_md(_clip(note, 2000))]})
    return text, blocks


def failed_message(svc: Mapping[str, Any]) -> tuple[str, list[Block]]:
    reason = str(svc.get("reason") or "no reason was recorded")
    text = f"{svc['name']} failed to deploy: {reason}"
    todo = (
        f"See its events with `opsbot events {svc['name']}`, fix the cause, then press *Start* "
        "in /services (or `opsbot start`)."
    )
    return _clip(text, 3000), [_section(f":x: *{svc['name']}* failed: {reason}\n{todo}")]


def alert_message(
    service: str, owner: str, kind: str, why: str, owner_mention: str | None = None
) -> tuple[str, list[Block]]:
    """A service stopped (by someone, by auto stop) or failed or went abnormal."""
    who = owner_mention or owner
    verb = {
        "stopped": "stopped",
        "failed": "failed",
        "abnormal": "is abnormal",
        "auto_stop_failed": "did not auto stop",
        "stop_failed": "did not stop",
    }.get(kind, kind)
    text = f"{service} ({owner}) {verb}: {why}"
    icon = ":white_circle:" if kind == "stopped" else ":red_circle:"
    blocks = [_section(f"{icon} *{service}* (owner {who}) {verb}: {why}")]
    return _clip(text, 3000), blocks


def reminder_message(service: str, owner: str, message: str) -> tuple[str, list[Block]]:
    """Ten minutes before auto stop: extend buttons."""
    value = action_value({"owner": owner, "name": service})
    text = f"{service} {message}"
    return _clip(text, 3000), [
        _section(f":alarm_clock: *{service}* {message}"),
        {
            "type": "actions",
            "elements": [
                _button(A_EXTEND_1, "Extend 1 h", value, "primary"),
                _button(A_EXTEND_4, "Extend 4 h", value),
            ],
        },
    ]


def env_preview(env: Mapping[str, str], secret_names: Iterable[str] = ()) -> str:
    """Environment variables as shown in messages: secrets masked."""
    return ", ".join(f"{k}={v}" for k, v in masked_env(dict(env), secret_names).items())
