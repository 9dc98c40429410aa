"""Env values flagged secret are masked in every answer, for everyone: the service, its
history (old values included) and its events; the spec can flag a variable by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from core_support import World

from opsbot.core.errors import SpecInvalid
from opsbot.core.spec import parse_spec
from opsbot.core.update import Changes

OLD, NEW = "tokn-old-value-1", "tokn-new-value-2"


def _spec(value: str) -> dict[str, object]:
    entry = {
        "model": "iris",
        "version": "1.0.0",
        "env": {"API_TOKN": value, "LOG_LEVEL": "info"},
        "secret_env": ["API_TOKN"],
    }
    return {"name": "svc", "models": [entry]}


def test_a_variable_marked_secret_is_masked_in_every_answer(examples_home: Path) -> None:
    world = World(examples_home)
    core, owner = world.core, world.me
    data = _spec(OLD)
    world.deploy(**{k: v for k, v in data.items() if k != "name"})
    world.controller.reconcile_all()  # Running on the fake runtime
    core.update_service(owner, "svc", _spec(NEW))
    core.update_service(owner, "svc", Changes(description="again"))

    shown = json.dumps(core.service(owner, "svc").as_dict())
    history = json.dumps([s.spec for s in core.history(owner, "svc")])
    events = json.dumps([e.as_dict() for e in core.events(owner, service="svc")])
    for answer in (shown, history, events):
        assert OLD not in answer
        assert NEW not in answer
    assert '"API_TOKN": "to****-2"' in shown
    assert '"API_TOKN": "to****-1"' in history  # the old value, masked too
    assert '"LOG_LEVEL": "info"' in shown  # what is not secret stays readable
    # The service keeps its real value: masking is for answers only.
    assert core.service(owner, "svc").spec.models[0].env["API_TOKN"] == NEW


def test_secret_env_must_name_variables_of_env() -> None:
    data = _spec(OLD)
    data["models"][0]["secret_env"] = ["API_TOKEN_TYPO"]  # type: ignore[index]
    with pytest.raises(SpecInvalid) as info:
        parse_spec(data)
    [error] = info.value.errors
    assert error.field.startswith("models[0]")
    assert "API_TOKEN_TYPO" in error.message
    assert "not in env" in error.message
