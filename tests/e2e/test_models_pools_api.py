"""Control-API routes for the registry (create from a path, publish, subscribe), the pools, and
the instance counts of a service, against a real daemon; and the CLI model commands through it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from opsbot.cli import app
from opsbot.client import ControlClient
from opsbot.client.wire import ServiceInfo
from opsbot.core.app import Core
from opsbot.core.errors import ModelInvalid, OpsbotError, PermissionDenied
from opsbot.core.sandbox import copy_tree, reader_for

from .test_daemon import Daemon, clone_home, start_daemon, stop_everything

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = clone_home(template, tmp_path_factory.mktemp("models-api") / "home")
    d = start_daemon(home)
    yield d
    stop_everything(home, d.proc)


def refused(client: ControlClient, method: str, path: str, body: Any = None) -> OpsbotError:
    with pytest.raises(OpsbotError) as caught:
        client.request(method, path, body)
    return caught.value


def fields(exc: OpsbotError) -> dict[str, str]:
    return {e.field: e.message for e in exc.errors}


def model_rows(client: ControlClient, **query: str) -> list[tuple[str, str, str, str]]:
    rows = client.request("GET", "/v1/models", query=query)
    return [(r["source"], r["owner"], r["name"], r["version"]) for r in rows]


def test_create_from_a_path_then_its_errors_change_nothing(
    daemon: Daemon, example_dirs: dict[tuple[str, str], Path], me: str
) -> None:
    client = daemon.client
    src = example_dirs[("iris", "2.0.0")]
    made = client.create_model("tree", "1.0", src, "sklearn", description="a decision tree")
    assert (made.name, made.version, made.status, made.owner) == (
        "tree",
        "1.0",
        "normal",
        me,
    )
    assert made.source == "mine" and made.description == "a decision tree"
    assert ("mine", me, "tree", "1.0") in model_rows(client)
    before = model_rows(client)

    again = refused(client, "POST", "/v1/models", {**_body(src), "name": "tree", "version": "1.0"})
    assert "exists" in fields(again)["version"]
    bad = refused(client, "POST", "/v1/models", {"name": "9x", "version": "..", "format": "tf"})
    assert set(fields(bad)) == {"path"}  # the body's shape first: every required string
    bad = refused(client, "POST", "/v1/models", {**_body(src), "name": "9x", "format": "tf"})
    assert {"name", "format"} <= set(fields(bad))
    relative = refused(client, "POST", "/v1/models", {**_body(src), "path": "models/iris"})
    assert "absolute" in fields(relative)["path"]
    missing = refused(client, "POST", "/v1/models", {**_body(src), "path": str(src / "nope")})
    assert "is not a directory" in fields(missing)["path"]
    assert model_rows(client) == before


def _body(src: Path) -> dict[str, str]:
    return {"name": "other", "version": "1", "path": str(src), "format": "sklearn"}


def test_a_model_that_cannot_load_is_failed_with_the_reason(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"not a pickle")
    made = daemon.client.create_model("junk", "1", tmp_path, "sklearn")
    assert made.status == "failed"
    assert "joblib could not load" in made.reason


def test_publish_and_subscribe_through_the_daemon(
    daemon: Daemon, example_dirs: dict[tuple[str, str], Path], me: str
) -> None:
    client = daemon.client
    core = Core(daemon.home)
    core.registry.create("bob", "tulips", "0.1", example_dirs[("iris", "1.0.0")], "sklearn")

    unpublished = refused(client, "POST", "/v1/models/bob/tulips/subscribe")
    assert "not published" in fields(unpublished)["model"]
    assert refused(client, "POST", "/v1/models/bob/roses/subscribe").status == 404
    core.publish_model(core.user("bob"), "tulips")
    subscribed = client.subscribe("bob/tulips")
    assert (subscribed.model, subscribed.subscribed) == ("bob/tulips", True)
    assert model_rows(client, source="subscribed") == [("subscribed", "bob", "tulips", "0.1")]
    with pytest.raises(OpsbotError) as bad_ref:
        client.subscribe("tulips")
    assert "OWNER/NAME" in fields(bad_ref.value)["model"]
    own = refused(client, "POST", f"/v1/models/{me}/iris/subscribe")
    assert "yours" in fields(own)["model"]

    core.subscribe(core.user("bob"), f"{me}/iris")  # the examples are published
    assert [v.version for v in core.registry.subscribed("bob")] == ["1.0.0", "2.0.0"]
    private = client.publish_model("iris", False)
    assert (private.owner, private.name, private.public) == (me, "iris", False)
    assert core.registry.subscribed("bob") == []
    assert client.publish_model("iris").public is True
    assert [v.version for v in core.registry.subscribed("bob")] == ["1.0.0", "2.0.0"]
    assert refused(client, "POST", "/v1/models/nothing/publish").status == 404
    wrong = refused(client, "POST", "/v1/models/iris/publish", {"public": "yes"})
    assert "public" in fields(wrong)


def test_cli_model_commands_go_through_the_daemon(
    daemon: Daemon,
    example_dirs: dict[tuple[str, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The core in this process refuses everything: only the daemon can do what the CLI asks.
    def not_here(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the CLI used the core in-process while a daemon answers")

    for method in ("create_model", "publish_model", "subscribe"):
        monkeypatch.setattr(Core, method, not_here)
    runner = CliRunner()
    home = str(daemon.home)

    def cli(*args: str) -> Result:
        return runner.invoke(app, ["--home", home, *args])

    src = str(example_dirs[("iris", "1.0.0")])
    created = cli("model", "create", "via-cli", "-v", "1", "--path", src, "--format", "sklearn")
    assert created.exit_code == 0, created.output
    assert "via-cli 1 is Normal" in created.stdout
    dup = cli("model", "create", "via-cli", "-v", "1", "--path", src, "--format", "sklearn")
    assert dup.exit_code == 1 and "version: via-cli 1 exists" in dup.stderr
    published = cli("model", "publish", "via-cli")
    assert published.exit_code == 0 and "via-cli is published" in published.stdout
    assert cli("model", "subscribe", "bob/via-cli").exit_code == 1
    assert "via-cli" in [r["name"] for r in daemon.client.request("GET", "/v1/models")]


def test_pools_say_capacity_and_what_a_deploy_takes(daemon: Daemon, me: str) -> None:
    client = daemon.client
    core = Core(daemon.home)
    total = core.pools.capacity("public")
    pools = {p.name: p for p in client.pools()}
    public = pools["public"]
    assert (public.kind, public.may_use) == ("public", True)
    assert public.capacity.cpus == pytest.approx(total.cpus)
    free_before = public.free
    created = client.deploy(
        {"name": "pool-probe", "models": [{"model": "iris", "version": "1.0.0", "instances": 2}]},
    )
    try:
        after = {p.name: p for p in client.pools()}["public"].free
        # cpu.2u8g: 2 vCPUs and 8 GiB an instance, while Deploying as when Running.
        assert after.cpus == pytest.approx(free_before.cpus - 4)
        assert after.memory_gib == pytest.approx(free_before.memory_gib - 16)
        assert created.instances_desired == 2
        assert created.instances_ready == 0
        listed = _wait_for(client, "pool-probe", "running")
        assert (listed.instances_ready, listed.instances_desired) == (2, 2)
        client.stop("pool-probe")
        stopped = _wait_for(client, "pool-probe", "stopped")
        assert (stopped.instances_ready, stopped.instances_desired) == (0, 2)
    finally:
        client.delete("pool-probe")


def _wait_for(client: ControlClient, name: str, status: str, timeout: float = 60) -> ServiceInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = {s.name: s for s in client.services()}
        if rows[name].status == status:
            return rows[name]
        time.sleep(0.2)
    raise AssertionError(f"{name} did not reach {status}: {rows[name]}")


def test_openapi_names_the_new_routes(daemon: Daemon) -> None:
    paths = daemon.client.request("GET", "/openapi.json")["paths"]
    assert "post" in paths["/v1/models"]
    for route in (
        "/v1/models/{name}/publish",
        "/v1/models/{owner}/{name}/subscribe",
        "/v1/pools",
        "/v1/nodes",
    ):
        assert route in paths, route


def test_nodes_on_one_machine_are_this_machine_in_the_public_pool(daemon: Daemon) -> None:
    report = daemon.client.request("GET", "/v1/nodes")
    assert report["warnings"] == []
    (public,) = report["pools"]  # no dedicated pool in this home's config
    (node,) = public["nodes"]
    assert (node["name"], node["state"], node["pool"]) == (socket.gethostname(), "ready", "public")
    assert node["capacity"]["cpus"] == os.cpu_count()
    assert node["free"] is None  # the process runtime does not tell what each node holds
    shown = CliRunner().invoke(app, ["--home", str(daemon.home), "nodes"])
    assert shown.exit_code == 0, shown.output
    assert "pool public (public)" in shown.stdout and socket.gethostname() in shown.stdout


def test_the_daemon_copies_only_what_the_caller_may_read(tmp_path: Path) -> None:
    # As another account, the daemon (here: root) checks the permission bits for it, on the
    # very files it opens (tests/security has the rest: symlinks out, loops, swaps, limits).
    top = Path(tempfile.mkdtemp(dir="/tmp"))
    nobody = reader_for("nobody")
    try:
        os.chmod(top, 0o755)
        (top / "model.joblib").write_bytes(b"x")
        os.chmod(top / "model.joblib", 0o644)
        copy_tree(top, tmp_path / "ok", reader=nobody)
        assert (tmp_path / "ok" / "model.joblib").read_bytes() == b"x"
        os.chmod(top / "model.joblib", 0o600)
        with pytest.raises(ModelInvalid, match=r"nobody may not read .*model\.joblib"):
            copy_tree(top, tmp_path / "denied", reader=nobody)
        hidden = tmp_path / "deep"  # pytest's own tmp dirs are 0700: not traversable
        hidden.mkdir()
        with pytest.raises(ModelInvalid, match="nobody may not enter"):
            copy_tree(hidden, tmp_path / "hidden", reader=nobody)
        with pytest.raises(PermissionDenied, match="not a local account"):
            reader_for("slack:U123")
    finally:
        shutil.rmtree(top)
