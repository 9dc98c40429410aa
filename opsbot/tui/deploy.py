"""The Deploy screen: the reference page's form, validated live by the core through the daemon.

The screen holds no rules. It turns the widgets into a DeploySpec body, sends it to
``POST /v1/validate`` as the user types, and shows each returned error beside its field.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from opsbot.core.errors import FieldError, OpsbotError

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

AUTO_STOP_CHOICES: list[tuple[str, str]] = [
    ("1 hour later", "1h"),
    ("2 hours later", "2h"),
    ("4 hours later", "4h"),
    ("6 hours later", "6h"),
    ("Custom (whole hours)", "custom"),
    ("Off", "off"),
]
SOURCES: list[tuple[str, str]] = [("My Models", "mine"), ("My Subscriptions", "subscribed")]
TOP_FIELDS = ("name", "auto_stop", "description", "resource_pool", "traffic_limit")
ENTRY_FIELD = re.compile(r"^models\[(\d+)\]\.(\w+)")
VALIDATE_DELAY_S = 0.3
POLL_S = 0.5


def whole_or_text(text: str) -> int | str | None:
    """A number field's value: an int when it is one, the text itself otherwise (so the core
    names the problem), None when empty."""
    value = text.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def field_row(label: str, *widgets: Widget, error_id: str) -> Horizontal:
    return Horizontal(
        Label(label, classes="label"),
        *widgets,
        Label("", id=error_id, classes="error"),
        classes="field",
    )


class EnvRow(Horizontal):
    """One environment variable: NAME = value, removable."""

    def __init__(self, name: str = "", value: str = "") -> None:
        # Children made here, not in compose(), so the row can be read as soon as it exists.
        self.name_input = Input(name, placeholder="NAME", classes="env-name")
        self.value_input = Input(value, placeholder="value", classes="env-value")
        super().__init__(
            self.name_input,
            self.value_input,
            Button("−", classes="remove-env", compact=True),
            classes="env-row",
        )

    @property
    def pair(self) -> tuple[str, str]:
        return (self.name_input.value.strip(), self.value_input.value)


class ModelGroup(Vertical):
    """One model version of the service (more than one group is a gated launch)."""

    def __init__(self, ratio: str = "100") -> None:
        # Children made here, not in compose(), so a group just added can be read at once.
        super().__init__(*self._fields(ratio), classes="group")

    @staticmethod
    def _fields(ratio: str) -> list[Widget]:
        return [
            Horizontal(
                Label("Model version", classes="label"),
                Static("", classes="group-title"),
                Button("Remove version", classes="remove-group", variant="warning", compact=True),
                classes="field",
            ),
            field_row(
                "Model source",
                Select(SOURCES, value="mine", allow_blank=False, id="source"),
                error_id="err-source",
            ),
            field_row(
                "Model", Select([], id="model", prompt="choose a model"), error_id="err-model"
            ),
            field_row(
                "Version",
                Select([], id="version", prompt="Normal versions"),
                error_id="err-version",
            ),
            field_row("Traffic ratio (%)", Input(ratio, id="ratio"), error_id="err-traffic_ratio"),
            field_row(
                "Specifications",
                Select([], id="flavor", prompt="choose a flavor"),
                error_id="err-flavor",
            ),
            field_row("Instances", Input("1", id="instances"), error_id="err-instances"),
            Label("Environment variables", classes="label"),
            Vertical(id="env", classes="env"),
            Horizontal(
                Button("Add variable", classes="add-env", compact=True),
                Label("", id="err-env", classes="error"),
                classes="field",
            ),
        ]

    def entry(self) -> dict[str, Any]:
        """This group as one entry of the spec's ``models``."""
        env: dict[str, str] = {}
        for row in self.query(EnvRow):
            name, value = row.pair
            if name or value:
                env[name] = value
        ratio = whole_or_text(self.query_one("#ratio", Input).value)
        return {
            "source": self._select("source") or "mine",
            "model": self._select("model"),
            "version": self._select("version"),
            "traffic_ratio": ratio,
            "flavor": self._select("flavor"),
            "instances": whole_or_text(self.query_one("#instances", Input).value),
            "env": env,
        }

    def _select(self, ident: str) -> str:
        value = self.query_one(f"#{ident}", Select).value
        return str(value) if isinstance(value, str) else ""

    def fill_models(self, models: list[dict[str, Any]]) -> None:
        """Offer the models of the chosen source that have a Normal version."""
        source = self._select("source") or "mine"
        names = sorted(
            {model_ref(m) for m in models if m.get("source", "mine") == source and is_normal(m)}
        )
        select = self.query_one("#model", Select)
        current = self._select("model")
        select.set_options([(n, n) for n in names])
        if current in names:
            select.value = current
        elif names:
            select.value = names[0]
        self.fill_versions(models)

    def fill_versions(self, models: list[dict[str, Any]]) -> None:
        """Offer only the Normal versions of the chosen model."""
        source = self._select("source") or "mine"
        chosen = self._select("model")
        versions = [
            str(m["version"])
            for m in models
            if model_ref(m) == chosen and m.get("source", "mine") == source and is_normal(m)
        ]
        select = self.query_one("#version", Select)
        current = self._select("version")
        select.set_options([(v, v) for v in versions])
        if current in versions:
            select.value = current
        elif versions:
            select.value = versions[-1]

    def fill_flavors(self, flavors: list[dict[str, Any]]) -> None:
        """Every flavor; unavailable ones greyed with the reason (the core refuses them)."""
        options: list[tuple[str | Text, str]] = []
        for f in flavors:
            if f.get("available", True):
                options.append((f"{f['id']}  {f.get('name', '')}", str(f["id"])))
            else:
                text = f"{f['id']}  unavailable: {f.get('reason', '')}"
                options.append((Text(text, style="dim"), str(f["id"])))
        select = self.query_one("#flavor", Select)
        current = self._select("flavor")
        select.set_options(options)
        ids = [str(f["id"]) for f in flavors]
        available = [str(f["id"]) for f in flavors if f.get("available", True)]
        if current in ids:
            select.value = current
        elif available:
            select.value = available[0]

    def add_env(self, name: str = "", value: str = "") -> EnvRow:
        row = EnvRow(name, value)
        self.query_one("#env", Vertical).mount(row)
        return row


