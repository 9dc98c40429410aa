"""The CLI's daemon commands against the real control API app, served in-process on the home's
socket (the CLI finds it there as it finds `opsbot up`): what a user sees, and that --json prints
what the API answered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inprocess import serve_control_api, settle
from typer.testing import CliRunner, Result

from opsbot.cli import app
from opsbot.client import ControlClient
from opsbot.core.keys import METRICS_TOKEN_FILE
from opsbot.core.status import Status
from opsbot.daemon.server import Daemon

runner = CliRunner()
IRIS = ("--name", "iris-one", "--model", "iris", "--version", "1.0.0")


@pytest.fixture
def served(examples_home: Path) -> Iterator[tuple[Daemon, ControlClient]]:
    with serve_control_api(examples_home) as both:
        yield both


def cli(home: Path, *args: str) -> Result:
    return runner.invoke(app, ["--home", str(home), *args])


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_dry_run_prints_the_summary_and_deploys_nothing(
    served: tuple[Daemon, ControlClient],
) -> None:
    daemon, client = served
    args = (*IRIS, "--auto-stop", "2h", "--instances", "2", "--env", "DB_PASSWORD=hunter2hunter2")
    shown = cli(daemon.home, "deploy", *args, "--dry-run")
    assert shown.exit_code == 0, shown.output
    assert "nothing was deployed" in shown.stdout
    lines = shown.stdout.splitlines()
    for label, value in [
        ("Name", "iris-one"),
        ("Auto Stop", "2 hours later"),
        ("Model Source", "My Models"),
        ("Model", "iris 1.0.0"),
        ("Compute Nodes", "2"),
        ("Traffic Limit", "100 calls per second"),
    ]:
        assert any(ln.split() and ln.strip().startswith(label) and value in ln for ln in lines), (
            label
        )
    assert "hunter2hunter2" not in shown.stdout  # the summary masks secrets
    assert "warning: models[0].env.DB_PASSWORD" in shown.stderr
    assert client.services() == []
    document = as_json(cli(daemon.home, "deploy", *args, "--dry-run", "--json"))
    assert {"label": "Compute Nodes", "value": "2"} in document["summary"]
    assert document["spec"]["models"][0]["instances"] == 2
    assert client.services() == []


def test_dry_run_without_a_daemon_gives_the_same_summary(examples_home: Path) -> None:
    alone = as_json(cli(examples_home, "deploy", *IRIS, "--dry-run", "--json"))
    with serve_control_api(examples_home):
        served = as_json(cli(examples_home, "deploy", *IRIS, "--dry-run", "--json"))
    assert alone["summary"] == served["summary"] and alone["registry_checked"]


def test_dry_run_refuses_what_a_deploy_refuses(served: tuple[Daemon, ControlClient]) -> None:
    daemon, client = served
    bad = cli(daemon.home, "deploy", *IRIS, "--flavor", "nope", "--dry-run")
    assert bad.exit_code == 1 and "models[0].flavor: no flavor 'nope'" in bad.stderr
    refused = cli(daemon.home, "deploy", *IRIS, "--flavor", "nope", "--dry-run", "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["field"] == "models[0].flavor"
    assert client.services() == []


def test_owner_slash_name_needs_no_source(served: tuple[Daemon, ControlClient]) -> None:
    daemon, _ = served
    theirs = ("--name", "theirs", "--model", "alice/iris", "--version", "1.0.0")
    looked_up = cli(daemon.home, "deploy", *theirs, "--dry-run")
    assert looked_up.exit_code == 1
    assert "My Subscriptions" in looked_up.stderr
    assert "opsbot model subscribe alice/iris" in looked_up.stderr
    disagree = cli(daemon.home, "deploy", *theirs, "--source", "mine", "--dry-run")
    assert disagree.exit_code == 1
    assert "belongs to alice" in disagree.stderr and "leave the source out" in disagree.stderr


def test_deploy_show_and_life_cycle(served: tuple[Daemon, ControlClient], me: str) -> None:
    daemon, client = served
    home = daemon.home
    deployed = as_json(cli(home, "deploy", *IRIS, "--json"))
    assert deployed["status"] == "deploying" and deployed["api_key"].startswith("ob_")
    raw = client.request("GET", "/v1/services")
    assert as_json(cli(home, "services", "--json")) == raw
    text = cli(home, "services")
    assert "iris-one" in text.stdout and "Deploying" in text.stdout
    shown = cli(home, "show", "iris-one")
    assert shown.exit_code == 0 and "iris-one" in shown.stdout and me in shown.stdout
    settle(daemon, "iris-one", Status.RUNNING, due_in_s=1800)
    extended = cli(home, "extend", "iris-one", "2h")
    assert extended.exit_code == 0 and "stops in 2h" in extended.stdout  # 30 min left + 2 h
    assert as_json(cli(home, "autostop", "iris-one", "off", "--json"))["auto_stop"] == "off"
    assert "Stopping" in cli(home, "stop", "iris-one").stdout
    assert "Deleting" in cli(home, "delete", "iris-one").stdout
    kinds = [e["kind"] for e in as_json(cli(home, "events", "iris-one", "--json"))]
    assert kinds[0] == "created" and "stopping" in kinds


def test_modify_history_and_rollback(served: tuple[Daemon, ControlClient]) -> None:
    daemon, client = served
    home = daemon.home
    cli(home, "deploy", *IRIS)
    settle(daemon, "iris-one", Status.RUNNING, due_in_s=1800)
    changed = cli(home, "update", "iris-one", "--traffic-limit", "7")
    assert changed.exit_code == 0 and "snapshot #2" in changed.stdout
    assert client.service("iris-one").traffic_limit == 7
    table = cli(home, "history", "iris-one")
    assert "deployed" in table.stdout and "traffic" in table.stdout.lower()
    snapshots = as_json(cli(home, "history", "iris-one", "--json"))
    assert snapshots == client.request("GET", "/v1/services/iris-one/history")
    preview = as_json(cli(home, "rollback", "iris-one", "--to", "1", "--dry-run", "--json"))
    assert preview["changes"] and client.service("iris-one").traffic_limit == 7
    back = cli(home, "rollback", "iris-one", "--to", "1")
    assert back.exit_code == 0 and "snapshot #3" in back.stdout
    assert client.service("iris-one").traffic_limit == 100


def test_keys_tokens_nodes_and_logs(served: tuple[Daemon, ControlClient], me: str) -> None:
    daemon, _ = served
    home = daemon.home
    cli(home, "deploy", *IRIS)
    rotated = cli(home, "key", "rotate", "iris-one")
    assert rotated.exit_code == 0 and "new API key for iris-one: ob_" in rotated.stdout
    assert "warning: the gateway" in rotated.stderr  # no gateway runs here: said, not hidden
    assert as_json(cli(home, "token", "create", "--json"))["user"] == me
    report = as_json(cli(home, "nodes", "--json"))
    assert report["pools"][0]["nodes"][0]["name"] == "roomy"
    assert as_json(cli(home, "logs", "iris-one", "--json")) == []


def test_the_metrics_scrape_token_is_printed_alone_and_rotated(
    served: tuple[Daemon, ControlClient],
) -> None:
    daemon, _ = served
    path = daemon.home / METRICS_TOKEN_FILE
    assert path.stat().st_mode & 0o777 == 0o600  # made when the daemon started
    shown = cli(daemon.home, "token", "metrics")
    assert shown.exit_code == 0
    # Alone on its line, so `opsbot token metrics > file` gives Prometheus its credentials file.
    assert shown.stdout == path.read_text() and shown.stdout.startswith("obm_")
    rotated = as_json(cli(daemon.home, "token", "metrics", "--rotate", "--json"))
    assert rotated["token"] != shown.stdout.strip()
    assert path.read_text().strip() == rotated["token"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_errors_are_one_line_or_the_error_document(served: tuple[Daemon, ControlClient]) -> None:
    daemon, _ = served
    missing = cli(daemon.home, "show", "nothing-here")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("Error: Not found:") and len(missing.stderr.splitlines()) == 1
    document = cli(daemon.home, "start", "nothing-here", "--json")
    assert document.exit_code == 1
    assert json.loads(document.stdout)["error"] == "NotFound"


def test_dry_run_of_a_gated_spec_file(served: tuple[Daemon, ControlClient], tmp_path: Path) -> None:
    daemon, client = served
    spec = tmp_path / "canary.toml"
    spec.write_text(
        'name = "canary"\n'
        '[[models]]\nmodel = "iris"\nversion = "1.0.0"\ntraffic_ratio = 90\n'
        '[[models]]\nmodel = "iris"\nversion = "2.0.0"\ntraffic_ratio = 10\n'
        '[[rules]]\nheader = "X-Group"\nequals = "beta"\nversion = "2.0.0"\n'
    )
    summary = as_json(cli(daemon.home, "deploy", "-f", str(spec), "--dry-run", "--json"))
    lines = {line["label"]: line["value"] for line in summary["summary"]}
    assert lines["Version 1: Traffic Ratio (%)"] == "90"
    assert lines["Version 2: Model"] == "iris 2.0.0"
    assert lines["Rule 1"] == "X-Group = beta -> 2.0.0"
    both = cli(daemon.home, "deploy", "-f", str(spec), "--dry-run", "--wait")
    assert both.exit_code == 1 and "--wait cannot go with --dry-run" in both.stderr
    assert client.services() == []
