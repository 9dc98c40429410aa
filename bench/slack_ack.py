"""Slack ack latency: how long Slack waits for our HTTP answer, with and without load.

    python bench/slack_ack.py [--requests 200] [--gateway-concurrency 16] [--load-procs N]

The bot listens in HTTP mode on 127.0.0.1 with signature checks on, its Web API pointed at a
local fake. Signed ``/deploy`` commands (ack, then the modal opens after), view submissions
(validated, answered with the entered information to confirm) and their confirmations (validated
again and created in the store before the ack, since errors travel in the ack) are timed
end to end at the client. The same requests run twice: alone (baseline), then while the
inference gateway (its own process, as in the daemon) serves a closed load of predictions from
a real iris model server, and a thread keeps writing to the bot's SQLite store (the daemon's
controller and scheduler); ``--load-procs N`` adds N CPU-bound processes on top. Prints p50/p99,
the loaded/baseline ratio, and the predictions per second the gateway served meanwhile.
Target: p99 under 300 ms (Slack's hard limit is 3 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "slack"), str(ROOT / "bench")]

import gateway as gw  # noqa: E402 - the upstream, gateway and load helpers of bench/gateway.py
from slack_support import (  # noqa: E402 - the fake Web API and signing of the Slack tests
    SECRET,
    FakeSlack,
    big_probe,
    command_body,
    filled,
    post,
    submission,
)

from opsbot.core.app import Core  # noqa: E402
from opsbot.core.config import Config  # noqa: E402
from opsbot.slack import views  # noqa: E402
from opsbot.slack.app import build_app, make_client  # noqa: E402
from opsbot.slack.http import serve  # noqa: E402

FORM = "application/x-www-form-urlencoded"


def gateway_load(
    target: gw.Target,
    concurrency: int,
    stop: multiprocessing.synchronize.Event,
    served: multiprocessing.Queue[tuple[int, int, float]],
) -> None:
    """Keep the gateway busy with predictions until told to stop; report what it served."""
    requests = errors = 0
    began = time.perf_counter()
    while not stop.is_set():
        result = gw.load_python(target, concurrency, 0.5)
        requests += result.requests
        errors += result.errors
    served.put((requests, errors, time.perf_counter() - began))


@contextlib.contextmanager
def loaded_gateway(tmp: Path) -> Iterator[gw.Target]:
    """A model server with the iris model and the gateway in front of it, as processes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    gw.train_iris(tmp / "model")
    upstream_port, gateway_port = gw.free_port(), gw.free_port()
    gw.fill_store(tmp / "gw-home", upstream_port)
    upstream_cmd = [
        *(sys.executable, "-m", "opsbot.serving.server", "--path", str(tmp / "model")),
        *("--format", "sklearn", "--name", gw.MODEL_NAME, "--version", "1.0.0"),
        *("--port", str(upstream_port)),
    ]
    gateway_cmd = [
        *(sys.executable, "-m", "opsbot.serving.gateway", "--home", str(tmp / "gw-home")),
        *("--host", "127.0.0.1", "--port", str(gateway_port), "--log-level", "WARNING"),
    ]
    with (
        gw.running(upstream_cmd, tmp / "upstream.log", env) as upstream,
        gw.running(gateway_cmd, tmp / "gateway.log", env) as gateway,
    ):
        gw.wait_http(f"http://127.0.0.1:{upstream_port}/v2/health/ready", upstream, "upstream")
        gw.wait_http(f"http://127.0.0.1:{gateway_port}/healthz", gateway, "gateway")
        yield gw.Target("gateway", gateway_port, f"/v1/infers/{gw.SERVICE_UID}")


