"""The Deploy form's definition in the core: order and labels of the reference page, choices
with availability, the custom-hours rule, env lines, error paths, verbs and the summary."""

from __future__ import annotations

import re

import pytest

from opsbot.core import form
from opsbot.core.spec import DeploySpec, parse_spec
from opsbot.core.status import Status


def test_fields_follow_the_reference_page_with_its_labels() -> None:
    labels = [f.label for f in form.FIELDS if f.section != "rule"]
    assert labels == [
        "Name",
        "Auto Stop",
        "Description",
        "Resource Pool",
        "Model Source",
        "Model",
        "Version",
        "Traffic Ratio (%)",
        "Specifications",
        "Compute Nodes",
        "Environment Variable",
        "Traffic Limit",
    ]


def test_every_spec_field_has_a_label_and_help() -> None:
    keys = {f.key for f in form.FIELDS}
    for name in DeploySpec.model_fields:
        assert name in form.LABELS, name
    for name in ("source", "model", "version", "traffic_ratio", "flavor", "instances", "env"):
        assert name in keys and form.FIELD_BY_KEY[name].help
    assert all(f.help for f in form.FIELDS)


@pytest.mark.parametrize(
    ("choice", "hours", "value", "error"),
    [
        ("2h", None, "2h", False),
        ("off", None, "off", False),
        ("custom", "3", "3h", False),
        ("custom", " 24 ", "24h", False),
        ("custom", "25", None, True),
        ("custom", "0", None, True),
        ("custom", "1.5", None, True),
        ("custom", "", None, True),
    ],
)
def test_custom_hours_take_whole_hours_from_1_to_24(
    choice: str, hours: str | None, value: str | None, error: bool
) -> None:
    got, problem = form.auto_stop_value(choice, hours)
    assert got == value
    assert (problem is not None) == error
    if problem is not None:
        assert problem.field == "auto_stop" and "1 to 24" in problem.message


def test_auto_stop_choices_are_the_pages_and_show_any_spec() -> None:
    assert [label for _, label in form.AUTO_STOP_CHOICES] == [
        "1 hour later",
        "2 hours later",
        "4 hours later",
        "6 hours later",
        "Custom (1-24 hours)",
        "Off",
    ]
    assert form.auto_stop_choice("4h") == ("4h", "")
    assert form.auto_stop_choice("3h") == ("custom", "3")
    assert form.auto_stop_choice("90m") == ("90m", "")
    for value, _ in form.AUTO_STOP_CHOICES:
        if value != form.CUSTOM:
            parse_spec(
                {"name": "s", "auto_stop": value, "models": [{"model": "m", "version": "1"}]}
            )


def test_env_lines_parse_and_name_the_bad_line() -> None:
    env, errors = form.parse_env_lines(
        "A=1\n\n# note\nB = two = 2\nnot a pair\n=x", "models[1].env"
    )
    assert env == {"A": "1", "B": "two = 2"}
    assert [e.field for e in errors] == ["models[1].env", "models[1].env"]
    assert "line 5" in errors[0].message and "not a pair" in errors[0].message
    assert "line 6" in errors[1].message
    secret = "s3cr3t-Value-0123456789"
    lines = form.env_lines({"DB_PASSWORD": secret, "LEVEL": "info"})
    assert secret not in lines and "LEVEL=info" in lines
    assert form.parse_env_lines(form.env_lines({"LEVEL": "info"}, masked=False))[0] == {
        "LEVEL": "info"
    }


@pytest.mark.parametrize(
    ("path", "ref", "label"),
    [
        ("name", form.FieldRef("name"), "Name"),
        ("auto_stop.minutes", form.FieldRef("auto_stop"), "auto_stop.minutes"),
        ("models", form.FieldRef("traffic_ratio", "version", 0), "Model and Configuration"),
        (
            "models[1].env.DB_PASSWORD",
            form.FieldRef("env", "version", 1),
            "Version 2, environment variable DB_PASSWORD",
        ),
        (
            "models[2].instances",
            form.FieldRef("instances", "version", 2),
            "Version 3, compute nodes",
        ),
        ("models[0]", form.FieldRef("model", "version", 0), "Version 1"),
        ("rules[0]", form.FieldRef("equals", "rule", 0), "Rule 1"),
        ("rules[1].model", form.FieldRef("rule_version", "rule", 1), "Rule 2, version"),
        ("rules[0].matches", form.FieldRef("matches", "rule", 0), "Rule 1, pattern"),
        ("spec", form.FieldRef("form"), "spec"),
    ],
)
def test_each_error_path_lands_on_its_field(path: str, ref: form.FieldRef, label: str) -> None:
    assert form.error_field(path) == ref
    assert form.field_label(path) == label


def test_every_error_the_core_gives_lands_on_a_field_of_the_form() -> None:
    from opsbot.core.errors import SpecInvalid

    bad = {
        "name": "1x",
        "auto_stop": "forever",
        "description": "<b>",
        "resource_pool": "no pool!",
        "traffic_limit": 0,
        "models": [
            {
                "model": "iris",
                "version": "1",
                "traffic_ratio": 30,
                "instances": 0,
                "env": {"1": ""},
            },
            {"model": "iris", "version": "1", "traffic_ratio": 30, "flavor": "bad flavor"},
        ],
        "rules": [{"header": "bad header", "equals": "x", "matches": "y", "version": "9"}],
    }
    with pytest.raises(SpecInvalid) as exc:
        parse_spec(bad)
    for error in exc.value.errors:
        assert form.error_field(error.field).key in form.FIELD_BY_KEY, error.field


