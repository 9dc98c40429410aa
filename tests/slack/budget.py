"""Block Kit's budgets, measured: what slack_sdk's models check and what they leave out.

``problems(view)`` walks a view (or a message's blocks) and names every budget it passes:
blocks per surface, option values and texts, private_metadata, titles, section and input
texts, button values, confirm dialogs, ids. Slack refuses (or silently drops) past these."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from slack_sdk.models.blocks import Block, Option
from slack_sdk.models.views import View

MODAL_BLOCKS = 100
MESSAGE_BLOCKS = 50
METADATA = 3000
TITLE = 24
OPTION_VALUE = 150
OPTION_TEXT = 75
OPTIONS = 100
SECTION_TEXT = 3000
FIELD_TEXT = 2000
FIELDS = 10
INPUT_TEXT = 3000
LABEL = 2000
BUTTON_VALUE = 2000
BUTTON_TEXT = 75
HEADER_TEXT = 150
CONTEXT_ELEMENTS = 10
ACTIONS_ELEMENTS = 25
ID = 255
CONFIRM_TITLE, CONFIRM_TEXT, CONFIRM_BUTTON = 100, 300, 30


def _walk(node: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(node, Mapping):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _text(node: Any) -> str:
    return str(node.get("text", "")) if isinstance(node, Mapping) else str(node or "")


def problems(surface: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[str]:
    """Every budget ``surface`` (a view, or a message's blocks) passes; empty when none."""
    out: list[str] = []

    def over(what: str, size: int, limit: int) -> None:
        if size > limit:
            out.append(f"{what}: {size} > {limit}")

    if isinstance(surface, Mapping):
        blocks = list(surface.get("blocks") or [])
        over("blocks", len(blocks), MODAL_BLOCKS)
        over("private_metadata", len(str(surface.get("private_metadata") or "")), METADATA)
        for key in ("title", "submit", "close"):
            if key in surface:
                over(key, len(_text(surface[key])), TITLE)
    else:
        blocks = list(surface)
        over("blocks", len(blocks), MESSAGE_BLOCKS)
    ids = [str(b["block_id"]) for b in blocks if "block_id" in b]
    if len(ids) != len(set(ids)):
        out.append(f"repeated block ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    for path, node in _walk(blocks, "blocks"):
        kind = node.get("type")
        for key in ("block_id", "action_id"):
            if key in node:
                over(f"{path}.{key}", len(str(node[key])), ID)
        if "value" in node and "text" in node and kind is None:  # an option
            over(f"{path} option value", len(str(node["value"])), OPTION_VALUE)
            over(f"{path} option text", len(_text(node["text"])), OPTION_TEXT)
        if "options" in node:
            over(f"{path}.options", len(node["options"]), OPTIONS)
        if kind == "section":
            over(f"{path} section text", len(_text(node.get("text"))), SECTION_TEXT)
            fields = node.get("fields") or []
            over(f"{path}.fields", len(fields), FIELDS)
            for i, f in enumerate(fields):
                over(f"{path}.fields[{i}]", len(_text(f)), FIELD_TEXT)
        elif kind == "header":
            over(f"{path} header", len(_text(node.get("text"))), HEADER_TEXT)
        elif kind == "context":
            over(f"{path}.elements", len(node.get("elements") or []), CONTEXT_ELEMENTS)
        elif kind == "actions":
            over(f"{path}.elements", len(node.get("elements") or []), ACTIONS_ELEMENTS)
        elif kind == "input":
            over(f"{path}.label", len(_text(node.get("label"))), LABEL)
            over(f"{path}.hint", len(_text(node.get("hint"))), LABEL)
        elif kind == "plain_text_input":
            limit = min(int(node.get("max_length") or INPUT_TEXT), INPUT_TEXT)
            over(f"{path}.initial_value", len(str(node.get("initial_value") or "")), limit)
        elif kind == "button":
            over(f"{path}.value", len(str(node.get("value") or "")), BUTTON_VALUE)
            over(f"{path}.text", len(_text(node.get("text"))), BUTTON_TEXT)
        if "confirm" in node and isinstance(node["confirm"], Mapping) and "deny" in node["confirm"]:
            c = node["confirm"]
            over(f"{path}.confirm.title", len(_text(c.get("title"))), CONFIRM_TITLE)
            over(f"{path}.confirm.text", len(_text(c.get("text"))), CONFIRM_TEXT)
            over(f"{path}.confirm.confirm", len(_text(c.get("confirm"))), CONFIRM_BUTTON)
    return out


def check(surface: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
    """``surface`` is valid for slack_sdk's models and within every budget above."""
    if isinstance(surface, Mapping):
        View(**surface).validate_json()
    else:
        for block in Block.parse_all(list(surface)):
            block.validate_json()
    assert problems(surface) == []


def check_options(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An answer to a block_suggestion as Slack takes it: ``options``, at most 100, each valid
    for slack_sdk's Option; returns them."""
    assert set(answer) == {"options"}, answer
    options = list(answer["options"])
    assert len(options) <= OPTIONS
    parsed = Option.parse_all(options) or []
    assert len(parsed) == len(options)
    for option in parsed:  # values of 150 characters at most, texts of 75
        option.validate_json()
    return options
