"""The Slack bot: Bolt listeners that parse Slack input, call the core, and render the answer.

It runs inside the daemon and calls :class:`opsbot.core.app.Core` directly. Every listener
acknowledges first; with ``process_before_response`` off, Bolt answers Slack as soon as
``ack()`` is called and the rest of the listener (Web API calls, DMs) runs after the answer.
Only the view submission and a select's options request (block_suggestion) do core work before
their ack, because their answer is the ack (``response_action: errors``, the options); that
work is a few SQLite statements.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from opsbot.core import form
from opsbot.core.app import Core
from opsbot.core.errors import FieldError, NotFound, OpsbotError
from opsbot.core.flavors import FlavorStatus
from opsbot.core.identity import User
from opsbot.core.notify import Dispatcher
from opsbot.core.registry import NORMAL
from opsbot.core.services import Created, Service
from opsbot.slack import views
from opsbot.slack.drafts import Drafts
from opsbot.slack.http import serve
from opsbot.slack.notifier import SlackNotifier
from opsbot.slack.socket_mode import SocketModeRunner

log = logging.getLogger(__name__)

DEPLOY_USAGE = (
    "Type `/deploy` for the form, or `/deploy NAME MODEL VERSION` to deploy with the defaults "
    "(MODEL is OWNER/NAME for a subscribed model)."
)

#: Threads running listeners: enough for a burst of Slack requests to be acknowledged in time.
LISTENER_THREADS = 64


@dataclass(frozen=True)
class _Choices:
    catalog: dict[str, dict[str, list[str]]]
    pools: list[str]
    flavors: list[FlavorStatus]
    origins: dict[tuple[str, str, str], str]


#: Per-version numbers of a service (see opsbot.core.usage.version_numbers); the daemon has them.
Numbers = Callable[[Service], list[dict[str, Any]]]


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
        numbers: Numbers | None = None,
    ):
        self.core = core
        self.notifier = notifier
        self.on_change = on_change
        self.gateway_url = gateway_url
        self.clock = clock
        self.numbers = numbers
        #: The forms being filled in (a modal's private_metadata holds only a draft's key),
        #: kept in the store: a restart loses none.
        self.drafts = Drafts(core.store, clock=clock)

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

    def origins(self, actor: User) -> dict[tuple[str, str, str], str]:
        """The origin (custom or exeml) of each model version, keyed as the catalog names it."""
        return {
            (source, mv.name if source == "mine" else mv.ref, mv.version): mv.origin
            for source, mv in self.core.models(actor)
        }

    def _choices(self, actor: User, state: views.FormState) -> _Choices:
        """What the form's selects offer: the catalog, the pools, the pool's flavors and each
        version's origin."""
        pools = self.core.pools.names()
        if state.target is None and state.pool not in pools:
            state.pool = pools[0] if pools else "public"
        try:
            flavors = self.core.flavor_statuses(state.pool)
        except NotFound:
            flavors = []
        # A modified service's models are its owner's, offered to whoever may see the service
        # (its owner, an admin: core.service raises for anyone else); the versions it runs
        # stay choosable even where they are no longer Normal.
        owner = actor
        if state.target:
            owner = self.core.user(self.core.service(actor, state.target[1], state.target[0]).owner)
        catalog = self.catalog(owner)
        for g in state.groups:
            if g.model and g.version:
                known = catalog.setdefault(g.source, {}).setdefault(g.model, [])
                if g.version not in known:
                    known.append(g.version)
        return _Choices(catalog, pools, flavors, self.origins(owner))

    def modal(self, actor: User, state: views.FormState) -> views.View:
        """The deploy modal, or the modify modal when ``state.target`` names a service; the
        form is kept as a draft first (the view carries only its key)."""
        c = self._choices(actor, state)
        self.drafts.save(views.offer(state, c.catalog), actor.name)
        return views.deploy_modal(state, c.catalog, c.pools, c.flavors, c.origins)

    def version_view(
        self, actor: User, state: views.FormState, uid: int, parent: str
    ) -> views.View:
        """Version ``uid``'s own modal over the form ``parent`` (a view id)."""
        c = self._choices(actor, state)
        self.drafts.save(views.offer(state, c.catalog), actor.name)
        return views.version_modal(state, uid, c.catalog, c.flavors, c.origins, parent=parent)

    def render(self, actor: User, state: views.FormState, meta: Mapping[str, Any]) -> views.View:
        """The view an action came from, drawn again: the form, or a version's own modal."""
        uid = meta.get("g")
        if isinstance(uid, int) and any(g.uid == uid for g in state.groups):
            return self.version_view(actor, state, uid, str(meta.get("p") or ""))
        return self.modal(actor, state)

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
        actor = self.core.slack_user(str(body["user_id"]))
        if not words:
            ack()
            client.views_open(
                trigger_id=body["trigger_id"], view=self.modal(actor, views.FormState())
            )
            return
        name, model, version = words
        # No source: the core reads OWNER/NAME as a subscribed model (spec.model_source).
        data = {"name": name, "models": [{"model": model, "version": version}]}
        # Checked before anything is said (a few SQLite reads, well within Slack's 3 s), so the
        # answer is either the refusal or "Deploying", never both.
        try:
            checked = self.core.check(actor, data)
        except OpsbotError as exc:
            ack(text=f"*{exc.title}*: {exc.message}")
            return
        ack(text=f"Deploying {name}…")
        try:
            created = self.core.create_service(actor, checked)  # checked once, above
        except OpsbotError as exc:  # a race: the quota or the name was taken meanwhile
            respond(text=f"*{exc.title}*: {exc.message}", response_type="ephemeral")
            return
        self.on_change()
        self.dm_deploy(client, str(body["user_id"]), created, list(checked.warnings))

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
        actor = self.actor(body)
        try:
            state = views.state_from_view(
                view, self.drafts, actor.name, acting=action.get("block_id")
            )
        except views.DraftGone as exc:
            client.views_update(view_id=view["id"], view=views.expired_view(exc.message))
            return
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
                state,
                views.group_uid(action["block_id"]),
                views.chosen_model(state, chosen),
                self.catalog(actor),
            )
        elif action_id == views.A_VERSION:
            views.choose_version(state, views.group_uid(action["block_id"]), chosen)
        elif action_id == views.A_ADD:
            views.add_group(state, self.catalog(actor))
        elif action_id == views.A_REMOVE:
            views.remove_group(state, int(action["value"]))
        elif action_id == views.A_ADD_RULE:
            views.add_rule(state)
        elif action_id == views.A_REMOVE_RULE:
            views.remove_rule(state, int(action["value"]))
        elif action_id == views.A_EDIT:
            # The form's values so far are kept in the draft; the version opens over it.
            uid = int(action["value"])
            client.views_push(
                trigger_id=body["trigger_id"],
                view=self.version_view(actor, state, uid, str(view["id"])),
            )
            return
        client.views_update(
            view_id=view["id"],
            hash=view.get("hash"),
            view=self.render(actor, state, views.view_meta(view)),
        )

    def modal_options(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        """What an external_select of the form (one of more than 100 choices) offers as the
        user types: the choices the modal draws for that block, as the draft and the user's
        catalog say now, matched by the core form's search. A draft gone, or a service the user
        may not see, offers nothing (the select cannot show a message). ``client`` is there for
        :meth:`failed`, which tells the user of a failure by DM."""
        try:
            actor = self.actor(body)
            state = views.state_from_view(body.get("view") or {}, self.drafts, actor.name)
            c = self._choices(actor, state)
        except OpsbotError as exc:  # DraftGone, PermissionDenied, NotFound
            log.info("Slack options of %s: none (%s)", body.get("block_id"), exc.message)
            ack(options=[])
            return
        options = views.select_options(
            state, str(body.get("block_id")), c.catalog, c.pools, c.flavors, c.origins
        )
        shown = views.suggestions(options, str(body.get("value") or ""))
        # A model added to the catalog since the form was drawn can be picked too.
        models = {views.option_key(m): m for found in c.catalog.values() for m in found}
        values = (str(o["value"]) for o in shown)
        self.drafts.add_offered(
            state.key, actor.name, {v: models[v] for v in values if v in models}
        )
        ack(options=shown)

    def version_submit(
        self, ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient
    ) -> None:
        """Done in a version's own modal: its fields checked by the core (only its own errors
        are shown here; the form's are told when it is submitted), kept in the draft, and the
        form under it drawn again with the version's new row."""
        meta = views.view_meta(view)
        actor = self.actor(body)
        try:
            state = views.state_from_view(view, self.drafts, actor.name)
        except views.DraftGone as exc:
            ack(response_action="update", view=views.expired_view(exc.message))
            return
        uid = int(meta.get("g", -1))
        data, problems = views.spec_data(state)
        errors = views.error_block_ids(state, problems, own_modal=uid)
        if not errors:
            try:
                if state.target:
                    owner, name = state.target
                    self.core.update_plan(actor, name, data, owner)
                else:
                    self.core.validate(actor, data)
            except OpsbotError as exc:
                errors = views.error_block_ids(state, exc.errors, own_modal=uid)
        if errors:
            ack(response_action="errors", errors=errors)
            return
        self.drafts.save(state, actor.name)
        ack()  # closes this modal: the form is under it
        client.views_update(view_id=str(meta.get("p")), view=self.modal(actor, state))

    def _confirmed(
        self,
        ack: Ack,
        actor: User,
        state: views.FormState,
        warnings: list[FieldError],
        summary: Callable[[], list[str]],
    ) -> bool:
        """Whether the user has confirmed what ``summary`` says and the core's ``warnings``
        about the form; False when they are shown in the modal first (the ack is given): the
        user confirms or changes the form. Raises OpsbotError."""
        lines = summary()
        mark = views.warning_mark(warnings, lines)
        if mark and mark != state.warned:
            # What was confirmed is not asked about again; a changed form is.
            state.warned = mark
            state.warnings = [w.message for w in warnings]
            state.summary = lines
            ack(response_action="update", view=self.modal(actor, state))
            return False
        return True

    @staticmethod
    def _errors(ack: Ack, state: views.FormState, exc: OpsbotError) -> None:
        field = "auto_stop" if state.target else "name"
        errors = exc.errors or [FieldError(field, f"{exc.title}: {exc.message}")]
        ack(response_action="errors", errors=views.error_block_ids(state, errors))

    def _read_submitted(
        self, ack: Ack, actor: User, view: dict[str, Any]
    ) -> views.FormState | None:
        """The submitted form; None once the modal says it expired (its draft is gone) or is
        not the actor's."""
        try:
            return views.state_from_view(view, self.drafts, actor.name)
        except views.DraftGone as exc:
            ack(response_action="update", view=views.expired_view(exc.message))
            return None

    def submit_ack(
        self, ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient
    ) -> None:
        actor = self.actor(body)
        state = self._read_submitted(ack, actor, view)
        if state is None:
            return
        data, problems = views.spec_data(state)
        if problems:
            ack(response_action="errors", errors=views.error_block_ids(state, problems))
            return
        try:
            checked = self.core.check(actor, data)
            warnings = list(checked.warnings)
            summary = [f"{k}: {v}" for k, v in form.deploy_summary(checked.spec)]
            if not self._confirmed(ack, actor, state, warnings, lambda: summary):
                return
            created = self.core.create_service(actor, checked)  # checked once, above
        except OpsbotError as exc:
            self._errors(ack, state, exc)
            return
        ack()
        self.drafts.drop(state.key, actor.name)
        self.on_change()
        self.dm_deploy(client, str(body["user"]["id"]), created, warnings)

    def _pressed_on(
        self,
        body: dict[str, Any],
        respond: Respond,
        client: WebClient,
        find: Callable[[User, str, str | None], Service],
    ) -> tuple[views.Target, User, Service] | None:
        """The service a button names, found by ``find`` (core.service, core.modifiable) as
        the user who pressed it; None once a refusal has been told to them."""
        target = views.action_target(body["actions"][0])
        actor = self.actor(body)
        try:
            return target, actor, find(actor, target.name, target.owner)
        except OpsbotError as exc:
            self.tell(body, respond, client, f"*{exc.title}*: {exc.message}")
            return None

    # -- Modify: the deploy modal on a running service ---------------------------------------

    def modify_open(
        self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond
    ) -> None:
        ack()
        found = self._pressed_on(body, respond, client, self.core.modifiable)
        if found is None:
            return
        target, actor, service = found
        state = views.form_from_spec(
            service.spec,
            service.owner,
            origin=body.get("response_url"),
            everyone=target.everyone,
        )
        client.views_open(trigger_id=body["trigger_id"], view=self.modal(actor, state))

    def modify_submit(
        self, ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient
    ) -> None:
        actor = self.actor(body)
        state = self._read_submitted(ack, actor, view)
        if state is None:
            return
        assert state.target is not None
        owner, name = state.target
        data, problems = views.spec_data(state)
        if problems:
            ack(response_action="errors", errors=views.error_block_ids(state, problems))
            return
        try:

            def planned() -> list[str]:
                plan = self.core.update_plan(actor, name, data, owner)
                if not plan.changes:
                    return []
                return [*plan.changes, *(plan.restarts or ("no instance restarts",))]

            warnings = self.core.validate(self.core.user(owner), data).warnings
            if not self._confirmed(ack, actor, state, warnings, planned):
                return
            updated = self.core.update_service(actor, name, data, owner)
        except OpsbotError as exc:
            self._errors(ack, state, exc)
            return
        ack()
        self.drafts.drop(state.key, actor.name)
        self.on_change()
        slack_id = str(body["user"]["id"])
        text, blocks = views.modified_message(name, updated.changes, updated.snapshot)
        client.chat_postMessage(channel=slack_id, text=text, blocks=blocks)
        self.refresh_origin(client, slack_id, state.origin, state.everyone)

    def refresh_origin(
        self, client: WebClient, slack_id: str, origin: str | None, everyone: bool
    ) -> None:
        """Show the changed service where the user pressed Modify: the /services message
        (through its response URL) or App Home."""
        if origin is None:
            self.publish_home(client, slack_id)
            return
        actor = self.core.slack_user(slack_id)
        text, blocks = views.services_message(
            self._services(actor, everyone), self.clock(), everyone=everyone
        )
        try:
            WebhookClient(origin).send(text=text, blocks=blocks, replace_original=True)
        except Exception:  # the URL expires after 30 min; the DM already said what changed
            log.info("could not refresh the /services message", exc_info=True)

    # -- History and rollback ----------------------------------------------------------------

    def history_entries(self, actor: User, name: str, owner: str) -> list[views.HistoryEntry]:
        snapshots = self.core.history(actor, name, owner)
        entries = []
        for snap in snapshots:
            try:
                back = self.core.rollback_preview(actor, name, snap.n, owner)
            except OpsbotError:
                back = []
            entries.append(
                views.HistoryEntry(
                    n=snap.n,
                    created_at=snap.created_at,
                    actor=snap.actor,
                    changes=snap.changes,  # the core's diff to the snapshot before
                    rollback=back,
                )
            )
        return entries

    def history_open(
        self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond
    ) -> None:
        ack()
        found = self._pressed_on(body, respond, client, self.core.service)
        if found is None:
            return
        _, actor, service = found
        try:
            entries = self.history_entries(actor, service.name, service.owner)
        except OpsbotError as exc:  # deleted meanwhile
            self.tell(body, respond, client, f"*{exc.title}*: {exc.message}")
            return
        client.views_open(
            trigger_id=body["trigger_id"],
            view=views.history_view(service.owner, service.name, entries),
        )

    def rollback_action(
        self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond
    ) -> None:
        ack()
        owner, name, to = views.rollback_target(body["actions"][0])
        actor = self.actor(body)
        slack_id = str(body["user"]["id"])
        try:
            updated = self.core.rollback(actor, name, to, owner)
        except OpsbotError as exc:
            self.tell(body, respond, client, f"*{exc.title}*: {exc.message}")
            return
        self.on_change()
        text, blocks = views.modified_message(name, updated.changes, updated.snapshot, rolled_to=to)
        client.chat_postMessage(channel=slack_id, text=text, blocks=blocks)
        view = body.get("view") or {}
        if view.get("id"):
            client.views_update(
                view_id=view["id"],
                view=views.history_view(owner, name, self.history_entries(actor, name, owner)),
            )

    # -- Details: per-version numbers ----------------------------------------------------------

    def details_open(
        self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond
    ) -> None:
        ack()
        found = self._pressed_on(body, respond, client, self.core.service)
        if found is None:
            return
        *_, service = found
        # The numbers ask the gateway: open the modal first (the trigger lasts 3 s), then fill.
        opened = client.views_open(
            trigger_id=body["trigger_id"],
            view=views.loading_view(views.DETAILS_TITLE, f"Reading the numbers of {service.name}"),
        )
        rows = self.numbers(service) if self.numbers is not None else None
        svc = service.as_dict(gateway_url=self.gateway_url)
        client.views_update(
            view_id=str(opened["view"]["id"]),
            view=views.details_view(svc, self.clock(), rows),
        )

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
        target = views.action_target(action)
        owner, name, everyone = target.owner, target.name, target.everyone
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
            elif action_id == views.A_AUTO_STOP_ON:
                service = self.core.set_auto_stop(actor, name, "on", owner)
                done = f"Auto stop of {name} is on: {service.spec.auto_stop} from now."
            else:
                hours = target.hours
                if hours is None:
                    hours = 4 if action_id == views.A_EXTEND_4 else 1
                plan = self.core.extend_plan(actor, name, hours, owner)
                self.core.extend_auto_stop(actor, name, hours, owner)
                done = f"Extended {name}: {plan.text()}."
        except OpsbotError as exc:
            self.tell(body, respond, client, f"*{exc.title}*: {exc.message}")
            return
        self.on_change()
        container = body.get("container") or {}
        if container.get("type") == "view":
            self.publish_home(client, str(body["user"]["id"]))
            client.chat_postMessage(channel=str(body["user"]["id"]), text=done)
        elif action_id in (views.A_EXTEND_1, views.A_EXTEND_4):
            respond(text=done, replace_original=True)
        else:
            # The list shows the new state; a line of its own says what the button did.
            text, blocks = views.services_message(
                self._services(actor, everyone), self.clock(), everyone=everyone
            )
            respond(text=text, blocks=blocks, replace_original=True)
            self.tell(body, respond, client, done)

    # -- failures --------------------------------------------------------------------------

    def guarded(self, listener: Callable[..., None]) -> Callable[..., None]:
        """``listener`` as Bolt runs it: a failure is told to the user and logged, never raised.

        Bolt forgets an ``ack()`` already given when the listener raises after it (with
        ``process_before_response`` off); Slack then got Bolt's 404 "unhandled request" after
        3 s instead of the ack. Here the ack stands, and the user hears what failed.
        """

        @functools.wraps(listener)
        def run(**kwargs: Any) -> None:
            try:
                listener(**kwargs)
            except Exception as exc:
                self.failed(listener.__name__, kwargs, exc)

        return run

    def failed(self, name: str, kwargs: Mapping[str, Any], exc: Exception) -> None:
        if isinstance(exc, OpsbotError):
            text = f"*{exc.title}*: {exc.message}"
            log.warning("Slack %s refused: %s", name, exc.message)
        else:
            log.error("Slack %s failed", name, exc_info=exc)
            text = (
                f"*Something went wrong*: {type(exc).__name__}: {exc}. Nothing more was done; "
                "try again, and tell the opsbot admin if it keeps failing (the daemon log has "
                "the details)."
            )
        ack: Ack | None = kwargs.get("ack")
        body = kwargs.get("body") or {}
        suggestion = isinstance(body, Mapping) and body.get("type") == "block_suggestion"
        if ack is not None and ack.response is None:
            if not suggestion:
                ack(text=text)  # not acknowledged yet: the answer carries the failure
                return
            ack(options=[])  # a select shows options only: the user hears by DM
        client: WebClient | None = kwargs.get("client")
        respond: Respond | None = kwargs.get("respond")
        user = body.get("user") if isinstance(body, Mapping) else None
        slack_id = (user or {}).get("id") if isinstance(user, Mapping) else body.get("user_id")
        try:
            if respond is not None and body.get("response_url"):
                respond(text=text, response_type="ephemeral", replace_original=False)
            elif client is not None and slack_id:
                client.chat_postMessage(channel=str(slack_id), text=text)
        except Exception:  # Slack itself out of reach: the log keeps the failure
            log.error("could not tell %s that %s failed", slack_id, name, exc_info=True)

    # -- App Home ----------------------------------------------------------------------------

    def home_opened(self, event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") == "home":
            self.publish_home(client, str(event["user"]))

    def register(self, app: App) -> None:
        app.command("/deploy")(self.guarded(self.deploy_command))
        app.command("/services")(self.guarded(self.services_command))
        app.view(views.DEPLOY_CALLBACK)(self.guarded(self.submit_ack))
        app.view(views.MODIFY_CALLBACK)(self.guarded(self.modify_submit))
        app.view(views.VERSION_CALLBACK)(self.guarded(self.version_submit))
        for action_id in (
            views.A_AUTO_STOP,
            views.A_POOL,
            views.A_SOURCE,
            views.A_MODEL,
            views.A_ADD,
            views.A_REMOVE,
            views.A_ADD_RULE,
            views.A_REMOVE_RULE,
            views.A_VERSION,
            views.A_EDIT,
        ):
            app.action(action_id)(self.guarded(self.modal_action))
        # Selects of more than 100 choices are external_selects: Slack asks for their options
        # (block_suggestion) at the Options Load URL, the same /slack/events (or the socket).
        for action_id in (
            views.A_AUTO_STOP,
            views.A_POOL,
            views.A_SOURCE,
            views.A_MODEL,
            views.A_VERSION,
            views.A_VALUE,
        ):
            app.options(action_id)(self.guarded(self.modal_options))
        for action_id in (
            views.A_STOP,
            views.A_START,
            views.A_EXTEND,
            views.A_DELETE,
            views.A_EXTEND_1,
            views.A_EXTEND_4,
            views.A_AUTO_STOP_ON,
        ):
            app.action(action_id)(self.guarded(self.service_action))
        app.action(views.A_HOME_DEPLOY)(self.guarded(self.home_deploy))
        app.action(views.A_MODIFY)(self.guarded(self.modify_open))
        app.action(views.A_HISTORY)(self.guarded(self.history_open))
        app.action(views.A_ROLLBACK)(self.guarded(self.rollback_action))
        app.action(views.A_DETAILS)(self.guarded(self.details_open))
        app.event("app_home_opened")(self.guarded(self.home_opened))


def build_app(
    core: Core,
    *,
    client: WebClient,
    signing_secret: str | None,
    on_change: Callable[[], None],
    gateway_url: str,
    alert_channel: str | None = None,
    request_verification_enabled: bool = True,
    numbers: Numbers | None = None,
) -> tuple[App, SlackBot]:
    """A Bolt app with every listener, and the bot behind it (its notifier included)."""
    app = App(
        client=client,
        signing_secret=signing_secret,
        request_verification_enabled=request_verification_enabled,
        process_before_response=False,
        # No auth.test while the daemon starts: Slack being out of reach must not stop it. The
        # token is checked (once, cached) with the first request instead.
        token_verification_enabled=False,
        # Bolt runs each listener on this pool and waits up to 3 s for its ack(); its default of
        # 5 threads left a burst of requests queued past that and answered 404.
        listener_executor=ThreadPoolExecutor(
            max_workers=LISTENER_THREADS, thread_name_prefix="slack-listener"
        ),
    )
    notifier = SlackNotifier(core, client, gateway_url=gateway_url, alert_channel=alert_channel)
    bot = SlackBot(core, notifier, on_change=on_change, gateway_url=gateway_url, numbers=numbers)
    bot.register(app)
    return app, bot


def start_slack(
    core: Core,
    *,
    on_change: Callable[[], None],
    gateway_url: str,
    dispatcher: Dispatcher,
    numbers: Numbers | None = None,
) -> Callable[[], None] | None:
    """Start the bot as the environment says; return how to stop it, or None without Slack.

    ``SLACK_APP_TOKEN`` selects Socket Mode; otherwise HTTP mode listens on
    ``OPSBOT_SLACK_PORT`` and checks ``SLACK_SIGNING_SECRET``. ``numbers`` gives a service's
    per-version numbers (the daemon's gateway and runtime figures) for the Details modal.
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
        numbers=numbers,
    )
    dispatcher.subscribe(bot.notifier)
    bot.notifier.resume()
    if app_token:
        runner = SocketModeRunner(app, app_token, client)
        runner.start()
        close: Callable[[], None] = runner.stop
    else:
        assert secret is not None and port is not None
        try:
            server = serve(app, secret, int(port))
        except (OSError, ValueError) as exc:
            log.error(
                "Slack is off: cannot listen on OPSBOT_SLACK_PORT=%s (%s); free the port or "
                "choose another",
                port,
                exc,
            )
            dispatcher.unsubscribe(bot.notifier)
            bot.notifier.close()
            return None
        close = server.stop

    def stop() -> None:
        dispatcher.unsubscribe(bot.notifier)
        close()
        bot.notifier.close()

    return stop
