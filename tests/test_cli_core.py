"""The CLI commands of the core, without a daemon: validate, flavors and model *.

Each test runs against its own OPSBOT_HOME (the ``home`` fixture, or ``examples_home`` holding
the example models). The CLI only calls the core; these tests check what a user sees: exit
codes, JSON shapes, and errors that name their field.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import opsbot.core.app
from opsbot.cli import app
from opsbot.core.app import Core
from opsbot.core.hardware import GIB, FakeProbe, Node
from opsbot.core.store import DB_NAME

runner = CliRunner()

SPEC_TOML = """\
name = "iris-canary"
auto_stop = "120m"

[[models]]
model = "iris"
version = "1.0.0"
traffic_ratio = 80

[[models]]
model = "iris"
version = "2.0.0"
traffic_ratio = 20
instances = 2
"""

BAD_SPEC = {
    "name": "9lives",
    "auto_stop": 3,
    "models": [
        {"model": "iris", "version": "1.0.0", "traffic_ratio": 80},
        {"model": "iris", "version": "2.0.0", "instances": 0},
    ],
}

PYTHON_MODEL = """
class Model:
    sample = [[1, 2]]

    def load(self):
        pass

    def predict(self, instances):
        return [sum(row) for row in instances]
"""


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def rows(home: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(home / DB_NAME)
    try:
        return conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's core sees one x86 node without accelerators, whatever this machine has."""
    node = Node("cpu-1", cpus=8, memory_bytes=32 * GIB, arch="x86_64")
    monkeypatch.setattr(opsbot.core.app, "LocalProbe", lambda: FakeProbe([node]))


# -- validate -------------------------------------------------------------------------------


def test_validate_toml(home: Path, tmp_path: Path, cpu_only: None) -> None:
    spec = write(tmp_path / "spec.toml", SPEC_TOML)
    result = cli("validate", "-f", str(spec))
    assert result.exit_code == 0, result.output
    assert f"{spec}: valid" in result.stdout
    assert "model versions were not checked" in result.stdout
    # The normalised spec, as TOML: defaults filled in, 120m written as 2h.
    assert 'auto_stop = "2h"' in result.stdout
    assert 'flavor = "cpu.2u8g"' in result.stdout
    assert "traffic_limit = 100" in result.stdout
    # Without a registry, validating creates nothing.
    assert list(home.iterdir()) == []


def test_validate_json_file_as_json(home: Path, tmp_path: Path, cpu_only: None) -> None:
    data = {"name": "one", "auto_stop": "off", "models": [{"model": "iris", "version": "1.0.0"}]}
    spec = write(tmp_path / "spec.json", json.dumps(data))
    result = cli("validate", "-f", str(spec), "--json")
    assert result.exit_code == 0, result.output
    out = as_json(result)
    assert out["registry_checked"] is False
    assert out["warnings"] == []
    assert out["spec"] == {
        "name": "one",
        "auto_stop": "off",
        "description": "",
        "resource_pool": "public",
        "models": [
            {
                "source": "mine",
                "model": "iris",
                "version": "1.0.0",
                "traffic_ratio": 100,
                "flavor": "cpu.2u8g",
                "instances": 1,
                "env": {},
            }
        ],
        "traffic_limit": 100,
        "rules": [],
    }


