"""What the dashboard knows of its daemon, shown on every screen.

The event stream is the heartbeat: the daemon ends it when it stops (and the kernel ends it when
the daemon dies), so the moment it closes the dashboard says so, greys out every key that needs
the daemon and stops ticking countdowns it can no longer vouch for. When the daemon answers
again, each screen fetches a fresh state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from textual.widgets import Static

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

#: Actions that change something through the daemon: off while it is away.
NEEDS_DAEMON = frozenset(
    {
        "deploy",
        "modify",
        "stop_service",
        "start_service",
        "delete_service",
        "extend",
        "predict",
        "send_predict",
        "rollback",
        "rotate_key",
        "submit",
        "create",
        "publish",
        "subscribe",
    }
)


def needs_daemon(action: str) -> bool:
    return action in NEEDS_DAEMON


class ConnectionBanner(Static):
    """A line at the top of a screen, shown while the daemon is away."""

    DEFAULT_CSS = """
    ConnectionBanner {
        height: auto;
        width: 100%;
        padding: 0 1;
        background: $error;
        color: $text;
        text-style: bold;
        display: none;
    }
    """

    def on_mount(self) -> None:
        app = cast("OpsbotApp", self.app)
        self.watch(app, "daemon_down", self._show)

    def _show(self, down: bool) -> None:
        app = cast("OpsbotApp", self.app)
        self.display = down
        if down:
            since = time.strftime("%H:%M:%S", time.localtime(app.down_since))
            self.update(
                f"Daemon not running since {since} ({app.down_reason}). Showing the last state "
                "seen; actions are off until it is back (opsbot up -d). Reconnecting…"
            )
