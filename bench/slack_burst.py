"""Slack burst: N signed requests at once, each answered within Slack's 3 s?

    python bench/slack_burst.py [--requests 200]

The bot listens in HTTP mode on 127.0.0.1 (signature checks, replay guard), its Web API
pointed at a local fake. Baseline: the same kind of request (``/services``: ack, then the list
is posted to the response URL) sent one after another. Burst: ``--requests`` of them sent at
the same moment from as many threads. Prints p50/p99/max of both, the burst/baseline p99 ratio,
how many were answered 200, and whether the slowest answer came under 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "slack")]

from slack_support import SECRET, FakeSlack, Reply, big_probe, command_body, post  # noqa: E402

from opsbot.core.app import Core  # noqa: E402
from opsbot.slack.app import build_app, make_client  # noqa: E402
from opsbot.slack.http import serve  # noqa: E402

FORM = "application/x-www-form-urlencoded"
SLACK_LIMIT_S = 3.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        core = Core(Path(tmp) / "home", probe=big_probe())
        core.link_slack(core.user("bench"), "bench", "U1")
        fake = FakeSlack()
        app, bot = build_app(
            core,
            client=make_client("xoxb-bench", fake.url),
            signing_secret=SECRET,
            on_change=lambda: None,
            gateway_url="http://127.0.0.1:8080",
        )
        server = serve(app, SECRET, 0, host="127.0.0.1")

        def send(_: int) -> Reply:
            return post(server.url, command_body("/services", "", fake.response_url), FORM)

        try:
            for _ in range(10):  # warm up
                send(0)
            baseline = [send(i) for i in range(n)]
            gate = threading.Barrier(n)

            def at_once(i: int) -> Reply:
                gate.wait()
                return send(i)

            with ThreadPoolExecutor(max_workers=n) as pool:
                burst = list(pool.map(at_once, range(n)))
            fake.wait_count("response", 2 * n + 10, timeout=60)
        finally:
            server.stop()
            bot.notifier.close()
            fake.stop()
            core.store.close()

    print(f"\n{n} signed /services requests; {os.cpu_count()} CPUs")
    print(f"{'phase':9} {'answered 200':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  p99 ratio")
    base_p99 = percentile([r.seconds for r in baseline], 0.99)
    for label, replies in (("one by one", baseline), ("at once", burst)):
        seconds = [r.seconds for r in replies]
        ok = sum(r.status == 200 for r in replies)
        p99 = percentile(seconds, 0.99)
        print(
            f"{label:9} {ok:>8}/{len(replies):<3} {statistics.median(seconds) * 1e3:8.1f} "
            f"{p99 * 1e3:8.1f} {max(seconds) * 1e3:8.1f}  {p99 / base_p99:6.2f}x"
        )
    worst = max(r.seconds for r in burst)
    answered = all(r.status == 200 for r in burst)
    verdict = "OK" if answered and worst < SLACK_LIMIT_S else "OVER"
    print(f"\nburst: all answered {answered}, slowest {worst * 1e3:.0f} ms: {verdict} (limit 3 s)")


if __name__ == "__main__":
    main()
