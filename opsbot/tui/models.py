"""The Models screen: My Models and My Subscriptions; create from a path, publish, subscribe.

Every change goes through the control API (``POST /v1/models``, ``/v1/models/NAME/publish``,
``/v1/models/OWNER/NAME/subscribe``), so the registry's own checks decide and their errors are
shown beside the field they name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from pydantic import BaseModel
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Select,
    Static,
    TabbedContent,
    TabPane,
)

from opsbot.client import wire
from opsbot.core.errors import FieldError, OpsbotError
from opsbot.tui.connection import ConnectionBanner, needs_daemon
from opsbot.tui.wording import field_message, plain

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

HINT = "c create from a path   u publish / unpublish   s subscribe to OWNER/NAME   ctrl+r reload"
COLUMNS = ("Model", "Version", "Status", "Format", "Owner", "Public", "Reason")
FORMATS: list[tuple[str, str]] = [
    ("sklearn (model.joblib)", "sklearn"),
    ("onnx (model.onnx)", "onnx"),
    ("python (module:Class)", "python"),
]


def _row(label: str, widget: Input | Select[str], field: str) -> Horizontal:
    return Horizontal(
        Label(label, classes="label"),
        widget,
        Label("", id=f"err-{field}", classes="error"),
        classes="field",
    )


#: What a form modal's call answers, and the modal dismisses with.
R = TypeVar("R", bound=BaseModel)


class _FormModal(ModalScreen[R | None]):
    """A small form whose submit calls the daemon; errors land beside their fields and the
    modal stays open until the call succeeds (or escape)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    FIELDS: ClassVar[tuple[str, ...]] = ()
    busy_text = "working…"

    @property
    def opsbot(self) -> OpsbotApp:
        return cast("OpsbotApp", self.app)

    def buttons(self, label: str) -> Horizontal:
        return Horizontal(
            Button(label, id="ok", variant="primary"),
            Button("Cancel", id="cancel"),
            classes="buttons",
        )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.submit()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def submit(self) -> None:
        raise NotImplementedError

    def send(self, call: Callable[[], R]) -> None:
        """Run ``call`` (a control-API call) in a worker; dismiss with its result."""
        self.query_one("#ok", Button).disabled = True
        self.query_one("#form-status", Static).update(self.busy_text)
        self.opsbot.call_api(call, self.done, self.failed)

    def done(self, result: R) -> None:
        self.dismiss(result)

    def failed(self, exc: OpsbotError) -> None:
        self.query_one("#ok", Button).disabled = False
        self.show_errors(exc.errors, exc)

    def show_errors(self, errors: list[FieldError], exc: OpsbotError | None = None) -> None:
        for label in self.query(".error").results(Label):
            label.update("")
        general: list[str] = []
        for error in errors:
            found = self.query(f"#err-{error.field}")
            if error.field in self.FIELDS and found:
                cast(Label, found.first()).update(f"✗ {plain(error.message)}")
            else:
                general.append(field_message(error.field, error.message))
        if exc is not None and not errors:
            general.append(f"{exc.title}: {plain(exc.message)}")
        self.query_one("#form-status", Static).update("\n".join(general))


class CreateModelModal(_FormModal[wire.ModelInfo]):
    """Create a model version from a directory on the daemon's machine."""

    FIELDS = ("name", "version", "path", "format", "entry", "description")
    busy_text = "checking: loading the model and predicting its sample…"

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="model-form"):
            yield Label("Create a model version from a directory", classes="title")
            yield _row("Name", Input(placeholder="iris", id="name", compact=True), "name")
            yield _row("Version", Input(placeholder="1.0.0", id="version", compact=True), "version")
            yield _row(
                "Path", Input(placeholder="/path/to/model-dir", id="path", compact=True), "path"
            )
            yield _row(
                "Format",
                Select(FORMATS, value="sklearn", allow_blank=False, id="format", compact=True),
                "format",
            )
            yield _row(
                "Entry", Input(placeholder="python: model:Model", id="entry", compact=True), "entry"
            )
            yield _row(
                "Description",
                Input(placeholder="optional", id="description", compact=True),
                "description",
            )
            yield Static("", id="form-status", classes="form-status")
            yield self.buttons("Create")

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()

    def submit(self) -> None:
        def text(ident: str) -> str:
            return self.query_one(f"#{ident}", Input).value.strip()

        fmt = str(self.query_one("#format", Select).value)
        name, version, path, entry = text("name"), text("version"), text("path"), text("entry")
        description = text("description")
        missing = [
            FieldError(field, "required")
            for field, value in (("name", name), ("version", version), ("path", path))
            if not value
        ]
        if missing:
            self.show_errors(missing)
            return
        client = self.opsbot.client
        self.send(
            lambda: client.create_model(
                name, version, Path(path), fmt, entry=entry or None, description=description
            )
        )


