"""End to end with real processes: the daemon, the gateway and model servers on loopback.

One daemon serves the module's tests (starting one and deploying costs seconds); the
restart test runs its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from homes import clone_home
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binom
from sklearn.datasets import load_iris

from opsbot.client import ControlClient, RemoteError
from opsbot.client.wire import ServiceDetail
from opsbot.core.address import unix_path
from opsbot.core.runtimes.process import ProcessRuntime, free_port
from opsbot.serving.gateway import INTERNAL_HEADER, INTERNAL_SECRET
from opsbot.serving.workers import default_workers

pytestmark = pytest.mark.slow

IRIS = load_iris().data.tolist()


@dataclass
class Daemon:
    home: Path
    proc: subprocess.Popen[bytes]
    client: ControlClient
    listen: str

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "opsbot", "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"opsbot {' '.join(args)}: {result.returncode}\n{result.stderr}")
        return result

    def deploy(self, *args: str) -> dict[str, Any]:
        result = self.cli("deploy", *args, "--wait", "--json")
        created: dict[str, Any] = json.loads(result.stdout)
        return created


def start_daemon(home: Path, runtime: str | None = None, config: str = "") -> Daemon:
    """A real daemon for ``home`` (``runtime``: passed as ``--runtime``, else the default;
    ``config``: more of config.toml, such as ``[[pools]]`` tables)."""
    listen = f"127.0.0.1:{free_port()}"
    # The tests deploy more instances than 2 cores x 4 may hold: let the public pool stretch.
    (home / "config.toml").write_text(
        f'api_listen = "{listen}"\n[public_pool]\ncpu_overcommit = 32\nmemory_overcommit = 8\n'
        + config
    )
    log = open(home / "daemon-test.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsbot",
            "--home",
            str(home),
            "up",
            "--gateway-port",
            "0",
            "--no-examples",
            *(["--runtime", runtime] if runtime else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    client = ControlClient.for_home(home, timeout=10)
    deadline = time.monotonic() + 30
    while not client.available():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError((home / "daemon-test.log").read_text())
        time.sleep(0.1)
    return Daemon(home, proc, client, listen)


def health(d: Daemon) -> dict[str, Any]:
    """The daemon's ``/healthz``: its counts to wait on."""
    answer: dict[str, Any] = d.client.request("GET", "/healthz")
    return answer


def wait_reconciled(d: Daemon, more: int, timeout: float = 30) -> None:
    """Return once the controller has finished ``more`` reconciliations of a service (one per
    service per pass) from now: what "the controller looked again and did nothing" waits on."""
    until = health(d)["reconciled"] + more
    deadline = time.monotonic() + timeout
    while (done := health(d)["reconciled"]) < until:
        assert time.monotonic() < deadline, f"{done} of {until} reconciliations in {timeout} s"
        time.sleep(0.05)


def stop_everything(home: Path, proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    gateway_pid = home / "gateway.pid"
    if gateway_pid.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(gateway_pid.read_text()), signal.SIGKILL)
    runtime = ProcessRuntime(home)
    for owned in runtime.owned():
        runtime.stop(owned.handle, grace_s=2)


