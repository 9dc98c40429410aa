"""Service views: /services lists, App Home, Extend, history and details."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opsbot.core import form
from opsbot.core.deadlines import EXTEND_HOURS, ExtendPlan
from opsbot.core.status import Status
from opsbot.core.update import UPDATABLE
from opsbot.slack.views.blocks import (
    A_AUTO_STOP_ON,
    A_DELETE,
    A_DETAILS,
    A_EXTEND,
    A_EXTEND_1,
    A_EXTEND_4,
    A_HISTORY,
    A_HOME_DEPLOY,
    A_MODIFY,
    A_ROLLBACK,
    A_START,
    A_STOP,
    DETAILS_TITLE,
    HISTORY_TITLE,
    MAX_BLOCKS,
    MAX_MESSAGE_BLOCKS,
    OPTION_VALUE_MAX,
    Block,
    View,
    _bullets,
    _button,
    _clip,
    _confirm,
    _figure,
    _md,
    _mib,
    _option,
    _section,
    _text,
    _when,
)
from opsbot.slack.views.state import selected_value

STATUS_ICON = {
    "deploying": ":hourglass_flowing_sand:",
    "running": ":large_green_circle:",
    "concerning": ":large_yellow_circle:",
    "abnormal": ":red_circle:",
    "failed": ":x:",
    "stopping": ":double_vertical_bar:",
    "stopped": ":white_circle:",
    "deleting": ":wastebasket:",
}


def remaining(seconds: float) -> str:
    """A countdown as "1 h 05 min", "4 min", or "due"."""
    if seconds <= 0:
        return "due"
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{max(minutes, 1)} min"


def service_line(svc: Mapping[str, Any], now: float) -> str:
    """One service as mrkdwn: status, versions and ratios, auto stop countdown."""
    status = str(svc["status"])
    progress = f" {svc['progress']}%" if status == "deploying" else ""
    versions = ", ".join(
        f"{m['model']} {m['version']} ({m['traffic_ratio']}%)" for m in svc.get("models", [])
    )
    if svc.get("due_time"):
        stop = f"stops in {remaining(float(svc['due_time']) - now)}"
    elif svc.get("auto_stop") == "off":
        stop = "auto stop off"
    else:
        stop = f"auto stop {svc.get('auto_stop')}"
    reason = f"\n_{_clip(str(svc['reason']), 300)}_" if svc.get("reason") else ""
    return (
        f"{STATUS_ICON.get(status, '')} *{svc['name']}* ({svc['owner']}) · "
        f"{status.capitalize()}{progress} · {stop}\n{versions}{reason}"
    )


def action_value(svc: Mapping[str, Any], everyone: bool = False, hours: int | None = None) -> str:
    """What a service button or menu option carries: owner, name, list shown, and hours."""
    value: dict[str, Any] = {"o": svc["owner"], "n": svc["name"], "a": int(everyone)}
    if hours is not None:
        value["h"] = hours
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Target:
    """The service a button or menu option acts on, read back from its value."""

    owner: str
    name: str
    everyone: bool
    hours: int | None


def action_target(action: Mapping[str, Any]) -> Target:
    """The target of a button (``value``) or of a menu option (``selected_option.value``)."""
    raw = json.loads(selected_value(action) or "{}")
    hours = raw.get("h")
    return Target(
        owner=str(raw.get("o", "")),
        name=str(raw.get("n", "")),
        everyone=bool(raw.get("a")),
        hours=hours if isinstance(hours, int) and not isinstance(hours, bool) else None,
    )


def extend_element(
    svc: Mapping[str, Any], now: float, everyone: bool = False
) -> list[dict[str, Any]]:
    """A menu to extend auto stop by the core's EXTEND_HOURS, each option saying when the
    service would stop (hours are added to the time left, capped at 24 h from now).

    A running service without auto stop gets a button to turn it on instead (Extend has
    nothing to add to). Options carry owner and name; where those are too long for an option
    value (150 characters), two buttons (1 h, 4 h) stand in, since a button value may be longer.
    """
    due = svc.get("due_time")
    name = str(svc["name"])
    if due is None:
        if Status(str(svc["status"])) not in form.CAN_EXTEND:
            return []
        on = _button(A_AUTO_STOP_ON, "Turn auto stop on", action_value(svc, everyone))
        on["confirm"] = _confirm(
            "Turn auto stop on?",
            f"*{name}* has auto stop off: it runs until stopped. Turn auto stop on, with its "
            "own duration counted from now?",
            "Turn on",
        )
        return [on]
    plans = [ExtendPlan.compute(name, h, now, float(due)) for h in EXTEND_HOURS]
    values = [(action_value(svc, everyone, p.hours), p.choice) for p in plans]
    if any(len(v) > OPTION_VALUE_MAX for v, _ in values):
        value = action_value(svc, everyone)
        return [
            _button(A_EXTEND_1, plans[0].choice, value),
            _button(A_EXTEND_4, ExtendPlan.compute(name, 4, now, float(due)).choice, value),
        ]
    return [
        {
            "type": "static_select",
            "action_id": A_EXTEND,
            "placeholder": _text("Extend auto stop"),
            "options": [_option(v, t) for v, t in values],
        }
    ]


def service_blocks(svc: Mapping[str, Any], now: float, everyone: bool = False) -> list[Block]:
    """A service and its buttons: Stop, Start, Extend, Delete (Stop and Delete confirmed)."""
    value = action_value(svc, everyone)
    name = str(svc["name"])
    stop = _button(A_STOP, "Stop", value)
    stop["confirm"] = _confirm("Stop service?", f"Stop *{name}*? Its URL stops answering.", "Stop")
    delete = _button(A_DELETE, "Delete", value, "danger")
    delete["confirm"] = _confirm(
        "Delete service?", f"Delete *{name}* and its key? This cannot be undone.", "Delete"
    )
    # Modify is offered where the core lets a service be modified; the core says why not
    # (and who may) when pressed anyway from an older message.
    modify = [_button(A_MODIFY, "Modify", value)] if Status(str(svc["status"])) in UPDATABLE else []
    return [
        {"type": "section", "text": _md(_clip(service_line(svc, now), 3000))},
        {
            "type": "actions",
            "elements": [
                stop,
                _button(A_START, "Start", value, "primary"),
                *extend_element(svc, now, everyone),
                *modify,
                _button(A_DETAILS, "Details", value),
                _button(A_HISTORY, "History", value),
                delete,
            ],
        },
    ]


def services_message(
    services: Sequence[Mapping[str, Any]], now: float, *, everyone: bool = False
) -> tuple[str, list[Block]]:
    """The /services answer: fallback text and blocks (at most 50)."""
    whose = "All services" if everyone else "Your services"
    if not services:
        text = f"{whose}: none. Deploy one with /deploy."
        return text, [{"type": "section", "text": _md(text)}]
    blocks: list[Block] = [{"type": "header", "text": _text(f"{whose} ({len(services)})")}]
    shown = 0
    for svc in services:
        if len(blocks) + 3 > MAX_MESSAGE_BLOCKS - 1:
            break
        blocks += [*service_blocks(svc, now, everyone), {"type": "divider"}]
        shown += 1
    if shown < len(services):
        blocks.append(
            {
                "type": "context",
                "elements": [_md(f"{len(services) - shown} more not shown; use `opsbot ls`.")],
            }
        )
    text = f"{whose}: " + ", ".join(f"{s['name']} ({s['status']})" for s in services)
    return _clip(text, 3000), blocks


def home_view(services: Sequence[Mapping[str, Any]], used: int, quota: int, now: float) -> View:
    """App Home: quota used and the user's services with their buttons."""
    blocks: list[Block] = [
        {"type": "header", "text": _text("opsbot: your real-time services")},
        {
            "type": "section",
            "text": _md(f"*Quota:* {used}/{quota} services"),
            "accessory": _button(A_HOME_DEPLOY, "Deploy", "deploy", "primary"),
        },
        {"type": "divider"},
    ]
    if not services:
        blocks.append({"type": "section", "text": _md("No services yet. Press *Deploy*.")})
    for i, svc in enumerate(services):
        if len(blocks) + 3 > MAX_BLOCKS - 1:
            blocks.append(
                {
                    "type": "context",
                    "elements": [_md(f"{len(services) - i} more not shown; use `opsbot ls`.")],
                }
            )
            break
        blocks += [*service_blocks(svc, now), {"type": "divider"}]
    return {"type": "home", "blocks": blocks}