def test_validate_against_the_registry(examples_home: Path, tmp_path: Path, cpu_only: None) -> None:
    spec = write(tmp_path / "spec.toml", SPEC_TOML)
    result = cli("validate", "-f", str(spec), "--json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["registry_checked"] is True
    missing = write(tmp_path / "missing.toml", SPEC_TOML.replace('"2.0.0"', '"3.0.0"'))
    result = cli("validate", "-f", str(missing), "--json")
    assert result.exit_code == 1
    (error,) = as_json(result)["errors"]
    assert error["field"] == "models[1].version"
    assert "3.0.0" in error["message"]


def test_validate_invalid_as_json(home: Path, tmp_path: Path, cpu_only: None) -> None:
    spec = write(tmp_path / "spec.json", json.dumps(BAD_SPEC))
    result = cli("validate", "-f", str(spec), "--json")
    assert result.exit_code == 1
    doc = as_json(result)
    assert doc["error"] == "SpecInvalid" and doc["field"] == doc["errors"][0]["field"]
    errors = doc["errors"]
    for error in errors:
        assert set(error) == {"field", "message"}
        assert error["message"]
    assert {e["field"] for e in errors} == {"name", "auto_stop", "models[1].instances"}
    assert list(home.iterdir()) == []


def test_validate_invalid_for_people(home: Path, tmp_path: Path, cpu_only: None) -> None:
    spec = write(tmp_path / "spec.toml", SPEC_TOML.replace("traffic_ratio = 20", ""))
    result = cli("validate", "-f", str(spec))
    assert result.exit_code == 1
    assert "Invalid deploy spec" in result.stderr
    assert "models[1].traffic_ratio: set a traffic ratio" in result.stderr
    assert result.stdout == ""


def test_validate_cross_field_rules(home: Path, tmp_path: Path, cpu_only: None) -> None:
    text = SPEC_TOML.replace('"2.0.0"', '"1.0.0"').replace(
        "traffic_ratio = 20", "traffic_ratio = 30"
    )
    result = cli("validate", "-f", str(write(tmp_path / "spec.toml", text)), "--json")
    assert result.exit_code == 1
    fields = [e["field"] for e in as_json(result)["errors"]]
    assert fields == ["models", "models[0].version", "models[1].version"]


def test_validate_unavailable_flavor(home: Path, tmp_path: Path, cpu_only: None) -> None:
    text = SPEC_TOML.replace("instances = 2", 'instances = 2\nflavor = "gpu.v100"')
    result = cli("validate", "-f", str(write(tmp_path / "spec.toml", text)), "--json")
    assert result.exit_code == 1
    (error,) = as_json(result)["errors"]
    assert error["field"] == "models[1].flavor"
    assert "V100" in error["message"]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("spec.toml", None, "cannot read"),
        ("spec.toml", "name = [", "not valid TOML"),
        ("spec.json", '{"name": ', "not valid JSON"),
        ("spec.json", "[]", "one table"),
    ],
)
def test_validate_bad_file(
    home: Path, tmp_path: Path, name: str, content: str | None, words: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = cli("validate", "-f", str(path), "--json")
    assert result.exit_code == 1
    (error,) = as_json(result)["errors"]
    assert error["field"] == "file"
    assert words in error["message"]


def test_validate_warns_of_secrets(home: Path, tmp_path: Path, cpu_only: None) -> None:
    text = SPEC_TOML + '\n[models.env]\nDB_PASSWORD = "hunter2"\n'
    spec = write(tmp_path / "spec.toml", text)
    result = cli("validate", "-f", str(spec), "--json")
    assert result.exit_code == 0, result.output
    (warning,) = as_json(result)["warnings"]
    assert warning["field"] == "models[1].env.DB_PASSWORD"
    assert "secret" in warning["message"]
    people = cli("validate", "-f", str(spec))
    assert people.exit_code == 0
    assert "warning: models[1].env.DB_PASSWORD" in people.stderr


def test_validate_with_a_bad_config(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text("quota = 0\n")
    spec = write(tmp_path / "spec.toml", SPEC_TOML)
    result = cli("validate", "-f", str(spec), "--json")
    assert result.exit_code == 1
    (error,) = as_json(result)["errors"]
    assert error["field"] == "config.toml: quota"
    people = cli("validate", "-f", str(spec))
    assert people.exit_code == 1
    assert "Invalid configuration" in people.stderr
    assert "config.toml: quota" in people.stderr


def test_validate_needs_a_file(home: Path) -> None:
    result = cli("validate")
    assert result.exit_code == 2
    assert "--file" in result.stderr


def test_home_option_wins_over_the_environment(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text("quota = 0\n")
    spec = write(tmp_path / "spec.toml", SPEC_TOML)
    assert cli("--home", str(other), "validate", "-f", str(spec)).exit_code == 1
    assert list(home.iterdir()) == []


# -- flavors --------------------------------------------------------------------------------


def test_flavors_json(home: Path, cpu_only: None) -> None:
    result = cli("flavors", "--json")
    assert result.exit_code == 0, result.output
    flavors = {f["id"]: f for f in as_json(result)}
    for f in flavors.values():
        assert {"id", "name", "available", "reason"} <= set(f)
        assert isinstance(f["available"], bool)
        assert f["available"] == (f["reason"] == "")
    assert flavors["cpu.2u8g"]["available"] is True
    assert flavors["gpu.v100"]["available"] is False
    assert "V100" in flavors["gpu.v100"]["reason"]
    assert flavors["ascend.310"]["name"] == "Arm: 3 vCPUs | 6 GiB Ascend: 1 x Ascend 310"
    assert list(home.iterdir()) == []  # listing flavors creates no store


def test_flavors_on_this_machine(home: Path) -> None:
    result = cli("flavors", "--json")
    assert result.exit_code == 0, result.output
    for f in as_json(result):
        assert f["available"] or f["reason"], f["id"]


def test_flavors_table(home: Path, cpu_only: None) -> None:
    result = cli("flavors")
    assert result.exit_code == 0
    assert "cpu.2u8g" in result.stdout
    assert "no: needs 1 x NVIDIA T4" in result.stdout


def test_flavors_of_a_dedicated_pool(home: Path, cpu_only: None) -> None:
    (home / "config.toml").write_text(
        '[[pools]]\nname = "team"\ncpus = 8\nmemory_gib = 32\nflavors = ["cpu.2u8g"]\n'
    )
    result = cli("flavors", "--pool", "team", "--json")
    assert result.exit_code == 0, result.output
    found = {f["id"]: f for f in as_json(result)}
    assert found["cpu.2u8g"]["available"]
    assert found["exeml.cpu"]["reason"] == "not offered in pool team"
    unknown = cli("flavors", "--pool", "nope", "--json")
    assert unknown.exit_code == 1
    assert "no pool 'nope'" in as_json(unknown)["message"]  # --json: the error is JSON too
    assert "public, team" in as_json(unknown)["message"]


def test_flavors_with_a_bad_flavors_file(home: Path) -> None:
    (home / "flavors.toml").write_text("[[flavor]]\nid = 'x'\ncpus = 'many'\n")
    result = cli("flavors", "--json")
    assert result.exit_code == 1
    doc = as_json(result)  # --json: the error is a JSON document on stdout
    assert doc["title"] == "Invalid configuration"
    assert "flavors.toml: flavor[0].cpus" in [e["field"] for e in doc["errors"]]


# -- model ----------------------------------------------------------------------------------


def test_model_examples(home: Path, me: str) -> None:
    result = cli("model", "examples", "--json")
    assert result.exit_code == 0, result.output
    made = as_json(result)
    assert [(m["name"], m["version"], m["format"]) for m in made] == [
        ("iris", "1.0.0", "sklearn"),
        ("iris", "2.0.0", "sklearn"),
        ("iris-onnx", "1.0.0", "onnx"),
    ]
    for m in made:
        assert (m["status"], m["owner"], m["public"], m["source"]) == ("normal", me, True, "mine")
    assert "creating iris 1.0.0 (sklearn)" in result.stderr
    listed = as_json(cli("model", "list", "--json"))
    assert [(r["name"], r["version"], r["status"]) for r in listed] == [
        ("iris", "1.0.0", "normal"),
        ("iris", "2.0.0", "normal"),
        ("iris-onnx", "1.0.0", "normal"),
    ]


def test_model_examples_again(examples_home: Path) -> None:
    result = cli("model", "examples")
    assert result.exit_code == 0
    assert "exist already" in result.stdout


def test_model_create_with_origin(
    home: Path, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    src = example_dirs[("iris", "1.0.0")]
    args = ["--path", str(src), "--format", "sklearn", "--origin", "exeml", "--json"]
    result = cli("model", "create", "flowers", "--version", "1.0.0", *args)
    assert result.exit_code == 0, result.output
    made = as_json(result)
    assert (made["name"], made["version"], made["origin"], made["status"], made["owner"]) == (
        "flowers",
        "1.0.0",
        "exeml",
        "normal",
        me,
    )
    again = cli("model", "create", "flowers", "--version", "1.0.0", *args)
    assert again.exit_code == 1
    refused = as_json(again)  # --json: the error is a JSON document on stdout
    assert refused["field"] == "version" and "flowers 1.0.0 exists" in refused["message"]


def test_model_list_json(examples_home: Path, me: str) -> None:
    result = cli("model", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = as_json(result)
    assert len(listed) == 4
    for row in listed:
        assert {"name", "version", "format", "status", "owner"} <= set(row)
        assert row["owner"] == me
        assert row["status"] == "normal"
        assert row["source"] == "mine"
    assert {(r["name"], r["version"]) for r in listed} >= {("iris", "1.0.0"), ("iris", "2.0.0")}


def test_model_list_table(examples_home: Path) -> None:
    result = cli("model", "list")
    assert result.exit_code == 0
    assert "iris-onnx" in result.stdout
    assert "Normal" in result.stdout


def test_model_list_source_must_be_known(examples_home: Path) -> None:
    result = cli("model", "list", "--source", "theirs")
    assert result.exit_code == 2
    assert "mine or subscribed" in result.stderr


def test_model_show(examples_home: Path, me: str) -> None:
    result = cli("model", "show", "iris", "--json")
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["version"]) for r in as_json(result)] == [
        ("iris", "1.0.0"),
        ("iris", "2.0.0"),
    ]
    people = cli("model", "show", f"{me}/iris-onnx")
    assert people.exit_code == 0
    assert f"{me}/iris-onnx 1.0.0 [mine] onnx Normal" in people.stdout
    missing = cli("model", "show", "tulips")
    assert missing.exit_code == 1
    assert "no model tulips" in missing.stderr


def test_model_create_and_delete(home: Path, tmp_path: Path, me: str) -> None:
    src = tmp_path / "adder"
    src.mkdir()
    (src / "model.py").write_text(PYTHON_MODEL)
    created = cli("model", "create", "adder", "-v", "1", "--path", str(src), "--format", "python")
    assert created.exit_code == 0, created.output
    assert "adder 1 is Normal" in created.stdout
    listed = as_json(cli("model", "list", "--json"))
    assert [(r["name"], r["version"], r["format"], r["status"], r["owner"]) for r in listed] == [
        ("adder", "1", "python", "normal", me)
    ]
    path = Path(listed[0]["path"])
    assert path.is_dir()

    deleted = cli("model", "delete", "adder", "--version", "1")
    assert deleted.exit_code == 0, deleted.output
    assert "deleted adder 1" in deleted.stdout
    assert as_json(cli("model", "list", "--json")) == []
    assert not path.exists()
    again = cli("model", "delete", "adder")
    assert again.exit_code == 1
    assert "no model adder" in again.stderr


def test_model_create_failing_model(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "broken"
    src.mkdir()
    (src / "model.py").write_text(PYTHON_MODEL.replace("pass", "raise OSError('no weights')"))
    result = cli("model", "create", "broken", "-v", "1", "--path", str(src), "--format", "python")
    assert result.exit_code == 1
    assert "broken 1 is Failed" in result.stderr
    assert "no weights" in result.stderr
    (row,) = as_json(cli("model", "list", "--json"))
    assert row["status"] == "failed"
    assert "no weights" in row["reason"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "sklearn"], "no model.joblib"),
        (["--format", "keras"], "format: use one of sklearn, onnx, python"),
    ],
)
def test_model_create_bad_input_changes_nothing(
    home: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("model", "create", "iris", "-v", "1.0.0", "--path", str(empty), *args)
    assert result.exit_code == 1
    assert words in result.stderr
    for table in ("models", "model_versions", "events"):
        assert rows(home, table) == []
    assert not (home / "models").exists()


def test_model_create_missing_directory(home: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    result = cli("model", "create", "iris", "-v", "1", "--path", str(gone), "--format", "onnx")
    assert result.exit_code == 1
    assert "Invalid model" in result.stderr
    assert "path: " in result.stderr
    assert "is not a directory" in result.stderr


def test_model_delete_refused_while_in_use(examples_home: Path, me: str) -> None:
    core = Core(examples_home, probe=FakeProbe([Node("big", 512, 4096 * GIB, "x86_64")]))
    core.create_service(
        core.user(me), {"name": "prod", "models": [{"model": "iris", "version": "2.0.0"}]}
    )
    result = cli("model", "delete", "iris", "--version", "2.0.0")
    assert result.exit_code == 1
    assert f"in use by {me}/prod (version 2.0.0)" in result.stderr
    versions = [r["version"] for r in as_json(cli("model", "show", "iris", "--json"))]
    assert versions == ["1.0.0", "2.0.0"]


def test_publish_and_subscribe(
    examples_home: Path, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    # bob (another account) owns a model; the CLI user subscribes to it once it is published.
    core = Core(examples_home)
    core.registry.create("bob", "tulips", "0.1", example_dirs[("iris", "1.0.0")], "sklearn")
    refused = cli("model", "subscribe", "bob/tulips")
    assert refused.exit_code == 1
    assert "not published" in refused.stderr
    core.publish_model(core.user("bob"), "tulips")

    result = cli("model", "subscribe", "bob/tulips")
    assert result.exit_code == 0, result.output
    assert "subscribed to bob/tulips" in result.stdout
    subscribed = as_json(cli("model", "list", "--source", "subscribed", "--json"))
    assert [(r["source"], r["owner"], r["name"], r["version"]) for r in subscribed] == [
        ("subscribed", "bob", "tulips", "0.1")
    ]
    everything = as_json(cli("model", "list", "--json"))
    assert {r["source"] for r in everything} == {"mine", "subscribed"}
    mine = as_json(cli("model", "list", "--source", "mine", "--json"))
    assert "tulips" not in {r["name"] for r in mine}
    shown = as_json(cli("model", "show", "bob/tulips", "--json"))
    assert [(r["owner"], r["source"]) for r in shown] == [("bob", "subscribed")]


def test_publish_own_model(examples_home: Path, me: str) -> None:
    result = cli("model", "publish", "flowers")
    assert result.exit_code == 0, result.output
    assert "flowers is published" in result.stdout
    core = Core(examples_home)
    core.subscribe(core.user("bob"), f"{me}/flowers")
    assert [v.name for _, v in core.models(core.user("bob"))] == ["flowers"]
    private = cli("model", "publish", "flowers", "--unpublish")
    assert private.exit_code == 0
    assert "flowers is private" in private.stdout
    assert core.models(core.user("bob")) == []
    missing = cli("model", "publish", "tulips")
    assert missing.exit_code == 1


def test_subscribe_bad_reference(examples_home: Path) -> None:
    result = cli("model", "subscribe", "tulips")
    assert result.exit_code == 1
    assert "model: name it OWNER/NAME" in result.stderr


# -- the installed command ------------------------------------------------------------------


def test_command_line_in_a_process(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.json", json.dumps(BAD_SPEC))
    env = {**os.environ, "OPSBOT_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "opsbot.cli", "validate", "-f", str(spec), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert {e["field"] for e in json.loads(proc.stdout)["errors"]} == {
        "name",
        "auto_stop",
        "models[1].instances",
    }


# -- errors: one line, never a traceback --------------------------------------------------------


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "opsbot", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OPSBOT_HOME": str(home)},
        timeout=120,
        check=False,
    )


NAMED_COMMANDS = [
    ("show",),
    ("stop",),
    ("start",),
    ("delete",),
    ("history",),
    ("logs",),
    ("key", "rotate"),
    ("extend", "__NAME__", "2h"),
    ("autostop", "__NAME__", "off"),
    ("update", "__NAME__", "--traffic-limit", "5"),
    ("predict", "__NAME__", "-d", "{}"),
    ("rollback", "__NAME__", "--to", "1"),
]


@pytest.mark.parametrize("command", NAMED_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_empty_service_name_is_a_usage_error(home: Path, command: tuple[str, ...]) -> None:
    args = [("" if a == "__NAME__" else a) for a in command]
    if "__NAME__" not in command:
        args.append("")
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "give the service's name" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("data", "why"), [("@{missing}", "No such file"), ("@{directory}", "Is a directory")]
)
def test_predict_data_that_cannot_be_read_is_named(
    home: Path, tmp_path: Path, data: str, why: str
) -> None:
    arg = data.format(missing=tmp_path / "nope.json", directory=tmp_path)
    result = cli("predict", "svc", "-d", arg)
    assert (result.exit_code == 1 and result.exception is None) or isinstance(
        result.exception, SystemExit
    )
    assert "data: cannot read" in result.stderr and why in result.stderr
    assert "Traceback" not in result.output


def test_errors_are_json_documents_with_json(home: Path) -> None:
    # No daemon here: the error is the client's, as a JSON document on stdout.
    proc = run_cli(home, "services", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["error"] == "DaemonUnavailable" and "opsbot up -d" in doc["message"]
    assert set(doc) >= {"error", "title", "message", "field", "errors"}
    # A bad flag value (typer's own usage error) follows --json too.
    proc = run_cli(home, "events", "--level", "bogus", "--json")
    assert proc.returncode == 2
    usage = json.loads(proc.stdout)
    assert usage["error"] == "UsageError" and usage["field"] == "level"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("up", "--gateway-port", "99999"),
        ("logs", "svc", "--tail", "-1"),
        ("events", "--level", "bogus"),
        ("deploy", "--name", "x", "--model", "iris", "--version", "1.0.0", "--instances", "0"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_out_of_range_flags_are_refused_in_one_line(home: Path, args: tuple[str, ...]) -> None:
    proc = run_cli(home, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Invalid value for" in proc.stderr


def test_deploy_names_the_missing_flags(home: Path) -> None:
    result = cli("deploy", "--model", "iris")
    assert result.exit_code == 1
    assert "--name, --version required" in result.stderr


def test_deploy_refuses_per_version_flags_beside_a_file(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.toml", SPEC_TOML)
    result = cli("deploy", "-f", str(spec), "--instances", "3", "--json")
    assert result.exit_code == 1
    doc = as_json(result)
    assert doc["field"] == "instances" and "cannot go with -f" in doc["message"]


def test_update_refuses_flags_beside_a_file(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.toml", SPEC_TOML)
    result = cli("update", "svc", "-f", str(spec), "--name-is-not-a-flag-here")
    assert result.exit_code == 2  # an unknown flag: typer's usage error
    result = cli("update", "svc", "-f", str(spec), "--instances", "2", "--clear-rules")
    assert result.exit_code == 1
    assert "--instances, --clear-rules cannot go with -f" in result.stderr


def test_a_read_only_home_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: a file where the home's directory should be does the same
        home = write(tmp_path / "home", "not a directory")
    else:
        home = tmp_path / "ro"
        home.mkdir()
        home.chmod(0o500)
    proc = run_cli(home / "inner", "up")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    assert str(home / "inner") in proc.stderr


def test_a_version_given_twice_in_traffic_is_named(home: Path) -> None:
    result = cli("update", "svc", "--traffic", "1.0.0=90,1.0.0=10")
    assert result.exit_code == 1
    assert "traffic: 1.0.0 is given twice" in result.stderr and "sum" not in result.stderr
