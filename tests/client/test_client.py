"""The typed control client against the real control API app (served in-process): a method per
route, answers as pydantic models, errors as the core's own classes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from inprocess import serve_control_api, settle

from opsbot.client import (
    ControlClient,
    DaemonUnavailable,
    InProcessTransport,
    RemoteError,
    UnixSocketTransport,
    wire,
)
from opsbot.core.admission import CheckedSpec, check_spec
from opsbot.core.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    SpecInvalid,
)
from opsbot.core.spec import DeploySpec
from opsbot.core.status import Status

IRIS = {"name": "iris-one", "models": [{"model": "iris", "version": "1.0.0"}]}


@pytest.fixture
def client(examples_home: Path) -> Iterator[ControlClient]:
    with serve_control_api(examples_home) as (_, control):
        yield control


def test_deploy_then_every_read_is_typed(client: ControlClient, me: str) -> None:
    spec = {**IRIS, "models": [{**IRIS["models"][0], "env": {"DB_PASSWORD": "hunter2hunter2"}}]}
    deployed = client.deploy(spec)
    assert isinstance(deployed, wire.Deployed)
    assert deployed.status is Status.DEPLOYING and deployed.api_key.startswith("ob_")
    assert [w.field for w in deployed.warnings] == ["models[0].env.DB_PASSWORD"]
    assert deployed.models[0].env["DB_PASSWORD"] != "hunter2hunter2"  # masked on the wire
    shown = client.service("iris-one")
    assert isinstance(shown, wire.ServiceDetail) and shown.owner == me
    assert [s.name for s in client.services()] == ["iris-one"]
    assert client.whoami().user == me
    assert {f.id for f in client.flavors()} >= {"cpu.2u8g"}
    assert {(m.name, m.version) for m in client.models("mine")} >= {("iris", "1.0.0")}
    assert client.pools()[0].name == "public"
    assert client.nodes().pools[0].nodes[0].name == "roomy"
    (snapshot,) = client.history("iris-one")
    assert snapshot.n == 1 and snapshot.actor == me
    assert "created" in [e.kind for e in client.events("iris-one")]
    assert client.logs("iris-one") == []


def test_life_cycle_and_modify(examples_home: Path) -> None:
    with serve_control_api(examples_home) as (daemon, client):
        client.deploy(IRIS)
        with pytest.raises(Conflict):  # Deploying: the core refuses a modification
            client.update_plan("iris-one", changes={"traffic_limit": 50})
        settle(daemon, "iris-one", Status.RUNNING, due_in_s=1800)
        plan = client.update_plan("iris-one", changes={"traffic_limit": 50})
        assert plan.changes and plan.spec["traffic_limit"] == 50
        modified = client.update("iris-one", changes={"traffic_limit": 50})
        assert modified.traffic_limit == 50 and modified.snapshot == 2 and modified.changes
        preview = client.rollback_preview("iris-one", 1)
        assert preview.changes and "traffic" in preview.changes[0].lower()
        back = client.rollback("iris-one", 1)
        assert back.traffic_limit == 100 and back.snapshot == 3
        extend = client.extend_plan("iris-one", 2)
        assert extend.hours == 2 and extend.new_due_time and extend.text
        extended = client.extend("iris-one", 2)
        assert extended.remaining_s is not None and extended.remaining_s > 3600
        assert client.set_auto_stop("iris-one", "off").auto_stop == "off"
        assert client.stop("iris-one").status is Status.STOPPING
        assert client.delete("iris-one").status is Status.DELETING
        rotated = client.rotate_key("iris-one")
        assert rotated.api_key.startswith("ob_") and rotated.routed is False and rotated.warning


def test_validate_answers_the_summary_and_changes_nothing(client: ControlClient) -> None:
    validated = client.validate({**IRIS, "auto_stop": "2h"})
    lines = {line.label: line.value for line in validated.summary}
    assert lines["Name"] == "iris-one" and lines["Auto Stop"] == "2 hours later"
    assert lines["Model"] == "iris 1.0.0" and validated.registry_checked
    assert client.services() == []


def test_errors_come_back_as_the_cores_classes(client: ControlClient) -> None:
    with pytest.raises(SpecInvalid) as bad:
        client.deploy({"name": "9lives", "models": [{**IRIS["models"][0], "instances": 0}]})
    assert isinstance(bad.value, RemoteError) and bad.value.status == 422
    assert {e.field for e in bad.value.errors} == {"name", "models[0].instances"}
    assert bad.value.title == "Invalid deploy spec"
    with pytest.raises(NotFound) as missing:
        client.service("nothing-here")
    assert missing.value.status == 404 and "nothing-here" in missing.value.message
    client.deploy(IRIS)
    with pytest.raises(Conflict) as taken:
        client.deploy(IRIS)
    assert [e.field for e in taken.value.errors] == ["name"]
    with pytest.raises(Conflict):
        client.start("iris-one")  # Deploying: only Stopped or Failed start
    with pytest.raises(PermissionDenied) as not_admin:
        client.services(everyone=True)
    assert not_admin.value.status == 403 and "only an admin" in not_admin.value.message
    with pytest.raises(InvalidInput) as query:
        client.request("GET", "/v1/services", query={"onwer": "x"})
    assert [e.field for e in query.value.errors] == ["onwer"]
    with pytest.raises(RemoteError) as route:  # aiohttp's own refusal keeps its kind
        client.request("PUT", "/v1/services")
    assert route.value.status == 405 and route.value.as_dict()["error"] == "MethodNotAllowed"


def test_quota_is_quota_exceeded(examples_home: Path) -> None:
    (examples_home / "config.toml").write_text("quota = 1\n")
    with serve_control_api(examples_home) as (_, client):
        client.deploy(IRIS)
        with pytest.raises(QuotaExceeded) as full:
            client.deploy({**IRIS, "name": "iris-two"})
    assert full.value.status == 429 and "1 of 1" in full.value.message


def test_owner_slash_name_means_a_subscription(client: ControlClient) -> None:
    # alice's model, no source given: looked up in My Subscriptions (as Slack's /deploy does).
    ref = {"name": "theirs", "models": [{"model": "alice/iris", "version": "1.0.0"}]}
    with pytest.raises(SpecInvalid) as not_subscribed:
        client.validate(ref)
    assert "My Subscriptions" in not_subscribed.value.message
    assert "opsbot model subscribe alice/iris" in not_subscribed.value.message
    # The source and the reference disagree: said so, with the way out.
    mine = {"name": "theirs", "models": [{**ref["models"][0], "source": "mine"}]}
    with pytest.raises(SpecInvalid) as disagree:
        client.validate(mine)
    assert "belongs to alice" in disagree.value.message
    assert "leave the source out" in disagree.value.message


def test_no_daemon_is_daemon_unavailable(tmp_path: Path) -> None:
    client = ControlClient(UnixSocketTransport(tmp_path / "none.sock"))
    assert client.available() is False
    with pytest.raises(DaemonUnavailable, match="opsbot up -d"):
        client.whoami()
    # What `opsbot tui` asks first, and the dashboard while the daemon is away: what to do.
    with pytest.raises(DaemonUnavailable, match="opsbot up -d"):
        client.health()


def test_following_events_starts_after_the_last_one_seen(client: ControlClient) -> None:
    client.deploy(IRIS)
    client.stop("iris-one")
    created, *later = client.events("iris-one")
    stream = client.follow_events(service="iris-one", after_id=created.id)
    try:
        assert next(stream) == later[0]  # the backlog first: a reconnect misses nothing
    finally:
        stream.close()


def test_health_counts_the_open_event_streams(client: ControlClient) -> None:
    assert client.request("GET", "/healthz")["event_streams"] == 0
    client.deploy(IRIS)
    client.stop("iris-one")
    created, *later = client.events("iris-one")
    stream = client.follow_events(service="iris-one", after_id=created.id)
    try:
        assert next(stream) == later[0]  # the stream is open and listens from here on
        assert client.request("GET", "/healthz")["event_streams"] == 1
    finally:
        stream.close()
    # A client gone is counted no more once its stream sees it (within STREAM_CHECK_S).
    deadline = time.monotonic() + 10
    while (open_now := client.request("GET", "/healthz")["event_streams"]) != 0:
        assert time.monotonic() < deadline, f"{open_now} streams still counted 10 s after the close"
        time.sleep(0.05)


async def answers_text(request: web.Request) -> web.Response:
    return web.Response(text="<html>a proxy</html>", status=502)


def test_an_answer_that_is_not_the_daemons_is_named() -> None:
    app = web.Application()
    app.router.add_get("/v1/whoami", answers_text)
    with InProcessTransport(app) as transport, pytest.raises(RemoteError) as bad:
        ControlClient(transport).whoami()
    assert bad.value.kind == "BadAnswer" and "a proxy" in bad.value.message
    assert "HTTP 502" in bad.value.message


def test_a_deploy_through_the_api_checks_the_form_once(
    client: ControlClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []

    def counted(spec: DeploySpec, *rest: Any) -> CheckedSpec:
        checks.append(spec.name)
        return check_spec(spec, *rest)

    monkeypatch.setattr("opsbot.core.admission.check_spec", counted)
    deployed = client.deploy({**IRIS, "description": "counted"})
    assert checks == ["iris-one"] and deployed.description == "counted"
