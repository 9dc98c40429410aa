"""Spec files, TOML or JSON, with the field names of the form; a file that cannot be read or
parsed is an error on the field "file"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from core_support import message_for

from opsbot.core.errors import SpecInvalid
from opsbot.core.spec import load_spec_file, parse_spec, spec_to_dict

GATED_TOML = """\
name = "iris-canary"
auto_stop = "90m"
description = "Iris: 1.0.0 keeps most traffic, 2.0.0 gets a tenth"
resource_pool = "public"
traffic_limit = 50

[[models]]
source = "mine"
model = "iris"
version = "1.0.0"
traffic_ratio = 90
flavor = "cpu.2u8g"
instances = 2

[models.env]
LOG_LEVEL = "info"
BATCH = 8

[[models]]
model = "iris"
version = "2.0.0"
traffic_ratio = 10
"""

GATED_JSON = {
    "name": "iris-canary",
    "auto_stop": "90m",
    "description": "Iris: 1.0.0 keeps most traffic, 2.0.0 gets a tenth",
    "resource_pool": "public",
    "traffic_limit": 50,
    "models": [
        {
            "source": "mine",
            "model": "iris",
            "version": "1.0.0",
            "traffic_ratio": 90,
            "flavor": "cpu.2u8g",
            "instances": 2,
            "env": {"LOG_LEVEL": "info", "BATCH": 8},
        },
        {"model": "iris", "version": "2.0.0", "traffic_ratio": 10},
    ],
}


def file_error(path: Path, *words: str) -> str:
    with pytest.raises(SpecInvalid) as info:
        load_spec_file(path)
    assert [e.field for e in info.value.errors] == ["file"]
    return message_for(info.value, "file", *words)


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(GATED_TOML)
    parsed = parse_spec(load_spec_file(path))
    assert parsed.name == "iris-canary"
    assert parsed.auto_stop.minutes == 90
    assert [(m.version, m.traffic_ratio) for m in parsed.models] == [("1.0.0", 90), ("2.0.0", 10)]
    assert parsed.models[0].env == {"LOG_LEVEL": "info", "BATCH": "8"}
    assert parsed.models[0].instances == 2
    assert parsed.traffic_limit == 50


def test_json_file_gives_the_same_spec(tmp_path: Path) -> None:
    toml_path, json_path = tmp_path / "spec.toml", tmp_path / "spec.json"
    toml_path.write_text(GATED_TOML)
    json_path.write_text(json.dumps(GATED_JSON))
    assert parse_spec(load_spec_file(json_path)) == parse_spec(load_spec_file(toml_path))


def test_format_guessed_from_content_without_a_known_suffix(tmp_path: Path) -> None:
    as_json, as_toml = tmp_path / "spec.txt", tmp_path / "spec"
    as_json.write_text("  " + json.dumps(GATED_JSON))
    as_toml.write_text(GATED_TOML)
    assert load_spec_file(as_json) == load_spec_file(as_toml) == GATED_JSON


def test_normalised_spec_written_back_as_toml_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(GATED_TOML)
    parsed = parse_spec(load_spec_file(path))
    again = tmp_path / "normalised.toml"
    again.write_text(tomli_w.dumps(spec_to_dict(parsed)))
    assert parse_spec(load_spec_file(again)) == parsed
    assert load_spec_file(again)["auto_stop"] == "90m"


def test_file_errors_do_not_hide_field_errors(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(GATED_TOML.replace("traffic_ratio = 10", "traffic_ratio = 20"))
    with pytest.raises(SpecInvalid) as info:
        parse_spec(load_spec_file(path))
    message_for(info.value, "models", "sum to 110%")


def test_missing_file(tmp_path: Path) -> None:
    file_error(tmp_path / "nope.toml", "cannot read", "nope.toml")


def test_a_directory(tmp_path: Path) -> None:
    file_error(tmp_path, "cannot read")


def test_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text('name = "svc"\n[[models]\nmodel = ')
    file_error(path, "not valid TOML", "spec.toml")


def test_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text('{"name": "svc",\n "models": [}')
    file_error(path, "not valid JSON", "line 2")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_bytes(b'name = "\xff\xfe"\n')
    file_error(path, "UTF-8")


@pytest.mark.parametrize("content", ["[1, 2]", '"svc"', "null"])
def test_json_that_is_not_one_table(tmp_path: Path, content: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(content)
    file_error(path, "one table")
