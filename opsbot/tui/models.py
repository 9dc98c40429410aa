"""The Models screen: My Models and My Subscriptions, from GET /v1/models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

#: Creating, publishing and subscribing have no control-API routes yet; the CLI does them.
HINT = (
    "create: opsbot model create NAME VERSION PATH   publish: opsbot model publish NAME   "
    "subscribe: opsbot model subscribe OWNER/NAME"
)
COLUMNS = ("Model", "Version", "Status", "Format", "Owner", "Public", "Reason")


class ModelsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("g", "reload", "Reload"),
    ]

    @property
    def opsbot(self) -> OpsbotApp:
        return cast("OpsbotApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with TabbedContent():
            with TabPane("My Models", id="mine"):
                yield DataTable(id="mine-table", cursor_type="row")
            with TabPane("My Subscriptions", id="subscribed"):
                yield DataTable(id="subscribed-table", cursor_type="row")
        yield Static(HINT, id="status-line")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Models"
        for ident in ("#mine-table", "#subscribed-table"):
            self.query_one(ident, DataTable).add_columns(*COLUMNS)
        self.action_reload()

    def action_reload(self) -> None:
        app = self.opsbot
        app.call_api(lambda: app.client.request("GET", "/v1/models"), self._got_models)

    def _got_models(self, models: list[dict[str, Any]]) -> None:
        tables = {
            "mine": self.query_one("#mine-table", DataTable),
            "subscribed": self.query_one("#subscribed-table", DataTable),
        }
        for table in tables.values():
            table.clear()
        for m in sorted(models, key=lambda m: (m.get("owner", ""), m["name"], m["version"])):
            table = tables.get(str(m.get("source", "mine")), tables["mine"])
            status = str(m.get("status", "")).capitalize()
            table.add_row(
                str(m["name"]),
                str(m["version"]),
                status,
                str(m.get("format", "")),
                str(m.get("owner", "")),
                "yes" if m.get("public") else "no",
                str(m.get("reason", "")),
            )
