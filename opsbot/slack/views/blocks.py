"""Block Kit primitives of the Slack views: action ids, limits, and the element builders.

Pure: builders take plain data and return dicts that slack_sdk's models accept."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from opsbot.core import form

Block = dict[str, Any]
View = dict[str, Any]
DEPLOY_CALLBACK = "deploy"
MODIFY_CALLBACK = "modify"
#: A version's own modal, pushed over a form too large to show every version's inputs.
VERSION_CALLBACK = "deploy_version"
MODAL_TITLE = "Deploy real-time svc"  # Slack allows 24 characters
MODIFY_TITLE = "Modify service"
HISTORY_TITLE = "Service history"
DETAILS_TITLE = "Service details"
MAX_BLOCKS = 100
MAX_MESSAGE_BLOCKS = 50
OPTION_TEXT_MAX = 75
#: The longest text a plain_text_input takes (its max_length, and so its initial value).
TEXT_INPUT_MAX = 3000
#: The longest text of a section (mrkdwn).
SECTION_TEXT_MAX = 3000
# Action ids the app listens to.
A_AUTO_STOP = "deploy_auto_stop"
A_POOL = "deploy_pool"
A_SOURCE = "deploy_source"
A_MODEL = "deploy_model"
A_VERSION = "deploy_version"
A_ADD = "deploy_add_version"
A_REMOVE = "deploy_remove_version"
A_ADD_RULE = "deploy_add_rule"
A_REMOVE_RULE = "deploy_remove_rule"
A_EDIT = "deploy_edit_version"
A_VALUE = "value"  # inputs that need no listener
A_STOP = "svc_stop"
A_START = "svc_start"
A_EXTEND = "svc_extend"
A_DELETE = "svc_delete"
A_HOME_DEPLOY = "home_deploy"
A_MODIFY = "svc_modify"
A_HISTORY = "svc_history"
A_DETAILS = "svc_details"
A_ROLLBACK = "svc_rollback"
A_EXTEND_1 = "remind_extend_1"
A_EXTEND_4 = "remind_extend_4"
A_AUTO_STOP_ON = "svc_auto_stop_on"
#: The choices of the Extend menu in /services and App Home are the core's EXTEND_HOURS.
#: Longest value Slack takes in a select option.
OPTION_VALUE_MAX = 150
#: The most options a static_select holds, and an external_select's answer.
MAX_OPTIONS = 100
#: Characters typed before Slack asks for an external_select's options: none, so opening the
#: menu shows the first 100 choices, and typing narrows them.
MIN_QUERY_LENGTH = 0


def _text(text: str, *, emoji: bool = True) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": emoji}


def _md(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _clip(text: str, limit: int = OPTION_TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _option(value: str, text: str) -> dict[str, Any]:
    return {"text": _text(_clip(text)), "value": value}


def _input(
    block_id: str,
    label: str,
    element: dict[str, Any],
    *,
    optional: bool = False,
    hint: str | None = None,
    dispatch: bool = False,
) -> Block:
    block: Block = {
        "type": "input",
        "block_id": block_id,
        "label": _text(label),
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = _text(hint)
    if dispatch:
        block["dispatch_action"] = True
    return block


def _select(
    action_id: str,
    placeholder: str,
    options: Sequence[tuple[str, str]],
    selected: str | None,
) -> dict[str, Any]:
    """A select of ``options`` (value, text), ``selected`` chosen: a static_select while they
    fit one (100 options), else an external_select whose options the bot serves as the user
    types (:func:`suggestions`, from the same choices), so none is out of reach."""
    opts = [_option(v, t) for v, t in options]
    element: dict[str, Any] = {"action_id": action_id}
    if len(opts) > MAX_OPTIONS:
        element.update(
            type="external_select",
            placeholder=_text(_clip(f"{placeholder}: type to search {len(opts)}", 150)),
            min_query_length=MIN_QUERY_LENGTH,
        )
    else:
        element.update(
            type="static_select",
            placeholder=_text(placeholder),
            # Slack needs at least one option
            options=opts or [_option("-", "nothing to choose yet")],
        )
    for o in opts:
        if o["value"] == selected:
            element["initial_option"] = o
    return element


def suggestions(options: Sequence[tuple[str, str]], typed: str) -> list[dict[str, Any]]:
    """What an external_select offers once ``typed`` is typed in it: the core form's matches
    among ``options`` (the select's own, see :func:`_select`), best first, as many as Slack
    shows."""
    return [_option(v, t) for v, t in form.search_choices(options, typed)[:MAX_OPTIONS]]


def _number(
    action_id: str, initial: str | None, minimum: int, maximum: int, placeholder: str
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "number_input",
        "action_id": action_id,
        "is_decimal_allowed": False,
        "min_value": str(minimum),
        "max_value": str(maximum),
        "placeholder": _text(placeholder),
    }
    if initial not in (None, ""):
        element["initial_value"] = initial
    return element


def _plain(
    action_id: str,
    initial: str | None,
    *,
    multiline: bool = False,
    max_length: int | None = None,
    placeholder: str | None = None,
) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": action_id}
    if multiline:
        element["multiline"] = True
    if max_length:
        element["max_length"] = max_length
    if placeholder:
        element["placeholder"] = _text(placeholder)
    if initial:
        element["initial_value"] = initial
    return element


def _button(action_id: str, text: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": _text(text),
        "value": value,
    }
    if style:
        button["style"] = style
    return button


def _confirm(title: str, text: str, yes: str) -> dict[str, Any]:
    return {
        "title": _text(title),
        "text": _md(text),
        "confirm": _text(yes),
        "deny": _text("Cancel"),
        "style": "danger",
    }


def _when(ts: float) -> str:
    """A time Slack shows in the reader's own time zone (UTC in the fallback)."""
    fallback = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{fallback}>"


def _bullets(lines: Sequence[str], limit: int = 10) -> str:
    shown = [f"• {_clip(line, 200)}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"• …and {len(lines) - limit} more")
    return "\n".join(shown)


def _figure(value: Any, unit: str = "") -> str:
    return "–" if value is None else f"{value}{unit}"


def _mib(value: Any) -> str:
    return "–" if value is None else f"{value / (1024 * 1024):.0f} MiB"


def _section(text: str) -> Block:
    return {"type": "section", "text": _md(_clip(text, SECTION_TEXT_MAX))}


def pack(lines: Sequence[str], size: int) -> list[str]:
    """Lines joined into parts of at most ``size`` characters, whole lines each (a line longer
    than ``size`` is a part of its own: callers keep lines shorter)."""
    parts: list[str] = []
    for line in lines:
        if parts and len(parts[-1]) + 1 + len(line) <= size:
            parts[-1] += "\n" + line
        else:
            parts.append(line)
    return parts


def confirm_lines(warnings: Sequence[str], verb: str, summary: Sequence[str]) -> list[str]:
    """What the user confirms once the form is submitted: the entered information (or the
    daemon's plan of a modification), then the core's warnings, then what to press."""
    doing = "deploying" if verb == "Deploy" else "applying"
    lines: list[str] = []
    if summary:
        lines += [f"*Check before {doing}*", *(f"• {_clip(x, 200)}" for x in summary)]
    if warnings:
        lines += [":warning: *Warnings*", *(f"• {_clip(w, 400)}" for w in warnings)]
        lines.append(f"Press *{verb} anyway* to go on, or change the environment variables.")
    else:
        lines.append("Press *Confirm* to go on, or change the form.")
    return lines