FLAVORS = [
    {"id": "exeml.cpu", "name": "ExeML CPU", "allows": ["exeml"], "available": True},
    {"id": "cpu.2u8g", "name": "2 vCPUs 8 GiB", "allows": ["custom", "exeml"], "available": True},
    {"id": "gpu.t4", "name": "1 x T4", "available": False, "reason": "needs 1 x NVIDIA"},
]


def test_flavors_are_offered_by_pool_and_model_origin() -> None:
    custom = form.flavor_choices(FLAVORS, "custom")
    assert [(c.value, c.available) for c in custom] == [
        ("exeml.cpu", False),
        ("cpu.2u8g", True),
        ("gpu.t4", False),
    ]
    assert "takes only ExeML models" in custom[0].reason
    assert custom[2].reason == "needs 1 x NVIDIA"
    assert form.default_flavor(custom) == "cpu.2u8g"
    assert form.default_flavor(custom, "gpu.t4") == "cpu.2u8g"  # its own only when choosable
    exeml = form.flavor_choices(FLAVORS, "exeml")
    assert [c.value for c in exeml if c.available] == ["exeml.cpu", "cpu.2u8g"]
    assert form.default_flavor(exeml, "exeml.cpu") == "exeml.cpu"
    assert form.default_flavor(form.flavor_choices(FLAVORS[2:], "custom")) is None


def test_the_next_version_is_the_first_the_form_does_not_list() -> None:
    offered = [("iris", "1.0.0"), ("iris", "2.0.0"), ("flowers", "1")]
    assert form.next_version(offered, [("iris", "1.0.0")]) == ("iris", "2.0.0")
    assert form.next_version(offered, offered[:2]) == ("flowers", "1")
    assert form.next_version(offered, offered) is None
    assert not form.can_add_version(1, model_versions=1)  # the page hides it then
    assert form.can_add_version(1, model_versions=2)
    assert not form.can_add_version(form.LIMITS["versions"])


def test_verbs_by_status_and_by_who_asks() -> None:
    running = form.allowed_verbs(Status.RUNNING, owner=True, admin=False)
    assert {form.Verb.STOP, form.Verb.EXTEND, form.Verb.MODIFY} <= running
    assert form.Verb.START not in running
    assert form.Verb.EXTEND not in form.allowed_verbs(Status.DEPLOYING, owner=True, admin=False)
    assert form.Verb.MODIFY not in form.allowed_verbs("deploying", owner=True, admin=False)
    stopped = form.allowed_verbs(Status.STOPPED, owner=False, admin=True)
    assert form.Verb.START in stopped and form.Verb.EXTEND not in stopped
    assert form.allowed_verbs(Status.RUNNING, owner=False, admin=False) == {form.Verb.HISTORY}


def test_the_summary_lists_what_the_user_confirms_with_secrets_masked() -> None:
    secret = "s3cr3t-Value-0123456789"
    spec = parse_spec(
        {
            "name": "svc",
            "auto_stop": "2h",
            "models": [
                {"model": "iris", "version": "1", "traffic_ratio": 70, "env": {"TOKEN": secret}},
                {"model": "iris", "version": "2", "traffic_ratio": 30, "instances": 2},
            ],
            "rules": [{"header": "X-Group", "equals": "beta", "version": "2"}],
        }
    )
    lines = dict(form.deploy_summary(spec))
    assert lines["Name"] == "svc" and lines["Auto Stop"] == "2 hours later"
    assert lines["Version 1: Model"] == "iris 1" and lines["Version 2: Compute Nodes"] == "2"
    assert lines["Traffic Limit"] == "100 calls per second"
    assert lines["Rule 1"] == "X-Group = beta -> 2"
    assert secret not in str(lines) and "TOKEN=" in lines["Version 1: Environment Variable"]
    assert [label for label, _ in form.deploy_summary(spec)][:4] == [
        "Name",
        "Auto Stop",
        "Description",
        "Resource Pool",
    ]
    assert all(re.match(r"^[A-Z]", label) for label, _ in form.deploy_summary(spec))


def test_search_finds_the_typed_text_anywhere_best_matches_first() -> None:
    labels = ["data-iris", "Iris-v2", "chrysiris", "iris", "bigiris_x", "tree_iris", "rose"]
    choices = [(f"v{i}", label) for i, label in enumerate(labels)]
    found = form.search_choices(choices, "IRIS")
    # The name itself, then names starting with it, then a word starting with it (earlier
    # first), then a match inside a word (earlier first); the value goes with its label.
    assert [label for _, label in found] == [
        "iris",
        "Iris-v2",
        "data-iris",
        "tree_iris",
        "bigiris_x",
        "chrysiris",
    ]
    assert found[0] == ("v3", "iris")
    # Ties keep the form's order; nothing typed keeps every choice in order.
    assert form.search_choices([("a", "x-1"), ("b", "y-1"), ("c", "x-1")], "1") == [
        ("a", "x-1"),
        ("b", "y-1"),
        ("c", "x-1"),
    ]
    assert form.search_choices(choices, "  ") == choices
    assert form.search_choices(choices, "tulip") == []
    # A word start later in the name counts, though the text appears inside a word before it.
    later = [("0", "xirisx"), ("1", "xiris-iris"), ("2", "irisx")]
    assert form.search_choices(later, "iris") == [
        ("2", "irisx"),
        ("1", "xiris-iris"),
        ("0", "xirisx"),
    ]
