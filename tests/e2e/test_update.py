"""Modifying a running service under load, with real processes: not one call may fail.

A load of concurrent calls runs through the gateway while the service goes 90/10 -> 50/50 ->
0/100, gains and loses instances, and has its environment changed (which replaces every
instance). Each change goes through the CLI, as a user would make it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from homes import clone_home

from e2e.test_daemon import IRIS, Daemon, call, start_daemon, stop_everything
from opsbot.client.wire import ServiceDetail
from opsbot.serving.gateway import INTERNAL_HEADER, INTERNAL_SECRET

pytestmark = pytest.mark.slow


class Load:
    """Callers in threads until stopped; every answer's status and version is counted, and each
    call is remembered by when it began, so a test can ask what calls begun after a moment got
    (a call in flight across a change may still meet the old route)."""

    def __init__(self, url: str, key: str, threads: int = 4):
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered = threading.Condition(self.lock)
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        # (monotonic time the call began, the version that answered or "" if none did)
        self.calls: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                status, headers, body = call(self.url, {"instances": IRIS[:1]}, self.key)
            except OSError as exc:  # a connection the gateway dropped: a failure too
                with self.answered:
                    self.failures.append(repr(exc))
                    self.calls.append((began, ""))
                    self.answered.notify_all()
                continue
            with self.answered:
                self.statuses[status] += 1
                version = headers["X-Model-Version"] if status == 200 else ""
                if status == 200:
                    self.versions[version] += 1
                else:
                    self.failures.append(f"{status}: {body}")
                self.calls.append((began, version))
                self.answered.notify_all()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def begun_after(self, moment: float, n: int, timeout: float = 30) -> Counter[str]:
        """Wait until ``n`` calls begun after ``moment`` (``time.monotonic()``) have ended;
        the versions that answered them ("" for a failure)."""

        def ended() -> list[str]:
            return [version for began, version in self.calls if began >= moment]

        with self.answered:
            if not self.answered.wait_for(lambda: len(ended()) >= n, timeout):
                raise AssertionError(
                    f"only {len(ended())} of {n} calls begun after the change ended in "
                    f"{timeout} s: {self.statuses}, {self.failures[:3]}"
                )
            return Counter(ended())


@pytest.fixture(scope="module")
def daemon(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = clone_home(template, tmp_path_factory.mktemp("update") / "home")
    d = start_daemon(home)
    yield d
    stop_everything(home, d.proc)


def settled(daemon: Daemon, name: str, desired: int, timeout: float = 60) -> ServiceDetail:
    """Wait until exactly ``desired`` instances run, all ready (none starting or draining)."""
    deadline = time.monotonic() + timeout
    while True:
        s = daemon.client.service(name)
        states = [i.state for i in s.instances]
        if s.status == "running" and states == ["ready"] * desired:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not settle: {s.status} {states}")
        time.sleep(0.2)


def routes_read(daemon: Daemon, service_url: str) -> None:
    """Return once the gateway (every worker) has read its routes from the store afresh: what
    the controller asks before it calls a service Running (``POST /-/routes``)."""
    gateway = service_url.split("/v1/")[0]
    secret = (daemon.home / INTERNAL_SECRET).read_text().strip()
    ask = urllib.request.Request(
        f"{gateway}/-/routes", method="POST", headers={INTERNAL_HEADER: secret}
    )
    with urllib.request.urlopen(ask, timeout=10) as resp:
        assert resp.status == 200


def update(daemon: Daemon, name: str, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(daemon.cli("update", name, *args, "--json").stdout)
    return result


def test_changes_under_load_drop_no_call(daemon: Daemon, tmp_path: Path) -> None:
    spec = {
        "name": "rolling",
        "traffic_limit": 100000,
        "auto_stop": "off",
        "models": [
            {"model": "iris", "version": "1.0.0", "traffic_ratio": 90},
            {"model": "iris", "version": "2.0.0", "traffic_ratio": 10},
        ],
    }
    path = tmp_path / "rolling.json"
    path.write_text(json.dumps(spec))
    created = daemon.deploy("-f", str(path))
    assert created["status"] == "running"
    with Load(created["url"], created["api_key"]) as load:
        load.begun_after(0, 20)  # calls flow at 90/10
        assert update(daemon, "rolling", "--traffic", "1.0.0=50,2.0.0=50")["snapshot"] == 2
        load.begun_after(time.monotonic(), 20)  # and go on across the change to 50/50
        update(daemon, "rolling", "--traffic", "1.0.0=0,2.0.0=100")
        # Once the gateway has read the store afresh (every worker), the calls begun after
        # go to 2.0.0 only; those in flight across the change may still meet 1.0.0.
        routes_read(daemon, created["url"])
        after = load.begun_after(time.monotonic(), 40)
        assert set(after) == {"2.0.0"}, after
        update(daemon, "rolling", "--instances", "2")
        settled(daemon, "rolling", 4)
        update(daemon, "rolling", "--instances", "2.0.0=1,1.0.0=1")
        settled(daemon, "rolling", 2)
        before = {i.address for i in daemon.client.service("rolling").instances}
        update(daemon, "rolling", "--env", "MODE=fast")  # every instance is replaced
        after_env = settled(daemon, "rolling", 2)
        assert before.isdisjoint({i.address for i in after_env.instances})
        load.begun_after(time.monotonic(), 20)  # the new instances answer calls
    assert load.failures == [], load.failures[:5]
    assert load.statuses[200] > 200, load.statuses
    history = json.loads(daemon.cli("history", "rolling", "--json").stdout)
    assert [h["n"] for h in history] == [1, 2, 3, 4, 5, 6]
    # per-version numbers: traffic from the gateway, CPU and memory from the runtime
    shown = json.loads(daemon.cli("show", "rolling", "--json").stdout)
    rows = {v["version"]: v for v in shown["versions"]}
    assert rows["2.0.0"]["calls"] == load.versions["2.0.0"]
    assert rows["2.0.0"]["failures"] == 0 and rows["2.0.0"]["p99_ms"] > 0
    assert rows["1.0.0"]["ready"] == rows["1.0.0"]["desired"] == 1
    assert all(v["memory_bytes"] > 10 * 2**20 and v["cpu_percent"] >= 0 for v in rows.values())
    text = daemon.cli("show", "rolling").stdout
    assert "p99 ms" in text and "iris 2.0.0: 1 x cpu.2u8g, env MODE=fast" in text, text


def test_rollback_shows_the_difference_then_applies_it(daemon: Daemon) -> None:
    created = daemon.deploy("--name", "back", "--model", "iris", "--version", "1.0.0")
    assert created["status"] == "running"
    update(daemon, "back", "--traffic-limit", "5", "--description", "tight")
    out = daemon.cli("rollback", "back", "--to", "1").stdout
    assert "traffic_limit: 5 -> 100" in out and "rolled back (snapshot #3)" in out
    assert daemon.client.service("back").traffic_limit == 100
    refused = daemon.cli("rollback", "back", "--to", "7", check=False)
    assert refused.returncode == 1 and "no snapshot #7; choose 1 to 3" in refused.stderr


def test_update_is_refused_with_the_field_named(daemon: Daemon) -> None:
    daemon.deploy("--name", "strict", "--model", "iris", "--version", "1.0.0")
    bad = daemon.cli("update", "strict", "--traffic", "1.0.0=60", check=False)
    assert bad.returncode == 1 and "sum to 60%" in bad.stderr
    bad = daemon.cli("update", "strict", "--rule", "X-Group=beta", check=False)
    assert bad.returncode == 1 and "HEADER=VALUE->VERSION" in bad.stderr
    assert len(json.loads(daemon.cli("history", "strict", "--json").stdout)) == 1
