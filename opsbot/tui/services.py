"""The Services screen: the live table, its filter and the keys that act on a service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from opsbot.client.wire import EventInfo, ServiceInfo, WhoAmI
from opsbot.core.errors import OpsbotError
from opsbot.tui.connection import ConnectionBanner, needs_daemon
from opsbot.tui.modals import ConfirmModal, ExtendModal
from opsbot.tui.table import ServicesTable
from opsbot.tui.view import (
    COLUMN_LABELS,
    Row,
    parse_stats,
    refusal,
    remaining_s,
    row_key,
    table_row,
)

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

TICK_S = 1.0
STATS_S = 2.0
MOVING = frozenset({"deploying", "stopping", "deleting"})


class ServicesScreen(Screen[None]):
    # Help and Quit first: a narrow terminal cuts the footer from the right.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("d", "deploy", "Deploy"),
        Binding("u", "modify", "Modify"),
        Binding("enter", "details", "Details", show=False),
        Binding("s", "stop_service", "Stop"),
        Binding("r", "start_service", "Start"),
        Binding("x", "delete_service", "Delete"),
        Binding("slash", "filter", "Filter"),
        # Not in the footer (80 columns hold the ones above): ? and the palette list them all.
        Binding("e", "extend", "Extend", show=False),
        Binding("p", "predict", "Predict", show=False),
        Binding("l", "logs", "Logs", show=False),
        Binding("m", "models", "Models", show=False),
        Binding("a", "toggle_all", "Mine/All", show=False),
        Binding("o", "next_sort", "Sort by the next column", show=False),
        Binding("O", "reverse_sort", "Reverse the sort", show=False),
        Binding("c", "copy_url", "Copy the URL", show=False),
        Binding("colon", "app.command_palette", "Command", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.everyone = False
        self.loaded = False
        #: How many services a user may hold (whoami); the table counts the ones held.
        self.quota = 0

    @property
    def opsbot(self) -> OpsbotApp:
        return cast("OpsbotApp", self.app)

    @property
    def table(self) -> ServicesTable:
        return self.query_one(ServicesTable)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield ConnectionBanner()
        yield Input(placeholder="filter: name, owner, status or model", id="filter")
        yield Static("", id="empty")
        yield ServicesTable(id="services")
        yield Static("", id="status-line")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.table.now = self.opsbot.now()
        self.table.focus()
        app = self.opsbot
        self.watch(app, "daemon_down", self._daemon_down, init=False)
        app.call_api(app.client.whoami, self._got_whoami)
        if app.live:
            self.set_interval(TICK_S, self._tick)
            self.set_interval(STATS_S, self.load_stats)
            self.set_interval(STATS_S, self.poll_moving)
            app.start_event_stream(self.on_daemon_event)

    # -- loading -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys that need the daemon are shown greyed out while it is away."""
        if needs_daemon(action) and self.opsbot.daemon_down:
            return None
        return True

    def reconnected(self) -> None:
        """The daemon is back: who am I, and every service afresh."""
        app = self.opsbot
        app.call_api(app.client.whoami, self._got_whoami)

    def _got_whoami(self, me: WhoAmI) -> None:
        app = self.opsbot
        first = not app.user
        app.user = me.user
        app.admin = me.admin
        app.gateway_url = me.gateway_url
        self.quota = me.quota
        if first:
            self.everyone = app.admin
        self.reload()
        self.load_stats()

    def reload(self) -> None:
        app = self.opsbot
        everyone = self.everyone
        app.call_api(lambda: app.client.services(everyone), self._got_services)

    def _got_services(self, services: list[ServiceInfo]) -> None:
        now = self.opsbot.now()
        self.table.now = now
        self.table.replace_all([table_row(s, now) for s in services])
        self.loaded = True
        self._describe()

    def _describe(self) -> None:
        app = self.opsbot
        scope = "all services" if self.everyone else "my services"
        role = " (admin)" if app.admin else ""
        shown = self.table.row_count
        # Every service of the user is in the table's set (mine or everyone's), so it counts
        # the ones held as they come and go.
        used = sum(1 for s in self.table.services.values() if s.owner == app.user)
        held = f" · {used} of {self.quota} services held" if self.quota else ""
        self.sub_title = f"{app.user}{role} · {scope} · {shown} shown{held}"
        table = self.table
        filt = table.filter_text
        sort = table.sort_column
        way = "descending" if table.sort_reverse else "ascending"
        parts = [
            f"filter: {filt} (esc clears)" if filt else "",
            f"sorted by {COLUMN_LABELS[sort]}, {way} (o: next column, O: reverse)" if sort else "",
        ]
        self.query_one("#status-line", Static).update(
            "  ".join(p for p in parts if p) or "? help  : command  / filter  o sort"
        )
        empty = self.query_one("#empty", Static)
        empty.display = self.loaded and shown == 0
        if filt:
            empty.update(f"No service matches “{filt}”. Press esc to clear the filter.")
        elif not table.services:
            empty.update(
                "No services yet. Press d to deploy one: the form offers the example model "
                "iris. Press a to see everyone's (admins), ? for every key."
            )
        else:
            empty.update("Nothing to show here. Press a for everyone's services.")

    def load_stats(self) -> None:
        app = self.opsbot
        fetch = app.stats_fetcher
        url = app.gateway_url
        if fetch is None or not url:
            return

        def get() -> dict[str, Any]:
            try:
                return fetch(url)
            except OSError as exc:
                raise OpsbotError(
                    f"the gateway at {url} did not answer /stats ({exc})", title="No gateway stats"
                ) from None

        app.call_api(get, self._got_stats, self._stats_failed, group="stats")

    def poll_moving(self) -> None:
        """Refetch the services on their way somewhere (Deploying, Stopping, Deleting): their
        progress and ready instances change between the events that name them."""
        for service in list(self.table.services.values()):
            if service.status.value in MOVING:
                self.refetch(service.name, service.owner)

    def _got_stats(self, document: dict[str, Any]) -> None:
        self.table.set_stats(parse_stats(document))

    def _stats_failed(self, exc: OpsbotError) -> None:
        self.query_one("#status-line", Static).update(f"{exc.title}: {exc.message}")

    def _tick(self) -> None:
        """Once a second: the countdowns on screen. Not while the daemon is away: a countdown
        it no longer vouches for would be a guess."""
        if self.opsbot.daemon_down:
            return
        self.table.now = self.opsbot.now()
        self.table.tick()

    # -- live updates ----------------------------------------------------------------------------

    def on_daemon_event(self, event: EventInfo) -> None:
        """Apply one event from the stream: refetch that service, or drop it when deleted."""
        name, owner = event.service, event.owner
        if not name or not owner:
            return
        app = self.opsbot
        if not self.everyone and owner != app.user:
            return
        if event.kind == "deleted":
            self.table.remove_service(f"{owner}/{name}")
            self._describe()
            return
        self.refetch(str(name), str(owner))

    def refetch(self, name: str, owner: str) -> None:
        """Fetch one service again and update its row, or drop the row when it is gone."""
        app = self.opsbot

        def gone(exc: OpsbotError) -> None:
            if getattr(exc, "status", None) == 404 or exc.title == "Not found":
                self.table.remove_service(f"{owner}/{name}")
                self._describe()
            else:
                app.show_error(exc)

        app.call_api(lambda: app.client.service(name, owner), self.apply_service, gone)

    def apply_service(self, service: ServiceInfo) -> None:
        self.table.upsert(table_row(service, self.opsbot.now()))
        self._describe()

    # -- keys ----------------------------------------------------------------------------------

    def _target(self, verb: str) -> Row | None:
        """The selected service when the key applies to it; otherwise say why and None."""
        app = self.opsbot
        service = self.table.selected
        reason = refusal(verb, service, app.user, app.admin)
        if reason:
            self.notify(reason, title=f"Cannot {verb}", severity="warning")
            return None
        return service

    def _act(self, service: Row, verb: str) -> None:
        app = self.opsbot
        name, owner = service.name, service.owner

        def done(result: ServiceInfo) -> None:
            self.notify(f"{name}: {verb} requested", title=verb.capitalize())
            self.apply_service(result)

        act = app.client.stop if verb == "stop" else app.client.start
        app.call_api(lambda: act(name, owner), done)

    def action_stop_service(self) -> None:
        service = self._target("stop")
        if not service:
            return
        name, owner = service.name, service.owner

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(service, "stop")

        question = f"Stop {owner}/{name}? Its instances stop; r starts it again."
        self.app.push_screen(ConfirmModal(question, "Stop"), answered)

    def action_start_service(self) -> None:
        service = self._target("start")
        if service:
            self._act(service, "start")

    def action_delete_service(self) -> None:
        service = self._target("delete")
        if not service:
            return
        name, owner = service.name, service.owner
        app = self.opsbot

        def answered(yes: bool | None) -> None:
            if not yes:
                return

            def done(result: ServiceInfo) -> None:
                self.notify(f"{name}: deleting", title="Delete")
                self.apply_service(result)

            app.call_api(lambda: app.client.delete(name, owner), done)

        question = f"Delete {owner}/{name}? Its instances stop and its URL stops answering."
        self.app.push_screen(ConfirmModal(question), answered)

    def action_extend(self) -> None:
        service = self._target("extend")
        if not service:
            return
        name, owner = service.name, service.owner
        app = self.opsbot

        def chosen(choice: int | str | None) -> None:
            """Hours to add, or the auto stop to set ("off", "on")."""
            if choice is None:
                return

            def done(result: ServiceInfo) -> None:
                self.notify(f"{name}: auto stop updated", title="Auto stop")
                self.apply_service(result)

            def send() -> ServiceInfo:
                if isinstance(choice, int):
                    return app.client.extend(name, choice, owner)
                return app.client.set_auto_stop(name, choice, owner)

            app.call_api(send, done)

        now = self.opsbot.now()
        left = remaining_s(service, now)
        modal = ExtendModal(name, service.auto_stop, left, now)
        self.app.push_screen(modal, chosen)

    def action_details(self, tab: str = "overview") -> None:
        from opsbot.tui.details import DetailsScreen

        service = self.table.selected
        if service is None:
            self.notify("no service is selected", title="Details", severity="warning")
            return
        self.app.push_screen(DetailsScreen(service, tab=tab))

    def action_predict(self) -> None:
        if self._target("predict"):
            self.action_details("predict")

    def action_logs(self) -> None:
        if self.table.selected is None:
            self.notify("no service is selected", title="Logs", severity="warning")
            return
        self.action_details("logs")

    def action_deploy(self) -> None:
        from opsbot.tui.deploy import DeployScreen

        self.app.push_screen(DeployScreen(), self._deployed)

    def action_modify(self) -> None:
        from opsbot.tui.deploy import open_modify

        service = self._target("modify")
        if service:
            open_modify(self.opsbot, service.name, service.owner, self._deployed)

    def _deployed(self, service: ServiceInfo | None) -> None:
        if service:
            self.apply_service(service)

    def action_models(self) -> None:
        from opsbot.tui.models import ModelsScreen

        self.app.push_screen(ModelsScreen())

    def action_toggle_all(self) -> None:
        self.everyone = not self.everyone
        self.notify("showing " + ("all services" if self.everyone else "my services"))
        self.reload()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.table.set_filter("")
        self.table.focus()
        self._describe()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.table.set_filter(event.value.strip())
            self._describe()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.input.display = bool(event.value)
            self.table.focus()

    def action_next_sort(self) -> None:
        table = self.table
        current = table.sort_column
        shown = table.shown
        index = shown.index(current) + 1 if current in shown else 0
        table.sort_by(shown[index % len(shown)], reverse=False)
        self._describe()

    def action_reverse_sort(self) -> None:
        table = self.table
        table.sort_by(table.sort_column or "name", reverse=not table.sort_reverse)
        self._describe()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.table.sort_by(str(event.column_key.value))
        self._describe()

    def action_copy_url(self) -> None:
        service = self.table.selected
        if service is None:
            self.notify("no service is selected", title="Copy", severity="warning")
            return
        self.opsbot.copy(service.url, f"the URL of {service.name}")

    async def action_quit(self) -> None:
        """The top screen: q leaves the dashboard."""
        await self.opsbot.action_quit()

    def _daemon_down(self, down: bool) -> None:
        self.table.set_class(down, "-stale")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_details()

    def selected_key(self) -> str | None:
        service = self.table.selected
        return row_key(service) if service else None
