"""Socket Mode: the bot connects out to Slack over a websocket instead of listening for HTTP.

Bolt's built-in Socket Mode client (no extra dependency) asks the Web API for a websocket URL
(``apps.connections.open`` with the app-level token), connects, and reconnects by itself once
it has connected. Only that first request can fail for good, so it is tried in a thread of its
own, again and again with a growing pause, unless Slack says the token is wrong: the daemon
never waits on Slack to start.
"""

from __future__ import annotations

import logging
import threading

from slack_bolt import App
from slack_bolt.adapter.socket_mode.builtin import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

#: Answers of apps.connections.open that retrying cannot fix.
FATAL_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "not_allowed_token_type", "token_revoked", "account_inactive"}
)
MAX_RETRY_S = 60.0


class SocketModeRunner:
    """Connects a Bolt app in Socket Mode in the background; ``stop()`` disconnects it."""

    def __init__(self, app: App, app_token: str, client: WebClient, first_retry_s: float = 1.0):
        self.handler = SocketModeHandler(app, app_token, web_client=client)
        self.first_retry_s = first_retry_s
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._connect, name="slack-socket", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _connect(self) -> None:
        delay = self.first_retry_s
        while not self._stop.is_set():
            try:
                self.handler.connect()  # type: ignore[no-untyped-call]
            except SlackApiError as exc:
                error = str(exc.response.get("error"))
                if error in FATAL_ERRORS:
                    log.error(
                        "Slack Socket Mode refused SLACK_APP_TOKEN (%s): give an app-level token "
                        "(xapp-...) with the connections:write scope",
                        error,
                    )
                    return
                log.warning("Slack Socket Mode: no connection yet (%s); retrying", error)
            except Exception as exc:  # network errors: Slack may simply be out of reach for now
                log.warning("Slack Socket Mode: no connection yet (%s); retrying", exc)
            else:
                self.connected.set()
                log.info("Slack Socket Mode connected")
                return
            self._stop.wait(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.handler.close()  # type: ignore[no-untyped-call]
