"""Slack ack latency: how long Slack waits for our HTTP answer, with and without load.

    python bench/slack_ack.py [--requests 200] [--load-procs N]

The bot listens in HTTP mode on 127.0.0.1 with signature checks on, its Web API pointed at a
local fake. Signed ``/deploy`` commands (ack, then the modal opens after) and view submissions
(validated and created in the store before the ack, since errors travel in the ack) are timed
end to end at the client. The same requests run twice: alone (baseline), then while CPU-bound
processes keep every core busy and a thread keeps writing to the same SQLite store (the daemon's
other work). Prints p50/p99 and the loaded/baseline ratio. Target: p99 under 300 ms
(Slack's hard limit is 3 s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "slack")]

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
    parser.add_argument("--load-procs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
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
        server = serve(app, 0, host="127.0.0.1")
        modal = bot.modal(core.slack_user("U1"), views.FormState())
        counter = iter(range(10**9))

        def deploy_command(_: int) -> float:
            reply = post(server.url, command_body("/deploy", "", fake.response_url), FORM)
            assert reply.status == 200, reply
            return reply.seconds

        def view_submission(_: int) -> float:
            values = {"name": f"b{next(counter)}", "m0.model": "iris", "m0.version": "1.0.0"}
            reply = post(server.url, submission(filled(modal, values)), FORM)
            assert reply.status == 200 and reply.body == "", reply
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
                        results[(phase, label)] = measure(args.requests, send)
                finally:
                    stop_procs.set()
                    stop_thread.set()
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

    print(
        f"\n{args.requests} requests each; load = {args.load_procs} busy processes + a store writer"
    )
    print(f"{'request':10} {'phase':9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  p99 ratio")
    for label in ("/deploy", "submit"):
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
