"""Deploy latency: the deploy call until Running, on the docker runtime beside the process one.

    python bench/deploy.py [--rounds 5] [--instances 1]

One run trains and registers the example models once, starts two real daemons (``opsbot up
--runtime process`` and ``--runtime docker``, each on its own copy of that data directory), then
in each round deploys ``iris`` 1.0.0 to each in turn (alternating which goes first) and times the
control API's ``POST /v1/services`` until the service reads Running (every instance answered its
readiness check and the gateway routes it), then deletes it and waits for it to be gone (not
timed). The baseline, in the same rounds: the bare model server started by the same runtime
(no daemon, no store, no gateway; on the process runtime as its own interpreter, not forked
from the preloader the daemon uses) until it answers ``/v2/health/ready``, polled every 5 ms. It
prints each runtime's median, min and max of both, the deploy's ratio and difference to the bare
start, the docker/process ratio of the medians, and how long after the first instance answered
its readiness check (asked by this script every 5 ms) the service read Running: the controller's
own delay once the model has loaded. Needs a Docker engine and the serving image (``opsbot image
build``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opsbot.client import ControlClient, RemoteError  # noqa: E402
from opsbot.core.address import unix_path  # noqa: E402
from opsbot.core.app import DB_NAME, Core  # noqa: E402
from opsbot.core.controller import http_ready  # noqa: E402
from opsbot.core.identity import local_user_name  # noqa: E402
from opsbot.core.images import ensure_image  # noqa: E402
from opsbot.core.runtime import InstanceSpec, Runtime  # noqa: E402
from opsbot.core.runtimes.docker import DockerRuntime, connect, remove_all  # noqa: E402
from opsbot.core.runtimes.process import ProcessRuntime  # noqa: E402
from opsbot.core.spec import DEFAULT_FLAVOR  # noqa: E402

RUNTIMES = ("process", "docker")


def template_home(root: Path) -> Path:
    home = root / "template"
    core = Core(home)
    core.create_examples(core.user(local_user_name()))
    core.store.close()
    conn = sqlite3.connect(home / DB_NAME)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return home


def copy_home(template: Path, home: Path) -> Path:
    shutil.copytree(template, home)
    conn = sqlite3.connect(home / DB_NAME)
    with conn:
        conn.execute(
            "UPDATE model_versions SET path = replace(path, ?, ?)", (str(template), str(home))
        )
    conn.close()
    (home / "config.toml").write_text("[public_pool]\ncpu_overcommit = 32\nmemory_overcommit = 8\n")
    return home


@contextlib.contextmanager
def daemon(home: Path, runtime: str) -> Iterator[ControlClient]:
    log = open(home / "daemon.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsbot", "--home", str(home), "up", "--runtime", runtime,
         "--gateway-port", "0", "--no-examples"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    client = ControlClient.for_home(home, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while not client.available():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((home / "daemon.log").read_text())
            time.sleep(0.1)
        yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        gateway = home / "gateway.pid"
        if gateway.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(gateway.read_text()), signal.SIGTERM)
        if runtime == "docker":
            remove_all(DockerRuntime(home))
        else:
            rt = ProcessRuntime(home)
            for owned in rt.owned():
                rt.stop(owned.handle, grace_s=2)


def deploy_seconds(client: ControlClient, name: str, instances: int) -> tuple[float, float]:
    """Seconds from the deploy call to Running, and from the first instance answering its
    readiness check (asked here every 5 ms, once the service lists its address) to Running."""
    body = {
        "name": name,
        "models": [{"model": "iris", "version": "1.0.0", "instances": instances}],
    }
    ready_at: list[float] = []
    done = threading.Event()

    def watch() -> None:
        address = None
        while not done.is_set() and not ready_at:
            if address is None:
                with contextlib.suppress(RemoteError):
                    # An address once the instance has one: a port, or (a process
                    # instance's) a unix socket, whose port is 0. Before, host is the table's
                    # default and port empty.
                    found = [
                        i
                        for i in client.service(name).instances
                        if i.port or unix_path(i.host or "") is not None
                    ]
                    if found:
                        address = (found[0].host or "", int(found[0].port or 0))
            elif http_ready(*address, timeout=1.0):
                ready_at.append(time.perf_counter())
            done.wait(0.005)

    started = time.perf_counter()
    client.deploy(body)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    while True:
        status = client.service(name).status
        if status == "running":
            running_at = time.perf_counter()
            break
        if status == "failed":
            raise SystemExit(f"{name} failed: {client.service(name).reason}")
        time.sleep(0.01)
    done.set()
    watcher.join()
    took = running_at - started
    after_load = running_at - ready_at[0] if ready_at else float("nan")
    client.delete(name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.service(name)
        except RemoteError:
            break
        time.sleep(0.1)
    return took, after_load


def bare_spec(home: Path, n: int) -> InstanceSpec:
    """iris 1.0.0 as a deploy with the default flavor would start it."""
    core = Core(home)
    path, fmt, entry = core.store.db.execute(
        "SELECT v.path, v.format, v.entry FROM model_versions v JOIN models m "
        "ON m.id = v.model_id WHERE m.name = 'iris' AND v.version = '1.0.0'"
    ).fetchone()
    flavor = next(f for f in core.flavors if f.id == DEFAULT_FLAVOR)
    owner = local_user_name()
    core.store.close()
    return InstanceSpec(
        service_uid=f"bare{n}",
        owner=owner,
        idx=0,
        n=0,
        model_name="iris",
        version="1.0.0",
        path=Path(path),
        format=fmt,
        entry=entry,
        flavor=flavor,
        env={},
    )


def bare_seconds(runtime: Runtime, spec: InstanceSpec) -> float:
    """The runtime starting the model server alone until it answers its readiness check."""
    started = time.perf_counter()
    handle = runtime.start(spec)
    try:
        deadline = time.monotonic() + 180
        while not http_ready(handle.host, handle.port, timeout=1.0):
            if time.monotonic() > deadline or runtime.exited(handle.handle) is not None:
                raise SystemExit(f"the bare model server did not start ({handle.handle})")
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        runtime.stop(handle.handle, grace_s=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instances", type=int, default=1)
    args = parser.parse_args()
    built = ensure_image(connect())
    print(f"serving image {built.tag}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="opsbot-bench-deploy-"))
    try:
        template = template_home(root)
        times: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        bare: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        after: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        with contextlib.ExitStack() as stack:
            homes = {r: copy_home(template, root / r) for r in RUNTIMES}
            clients = {r: stack.enter_context(daemon(homes[r], r)) for r in RUNTIMES}
            baremetal = root / "bare"
            copy_home(template, baremetal)
            runtimes: dict[str, Runtime] = {
                # its own interpreter, as every instance started before the preloader
                "process": ProcessRuntime(baremetal, preload=()),
                "docker": DockerRuntime(baremetal),
            }
            for i in range(args.rounds):
                order = RUNTIMES if i % 2 == 0 else tuple(reversed(RUNTIMES))
                for runtime in order:
                    took, after_load = deploy_seconds(clients[runtime], f"bench{i}", args.instances)
                    after[runtime].append(after_load)
                    alone = bare_seconds(runtimes[runtime], bare_spec(baremetal, i))
                    times[runtime].append(took)
                    bare[runtime].append(alone)
                    print(
                        f"round {i + 1} {runtime:>8}: deploy {took:6.2f} s, bare {alone:6.2f} s, "
                        f"Running {after_load:5.3f} s after the instance answered ready",
                        flush=True,
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ndeploy call -> Running, {args.instances} instance(s), {args.rounds} rounds")
    print(
        f"{'runtime':>8} {'median s':>9} {'min s':>7} {'max s':>7} {'bare median s':>14} "
        f"{'bare min-max s':>15} {'deploy/bare':>12} {'deploy-bare s':>14} "
        f"{'ready->Running s (max)':>22}"
    )
    for runtime in RUNTIMES:
        t, b = times[runtime], bare[runtime]
        mt, mb = statistics.median(t), statistics.median(b)
        print(
            f"{runtime:>8} {mt:9.2f} {min(t):7.2f} {max(t):7.2f} {mb:14.2f} "
            f"{min(b):7.2f}-{max(b):<7.2f} {mt / mb:11.2f}x {mt - mb:14.2f} "
            f"{statistics.median(after[runtime]):14.3f} ({max(after[runtime]):.3f})"
        )
    ratio = statistics.median(times["docker"]) / statistics.median(times["process"])
    print(f"docker / process (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
