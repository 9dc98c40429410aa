"""Slack side of events: deploy DMs updated in place, alerts when a service stops, reminders.

The dispatcher calls :meth:`SlackNotifier.notify` from its own thread; Web API calls (which
may wait on rate limits) run on one worker thread of ours so the dispatcher never waits on
Slack and messages keep the order of the events.

Which DM follows which deploy (channel and ts) is kept in the store's ``slack_messages`` table,
so a restarted daemon still updates the "Deploying ..." DM in place. The API key is kept only
in memory: the store holds its hash alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from opsbot.core.app import Core
from opsbot.core.errors import NotFound
from opsbot.core.events import Event, Kind
from opsbot.core.identity import SLACK_PREFIX
from opsbot.core.services import Service, service_by_id
from opsbot.core.status import Status
from opsbot.slack import views

log = logging.getLogger(__name__)

#: Events after which a service no longer serves: they reach the alert channel and the owner.
ALERT_KINDS = frozenset({Kind.STOPPED, Kind.FAILED, Kind.ABNORMAL})
#: Events saying a stop could not be carried out: their message is the whole story.
STOP_FAILURE_KINDS = frozenset({Kind.AUTO_STOP_FAILED, Kind.STOP_FAILED})
#: Events that end a deploy: the deploy DM is updated to say how it ended (or forgotten).
DEPLOY_END_KINDS = frozenset(
    {Kind.RUNNING, Kind.CONCERNING, Kind.FAILED, Kind.ABNORMAL, Kind.STOPPED, Kind.DELETING}
)
#: What to do when Slack refuses a post to a channel, by its error code.
CHANNEL_FIXES = {
    "not_in_channel": "invite the bot to the channel (/invite @opsbot)",
    "channel_not_found": "set OPSBOT_SLACK_ALERT_CHANNEL to a channel ID the bot can see",
    "is_archived": "unarchive the channel or choose another alert channel",
    "ratelimited": "Slack kept rate limiting after the retries; the message is lost",
}
#: The kind of row in ``slack_messages`` for the DM that follows a deploy.
DEPLOY_DM = "deploy"


def slack_id_of(core: Core, owner: str) -> str | None:
    """The Slack user a local owner is linked to (or the ID in ``slack:<ID>``)."""
    if owner.startswith(SLACK_PREFIX):
        return owner[len(SLACK_PREFIX) :]
    row = core.store.db.execute("SELECT slack_id FROM users WHERE name = ?", (owner,)).fetchone()
    return str(row[0]) if row and row[0] else None


class SlackNotifier:
    """Turns opsbot events into Slack messages."""

    def __init__(
        self,
        core: Core,
        client: WebClient,
        *,
        gateway_url: str,
        alert_channel: str | None = None,
    ):
        self.core = core
        self.client = client
        self.gateway_url = gateway_url
        self.alert_channel = alert_channel or None
        self._keys: dict[int, str] = {}
        self._why_stopping: dict[int, str] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slack-notify")

    # -- deploy DMs ------------------------------------------------------------------------

    def track_deploy(self, service: Service, channel: str, ts: str, api_key: str | None) -> None:
        """Follow a deploy DM; if the service already finished deploying, update it soon."""
        with self.core.store.write() as db:
            db.execute(
                """INSERT OR REPLACE INTO slack_messages (service_id, kind, channel, ts, created_at)
                   VALUES (?, ?, ?, ?, ?)""",
                (service.id, DEPLOY_DM, channel, ts, time.time()),
            )
        if api_key:
            with self._lock:
                self._keys[service.id] = api_key
        current = service_by_id(self.core.store.db, service.id)
        if current is not None and current.status != Status.DEPLOYING:
            self.submit(self._finish_deploy, current.id)

    def resume(self) -> None:
        """Update the deploy DMs whose service finished deploying while no one listened.

        The daemon calls it once at start: events before the start are not dispatched again.
        """
        rows = self.core.store.db.execute(
            "SELECT service_id FROM slack_messages WHERE kind = ?", (DEPLOY_DM,)
        ).fetchall()
        for (service_id,) in rows:
            self.submit(self._finish_deploy, int(service_id))

    def _finish_deploy(self, service_id: int) -> None:
        """Turn the deploy DM into Running or Failed (runs on the worker thread only)."""
        db = self.core.store.db
        service = service_by_id(db, service_id)
        if service is None:  # deleted: its row went with it (ON DELETE CASCADE)
            with self._lock:
                self._keys.pop(service_id, None)
            return
        if service.status == Status.DEPLOYING:
            return
        row = db.execute(
            "SELECT channel, ts FROM slack_messages WHERE service_id = ? AND kind = ?",
            (service_id, DEPLOY_DM),
        ).fetchone()
        if row is None:
            return
        with self._lock:
            api_key = self._keys.get(service_id)
        svc = service.as_dict(gateway_url=self.gateway_url)
        if service.status in (Status.RUNNING, Status.CONCERNING):
            text, blocks = views.running_message(svc, api_key)
        elif service.status in (Status.FAILED, Status.ABNORMAL):
            text, blocks = views.failed_message(svc)
        else:
            text = f"{service.name} is {service.status.label}: {service.reason or 'no reason'}"
            blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        try:
            self.client.chat_update(channel=str(row[0]), ts=str(row[1]), text=text, blocks=blocks)
        except SlackApiError:
            self._forget_deploy(service_id)  # Slack refused (message gone...): do not retry
            raise
        self._forget_deploy(service_id)

    def _forget_deploy(self, service_id: int) -> None:
        with self._lock:
            self._keys.pop(service_id, None)
        with self.core.store.write() as db:
            db.execute(
                "DELETE FROM slack_messages WHERE service_id = ? AND kind = ?",
                (service_id, DEPLOY_DM),
            )

    # -- events ----------------------------------------------------------------------------

    def notify(self, event: Event) -> None:
        if event.service_id is None:
            return
        self.submit(self._handle, event)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future = self._pool.submit(fn, *args)
        future.add_done_callback(_log_failure)
        return future

    def _handle(self, event: Event) -> None:
        assert event.service_id is not None
        kind = event.kind
        if kind in (Kind.STOPPING, Kind.EXPIRED):
            # Remember who or what asked for the stop: the Stopped event comes from the
            # controller later and only says that the instances are gone.
            with self._lock:
                self._why_stopping[event.service_id] = f"{event.message} (by {event.actor})"
            return
        if kind in DEPLOY_END_KINDS:
            self._finish_deploy(event.service_id)
        if kind in ALERT_KINDS:
            self._alert(event)
        elif kind in STOP_FAILURE_KINDS:
            self._alert(event, why=event.message)
        elif kind == Kind.REMINDER:
            self._remind(event)

    def _alert(self, event: Event, why: str | None = None) -> None:
        assert event.service_id is not None
        if why is None:
            with self._lock:
                why = self._why_stopping.pop(event.service_id, None)
        if why is None:
            service = service_by_id(self.core.store.db, event.service_id)
            reason = service.reason if service is not None else ""
            why = reason or event.message
            if event.actor and event.actor not in why:
                why = f"{why} (by {event.actor})"
        owner = event.owner or ""
        slack_id = slack_id_of(self.core, owner) if owner else None
        mention = f"<@{slack_id}>" if slack_id else None
        text, blocks = views.alert_message(
            event.service or "?", owner, event.kind, why, owner_mention=mention
        )
        # The channel and the owner's DM are separate deliveries: one refused (the bot not in
        # the channel) must not cost the other.
        for channel in (self.alert_channel, slack_id):
            if channel:
                self._post(channel, text, blocks)

    def _post(self, channel: str, text: str, blocks: list[views.Block]) -> None:
        """Post to one channel; a refusal is logged with its fix (429s were already retried
        by the client's RateLimitErrorRetryHandler)."""
        try:
            self.client.chat_postMessage(channel=channel, text=text, blocks=blocks)
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            fix = CHANNEL_FIXES.get(error, "check the channel and the bot's scopes")
            log.error("Slack refused a message to %s (%s): %s", channel, error, fix)

    def _remind(self, event: Event) -> None:
        owner = event.owner or ""
        slack_id = slack_id_of(self.core, owner) if owner else None
        if not slack_id:
            return
        text, blocks = views.reminder_message(event.service or "?", owner, event.message)
        self.client.chat_postMessage(channel=slack_id, text=text, blocks=blocks)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until every message queued so far is sent (tests, shutdown)."""
        self._pool.submit(lambda: None).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if isinstance(exc, SlackApiError):
        log.error("Slack refused a notification: %s", exc.response.get("error"))
    elif isinstance(exc, NotFound):
        log.info("a notified service is gone: %s", exc)
    elif exc is not None:
        log.error("sending a Slack notification failed", exc_info=exc)