@dataclass(frozen=True)
class HistoryEntry:
    """A config snapshot as the history shows it."""

    n: int
    created_at: float
    actor: str
    changes: Sequence[str]
    """What this snapshot changed from the one before (empty for the deploy, #1)."""
    rollback: Sequence[str] | None
    """What rolling back to it would change now; None or empty: nothing (it is current)."""


def rollback_value(owner: str, name: str, n: int) -> str:
    return json.dumps({"o": owner, "n": name, "to": n}, separators=(",", ":"))


def rollback_target(action: Mapping[str, Any]) -> tuple[str, str, int]:
    raw = json.loads(str(action.get("value") or "{}"))
    return str(raw.get("o", "")), str(raw.get("n", "")), int(raw.get("to", 0))


def history_view(owner: str, name: str, entries: Sequence[HistoryEntry]) -> View:
    """The snapshots of a service, newest first, each with "Roll back to #N" (confirmed)."""
    blocks: list[Block] = [
        _section(f"*{name}* (owner {owner}): {len(entries)} configuration snapshot(s)"),
        {"type": "divider"},
    ]
    newest = sorted(entries, key=lambda e: e.n, reverse=True)
    room = MAX_BLOCKS - len(blocks) - 1
    for entry in newest[:room]:
        what = _bullets(entry.changes) if entry.changes else "• deployed"
        current = " · _current_" if entry.n == newest[0].n else ""
        block = _section(
            f"*#{entry.n}* · {_when(entry.created_at)} · by {entry.actor}{current}\n{what}"
        )
        if entry.rollback:
            button = _button(
                A_ROLLBACK, f"Roll back to #{entry.n}", rollback_value(owner, name, entry.n)
            )
            button["confirm"] = _confirm(
                f"Roll back to #{entry.n}?",
                _clip(f"*{name}* would change:\n{_bullets(entry.rollback, 6)}", 300),
                "Roll back",
            )
            block["accessory"] = button
        blocks.append(block)
    if len(newest) > room:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _md(f"{len(newest) - room} older not shown; use `opsbot history {name}`.")
                ],
            }
        )
    return {
        "type": "modal",
        "callback_id": "history",
        "title": _text(HISTORY_TITLE),
        "close": _text("Close"),
        "private_metadata": json.dumps({"o": owner, "n": name}, separators=(",", ":")),
        "blocks": blocks,
    }


