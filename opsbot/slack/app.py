"""The Slack bot: Bolt listeners that parse Slack input, call the core, and render the answer.

It runs inside the daemon and calls :class:`opsbot.core.app.Core` directly. Every listener
acknowledges first; with ``process_before_response`` off, Bolt answers Slack as soon as
``ack()`` is called and the rest of the listener (Web API calls, DMs) runs after the answer.
Only the view submission does core work before its ack, because its errors must go back in the
ack (``response_action: errors``); that work is a few SQLite statements.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from opsbot.core.app import Core
from opsbot.core.errors import FieldError, NotFound, OpsbotError
from opsbot.core.identity import User
from opsbot.core.notify import Dispatcher
from opsbot.core.registry import NORMAL
from opsbot.core.services import Created
from opsbot.slack import views
from opsbot.slack.http import serve
from opsbot.slack.notifier import SlackNotifier

log = logging.getLogger(__name__)

DEPLOY_USAGE = (
    "Type `/deploy` for the form, or `/deploy NAME MODEL VERSION` to deploy with the defaults "
    "(MODEL is OWNER/NAME for a subscribed model)."
)


def make_client(token: str | None, base_url: str | None = None) -> WebClient:
    """A Web API client that retries rate-limited calls after Slack's Retry-After."""
    client = WebClient(token=token, base_url=base_url or WebClient.BASE_URL)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=3))
    return client