@pytest.fixture(scope="module")
def daemon(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = clone_home(template, tmp_path_factory.mktemp("e2e") / "home")
    d = start_daemon(home)
    yield d
    stop_everything(home, d.proc)


def call(
    url: str, body: Any, key: str | None, header: str = "X-Auth-Token"
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers[header] = key if header == "X-Auth-Token" else f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def sklearn_predictions(home: Path, version: str) -> list[int]:
    model = joblib.load(home / "models" / _me() / "iris" / version / "model.joblib")
    return [int(v) for v in model.predict(np.array(IRIS))]


def _me() -> str:
    from opsbot.core.identity import local_user_name

    return local_user_name()


def test_whoami_comes_from_the_socket(daemon: Daemon) -> None:
    me = daemon.client.request("GET", "/v1/whoami")
    assert me["user"] == _me()
    assert me["quota"] == 20
    assert stat.S_IMODE((daemon.home / "opsbot.sock").stat().st_mode) == 0o660


def test_tcp_listener_needs_a_user_token(daemon: Daemon) -> None:
    url = f"http://{daemon.listen}/v1/whoami"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
        assert "opsbot token create" in json.loads(refused.value.read())["message"]
    token = daemon.cli("token", "create").stdout.split(": ")[1].split()[0]
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["user"] == _me()


def test_unknown_routes_and_methods_answer_json(daemon: Daemon) -> None:
    with pytest.raises(RemoteError) as missing:
        daemon.client.request("GET", "/v1/nothing-here")
    assert missing.value.status == 404 and "/openapi.json" in missing.value.message
    with pytest.raises(RemoteError) as wrong:
        daemon.client.request("PUT", "/v1/services")
    assert wrong.value.status == 405 and "GET" in wrong.value.message


def test_openapi_document_is_served(daemon: Daemon) -> None:
    doc = daemon.client.request("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    assert {"/v1/services", "/v1/services/{name}/stop"} <= set(doc["paths"])
    assert "DeploySpec" in doc["components"]["schemas"]


def test_deploy_running_and_predictions_equal_sklearn(daemon: Daemon) -> None:
    created = daemon.deploy("--name", "iris-one", "--model", "iris", "--version", "1.0.0")
    assert created["status"] == "running"
    assert created["owner"] == _me()
    assert created["api_key"].startswith("ob_")
    status, headers, body = call(created["url"], {"instances": IRIS}, created["api_key"])
    assert status == 200, body
    assert body["predictions"] == sklearn_predictions(daemon.home, "1.0.0")
    assert headers["X-Model-Version"] == "1.0.0"
    # the key is shown once: listing and show never carry it
    listed = json.loads(daemon.cli("services", "--json").stdout)
    assert "iris-one" in [s["name"] for s in listed]
    assert all("api_key" not in s for s in listed)
    shown = json.loads(daemon.cli("show", "iris-one", "--json").stdout)
    assert "api_key" not in shown and shown["status"] == "running"
    assert [i["state"] for i in shown["instances"]] == ["ready"]
    # Running came from the gateway saying it routes the instance, on every worker.
    gateway = created["url"].split("/v1/")[0]
    secret = (daemon.home / INTERNAL_SECRET).read_text().strip()
    req = urllib.request.Request(
        f"{gateway}/-/routes", method="POST", headers={INTERNAL_HEADER: secret}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        routed = json.loads(resp.read())["routed"]
    (inst,) = shown["instances"]
    assert inst["address"] == f"unix:{inst['host']}" and inst["address"] in routed
    # The text form gives the address whole on a line of its own, whatever the width
    # (in a table column it was cut to "unix:/tm…").
    shown_text = daemon.cli("show", "iris-one").stdout
    assert f"1.0.0 #0 at {inst['address']}\n" in shown_text
    assert gateway_stats(daemon, created["url"])["workers"] == default_workers()


def gateway_stats(daemon: Daemon, url: str) -> dict[str, Any]:
    """The gateway's /stats (every worker's, merged), read with the daemon's token."""
    gateway = url.split("/v1/")[0]
    secret = (daemon.home / INTERNAL_SECRET).read_text().strip()
    ask = urllib.request.Request(f"{gateway}/stats", headers={INTERNAL_HEADER: secret})
    with urllib.request.urlopen(ask, timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def test_wrong_or_missing_key_is_401_and_bearer_works(daemon: Daemon) -> None:
    created = daemon.deploy("--name", "iris-auth", "--model", "iris", "--version", "2.0.0")
    url, key = created["url"], created["api_key"]
    assert call(url, {"instances": IRIS[:1]}, None)[0] == 401
    assert call(url, {"instances": IRIS[:1]}, key + "x")[0] == 401
    status, _, body = call(url, {"instances": IRIS[:1]}, key, header="Authorization")
    assert status == 200 and body["predictions"] == sklearn_predictions(daemon.home, "2.0.0")[:1]
    # rotation: once the command returns, the new key works and the old one does not
    for _ in range(5):
        rotated = json.loads(daemon.cli("key", "rotate", "iris-auth", "--json").stdout)
        assert rotated["routed"] is True
        assert call(url, {"instances": IRIS[:1]}, key)[0] == 401
        assert call(url, {"instances": IRIS[:1]}, rotated["api_key"])[0] == 200
        key = rotated["api_key"]


def test_the_gateway_s_metrics_want_the_scrape_token_the_cli_prints(daemon: Daemon) -> None:
    created = daemon.deploy("--name", "iris-scraped", "--model", "iris", "--version", "2.0.0")
    assert call(created["url"], {"instances": IRIS[:1]}, created["api_key"])[0] == 200
    metrics = created["url"].split("/v1/")[0] + "/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(metrics, timeout=10)
    assert refused.value.code == 401
    assert "opsbot token metrics" in json.loads(refused.value.read())["error"]
    token = daemon.cli("token", "metrics").stdout.strip()
    ask = urllib.request.Request(metrics, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(ask, timeout=10) as resp:
        text = resp.read().decode()
    calls = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "opsbot_gateway_requests_total" and s.labels["service"] == created["id"]
    ]
    assert calls == [1]


def test_ninety_ten_split_is_inside_the_binomial_interval(daemon: Daemon, tmp_path: Path) -> None:
    spec = {
        "name": "canary",
        "traffic_limit": 100000,
        "models": [
            {"model": "iris", "version": "1.0.0", "traffic_ratio": 90},
            {"model": "iris", "version": "2.0.0", "traffic_ratio": 10},
        ],
    }
    path = tmp_path / "canary.json"
    path.write_text(json.dumps(spec))
    created = daemon.deploy("-f", str(path))
    assert created["status"] == "running"
    n = 2000

    def one(_: int) -> str:
        status, headers, _body = call(created["url"], {"instances": IRIS[:1]}, created["api_key"])
        assert status == 200
        return headers["X-Model-Version"]

    with ThreadPoolExecutor(16) as pool:
        counts = Counter(pool.map(one, range(n)))
    low, high = binom.interval(0.999, n, 0.10)
    assert set(counts) == {"1.0.0", "2.0.0"}
    # A call whose connection to its instance failed is sent to the other version: say how
    # many did, so a count outside the interval tells failover from the draw (CI once read 247).
    (service,) = [
        s for s in gateway_stats(daemon, created["url"])["services"] if s["name"] == "canary"
    ]
    retried = {v["version"]: v["upstream_errors"] for v in service["versions"]}
    assert low <= counts["2.0.0"] <= high, f"{counts}; upstream errors by version: {retried}"


def test_traffic_limit_answers_429_with_retry_after(daemon: Daemon) -> None:
    created = daemon.deploy(
        "--name", "limited", "--model", "iris", "--version", "1.0.0", "--traffic-limit", "5"
    )

    def one(_: int) -> tuple[int, dict[str, str]]:
        status, headers, _ = call(created["url"], {"instances": IRIS[:1]}, created["api_key"])
        return status, headers

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    codes = Counter(code for code, _ in results)
    assert codes[429] >= 20 and codes[200] >= 5, codes
    assert set(codes) <= {200, 429}
    retry = [h.get("Retry-After") for code, h in results if code == 429]
    assert all(r is not None and int(r) >= 1 for r in retry)


def test_predict_through_the_cli_as_owner(daemon: Daemon) -> None:
    daemon.deploy("--name", "iris-cli", "--model", "iris-onnx", "--version", "1.0.0")
    result = daemon.cli(
        "predict", "iris-cli", "--data", json.dumps({"instances": IRIS[:3]}), "--json"
    )
    reply = json.loads(result.stdout)
    assert reply["status"] == 200
    assert reply["response"]["predictions"] == sklearn_predictions(daemon.home, "1.0.0")[:3]
    bad = daemon.cli("predict", "iris-cli", "--data", "{not json", check=False)
    assert bad.returncode == 1 and "data" in bad.stderr


def _pids(home: Path) -> dict[str, int]:
    return {o.key: int(o.handle.split(":")[0]) for o in ProcessRuntime(home).owned()}


def _running(pid: int) -> bool:
    """Alive and not a zombie (nobody may reap an orphan in a container)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def _listening(host: str, port: int) -> bool:
    """Whether something accepts connections at the address (a unix socket's or TCP)."""
    path = unix_path(host)
    with socket.socket(socket.AF_UNIX if path else socket.AF_INET) as s:
        s.settimeout(0.5)
        return s.connect_ex(path or (host, port)) == 0


def test_stop_frees_sockets_and_processes_and_start_brings_it_back(daemon: Daemon) -> None:
    created = daemon.deploy(
        "--name", "stoppable", "--model", "iris", "--version", "1.0.0", "--instances", "2"
    )
    shown = daemon.client.service("stoppable")
    addresses = [(i.host or "", i.port or 0) for i in shown.instances]
    # The process runtime's instances are on unix sockets the daemon bound, no port.
    assert all(unix_path(host) and port == 0 for host, port in addresses)
    keys = {k for k in _pids(daemon.home) if k.startswith(created["id"])}
    assert len(keys) == 2 and all(_listening(*a) for a in addresses)
    daemon.cli("stop", "stoppable")
    deadline = time.monotonic() + 20
    while daemon.client.service("stoppable").status != "stopped":
        assert time.monotonic() < deadline, "stoppable did not stop in 20 s"
        time.sleep(0.1)
    assert not {k for k in _pids(daemon.home) if k.startswith(created["id"])}
    assert not any(_listening(*a) for a in addresses)
    assert not any(os.path.exists(host) for host, _ in addresses)  # the socket files went
    assert call(created["url"], {"instances": IRIS[:1]}, created["api_key"])[0] in (404, 503)
    events = json.loads(daemon.cli("events", "stoppable", "--json").stdout)
    kinds = [e["kind"] for e in events]
    assert kinds[-2:] == ["stopping", "stopped"]
    restarted = daemon.cli("start", "stoppable", "--json")
    assert json.loads(restarted.stdout)["status"] == "deploying"
    deadline = time.monotonic() + 60
    while daemon.client.service("stoppable").status != "running":
        assert time.monotonic() < deadline, "stoppable did not run again in 60 s"
        time.sleep(0.1)
    # the gateway learns the new route within a second
    deadline = time.monotonic() + 1.5
    while call(created["url"], {"instances": IRIS[:1]}, created["api_key"])[0] != 200:
        assert time.monotonic() < deadline, "the gateway did not route stoppable in 1.5 s"
        time.sleep(0.05)
    daemon.cli("delete", "stoppable")
    deadline = time.monotonic() + 20
    while "stoppable" in [s.name for s in daemon.client.services()]:
        assert time.monotonic() < deadline, "stoppable was not deleted in 20 s"
        time.sleep(0.1)


def test_a_model_that_cannot_load_fails_the_deploy(daemon: Daemon, tmp_path: Path) -> None:
    # Break a registered version's files after its check: the instance cannot load it.
    model_file = daemon.home / "models" / _me() / "iris-onnx" / "1.0.0" / "model.onnx"
    saved = model_file.read_bytes()
    model_file.write_bytes(b"not an onnx file")
    try:
        result = daemon.cli(
            "deploy",
            "--name",
            "broken",
            "--model",
            "iris-onnx",
            "--version",
            "1.0.0",
            "--wait",
            "--json",
            check=False,
        )
    finally:
        model_file.write_bytes(saved)
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["status"] == "failed"
    assert "model load failed" in reply["reason"]
    logs = daemon.cli("logs", "broken", check=False)
    assert logs.returncode == 0


def test_bad_input_is_refused_with_the_field(daemon: Daemon) -> None:
    result = daemon.cli(
        "deploy", "--name", "x", "--model", "iris", "--version", "9.9.9", check=False
    )
    assert result.returncode == 1
    assert "models[0].version" in result.stderr
    assert "x" not in [s.name for s in daemon.client.services()]


def test_kill_9_then_restart_keeps_the_same_instances(template: Path, tmp_path: Path) -> None:
    home = clone_home(template, tmp_path / "home")
    d = start_daemon(home)
    try:
        created = d.deploy(
            "--name", "durable", "--model", "iris", "--version", "1.0.0", "--instances", "2"
        )
        before = _pids(home)
        assert len(before) == 2
        sockets = sorted(i.address for i in d.client.service("durable").instances)
        assert all(a.startswith("unix:/") for a in sockets)
        gateway_before = int((home / "gateway.pid").read_text())
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        # the data plane keeps serving with the daemon dead
        assert call(created["url"], {"instances": IRIS[:1]}, created["api_key"])[0] == 200
        d2 = start_daemon(home)
        d.proc = d2.proc
        # the restarted controller looked at the service three times: it adopted the instances
        # (nothing restarted), it did not replace them
        wait_reconciled(d2, 3)
        shown = d2.client.service("durable")
        assert shown.status == "running"
        assert _pids(home) == before
        # adopted on the sockets its records name, which the gateway routes to
        assert sorted(i.address for i in shown.instances) == sockets
        assert int((home / "gateway.pid").read_text()) == gateway_before
        assert call(created["url"], {"instances": IRIS[:1]}, created["api_key"])[0] == 200
        kinds = [e["kind"] for e in d2.client.request("GET", "/v1/services/durable/events")]
        assert "instance_restarted" not in kinds
        # SIGTERM: a clean stop of the daemon and its gateway; the instances keep running
        d2.proc.send_signal(signal.SIGTERM)
        assert d2.proc.wait(30) == 0
        assert not (home / "opsbot.sock").exists()
        assert not _running(gateway_before)
        assert _pids(home) == before
    finally:
        stop_everything(home, d.proc)
    assert _pids(home) == {}


def _wait_status(d: Daemon, name: str, status: str, timeout: float) -> ServiceDetail:
    deadline = time.monotonic() + timeout
    while (s := d.client.service(name)).status != status:
        assert time.monotonic() < deadline, f"{name} not {status} in {timeout} s: {s}"
        time.sleep(0.1)
    return s


def test_one_minute_auto_stop_on_the_real_clock(daemon: Daemon) -> None:
    created = daemon.deploy(
        "--name", "brief", "--model", "iris", "--version", "1.0.0", "--auto-stop", "1m"
    )
    assert 0 < created["remaining_s"] <= 60
    listed = daemon.cli("services").stdout
    assert "brief" in listed and "in " in listed  # the countdown shows
    stopped = _wait_status(daemon, "brief", "stopped", 90)
    assert stopped.reason == "auto stop"
    kinds = [e["kind"] for e in daemon.client.request("GET", "/v1/services/brief/events")]
    assert kinds.count("reminder") == 1  # the 10-minute reminder came at once, and once
    assert kinds.count("expired") == 1 and kinds[-1] == "stopped"
    assert kinds.index("reminder") < kinds.index("expired")


def test_extend_and_autostop_from_the_cli(daemon: Daemon) -> None:
    daemon.deploy("--name", "longer", "--model", "iris", "--version", "2.0.0")
    out = daemon.cli("extend", "longer", "4h").stdout
    # The 4 hours are added to the hour it had left.
    assert "stops in 4h 59m" in out or "stops in 5h 00m" in out
    shown = json.loads(daemon.cli("autostop", "longer", "off", "--json").stdout)
    assert shown["due_time"] is None and shown["auto_stop"] == "off"
    shown = json.loads(daemon.cli("autostop", "longer", "2h", "--json").stdout)
    assert 7100 < shown["remaining_s"] <= 7200
    bad = daemon.cli("extend", "longer", "30m", check=False)
    assert bad.returncode == 1 and "hours" in bad.stderr


def test_deadlines_across_a_kill_9(template: Path, tmp_path: Path) -> None:
    home = clone_home(template, tmp_path / "home")
    d = start_daemon(home)
    try:
        d.deploy("--name", "overdue", "--model", "iris", "--version", "1.0.0")
        d.deploy("--name", "future", "--model", "iris", "--version", "2.0.0", "--auto-stop", "6h")
        future_due = d.client.service("future").due_time
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        # time passes while the daemon is down: the first deadline is now behind us
        conn = sqlite3.connect(home / "opsbot.db")
        with conn:
            conn.execute(
                "UPDATE services SET due_time = ? WHERE name = 'overdue'", (time.time() - 120,)
            )
        conn.close()
        d2 = start_daemon(home)
        d.proc = d2.proc
        _wait_status(d2, "overdue", "stopped", 30)
        future = d2.client.service("future")
        assert future.status == "running" and future.due_time == future_due
        # a pass over both services after the stop finds nothing left to do for the expired one
        wait_reconciled(d2, 2)
        kinds = [e["kind"] for e in d2.client.request("GET", "/v1/services/overdue/events")]
        assert kinds.count("expired") == 1 and kinds.count("stopped") == 1
    finally:
        stop_everything(home, d.proc)


def test_events_follow_streams_live(daemon: Daemon) -> None:
    streams = health(daemon)["event_streams"]
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsbot",
            "--home",
            str(daemon.home),
            "events",
            "--follow",
            "--json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # the follower listed the backlog and listens: what happens from now on is live
        deadline = time.monotonic() + 30
        while health(daemon)["event_streams"] < streams + 1:
            assert follow.poll() is None, "opsbot events --follow exited"
            assert time.monotonic() < deadline, "the follower opened no event stream in 30 s"
            time.sleep(0.05)
        daemon.deploy("--name", "watched", "--model", "iris", "--version", "1.0.0")
        seen: list[str] = []
        deadline = time.monotonic() + 20
        assert follow.stdout is not None
        while "running" not in seen and time.monotonic() < deadline:
            event = json.loads(follow.stdout.readline())
            if event["service"] == "watched":
                seen.append(event["kind"])
        assert seen[:1] == ["created"] and "running" in seen
    finally:
        follow.terminate()
        follow.wait(10)
