"""The dashboard's words for what the core says: the field's label instead of its path, plain
words instead of pydantic's, the key to press instead of a CLI command. Every message the
dashboard shows passes through here (one place; the core keeps speaking for every front).

No Textual here. The labels and what an error path names are the core form's
(:mod:`opsbot.core.form`), the same in every front.
"""

from __future__ import annotations

import re

from opsbot.core.form import LABELS as FIELD_LABELS
from opsbot.core.form import field_label

#: pydantic's phrases, and what a person would say.
_PYDANTIC: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I), words)
    for pattern, words in (
        (r"^Value error, ", ""),
        (r"^Assertion failed, ", ""),
        (r"String should have at least 1 character", "is required"),
        (r"String should have at least (\d+) characters", r"needs at least \1 characters"),
        (r"String should have at most (\d+) characters?", r"takes at most \1 characters"),
        (r"String should match pattern '[^']*'", "has characters it cannot take"),
        (
            r"Input should be a valid integer(, unable to parse [a-z ]*[a-z])?",
            "must be a whole number",
        ),
        (r"Input should be greater than or equal to (\S+)", r"must be at least \1"),
        (r"Input should be greater than (\S+)", r"must be more than \1"),
        (r"Input should be less than or equal to (\S+)", r"must be at most \1"),
        (r"Input should be less than (\S+)", r"must be less than \1"),
        (r"Input should be a valid string", "must be text"),
        (r"Input should be (.+)", r"must be \1"),
        (r"List should have at least 1 item after validation, not 0", "needs at least one"),
        (r"List should have at most (\d+) items? after validation, not \d+", r"takes at most \1"),
        (r"^Field required$", "is required"),
        (r"Extra inputs are not permitted", "is not a field of the form"),
    )
)

#: CLI advice, and the dashboard's way to do the same.
_COMMANDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), words)
    for pattern, words in (
        (r"\(?`opsbot delete [^`]*`\)?", "(select it and press x)"),
        (r"`opsbot start [^`]*`", "r on the services table"),
        (r"\(?`opsbot extend [^`]*`\)?", "(e on the services table)"),
        (r"`opsbot show [^`]*`", "its details (enter)"),
        (r"`opsbot history [^`]*`", "its History tab (enter, then History)"),
        (r"see `opsbot services`", "see the services table (a: everyone's)"),
        (r"`opsbot model list`", "the Models screen (m)"),
        (r"`opsbot model create`", "c on the Models screen (m)"),
        (r"`opsbot model subscribe [^`]*`", "s on the Models screen (m)"),
        (r"`opsbot flavors`", "the Specifications choice"),
    )
)


def plain(message: str) -> str:
    """A message in the dashboard's words: pydantic's phrases and CLI commands replaced."""
    for pattern, words in (*_PYDANTIC, *_COMMANDS):
        message = pattern.sub(words, message)
    for path in re.findall(r"\b(?:models|rules)\[\d+\](?:\.\w+)*", message):
        message = message.replace(path, field_label(path))
    return message


def field_message(path: str, message: str) -> str:
    """An error for a line of its own: "Version 1, instances: must be at most 128"."""
    return f"{field_label(path)}: {plain(message)}"


__all__ = ["FIELD_LABELS", "field_label", "field_message", "plain"]