def model_ref(m: dict[str, Any]) -> str:
    """How the spec names a model: NAME for mine, OWNER/NAME for a subscription."""
    if m.get("source", "mine") == "subscribed":
        return f"{m['owner']}/{m['name']}"
    return str(m["name"])


def is_normal(m: dict[str, Any]) -> bool:
    return str(m.get("status", "")).lower() == "normal"


class DeployScreen(Screen[dict[str, Any] | None]):
    """Dismisses with the created service (or None when cancelled)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back"),
        Binding("ctrl+s", "submit", "Deploy"),
        Binding("ctrl+n", "add_version", "Add version"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: list[dict[str, Any]] = []
        self.flavors: list[dict[str, Any]] = []
        self.errors: list[FieldError] = []
        self.warnings: list[FieldError] = []
        self.touched: set[str] = set()
        self.submitted = False
        self.created: dict[str, Any] | None = None
        self._seq = 0
        self._timer: Timer | None = None
        self._poll: Timer | None = None

    @property
    def opsbot(self) -> OpsbotApp:
        return cast("OpsbotApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll(id="form"):
            yield Static("Basic information", classes="section")
            yield field_row(
                "Name", Input(placeholder="service-name", id="name"), error_id="err-name"
            )
            yield field_row(
                "Auto stop",
                Select(AUTO_STOP_CHOICES, value="1h", allow_blank=False, id="auto-stop"),
                Input(placeholder="hours, 1-24", id="custom-hours"),
                error_id="err-auto_stop",
            )
            yield field_row(
                "Description",
                Input(placeholder="optional", id="description"),
                error_id="err-description",
            )
            yield Static("Resource pool and model configuration", classes="section")
            yield field_row(
                "Resource pool", Input("public", id="pool"), error_id="err-resource_pool"
            )
            yield Vertical(ModelGroup(), id="groups")
            yield Horizontal(
                Button("Add model version", id="add-version"),
                Static("", id="ratios"),
                classes="field",
            )
            yield Label("", id="err-models", classes="error")
            yield Static("Traffic limit", classes="section")
            yield field_row(
                "Calls per second", Input("100", id="traffic-limit"), error_id="err-traffic_limit"
            )
            yield Static("", id="warnings", classes="warning")
            yield Static("", id="general-error")
            with Horizontal(id="deploy-buttons"):
                yield Button("Deploy", id="submit", variant="primary")
                yield Button("Cancel", id="cancel")
            with Vertical(id="progress-panel"):
                yield Static("", id="progress-text")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Deploy a real-time service"
        self.query_one("#custom-hours", Input).display = False
        self.query_one("#name", Input).focus()
        self._renumber()
        self.load_choices()

    # -- choices from the daemon -----------------------------------------------------------------

    def load_choices(self) -> None:
        app = self.opsbot
        app.call_api(lambda: app.client.request("GET", "/v1/models"), self._got_models)
        self.load_flavors()

    def load_flavors(self) -> None:
        app = self.opsbot
        pool = self.query_one("#pool", Input).value.strip() or "public"
        app.call_api(
            lambda: app.client.request("GET", "/v1/flavors", query={"pool": pool}),
            self._got_flavors,
        )

    def _got_models(self, models: list[dict[str, Any]]) -> None:
        self.models = models
        for group in self.groups:
            group.fill_models(models)

    def _got_flavors(self, flavors: list[dict[str, Any]]) -> None:
        self.flavors = flavors
        for group in self.groups:
            group.fill_flavors(flavors)

    # -- the spec ------------------------------------------------------------------------------

    @property
    def groups(self) -> list[ModelGroup]:
        """The model groups whose fields exist (one being mounted is left out until it is)."""
        return [g for g in self.query(ModelGroup) if g.query("#source")]

    def spec_body(self) -> dict[str, Any]:
        """The form as a DeploySpec body (what POST /v1/validate and /v1/services take)."""
        choice = self.query_one("#auto-stop", Select).value
        auto_stop: str = str(choice)
        if choice == "custom":
            hours = self.query_one("#custom-hours", Input).value.strip()
            auto_stop = f"{hours}h" if hours.isdigit() else hours
        body: dict[str, Any] = {
            "name": self.query_one("#name", Input).value.strip(),
            "auto_stop": auto_stop,
            "description": self.query_one("#description", Input).value,
            "resource_pool": self.query_one("#pool", Input).value.strip(),
            "models": [g.entry() for g in self.groups],
        }
        limit = whole_or_text(self.query_one("#traffic-limit", Input).value)
        if limit is not None:
            body["traffic_limit"] = limit
        return body

    def _renumber(self) -> None:
        groups = self.groups
        for i, group in enumerate(groups):
            group.query_one(".group-title", Static).update(f"#{i + 1}")
            group.query_one(".remove-group", Button).display = len(groups) > 1
        self._update_ratios()

    def _update_ratios(self) -> None:
        total = 0
        for group in self.groups:
            value = whole_or_text(group.query_one("#ratio", Input).value)
            total += value if isinstance(value, int) else 0
        line = f"ratios sum to {total}%"
        style = "green" if total == 100 else "yellow"
        self.query_one("#ratios", Static).update(Text(line, style=style))

    # -- live validation -----------------------------------------------------------------------

    def _field_of(self, widget: Widget) -> str | None:
        """The spec field a widget edits, as the core's error paths name it."""
        ident = widget.id or ""
        tops = {
            "name": "name",
            "auto-stop": "auto_stop",
            "custom-hours": "auto_stop",
            "description": "description",
            "pool": "resource_pool",
            "traffic-limit": "traffic_limit",
        }
        if ident in tops:
            return tops[ident]
        group = next((a for a in widget.ancestors if isinstance(a, ModelGroup)), None)
        if group is None:
            return None
        index = self.groups.index(group)
        names = {
            "source": "source",
            "model": "model",
            "version": "version",
            "ratio": "traffic_ratio",
        }
        names |= {"flavor": "flavor", "instances": "instances"}
        if ident in names:
            return f"models[{index}].{names[ident]}"
        if widget.has_class("env-name") or widget.has_class("env-value"):
            return f"models[{index}].env"
        return None

    def changed(self, widget: Widget | None) -> None:
        if widget is not None:
            field = self._field_of(widget)
            if field:
                self.touched.add(field)
                if field.endswith(".traffic_ratio"):
                    self.touched.add("models")
        self._update_ratios()
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(VALIDATE_DELAY_S, self.validate)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "pool":
            self.load_flavors()
        self.changed(event.input)

    def on_select_changed(self, event: Select.Changed) -> None:
        select = event.select
        group = next((a for a in select.ancestors if isinstance(a, ModelGroup)), None)
        if select.id == "auto-stop":
            custom = self.query_one("#custom-hours", Input)
            custom.display = event.value == "custom"
        elif group is not None and select.id == "source":
            group.fill_models(self.models)
        elif group is not None and select.id == "model":
            group.fill_versions(self.models)
        self.changed(select)

    def validate(self) -> None:
        """Send the form to the core; show what it says (errors only for touched fields until
        the first submit)."""
        self._seq += 1
        seq = self._seq
        body = self.spec_body()
        app = self.opsbot

        def done(result: dict[str, Any]) -> None:
            if seq == self._seq:
                self.show_errors([], [FieldError(**w) for w in result.get("warnings", [])])

        def failed(exc: OpsbotError) -> None:
            if seq == self._seq:
                self.show_errors(exc.errors, self.warnings, general=None if exc.errors else exc)

        app.call_api(
            lambda: app.client.request("POST", "/v1/validate", body=body),
            done,
            failed,
            group="validate",
        )

    def _visible(self, field: str) -> bool:
        if self.submitted:
            return True
        return any(field == t or field.startswith(t + ".") for t in self.touched)

    def error_label(self, field: str) -> Label | None:
        """The label beside the field an error path names, or None for the general line."""
        if field in TOP_FIELDS:
            return self.query_one(f"#err-{field}", Label)
        if field == "models":
            return self.query_one("#err-models", Label)
        match = ENTRY_FIELD.match(field)
        if match:
            index, name = int(match.group(1)), match.group(2)
            groups = self.groups
            if index < len(groups):
                found = groups[index].query(f"#err-{name}")
                if found:
                    return cast(Label, found.first())
        return None

    def show_errors(
        self,
        errors: list[FieldError],
        warnings: list[FieldError],
        general: OpsbotError | None = None,
    ) -> None:
        self.errors = errors
        self.warnings = warnings
        for blank in self.query(".error").results(Label):
            blank.update("")
        lines: list[str] = []
        for error in errors:
            if not self._visible(error.field):
                continue
            label = self.error_label(error.field)
            if label is None:
                lines.append(f"{error.field}: {error.message}")
                continue
            old = str(label.content)
            label.update(f"{old}\n✗ {error.message}" if old else f"✗ {error.message}")
        if general is not None:
            lines.append(f"{general.title}: {general.message}")
        self.query_one("#general-error", Static).update("\n".join(lines))
        self.query_one("#warnings", Static).update(
            "\n".join(f"⚠ {w.field}: {w.message}" for w in warnings)
        )

    # -- buttons and keys ----------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        button = event.button
        group = next((a for a in button.ancestors if isinstance(a, ModelGroup)), None)
        if button.id == "submit":
            self.action_submit()
        elif button.id == "cancel":
            self.action_close()
        elif button.id == "add-version":
            self.run_worker(self.action_add_version(), exclusive=False)
        elif group is not None and button.has_class("remove-group"):
            self.remove_group(group)
        elif group is not None and button.has_class("add-env"):
            row = group.add_env()
            self.call_after_refresh(row.name_input.focus)
        elif button.has_class("remove-env"):
            env_row = next((a for a in button.ancestors if isinstance(a, EnvRow)), None)
            if env_row is not None:
                env_row.remove()
                self.changed(None)

    async def action_add_version(self) -> None:
        group = ModelGroup(ratio="0")
        await self.query_one("#groups", Vertical).mount(group)
        group.fill_models(self.models)
        group.fill_flavors(self.flavors)
        self._renumber()
        self.changed(None)

    def remove_group(self, group: ModelGroup) -> None:
        if len(self.groups) <= 1:
            self.notify("a service needs at least one model version", severity="warning")
            return
        group.remove()
        self.call_after_refresh(self._group_removed)

    def _group_removed(self) -> None:
        # Paths of later groups moved down one; what was touched there is ambiguous now.
        self.touched = {t for t in self.touched if not t.startswith("models[")}
        self._renumber()
        self.changed(None)

    def action_submit(self) -> None:
        if self.created is not None:
            return
        self.submitted = True
        if self._timer is not None:
            # A live check still pending would clear the errors only a deploy can find.
            self._timer.stop()
        self._seq += 1
        body = self.spec_body()
        app = self.opsbot
        self.query_one("#submit", Button).disabled = True

        def failed(exc: OpsbotError) -> None:
            self.query_one("#submit", Button).disabled = False
            self.show_errors(exc.errors, self.warnings, general=None if exc.errors else exc)
            self.notify(exc.message, title=exc.title, severity="error")

        app.call_api(
            lambda: app.client.request("POST", "/v1/services", body=body), self._created, failed
        )

    def _created(self, result: dict[str, Any]) -> None:
        self.created = result
        self.show_errors([], [FieldError(**w) for w in result.get("warnings", [])])
        self.query_one("#progress-panel").display = True
        self._show_progress(result)
        self._poll = self.set_interval(POLL_S, self._poll_status)
        self.query_one("#progress-panel").scroll_visible()

    def _poll_status(self) -> None:
        created = self.created
        if created is None:
            return
        app = self.opsbot
        name, owner = created["name"], created["owner"]
        app.call_api(lambda: app.client.service(name, owner), self._show_progress, group="poll")

    def _show_progress(self, service: dict[str, Any]) -> None:
        created = self.created or {}
        status = str(service.get("status", ""))
        key = created.get("api_key", "")
        lines = [f"{service['name']}: {status.capitalize()}"]
        if status == "deploying":
            done = int(service.get("progress", 0))
            bar = "█" * (done // 5) + "░" * (20 - done // 5)
            lines[0] += f"  {bar} {done}%"
        if status in ("running", "concerning"):
            lines.append(f"URL: {service.get('url', '')}")
            lines.append(f"API key (shown once; copy it now): {key}")
            self._stop_polling()
        elif status in ("failed", "abnormal", "stopped", "deleting"):
            lines.append(f"Reason: {service.get('reason') or 'see the events (l, enter)'}")
            self._stop_polling()
        else:
            lines.append(f"URL (once Running): {service.get('url', '')}")
            lines.append(f"API key (shown once; copy it now): {key}")
        lines.append("escape: back to services")
        self.query_one("#progress-text", Static).update("\n".join(lines))
        if self.created is not None:
            self.created = {**service, "api_key": key}

    def _stop_polling(self) -> None:
        if self._poll is not None:
            self._poll.stop()
            self._poll = None

    def action_close(self) -> None:
        self._stop_polling()
        created = self.created
        if created is not None:
            created = {k: v for k, v in created.items() if k not in ("api_key", "warnings")}
        self.dismiss(created)