class SubscribeModal(_FormModal[wire.Subscribed]):
    """Subscribe to someone's published model, named OWNER/NAME."""

    FIELDS = ("model",)
    busy_text = "subscribing…"

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="model-form"):
            yield Label("Subscribe to a published model", classes="title")
            yield _row("Model", Input(placeholder="OWNER/NAME", id="model", compact=True), "model")
            yield Static("", id="form-status", classes="form-status")
            yield self.buttons("Subscribe")

    def on_mount(self) -> None:
        self.query_one("#model", Input).focus()

    def submit(self) -> None:
        ref = self.query_one("#model", Input).value.strip()
        client = self.opsbot.client
        self.send(lambda: client.subscribe(ref))


class ModelsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "app.pop_screen", "Back"),
        Binding("escape", "app.pop_screen", "Back", show=False),
        Binding("c", "create", "Create"),
        Binding("u", "publish", "Publish"),
        Binding("s", "subscribe", "Subscribe"),
        Binding("ctrl+r", "reload", "Reload"),
        Binding("colon", "app.command_palette", "Command", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, wire.ModelInfo] = {}

    @property
    def opsbot(self) -> OpsbotApp:
        return cast("OpsbotApp", self.app)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if needs_daemon(action) and self.opsbot.daemon_down:
            return None
        return True

    def reconnected(self) -> None:
        self.action_reload()

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield ConnectionBanner()
        with TabbedContent(id="model-tabs"):
            with TabPane("My Models", id="mine"):
                yield DataTable(id="mine-table", cursor_type="row")
            with TabPane("My Subscriptions", id="subscribed"):
                yield DataTable(id="subscribed-table", cursor_type="row")
        yield Static(HINT, id="status-line")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "Models"
        for ident in ("#mine-table", "#subscribed-table"):
            self.query_one(ident, DataTable).add_columns(*COLUMNS)
        self.action_reload()

    def action_reload(self) -> None:
        app = self.opsbot
        app.call_api(app.client.models, self._got_models)

    def _got_models(self, models: list[wire.ModelInfo]) -> None:
        tables = {
            "mine": self.query_one("#mine-table", DataTable),
            "subscribed": self.query_one("#subscribed-table", DataTable),
        }
        keep = {source: self._selected_key(t) for source, t in tables.items()}
        for table in tables.values():
            table.clear()
        self.models = {}
        for m in sorted(models, key=lambda m: (m.owner, m.name, m.version)):
            source = m.source or "mine"
            table = tables.get(source, tables["mine"])
            key = f"{source}:{m.owner}/{m.name}/{m.version}"
            self.models[key] = m
            table.add_row(
                m.name,
                m.version,
                m.status.capitalize(),
                m.format,
                m.owner,
                "yes" if m.public else "no",
                m.reason,
                key=key,
            )
        for source, table in tables.items():
            kept = keep[source]
            if kept is not None and kept in self.models:
                table.move_cursor(row=table.get_row_index(kept), animate=False)

    @staticmethod
    def _selected_key(table: DataTable[Any]) -> str | None:
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    # -- actions -------------------------------------------------------------------------------

    def action_create(self) -> None:
        def created(model: wire.ModelInfo | None) -> None:
            if model is None:
                return
            what = f"{model.name} {model.version}"
            if model.status == "normal":
                self.notify(f"{what} is Normal: it can be deployed", title="Model created")
            else:
                self.notify(
                    f"{what} is Failed: {model.reason}",
                    title="Model check failed",
                    severity="error",
                    timeout=10,
                )
            self.query_one("#model-tabs", TabbedContent).active = "mine"
            self.action_reload()

        self.app.push_screen(CreateModelModal(), created)

    def action_publish(self) -> None:
        """Publish the selected model of My Models, or make it private again."""
        table = self.query_one("#mine-table", DataTable)
        if self.query_one("#model-tabs", TabbedContent).active != "mine":
            self.notify("publish applies to My Models", title="Publish", severity="warning")
            return
        key = self._selected_key(table)
        model = self.models.get(key or "")
        if model is None:
            self.notify("no model is selected", title="Publish", severity="warning")
            return
        name, public = model.name, not model.public
        app = self.opsbot

        def done(result: wire.Published) -> None:
            state = "published" if result.public else "private"
            self.notify(f"{name} is {state}", title="Publish")
            self.action_reload()

        app.call_api(lambda: app.client.publish_model(name, public), done)

    def action_subscribe(self) -> None:
        def subscribed(result: wire.Subscribed | None) -> None:
            if result is None:
                return
            self.notify(f"subscribed to {result.model}", title="Subscribe")
            self.query_one("#model-tabs", TabbedContent).active = "subscribed"
            self.action_reload()

        self.app.push_screen(SubscribeModal(), subscribed)