def details_view(
    svc: Mapping[str, Any], now: float, numbers: Sequence[Mapping[str, Any]] | None
) -> View:
    """One service with per-version numbers: ratio, ready/desired, calls, failures, p50/p99,
    CPU and memory (``numbers`` None: the daemon gave none, only the spec is shown)."""
    blocks: list[Block] = [_section(service_line(svc, now))]
    if numbers is None:
        numbers = [
            {
                "model": m["model"],
                "version": m["version"],
                "traffic_ratio": m["traffic_ratio"],
                "desired": m.get("instances"),
                "ready": None,
            }
            for m in svc.get("models", [])
        ]
        blocks.append(
            {"type": "context", "elements": [_md("Live numbers come from the opsbot daemon.")]}
        )
    for row in numbers[: MAX_BLOCKS - 4]:
        blocks.append(
            {
                "type": "section",
                "text": _md(f"*{row['model']} {row['version']}*"),
                "fields": [
                    _md(f"*Ratio*\n{_figure(row.get('traffic_ratio'), '%')}"),
                    _md(
                        f"*Ready / desired*\n{_figure(row.get('ready'))} / "
                        f"{_figure(row.get('desired'))}"
                    ),
                    _md(f"*Calls*\n{_figure(row.get('calls'))}"),
                    _md(f"*Failures*\n{_figure(row.get('failures'))}"),
                    _md(
                        f"*p50 / p99*\n{_figure(row.get('p50_ms'))} / "
                        f"{_figure(row.get('p99_ms'), ' ms')}"
                    ),
                    _md(
                        f"*CPU / memory*\n{_figure(row.get('cpu_percent'), '%')} / "
                        f"{_mib(row.get('memory_bytes'))}"
                    ),
                ],
            }
        )
    rules = svc.get("rules") or []
    if rules:
        lines = [
            f"{r['header']} {'=' if r.get('equals') is not None else '~'} "
            f"{r.get('equals') if r.get('equals') is not None else r.get('matches')} -> "
            f"{r['version']}"
            for r in rules
        ]
        blocks.append(_section("*Routing rules*, in order:\n" + _bullets(lines)))
    return {
        "type": "modal",
        "callback_id": "details",
        "title": _text(DETAILS_TITLE),
        "close": _text("Close"),
        "blocks": blocks,
    }


def expired_view(message: str) -> View:
    """What a form turns into when the bot no longer holds its draft."""
    return {
        "type": "modal",
        "callback_id": "expired",
        "title": _text("Form expired"),
        "close": _text("Close"),
        "blocks": [_section(f":hourglass: {message}")],
    }


def loading_view(title: str, what: str) -> View:
    return {
        "type": "modal",
        "callback_id": "loading",
        "title": _text(title),
        "close": _text("Close"),
        "blocks": [_section(f":hourglass_flowing_sand: {what}…")],
    }
