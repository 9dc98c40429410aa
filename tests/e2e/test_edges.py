"""The daemon's edges as a user meets them: strict bodies, typed queries, one capitalisation,
messages that say what to do, and an `opsbot up` that refuses a port someone else holds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from homes import clone_home

from e2e.test_daemon import IRIS, Daemon, start_daemon, stop_everything
from opsbot.core.errors import OpsbotError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = clone_home(template, tmp_path_factory.mktemp("edges") / "home")
    d = start_daemon(home)
    yield d
    stop_everything(home, d.proc)


def refused(daemon: Daemon, method: str, path: str, body: Any = None) -> OpsbotError:
    with pytest.raises(OpsbotError) as caught:
        daemon.client.request(method, path, body)
    return caught.value


@pytest.mark.parametrize("body", [True, [None], {"publc": False}, {"public": "no"}])
def test_publish_takes_only_its_documented_body(daemon: Daemon, body: Any) -> None:
    error = refused(daemon, "POST", "/v1/models/iris/publish", body)
    assert error.status == 422
    assert all(
        m["name"] != "iris" or m["public"] for m in daemon.client.request("GET", "/v1/models")
    )
    assert error.errors, error.message


def test_publish_private_then_public(daemon: Daemon) -> None:
    done = daemon.client.request("POST", "/v1/models/iris/publish", {"public": False})
    assert done["public"] is False
    assert daemon.client.request("POST", "/v1/models/iris/publish")["public"] is True


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/services/x/logs?tail=", "tail"),
        ("/v1/services/x/logs?tail=0", "tail"),
        ("/v1/events?after_id=-1", "after_id"),
        ("/v1/events?level=bogus", "level"),
        ("/v1/events?since=soon", "since"),
        ("/v1/services?onwer=bob", "onwer"),
    ],
)
def test_bad_query_parameters_name_their_field(daemon: Daemon, path: str, field: str) -> None:
    error = refused(daemon, "GET", path)
    assert error.status == 422 and [e.field for e in error.errors] == [field]


def test_unknown_body_keys_are_refused(daemon: Daemon) -> None:
    error = refused(daemon, "POST", "/v1/services/x/extend", {"hours": 2, "minutes": 5})
    assert error.status == 422 and [e.field for e in error.errors] == ["minutes"]
    error = refused(daemon, "POST", "/v1/services/x/rollback", {"to": "1"})
    assert error.status == 422 and [e.field for e in error.errors] == ["to"]


def test_statuses_read_as_the_reference_page_writes_them(daemon: Daemon) -> None:
    daemon.deploy("--name", "cased", "--model", "iris", "--version", "1.0.0")
    listed = daemon.cli("services").stdout
    assert "Running" in listed and "running" not in listed
    assert "status: Running" in daemon.cli("show", "cased").stdout
    stopped = daemon.cli("stop", "cased").stdout
    assert stopped.strip() == "cased: Stopping"


def test_predict_on_a_stopped_service_says_how_to_start_it(daemon: Daemon) -> None:
    daemon.deploy("--name", "asleep", "--model", "iris", "--version", "1.0.0")
    daemon.cli("stop", "asleep")
    body = json.dumps({"instances": IRIS[:1]})
    result = daemon.cli("predict", "asleep", "-d", body, check=False)
    assert result.returncode == 1
    assert "asleep is Stopp" in result.stderr and "opsbot start asleep" in result.stderr
    doc = json.loads(daemon.cli("predict", "asleep", "-d", body, "--json", check=False).stdout)
    assert doc["error"] == "Conflict" and doc["title"] == "Not serving"


def test_update_clear_rules_removes_them(daemon: Daemon) -> None:
    daemon.deploy("--name", "ruled", "--model", "iris", "--version", "1.0.0")
    daemon.cli("update", "ruled", "--traffic", "1.0.0=100,2.0.0=0")
    daemon.cli("update", "ruled", "--rule", "X-Group=beta->2.0.0")
    assert len(daemon.client.service("ruled").rules) == 1
    out = daemon.cli("update", "ruled", "--clear-rules").stdout
    assert "nothing to change" not in out
    assert daemon.client.service("ruled").rules == []


def test_json_is_one_document_for_events_and_logs(daemon: Daemon) -> None:
    daemon.deploy("--name", "talky", "--model", "iris", "--version", "1.0.0")
    events = json.loads(daemon.cli("events", "talky", "--json").stdout)
    assert isinstance(events, list) and {e["service"] for e in events} == {"talky"}
    lines = json.loads(daemon.cli("logs", "talky", "--tail", "5", "--json").stdout)
    assert isinstance(lines, list) and all(isinstance(line, str) for line in lines)


def test_up_refuses_a_gateway_port_another_program_holds(daemon: Daemon, tmp_path: Path) -> None:
    taken = daemon.client.request("GET", "/v1/whoami")["gateway_url"].rsplit(":", 1)[1]
    home = tmp_path / "second"
    home.mkdir()
    try:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "opsbot", "--home", str(home), "up", "-d"),
                *("--gateway-port", taken, "--no-examples", "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        doc = json.loads(result.stdout)
        assert f"port {taken}" in doc["message"] and "opsbot.serving.gateway" in doc["message"]
        assert str(daemon.home) in doc["message"]  # the holder: the first daemon's gateway
        assert not (home / "opsbot.sock").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