class SlackBot:
    """The listeners, bound to one core."""

    def __init__(
        self,
        core: Core,
        notifier: SlackNotifier,
        *,
        on_change: Callable[[], None],
        gateway_url: str,
        clock: Callable[[], float] = time.time,
    ):
        self.core = core
        self.notifier = notifier
        self.on_change = on_change
        self.gateway_url = gateway_url
        self.clock = clock

    # -- helpers ---------------------------------------------------------------------------

    def actor(self, body: Mapping[str, Any]) -> User:
        user = body.get("user") or {}
        slack_id = user.get("id") if isinstance(user, Mapping) else None
        return self.core.slack_user(str(slack_id or body.get("user_id")))

    def catalog(self, actor: User) -> dict[str, dict[str, list[str]]]:
        """Models in the Normal state by source, as the spec names them."""
        out: dict[str, dict[str, list[str]]] = {"mine": {}, "subscribed": {}}
        for source, mv in self.core.models(actor):
            if mv.status != NORMAL:
                continue
            name = mv.name if source == "mine" else mv.ref
            out.setdefault(source, {}).setdefault(name, []).append(mv.version)
        return out

    def modal(self, actor: User, state: views.FormState) -> views.View:
        pools = self.core.pools.names()
        if state.pool not in pools:
            state.pool = pools[0] if pools else "public"
        try:
            flavors = self.core.flavor_statuses(state.pool)
        except NotFound:
            flavors = []
        return views.deploy_modal(state, self.catalog(actor), pools, flavors)

    def _services(self, actor: User, everyone: bool) -> list[dict[str, Any]]:
        return [
            s.as_dict(gateway_url=self.gateway_url)
            for s in self.core.services(actor, everyone=everyone)
        ]

    def publish_home(self, client: WebClient, slack_id: str) -> None:
        actor = self.core.slack_user(slack_id)
        used, quota = self.core.quota_used(actor)
        view = views.home_view(self._services(actor, False), used, quota, self.clock())
        client.views_publish(user_id=slack_id, view=view)

    def dm_deploy(
        self, client: WebClient, slack_id: str, created: Created, warnings: list[FieldError]
    ) -> None:
        text, blocks = views.deploying_message(created.service.name, warnings)
        posted = client.chat_postMessage(channel=slack_id, text=text, blocks=blocks)
        self.notifier.track_deploy(
            created.service, str(posted["channel"]), str(posted["ts"]), created.api_key
        )

    @staticmethod
    def tell(body: Mapping[str, Any], respond: Respond, client: WebClient, text: str) -> None:
        """A reply only the user sees: ephemeral where Slack gave a response URL, else a DM."""
        if body.get("response_url"):
            respond(text=text, response_type="ephemeral", replace_original=False)
        else:
            client.chat_postMessage(channel=str(body["user"]["id"]), text=text)

    # -- /deploy ---------------------------------------------------------------------------

    def deploy_command(
        self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond
    ) -> None:
        words = str(body.get("text") or "").split()
        if words and len(words) != 3:
            ack(text=DEPLOY_USAGE)
            return
        if words:
            ack(text=f"Deploying {words[0]}…")
        else:
            ack()
        actor = self.core.slack_user(str(body["user_id"]))
        if not words:
            client.views_open(
                trigger_id=body["trigger_id"], view=self.modal(actor, views.FormState())
            )
            return
        name, model, version = words
        source = "subscribed" if "/" in model else "mine"
        data = {"name": name, "models": [{"source": source, "model": model, "version": version}]}
        try:
            warnings = self.core.validate(actor, data).warnings
            created = self.core.create_service(actor, data)
        except OpsbotError as exc:
            respond(text=f"*{exc.title}*: {exc.message}", response_type="ephemeral")
            return
        self.on_change()
        self.dm_deploy(client, str(body["user_id"]), created, warnings)

    def home_deploy(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        client.views_open(
            trigger_id=body["trigger_id"], view=self.modal(self.actor(body), views.FormState())
        )

    # -- the modal: dependent selects, groups ------------------------------------------------

    def modal_action(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        view = body["view"]
        action = body["actions"][0]
        state = views.state_from_view(view)
        actor = self.actor(body)
        chosen = views.selected_value(action)
        action_id = action["action_id"]
        if action_id == views.A_AUTO_STOP and chosen:
            state.auto_stop = chosen
        elif action_id == views.A_POOL and chosen:
            views.choose_pool(state, chosen)
        elif action_id == views.A_SOURCE and chosen:
            views.choose_source(state, views.group_uid(action["block_id"]), chosen)
        elif action_id == views.A_MODEL:
            views.choose_model(
                state, views.group_uid(action["block_id"]), chosen, self.catalog(actor)
            )
        elif action_id == views.A_ADD:
            views.add_group(state)
        elif action_id == views.A_REMOVE:
            views.remove_group(state, int(action["value"]))
        client.views_update(
            view_id=view["id"], hash=view.get("hash"), view=self.modal(actor, state)
        )

    def submit_ack(
        self, ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient
    ) -> None:
        state = views.state_from_view(view)
        data, problems = views.spec_data(state)
        actor = self.actor(body)
        if problems:
            ack(response_action="errors", errors=views.error_block_ids(state, problems))
            return
        try:
            warnings = self.core.validate(actor, data).warnings
            created = self.core.create_service(actor, data)
        except OpsbotError as exc:
            errors = exc.errors or [FieldError("name", f"{exc.title}: {exc.message}")]
            ack(response_action="errors", errors=views.error_block_ids(state, errors))
            return
        ack()
        self.on_change()
        self.dm_deploy(client, str(body["user"]["id"]), created, warnings)

    # -- /services and its buttons -------------------------------------------------------------

    def services_command(self, ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        everyone = str(body.get("text") or "").strip().lower() == "all"
        actor = self.core.slack_user(str(body["user_id"]))
        text, blocks = views.services_message(
            self._services(actor, everyone), self.clock(), everyone=everyone
        )
        respond(text=text, blocks=blocks, response_type="ephemeral")

    def service_action(
        self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond
    ) -> None:
        ack()
        action = body["actions"][0]
        target = json.loads(action["value"])
        owner, name, everyone = str(target["o"]), str(target["n"]), bool(target.get("a"))
        actor = self.actor(body)
        action_id = action["action_id"]
        try:
            if action_id == views.A_STOP:
                self.core.stop_service(actor, name, owner)
                done = f"Stopping {name}."
            elif action_id == views.A_START:
                self.core.start_service(actor, name, owner)
                done = f"Starting {name}."
            elif action_id == views.A_DELETE:
                self.core.delete_service(actor, name, owner)
                done = f"Deleting {name}."
            else:
                hours = 4 if action_id == views.A_EXTEND_4 else 1
                service = self.core.extend_auto_stop(actor, name, hours, owner)
                left = (service.due_time or self.clock()) - self.clock()
                done = f"Extended {name} by {hours} h: it stops in {views.remaining(left)}."
        except OpsbotError as exc:
            self.tell(body, respond, client, f"*{exc.title}*: {exc.message}")
            return
        self.on_change()
        container = body.get("container") or {}
        if container.get("type") == "view":
            self.publish_home(client, str(body["user"]["id"]))
        elif action_id in (views.A_EXTEND_1, views.A_EXTEND_4):
            respond(text=done, replace_original=True)
        else:
            text, blocks = views.services_message(
                self._services(actor, everyone), self.clock(), everyone=everyone
            )
            respond(text=text, blocks=blocks, replace_original=True)
        if container.get("type") == "view":
            client.chat_postMessage(channel=str(body["user"]["id"]), text=done)

    # -- App Home ----------------------------------------------------------------------------

    def home_opened(self, event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") == "home":
            self.publish_home(client, str(event["user"]))

    def register(self, app: App) -> None:
        app.command("/deploy")(self.deploy_command)
        app.command("/services")(self.services_command)
        app.view(views.DEPLOY_CALLBACK)(self.submit_ack)
        for action_id in (
            views.A_AUTO_STOP,
            views.A_POOL,
            views.A_SOURCE,
            views.A_MODEL,
            views.A_ADD,
            views.A_REMOVE,
        ):
            app.action(action_id)(self.modal_action)
        for action_id in (
            views.A_STOP,
            views.A_START,
            views.A_EXTEND,
            views.A_DELETE,
            views.A_EXTEND_1,
            views.A_EXTEND_4,
        ):
            app.action(action_id)(self.service_action)
        app.action(views.A_HOME_DEPLOY)(self.home_deploy)
        # Version picks need no answer, but Slack sends them: acknowledge so none time out.
        app.action(views.A_VERSION)(lambda ack: ack())
        app.event("app_home_opened")(self.home_opened)


def build_app(
    core: Core,
    *,
    client: WebClient,
    signing_secret: str | None,
    on_change: Callable[[], None],
    gateway_url: str,
    alert_channel: str | None = None,
    request_verification_enabled: bool = True,
) -> tuple[App, SlackBot]:
    """A Bolt app with every listener, and the bot behind it (its notifier included)."""
    app = App(
        client=client,
        signing_secret=signing_secret,
        request_verification_enabled=request_verification_enabled,
        process_before_response=False,
    )
    notifier = SlackNotifier(core, client, gateway_url=gateway_url, alert_channel=alert_channel)
    bot = SlackBot(core, notifier, on_change=on_change, gateway_url=gateway_url)
    bot.register(app)
    return app, bot


def start_slack(
    core: Core,
    *,
    on_change: Callable[[], None],
    gateway_url: str,
    dispatcher: Dispatcher,
) -> Callable[[], None] | None:
    """Start the bot as the environment says; return how to stop it, or None without Slack.

    ``SLACK_APP_TOKEN`` selects Socket Mode; otherwise HTTP mode listens on
    ``OPSBOT_SLACK_PORT`` and checks ``SLACK_SIGNING_SECRET``.
    """
    env = os.environ
    token = env.get("SLACK_BOT_TOKEN")
    if not token:
        return None
    app_token = env.get("SLACK_APP_TOKEN")
    secret = env.get("SLACK_SIGNING_SECRET")
    port = env.get("OPSBOT_SLACK_PORT")
    if not app_token and not (secret and port):
        log.error(
            "Slack is off: SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
            "SLACK_SIGNING_SECRET with OPSBOT_SLACK_PORT (HTTP mode); set one of them"
        )
        return None
    client = make_client(token, env.get("OPSBOT_SLACK_API_URL"))
    app, bot = build_app(
        core,
        client=client,
        signing_secret=secret,
        on_change=on_change,
        gateway_url=gateway_url,
        alert_channel=env.get("OPSBOT_SLACK_ALERT_CHANNEL"),
        request_verification_enabled=not app_token,
    )
    dispatcher.subscribe(bot.notifier)
    if app_token:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        handler = SocketModeHandler(app, app_token, web_client=client)
        handler.connect()  # type: ignore[no-untyped-call]
        close: Callable[[], None] = handler.close
    else:
        server = serve(app, int(str(port)))
        close = server.stop

    def stop() -> None:
        dispatcher.unsubscribe(bot.notifier)
        close()
        bot.notifier.close()

    return stop
