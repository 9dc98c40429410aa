"""The model registry: create (Building, then Normal or Failed with the reason), bad input that
changes nothing, delete (refused while in use), publish and subscribe, the example models."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import joblib
import pytest
from core_support import big_probe, make_core, message_for, snapshot, spec

from opsbot.core.app import DB_NAME, Core
from opsbot.core.errors import Conflict, InvalidInput, ModelInvalid, NotFound
from opsbot.core.registry import BUILDING, FAILED, MANIFEST, NORMAL, ModelVersion

PYTHON_MODEL = """
class Model:
    sample = [[1, 2], [3, 4]]

    def load(self):
        self.factor = 10

    def predict(self, instances):
        return [sum(row) * self.factor for row in instances]
"""

PYTHON_MODEL_WITH_PATH = """
from pathlib import Path


class Predictor:
    def load(self, path):
        self.offset = int((Path(path) / "offset.txt").read_text())

    def predict(self, instances):
        return [x + self.offset for x in instances]
"""


def python_model(root: Path, source: str, name: str = "model.py", **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(source)
    for file, text in files.items():
        (root / file.replace("_", ".")).write_text(text)
    return root


@pytest.fixture
def core(home: Path) -> Core:
    return make_core(home, big_probe())


# -- creating -------------------------------------------------------------------------------


def test_sklearn_model_is_building_then_normal(
    core: Core, me: str, home: Path, example_dirs: dict[tuple[str, str], Path]
) -> None:
    seen: list[tuple[str, str]] = []

    def on_building(mv: ModelVersion) -> None:
        row = core.store.db.execute(
            "SELECT status FROM model_versions WHERE id = ?", (mv.id,)
        ).fetchone()
        seen.append((mv.status, row[0]))

    mv = core.create_model(
        core.user(me),
        "iris",
        "1.0.0",
        example_dirs[("iris", "1.0.0")],
        "sklearn",
        description="logistic regression",
        on_building=on_building,
    )
    assert seen == [(BUILDING, BUILDING)]
    assert (mv.status, mv.reason, mv.format, mv.owner) == (NORMAL, "", "sklearn", me)
    assert mv.description == "logistic regression"
    stored = Path(mv.path)
    assert stored.is_relative_to(home / "models")
    assert (stored / "model.joblib").is_file()
    manifest = json.loads((stored / MANIFEST).read_text())
    assert (manifest["name"], manifest["version"], manifest["format"]) == (
        "iris",
        "1.0.0",
        "sklearn",
    )
    assert "scikit-learn" in manifest["framework"]  # the versions it was checked with


def test_onnx_model_is_normal(
    core: Core, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    mv = core.create_model(
        core.user(me), "iris-onnx", "1.0.0", example_dirs[("iris-onnx", "1.0.0")], "onnx"
    )
    assert (mv.status, mv.format) == (NORMAL, "onnx")
    assert (Path(mv.path) / "model.onnx").is_file()


def test_python_model_is_normal(core: Core, me: str, tmp_path: Path) -> None:
    src = python_model(tmp_path / "py", PYTHON_MODEL)
    mv = core.create_model(core.user(me), "adder", "0.1", src, "python")
    assert (mv.status, mv.reason, mv.format) == (NORMAL, "", "python")


def test_python_model_with_its_own_entry_and_files(core: Core, me: str, tmp_path: Path) -> None:
    src = python_model(
        tmp_path / "py",
        PYTHON_MODEL_WITH_PATH,
        name="serve.py",
        offset_txt="5",
        sample_json='{"instances": [1, 2]}',
    )
    mv = core.create_model(core.user(me), "shift", "1", src, "python", entry="serve:Predictor")
    assert (mv.status, mv.entry) == (NORMAL, "serve:Predictor"), mv.reason


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            PYTHON_MODEL.replace("self.factor = 10", "raise RuntimeError('weights missing')"),
            "load() failed: RuntimeError: weights missing",
        ),
        (PYTHON_MODEL.replace("sample = [[1, 2], [3, 4]]", "pass"), "no sample input"),
        ("import not_a_module_anywhere\n", "importing model.py failed"),
        ("class Other:\n    pass\n", "has no class Model"),
    ],
)
def test_broken_python_model_is_failed_with_the_reason(
    core: Core, me: str, tmp_path: Path, source: str, reason: str
) -> None:
    mv = core.create_model(
        core.user(me), "broken", "1", python_model(tmp_path / "py", source), "python"
    )
    assert mv.status == FAILED
    assert reason in mv.reason
    listed = dict(((v.name, v.version), v) for _, v in core.models(core.user(me)))
    assert listed[("broken", "1")].status == FAILED
    assert reason in listed[("broken", "1")].reason


def test_corrupt_sklearn_file_is_failed(core: Core, me: str, tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "model.joblib").write_bytes(b"this is not a pickle")
    mv = core.create_model(core.user(me), "bad", "1", src, "sklearn")
    assert mv.status == FAILED
    assert "joblib could not load model.joblib" in mv.reason


def test_a_failed_version_is_not_deployable(core: Core, me: str, tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    joblib.dump({"not": "an estimator"}, src / "model.joblib")
    mv = core.create_model(core.user(me), "dict", "1", src, "sklearn")
    assert mv.status == FAILED
    assert "no predict()" in mv.reason
    from opsbot.core.errors import SpecInvalid

    with pytest.raises(SpecInvalid) as info:
        core.check(core.user(me), spec(models=[{"model": "dict", "version": "1"}]))
    message_for(info.value, "models[0].version", "Failed", "no predict()", "Normal")


# -- bad input changes nothing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "fmt", "field", "words"),
    [
        ("1iris", "1.0", "sklearn", "name", ["letter"]),
        ("iris\n", "1.0", "sklearn", "name", ["letter"]),
        ("iris", "", "sklearn", "version", ["like 1.0.0"]),
        ("iris", "1.0 beta", "sklearn", "version", ["letters, digits"]),
        ("iris", "..", "sklearn", "version", ["starting with a letter or digit"]),
        ("iris", ".", "sklearn", "version", ["starting with a letter or digit"]),
        ("iris", "v" * 65, "sklearn", "version", ["like 1.0.0"]),
        ("iris", "1.0", "tensorflow", "format", ["sklearn, onnx, python"]),
    ],
)
def test_bad_name_version_or_format(
    core: Core,
    me: str,
    home: Path,
    example_dirs: dict[tuple[str, str], Path],
    name: str,
    version: str,
    fmt: str,
    field: str,
    words: list[str],
) -> None:
    assert core.store.path.exists()  # so "nothing changed" compares like with like
    before = snapshot(home)
    with pytest.raises(InvalidInput) as info:
        core.create_model(core.user(me), name, version, example_dirs[("iris", "1.0.0")], fmt)
    message_for(info.value, field, *words)
    assert snapshot(home) == before


def test_dot_dot_version_cannot_delete_other_versions(
    core: Core, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    src = example_dirs[("iris", "1.0.0")]
    mv = core.registry.create(me, "iris", "1.0.0", src, "sklearn")
    for version in ("..", "."):
        with pytest.raises(InvalidInput):
            core.registry.create(me, "iris", version, src, "sklearn")
    assert (Path(mv.path) / "model.joblib").is_file()


def test_bad_origin_and_description(
    core: Core, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    with pytest.raises(InvalidInput) as info:
        core.create_model(
            core.user(me),
            "iris",
            "1",
            example_dirs[("iris", "1.0.0")],
            "sklearn",
            origin="automl",
            description="d" * 101,
        )
    assert [e.field for e in info.value.errors] == ["origin", "description"]
    message_for(info.value, "origin", "custom, exeml")


def write_bad_dir(root: Path, kind: str) -> Path:
    root.mkdir()
    if kind == "no-joblib":
        (root / "weights.bin").write_bytes(b"\0")
    elif kind == "bad-sample":
        (root / "model.joblib").write_bytes(b"x")
        (root / "sample.json").write_text('{"rows": []}')
    elif kind == "sample-not-json":
        (root / "model.joblib").write_bytes(b"x")
        (root / "sample.json").write_text("{oops")
    return root


@pytest.mark.parametrize(
    ("kind", "fmt", "words"),
    [
        ("missing", "sklearn", ["is not a directory"]),
        ("no-joblib", "sklearn", ["no model.joblib or model.pkl", "joblib.dump"]),
        ("no-joblib", "onnx", ["no model.onnx"]),
        ("no-joblib", "python", ["no model.py", "class"]),
        ("bad-sample", "sklearn", ["instances"]),
        ("sample-not-json", "sklearn", ["not valid JSON"]),
    ],
)
def test_bad_model_directory_changes_nothing(
    core: Core, me: str, home: Path, tmp_path: Path, kind: str, fmt: str, words: list[str]
) -> None:
    path = tmp_path / "model"
    if kind != "missing":
        write_bad_dir(path, kind)
    assert core.store.path.exists()  # so "nothing changed" compares like with like
    before = snapshot(home)
    with pytest.raises(ModelInvalid) as info:
        core.create_model(core.user(me), "iris", "1.0.0", path, fmt)
    assert info.value.field == "path"
    message_for(info.value, "path", *words)
    assert snapshot(home) == before
    assert not (home / "models").exists()


def test_python_entry_must_be_module_and_class(core: Core, me: str, tmp_path: Path) -> None:
    src = python_model(tmp_path / "py", PYTHON_MODEL)
    for entry in ("model", "../outside:Model", "/etc/evil:Model", "..x:Model"):
        with pytest.raises(InvalidInput) as info:
            core.create_model(core.user(me), "adder", "1", src, "python", entry=entry)
        message_for(info.value, "entry", "module:Class", "no paths")


def test_existing_version_is_refused(
    examples_home: Path, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    core = make_core(examples_home)
    before = snapshot(examples_home)
    with pytest.raises(Conflict) as info:
        core.create_model(
            core.user(me), "iris", "1.0.0", example_dirs[("iris", "2.0.0")], "sklearn"
        )
    message_for(info.value, "version", "exists", "new version")
    assert snapshot(examples_home) == before


# -- listing, delete ------------------------------------------------------------------------


def test_listing_of_the_examples(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    rows = [(s, v.name, v.version, v.format, v.status) for s, v in core.models(core.user(me))]
    assert rows == [
        ("mine", "flowers", "1.0.0", "sklearn", NORMAL),
        ("mine", "iris", "1.0.0", "sklearn", NORMAL),
        ("mine", "iris", "2.0.0", "sklearn", NORMAL),
        ("mine", "iris-onnx", "1.0.0", "onnx", NORMAL),
    ]
    assert core.models(core.user("bob")) == []


def test_delete_refused_while_a_service_uses_the_version(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe())
    actor = core.user(me)
    core.create_service(actor, spec(name="prod"))
    before = snapshot(examples_home)
    with pytest.raises(Conflict) as info:
        core.delete_model(actor, "iris", "1.0.0")
    assert f"{me}/prod (version 1.0.0)" in info.value.message
    assert "delete those services first" in info.value.message
    with pytest.raises(Conflict):
        core.delete_model(actor, "iris")  # the whole model: one of its versions is in use
    assert snapshot(examples_home) == before
    # The version nobody uses can go.
    (gone,) = core.delete_model(actor, "iris", "2.0.0")
    assert not Path(gone.path).exists()
    assert [v.version for _, v in core.models(actor) if v.name == "iris"] == ["1.0.0"]


def test_delete_refused_while_a_subscriber_service_uses_it(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe())
    bob = core.user("bob")
    core.subscribe(bob, f"{me}/iris")
    core.create_service(
        bob, spec(models=[{"source": "subscribed", "model": f"{me}/iris", "version": "2.0.0"}])
    )
    with pytest.raises(Conflict) as info:
        core.delete_model(core.user(me), "iris", "2.0.0")
    assert "bob/svc (version 2.0.0)" in info.value.message


def test_delete_whole_model_and_its_subscriptions(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    core.subscribe(core.user("bob"), f"{me}/iris")
    paths = [Path(v.path) for _, v in core.models(core.user(me)) if v.name == "iris"]
    gone = core.delete_model(core.user(me), "iris")
    assert sorted(v.version for v in gone) == ["1.0.0", "2.0.0"]
    assert not any(p.exists() for p in paths)
    assert core.models(core.user("bob")) == []
    conn = sqlite3.connect(examples_home / DB_NAME)
    try:
        assert conn.execute("SELECT COUNT(*) FROM subscriptions").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM models WHERE name = 'iris'").fetchone()[0] == 0
    finally:
        conn.close()


def test_delete_unknown(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    with pytest.raises(NotFound) as info:
        core.delete_model(core.user(me), "iris", "9.9")
    assert "opsbot model list" in info.value.message
    with pytest.raises(NotFound):
        core.delete_model(core.user("bob"), "iris")  # not bob's


# -- publish and subscribe ------------------------------------------------------------------


def test_subscribed_model_appears_under_my_subscriptions(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    bob = core.user("bob")
    core.subscribe(bob, f"{me}/iris")
    core.subscribe(bob, f"{me}/iris")  # twice is the same as once
    rows = [(s, v.owner, v.name, v.version) for s, v in core.models(bob)]
    assert rows == [("subscribed", me, "iris", "1.0.0"), ("subscribed", me, "iris", "2.0.0")]
    assert core.models(bob, "mine") == []
    assert len(core.models(bob, "subscribed")) == 2
    assert core.models(bob, "subscribed")[0][1].as_dict("subscribed")["source"] == "subscribed"
    # The owner sees it under My Models only.
    assert {s for s, _ in core.models(core.user(me))} == {"mine"}


def test_subscribe_needs_a_published_model(
    core: Core, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    core.registry.create(me, "private", "1", example_dirs[("iris", "1.0.0")], "sklearn")
    bob = core.user("bob")
    with pytest.raises(NotFound) as info:
        core.subscribe(bob, f"{me}/private")
    message_for(info.value, "model", "not published", f"ask {me} to publish it")
    core.publish_model(core.user(me), "private")
    core.subscribe(bob, f"{me}/private")
    assert [v.name for _, v in core.models(bob)] == ["private"]
    # Made private again, it leaves the subscriber's list.
    core.publish_model(core.user(me), "private", public=False)
    assert core.models(bob) == []


def test_subscribe_errors(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    with pytest.raises(InvalidInput) as bad:
        core.subscribe(core.user("bob"), "iris")
    message_for(bad.value, "model", "OWNER/NAME")
    with pytest.raises(Conflict) as own:
        core.subscribe(core.user(me), f"{me}/iris")
    message_for(own.value, "model", "yours", "My Models")
    with pytest.raises(NotFound) as missing:
        core.subscribe(core.user("bob"), f"{me}/tulips")
    message_for(missing.value, "model", f"no model {me}/tulips", "opsbot model list")
    with pytest.raises(NotFound) as unowned:
        core.publish_model(core.user("bob"), "iris")  # bob has no model iris
    message_for(unowned.value, "model", "no model bob/iris")


def test_unsubscribe(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    core.subscribe(core.user("bob"), f"{me}/iris")
    core.registry.unsubscribe("bob", f"{me}/iris")
    assert core.models(core.user("bob")) == []


# -- the examples ---------------------------------------------------------------------------


def test_examples_are_iris_in_two_versions_and_onnx(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    found = {(v.name, v.version): v for _, v in core.models(core.user(me))}
    assert {k for k in found if k[0].startswith("iris")} == {
        ("iris", "1.0.0"),
        ("iris", "2.0.0"),
        ("iris-onnx", "1.0.0"),
    }
    for key in [("iris", "1.0.0"), ("iris", "2.0.0"), ("iris-onnx", "1.0.0")]:
        assert found[key].status == NORMAL, found[key].reason
        assert found[key].public
    v1 = joblib.load(Path(found[("iris", "1.0.0")].path) / "model.joblib")
    v2 = joblib.load(Path(found[("iris", "2.0.0")].path) / "model.joblib")
    assert type(v1).__name__ == "LogisticRegression"
    assert type(v2).__name__ != "LogisticRegression"  # a different estimator
    assert (Path(found[("iris-onnx", "1.0.0")].path) / "model.onnx").is_file()


def test_examples_twice_create_nothing_new(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    before = snapshot(examples_home)
    assert core.create_examples(core.user(me)) == []
    assert snapshot(examples_home) == before


def test_examples_fill_in_what_is_missing(examples_home: Path, me: str) -> None:
    core = make_core(examples_home)
    core.delete_model(core.user(me), "iris-onnx")
    made = core.create_examples(core.user(me))
    # Only the missing one is built, and what comes back says it is published.
    assert [(v.name, v.version, v.status, v.public) for v in made] == [
        ("iris-onnx", "1.0.0", NORMAL, True)
    ]
