"""`opsbot tui`: the live dashboard, a client of the daemon's control API.

Every control-API call runs in a thread worker (:meth:`OpsbotApp.call_api`); the event loop only
renders. The services table follows the daemon's event stream and is updated by row key.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from opsbot.core.errors import OpsbotError
from opsbot.tui.services import ServicesScreen
from opsbot.tui.view import ControlClient, StatsFetcher

T = TypeVar("T")

STREAM_RETRY_S = 2.0


def fetch_gateway_stats(gateway_url: str) -> dict[str, Any]:
    """The gateway's ``/stats`` document (calls, failures, latency per service and version)."""
    with urllib.request.urlopen(f"{gateway_url}/stats", timeout=2) as resp:
        document: dict[str, Any] = json.loads(resp.read())
    return document


class OpsbotApp(App[None]):
    """The dashboard. ``client`` is a :class:`opsbot.daemon.client.Client` or a fake of it."""

    TITLE = "opsbot"
    CSS_PATH = "opsbot.tcss"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit", priority=False)]

    def __init__(
        self,
        client: ControlClient,
        *,
        stats: StatsFetcher | None = fetch_gateway_stats,
        now: Callable[[], float] = time.time,
        live: bool = True,
    ) -> None:
        super().__init__()
        self.client = client
        self.stats_fetcher = stats
        self.now = now
        self.live = live
        self.user = ""
        self.admin = False
        self.gateway_url = ""
        self._stopping = threading.Event()

    def get_default_screen(self) -> Screen[Any]:
        return ServicesScreen()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The command palette offers the keys of the screen it was opened on, too."""
        yield from super().get_system_commands(screen)
        seen: set[str] = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if active.node is not screen or not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)

            def run(action: str = binding.action) -> Any:
                return self.run_action(action, screen)

            shown = self.get_key_display(binding) or key
            yield SystemCommand(binding.description, f"key {shown}", run)

    # -- calling the daemon off the event loop --------------------------------------------------

    def call_api(
        self,
        fn: Callable[[], T],
        done: Callable[[T], None],
        failed: Callable[[OpsbotError], None] | None = None,
        *,
        group: str = "api",
    ) -> None:
        """Run ``fn`` (a control-API call) in a thread worker; hand its result to ``done`` on the
        event loop, or its error to ``failed`` (by default a notification with title and text)."""

        def work() -> None:
            try:
                result = fn()
            except OpsbotError as exc:
                self._deliver(failed or self.show_error, exc)
                return
            self._deliver(done, result)

        self.run_worker(work, thread=True, group=group, exit_on_error=False)

    def _deliver(self, callback: Callable[[Any], None], value: Any) -> None:
        if self._stopping.is_set():
            return
        try:
            self.call_from_thread(callback, value)
        except RuntimeError:
            # The app closed while the call was in flight; nobody is left to show it to.
            self._stopping.set()

    def show_error(self, exc: OpsbotError) -> None:
        self.notify(exc.message, title=exc.title, severity="error", timeout=8)

    # -- the event stream -------------------------------------------------------------------------

    def start_event_stream(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Follow ``/v1/events/stream`` and hand every event to ``on_event`` on the event loop.

        The stream is one long call that only ends when the daemon closes it, so it runs in a
        daemon thread rather than a worker: a worker's thread would hold the app open on quit
        until the next keep-alive.
        """

        def follow() -> None:
            after = 0
            while not self._stopping.is_set():
                try:
                    for event in self.client.stream(
                        "/v1/events/stream", {"after_id": after or None}
                    ):
                        if self._stopping.is_set():
                            return
                        after = max(after, int(event.get("id", 0)))
                        self._deliver(on_event, event)
                except OpsbotError as exc:
                    self._deliver(self.stream_lost, exc)
                if self._stopping.wait(STREAM_RETRY_S):
                    return

        threading.Thread(target=follow, name="opsbot-events", daemon=True).start()

    def stream_lost(self, exc: OpsbotError) -> None:
        self.sub_title = f"event stream lost ({exc.message}); retrying"

    def on_unmount(self) -> None:
        self._stopping.set()

    async def action_quit(self) -> None:
        self._stopping.set()
        self.exit()


def run(home: Path) -> None:
    """Entry point of `opsbot tui` (wired in opsbot.cli)."""
    from opsbot.daemon.client import Client

    client = Client(home, timeout=30)
    if not client.available():
        client.request("GET", "/healthz")  # raises DaemonUnavailable with what to do
    OpsbotApp(client).run()
