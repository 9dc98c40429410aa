"""`opsbot tui`: the live dashboard, a client of the daemon's control API.

Every control-API call runs in a thread worker (:meth:`OpsbotApp.call_api`); the event loop only
renders. The services table follows the daemon's event stream and is updated by row key.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeVar

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from opsbot.client import ControlClient, DaemonUnavailable
from opsbot.client.wire import EventInfo
from opsbot.core.errors import OpsbotError
from opsbot.tui.modals import HelpModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.view import StatsFetcher
from opsbot.tui.wording import plain

T = TypeVar("T")

#: How soon the dashboard tries the daemon again once it went away.
STREAM_RETRY_S = 1.0
#: How often the dashboard checks that whoever started it is still there.
ORPHAN_CHECK_S = 1.0


class NoTerminal(OpsbotError):
    title = "No terminal"


def require_terminal(stdin: IO[Any], stdout: IO[Any]) -> None:
    """Refuse to start without a terminal on both ends (``ssh -T``, a pipe, cron): Textual
    would write escape codes into the pipe and wait forever for keys."""
    if not (stdin.isatty() and stdout.isatty()):
        raise NoTerminal(
            "opsbot tui needs a terminal: connect with `ssh -t HOST opsbot tui` (for scripts, "
            "use `opsbot services --json`)"
        )


#: ``stats`` of :class:`OpsbotApp` when the numbers come from the daemon (``GET /v1/stats``):
#: the gateway's own ``/stats`` answers the daemon only.
FROM_DAEMON: Final = "daemon"


class OpsbotApp(App[None]):
    """The dashboard, a client of the control API through ``client`` (the daemon's socket, or
    the real app served in-process in tests)."""

    TITLE = "opsbot"
    CSS_PATH = "opsbot.tcss"
    ENABLE_COMMAND_PALETTE = True

    #: Whether the daemon went away (its event stream closed, or a call found no daemon).
    daemon_down: reactive[bool] = reactive(False, init=False)

    def __init__(
        self,
        client: ControlClient,
        *,
        stats: StatsFetcher | Literal["daemon"] | None = FROM_DAEMON,
        now: Callable[[], float] = time.time,
        live: bool = True,
        watch_terminal: bool = False,
    ) -> None:
        super().__init__()
        self.client = client
        if stats == FROM_DAEMON:

            def from_daemon(_gateway_url: str) -> dict[str, Any]:
                return client.stats().model_dump(mode="json")

            self.stats_fetcher: StatsFetcher | None = from_daemon
        else:
            self.stats_fetcher = stats
        self.now = now
        self.live = live
        self.user = ""
        self.admin = False
        self.gateway_url = ""
        self._stopping = threading.Event()
        #: Leave on a hangup or when orphaned (`opsbot tui`; not in tests run in-process).
        self.watch_terminal = watch_terminal
        self.down_reason = ""
        self.down_since = 0.0

    def get_default_screen(self) -> Screen[Any]:
        return ServicesScreen()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The command palette offers every action of the screen it was opened on (shown in
        the footer or not), and a screenshot saved where the dashboard was started."""
        for command in super().get_system_commands(screen):
            if command.title != "Screenshot":  # Textual's saves to a Downloads folder
                yield command
        yield SystemCommand(
            "Screenshot", "Save an SVG of this screen in the current directory", self.screenshot
        )
        yield SystemCommand("Help", "Every key of the dashboard (key ?)", self.action_help)
        seen: set[str] = set()
        # The screen's own bindings, not its active ones: a focused widget's key (the table's
        # enter) hides the screen's action on the same key from those.
        bindings = [b for cls in type(screen).__mro__ for b in cls.__dict__.get("BINDINGS", [])]
        for binding in bindings:
            if not isinstance(binding, Binding) or not binding.description:
                continue
            if binding.action in seen or binding.action.startswith("app."):
                continue
            if not screen.check_action(binding.action, ()):
                continue  # off now (the daemon is away)
            seen.add(binding.action)

            def run(action: str = binding.action) -> Any:
                return self.run_action(action, screen)

            shown = self.get_key_display(binding) or binding.key
            yield SystemCommand(binding.description, f"key {shown}", run)

    def action_help(self) -> None:
        self.push_screen(HelpModal())

    def screenshot(self) -> None:
        """Save an SVG of the screen in the working directory; say where, or why not."""
        try:
            path = self.save_screenshot(path=os.getcwd())
        except OSError as exc:
            self.notify(
                f"could not save it in {os.getcwd()} ({exc.strerror}); start the dashboard "
                "from a directory you can write to",
                title="No screenshot",
                severity="error",
            )
            return
        self.notify(path, title="Screenshot saved")

    def copy(self, text: str, what: str) -> None:
        """Put ``text`` on the clipboard of the terminal the user sits at (OSC 52, which
        travels over SSH)."""
        if not text:
            self.notify(f"there is no {what} to copy yet", title="Copy", severity="warning")
            return
        self.copy_to_clipboard(text)
        self.notify(
            f"{what} copied (OSC 52: your terminal must allow clipboard writes)", title="Copied"
        )

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
            except DaemonUnavailable as exc:
                self._deliver(self.connection_lost, exc)
                if failed is not None:
                    self._deliver(failed, exc)
                return
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
        self.notify(plain(exc.message), title=exc.title, severity="error", timeout=8)

    # -- the event stream -------------------------------------------------------------------------

    def start_event_stream(self, on_event: Callable[[EventInfo], None]) -> None:
        """Follow ``/v1/events/stream`` and hand every event to ``on_event`` on the event loop.

        The stream is the dashboard's heartbeat: the daemon ends it when it stops and the
        kernel when the daemon dies, so its end is the moment the daemon went away. Then the
        daemon is asked again every ``STREAM_RETRY_S``; once it answers, every screen reloads.
        The stream runs in a daemon thread rather than a worker: a worker's thread would hold
        the app open on quit until the next keep-alive.
        """

        def follow() -> None:
            after = 0
            while not self._stopping.is_set():
                try:
                    self.client.health()
                except OpsbotError as exc:
                    self._deliver(self.connection_lost, exc)
                else:
                    self._deliver(self.connection_back, None)
                    lost: OpsbotError = DaemonUnavailable("it closed the event stream")
                    try:
                        for event in self.client.follow_events(after_id=after or None):
                            if self._stopping.is_set():
                                return
                            after = max(after, event.id)
                            self._deliver(on_event, event)
                    except OpsbotError as exc:
                        lost = exc
                    self._deliver(self.connection_lost, lost)
                if self._stopping.wait(STREAM_RETRY_S):
                    return

        threading.Thread(target=follow, name="opsbot-events", daemon=True).start()

    def connection_lost(self, exc: OpsbotError) -> None:
        if self.daemon_down:
            return
        self.down_reason = exc.message
        self.down_since = self.now()
        self.daemon_down = True

    def connection_back(self, _: None) -> None:
        if not self.daemon_down:
            return
        self.daemon_down = False
        self.notify("the daemon answers again; showing a fresh state", title="Reconnected")

    def watch_daemon_down(self, down: bool) -> None:
        """Every screen greys out (or restores) the keys that need the daemon; on return,
        each fetches a fresh state."""
        for screen in self.screen_stack:
            screen.refresh_bindings()
            if not down:
                reload = getattr(screen, "reconnected", None)
                if callable(reload):
                    reload()

    def on_unmount(self) -> None:
        self._stopping.set()

    async def action_quit(self) -> None:
        self._stopping.set()
        self.exit()

    # -- the terminal going away ----------------------------------------------------------------

    def on_mount(self) -> None:
        if not self.watch_terminal:
            return
        loop = asyncio.get_running_loop()
        # SIGHUP: the terminal (the SSH connection) hung up. SIGTERM: asked to stop.
        for sig in (signal.SIGHUP, signal.SIGTERM):
            loop.add_signal_handler(sig, self.hang_up)
        # Whoever started the dashboard died without a hangup (its shell killed -9): the
        # dashboard is an orphan nobody can see, and leaves.
        parent = os.getppid()
        self.set_interval(ORPHAN_CHECK_S, lambda: self._check_parent(parent))

    def _check_parent(self, parent: int) -> None:
        if os.getppid() != parent:
            self.hang_up()

    def hang_up(self) -> None:
        self._stopping.set()
        self.exit(return_code=129)


def run(home: Path) -> None:
    """Entry point of `opsbot tui` (wired in opsbot.cli)."""
    require_terminal(sys.stdin, sys.stdout)
    client = ControlClient.for_home(home, timeout=30)
    client.health()  # raises DaemonUnavailable with what to do
    app = OpsbotApp(client, watch_terminal=True)
    app.run()
    if app.return_code:
        sys.exit(app.return_code)