def burn(stop: multiprocessing.synchronize.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i * i


def store_writer(core: Core, stop: threading.Event) -> None:
    """Another writer on the store, as the controller and scheduler are in the daemon."""
    me = core.user("bench-load")
    while not stop.is_set():
        with core.store.write() as db:
            db.execute("UPDATE services SET updated_at = ? WHERE owner = ?", (time.time(), me.name))
        time.sleep(0.002)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(n: int, send: Callable[[int], float]) -> list[float]:
    return [send(i) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--gateway-concurrency", type=int, default=16)
    parser.add_argument("--load-procs", type=int, default=0, help="extra CPU-bound processes")
    args = parser.parse_args()
    served: multiprocessing.Queue[tuple[int, int, float]] = multiprocessing.Queue()
    gateway_figures: tuple[int, int, float] = (0, 0, 0.0)

    with tempfile.TemporaryDirectory() as tmp, loaded_gateway(Path(tmp)) as target:
        home = Path(tmp) / "home"
        config = Config(quota=10_000)
        core = Core(home, probe=big_probe(), config=config)
        print("building the example models…", flush=True)
        owner = core.user("bench")
        core.create_examples(owner)
        core.link_slack(owner, "bench", "U1")
        fake = FakeSlack()
        app, bot = build_app(
            core,
            client=make_client("xoxb-bench", fake.url),
            signing_secret=SECRET,
            on_change=lambda: None,
            gateway_url="http://127.0.0.1:8080",
        )
        server = serve(app, SECRET, 0, host="127.0.0.1")
        counter = iter(range(10**9))

        def deploy_command(_: int) -> float:
            reply = post(server.url, command_body("/deploy", "", fake.response_url), FORM)
            assert reply.status == 200, reply
            return reply.seconds

        confirms: list[float] = []

        def view_submission(_: int) -> float:
            """The submit (validated, answered with what to confirm), then the confirmation
            (validated again and created before the ack); the confirmation's time goes to
            ``confirms``."""
            values = {"name": f"b{next(counter)}", "m0.model": "iris", "m0.version": "1.0.0"}
            # Each form its own draft (a confirmed one is done with), opened untimed.
            view = filled(bot.modal(core.slack_user("U1"), views.FormState()), values)
            reply = post(server.url, submission(view), FORM)
            answer = json.loads(reply.body) if reply.body else {}
            shown = answer.get("view") or {}
            asked = answer.get("response_action") == "update" and "private_metadata" in shown
            assert reply.status == 200 and asked, reply
            confirmed = {**view, "private_metadata": shown["private_metadata"]}
            done = post(server.url, submission(confirmed), FORM)
            assert done.status == 200 and done.body == "", done
            confirms.append(done.seconds)
            return reply.seconds

        results: dict[tuple[str, str], list[float]] = {}
        try:
            for phase in ("baseline", "loaded"):
                stop_procs = multiprocessing.Event()
                stop_thread = threading.Event()
                procs: list[multiprocessing.Process] = []
                writer: threading.Thread | None = None
                if phase == "loaded":
                    procs = [
                        multiprocessing.Process(
                            target=gateway_load,
                            args=(target, args.gateway_concurrency, stop_procs, served),
                            daemon=True,
                        )
                    ]
                    procs += [
                        multiprocessing.Process(target=burn, args=(stop_procs,), daemon=True)
                        for _ in range(args.load_procs)
                    ]
                    for p in procs:
                        p.start()
                    writer = threading.Thread(target=store_writer, args=(core, stop_thread))
                    writer.start()
                    time.sleep(0.5)
                try:
                    for label, send in (("/deploy", deploy_command), ("submit", view_submission)):
                        measure(10, send)  # warm up
                        confirms.clear()
                        results[(phase, label)] = measure(args.requests, send)
                    results[(phase, "confirm")] = list(confirms)
                finally:
                    stop_procs.set()
                    stop_thread.set()
                    if phase == "loaded":
                        gateway_figures = served.get(timeout=30)
                    for p in procs:
                        p.join(5)
                    if writer is not None:
                        writer.join(5)
        finally:
            server.stop()
            bot.notifier.drain(30)
            bot.notifier.close()
            fake.stop()
            core.store.close()

    requests, errors, seconds = gateway_figures
    print(
        f"\n{args.requests} requests each; load = the gateway at concurrency "
        f"{args.gateway_concurrency} ({requests / seconds:.0f} predictions/s, {errors} errors, "
        f"iris model server) + a store writer + {args.load_procs} busy processes; "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'request':10} {'phase':9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  p99 ratio")
    for label in ("/deploy", "submit", "confirm"):
        base = percentile(results[("baseline", label)], 0.99)
        for phase in ("baseline", "loaded"):
            got = results[(phase, label)]
            p99 = percentile(got, 0.99)
            print(
                f"{label:10} {phase:9} {statistics.median(got) * 1e3:8.1f} {p99 * 1e3:8.1f} "
                f"{max(got) * 1e3:8.1f}  {p99 / base:5.2f}x"
            )
    worst = max(percentile(v, 0.99) for v in results.values())
    print(f"\nworst p99 {worst * 1e3:.1f} ms: {'OK' if worst < 0.3 else 'OVER'} (target 300 ms)")


if __name__ == "__main__":
    main()
