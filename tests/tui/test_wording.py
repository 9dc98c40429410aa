"""The dashboard's words for the core's messages, and which columns a width holds (no app)."""

from __future__ import annotations

import pytest

from opsbot.core.errors import OpsbotError
from opsbot.core.form import Verb, allowed_verbs
from opsbot.core.spec import parse_spec
from opsbot.core.status import Status
from opsbot.tui.view import COLUMN_KEYS, Row, auto_stop_text, refusal, shown_columns, sort_key
from opsbot.tui.wording import field_label, field_message, plain


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("name", "Name"),
        ("traffic_limit", "Traffic Limit"),
        ("models[0].env.DB_PASSWORD", "Version 1, environment variable DB_PASSWORD"),
        ("models[1].instances", "Version 2, compute nodes"),
        ("models[2]", "Version 3"),
        ("rules[0].header", "Rule 1, header"),
    ],
)
def test_field_label(path: str, label: str) -> None:
    assert field_label(path) == label


def test_the_cores_own_errors_come_out_in_plain_words() -> None:
    body = {
        "name": "",
        "models": [
            {"model": "iris", "version": "1.0.0", "flavor": "cpu.2u8g", "instances": "lots"}
        ],
    }
    with pytest.raises(OpsbotError) as caught:
        parse_spec(body)
    shown = [field_message(e.field, e.message) for e in caught.value.errors]
    assert shown, "the core found nothing wrong"
    for line in shown:
        assert "models[" not in line and "Input should" not in line and "String should" not in line
    expected = "Version 1, compute nodes: must be a whole number"
    assert any(line.startswith(expected) for line in shown)


def test_cli_advice_becomes_the_key_to_press() -> None:
    message = "alice holds 20 of 20 services; delete one (`opsbot delete NAME`) before deploying"
    assert plain(message) == (
        "alice holds 20 of 20 services; delete one (select it and press x) before deploying"
    )
    assert "`opsbot" not in plain("no model x in My Models: see `opsbot model list`")


def test_pydantic_phrases() -> None:
    assert plain("String should have at least 1 character") == "is required"
    assert plain("Input should be less than or equal to 128") == "must be at most 128"
    assert plain("Value error, ratios must sum to 100") == "ratios must sum to 100"


def row(**fields: object) -> Row:
    """A service as the table keeps it, fetched at 0, with what a test gives."""
    return Row.model_validate(
        {
            "id": "uid",
            "name": "s",
            "owner": "me",
            "status": "running",
            "url": "http://gateway/v1/infers/uid",
            "traffic_limit": 100,
            "models": [],
            "created_at": 0.0,
            "updated_at": 0.0,
            "fetched_at": 0.0,
            **fields,
        }
    )


def test_narrow_widths_drop_columns_by_priority() -> None:
    widths = dict.fromkeys(COLUMN_KEYS, 6) | {"name": 23, "versions": 26}
    assert shown_columns(300, widths) == COLUMN_KEYS
    narrow = shown_columns(80, widths)
    assert {"name", "status", "auto_stop", "versions"} <= set(narrow)
    assert "owner" not in narrow and "flavor" not in narrow


def test_auto_stop_sorts_by_the_deadline_not_the_text() -> None:
    def svc(remaining: float | None, **extra: object) -> Row:
        return row(**{"auto_stop": "2h", "remaining_s": remaining, **extra})

    long, short = svc(6480.0), svc(3480.0)
    assert auto_stop_text(long, 0.0) == "1h 48m" and auto_stop_text(short, 0.0) == "58m"
    keys = [sort_key(s, "auto_stop", None) for s in (long, short, svc(None, auto_stop="off"))]
    assert sorted(keys) == [keys[1], keys[0], keys[2]]


def test_status_sorts_by_the_status_then_the_progress() -> None:
    """As the daemon reports them: a Stopped service's progress is 0, a Running one's 100."""
    rows = {
        "deploying-late": row(status="deploying", progress=60),
        "deploying-early": row(status="deploying", progress=10),
        "running": row(status="running", progress=100),
        "stopped": row(status="stopped", progress=0),
    }
    order = sorted(rows, key=lambda k: sort_key(rows[k], "status", None))
    assert order == ["deploying-early", "deploying-late", "running", "stopped"]


@pytest.mark.parametrize("status", [s.value for s in Status])
def test_keys_are_refused_as_the_core_forms_verbs_say(status: str) -> None:
    service = row(status=status)
    verbs = allowed_verbs(status, owner=True, admin=False)
    for verb, key in ((Verb.START, "start"), (Verb.STOP, "stop"), (Verb.EXTEND, "extend")):
        assert (refusal(key, service, "me", False) is None) == (verb in verbs), (verb, status)
    assert (refusal("modify", service, "me", False) is None) == (Verb.MODIFY in verbs)
    # Extend while Deploying: no deadline runs yet, the core refuses it, so does the key.
    if status == "deploying":
        assert "auto stop applies to a running service" in str(
            refusal("extend", service, "me", False)
        )
