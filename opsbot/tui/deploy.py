"""The Deploy screen: the reference page's form, validated live by the core through the daemon.

The screen holds no rules. It turns the widgets into a DeploySpec body, sends it to
``POST /v1/validate`` as the user types, and shows each returned error beside its field.
:class:`ModifyScreen` is the same form prefilled from a running service (name and pool fixed),
planned and applied by the daemon (``POST /v1/services/{name}/update/plan``, then ``/update``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from opsbot.core import form
from opsbot.core.errors import FieldError, OpsbotError
from opsbot.core.form import whole_or_text
from opsbot.core.spec import MAX_RULES, parse_spec
from opsbot.tui.connection import ConnectionBanner, needs_daemon
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.view import instances_text, refusal, status_text
from opsbot.tui.wording import FIELD_LABELS, field_message, plain

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

#: The core form's choices as Textual's (label, value) pairs.
AUTO_STOP_CHOICES: list[tuple[str, str]] = [
    (label, value) for value, label in form.AUTO_STOP_CHOICES
]
SOURCES: list[tuple[str, str]] = [(label, value) for value, label in form.SOURCES]
TOP_FIELDS = ("name", "auto_stop", "description", "resource_pool", "traffic_limit")
ENTRY_FIELD = re.compile(r"^models\[(\d+)\]\.(\w+)")
RULE_FIELD = re.compile(r"^rules\[(\d+)\]")
RULE_TESTS: list[tuple[str, str]] = [(label, value) for value, label in form.RULE_TESTS]
VALIDATE_DELAY_S = 0.3
POLL_S = 0.5
MODIFY_POLL_S = 1.0


def field_row(field: str, *widgets: Widget) -> Vertical:
    """A form row: the field's label and widgets, and its error line under them, at the form's
    full width (beside them, a narrow terminal leaves it a strip)."""
    return Vertical(
        Horizontal(Label(FIELD_LABELS[field], classes="label"), *widgets, classes="field"),
        Label("", id=f"err-{field}", classes="error field-error"),
        classes="field-block",
    )


def show_error(label: Label, text: str) -> None:
    """Write an error line, shown only while it says something."""
    label.update(text)
    label.display = bool(text)


class EnvRow(Horizontal):
    """One environment variable: NAME = value, removable."""

    def __init__(self, name: str = "", value: str = "") -> None:
        # Children made here, not in compose(), so the row can be read as soon as it exists.
        self.name_input = Input(name, placeholder="NAME", classes="env-name")
        self.value_input = Input(value, placeholder="value", classes="env-value")
        if form.is_masked(value):
            self.value_input.tooltip = (
                "masked secret: left as it is, the service keeps its value; type a new one to "
                "replace it"
            )
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
    """One model version of the service (more than one group is a gated launch).

    ``preset`` is a version of a service being modified: its values fill the group, the selects
    as soon as their choices arrive."""

    def __init__(self, ratio: str = "100", preset: dict[str, Any] | None = None) -> None:
        self.preset = preset
        #: Select values wanted before the select has its options (model, version, flavor).
        self.wanted: dict[str, str] = {}
        #: The Specifications offered, as the core form judged them for this version.
        self.flavor_choices: list[form.Choice] = []
        source = "mine"
        instances = "1"
        env: dict[str, str] = {}
        if preset is not None:
            source = str(preset.get("source") or "mine")
            ratio = str(preset.get("traffic_ratio") or ratio)
            instances = str(preset.get("instances", 1))
            env = dict(preset.get("env") or {})
            self.wanted = {k: str(preset[k]) for k in ("model", "version", "flavor") if k in preset}
        # Children made here, not in compose(), so a group just added can be read at once.
        super().__init__(*self._fields(ratio, source, instances, env), classes="group")

    @staticmethod
    def _fields(ratio: str, source: str, instances: str, env: dict[str, str]) -> list[Widget]:
        return [
            Horizontal(
                Label(FIELD_LABELS["models"], classes="label"),
                Static("", classes="group-title"),
                Button("Remove version", classes="remove-group", variant="warning", compact=True),
                classes="field",
            ),
            field_row(
                "source",
                Select(SOURCES, value=source, allow_blank=False, id="source"),
            ),
            field_row(
                "model",
                Select([], id="model", prompt="choose a model"),
            ),
            field_row(
                "version",
                Select([], id="version", prompt="Normal versions"),
            ),
            field_row(
                "traffic_ratio",
                Input(ratio, id="ratio"),
            ),
            field_row(
                "flavor",
                Select([], id="flavor", prompt="choose a flavor"),
            ),
            field_row(
                "instances",
                Input(instances, id="instances"),
            ),
            Label(FIELD_LABELS["env"], classes="label"),
            Vertical(*(EnvRow(k, v) for k, v in env.items()), id="env", classes="env"),
            Horizontal(Button("Add variable", classes="add-env", compact=True), classes="field"),
            Label("", id="err-env", classes="error field-error"),
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

    def _is_preset_source(self) -> bool:
        preset = self.preset
        return preset is not None and (self._select("source") or "mine") == str(
            preset.get("source") or "mine"
        )

    @property
    def ref(self) -> tuple[str, str] | None:
        """(model, version) chosen in this group, or None until both are."""
        model, version = self._select("model"), self._select("version")
        return (model, version) if model and version else None

    @property
    def env(self) -> dict[str, str]:
        return dict(self.entry()["env"])

    def fill_models(self, models: list[dict[str, Any]]) -> None:
        """Offer the models of the chosen source that have a Normal version."""
        source = self._select("source") or "mine"
        names = sorted(
            {model_ref(m) for m in models if m.get("source", "mine") == source and is_normal(m)}
        )
        select = self.query_one("#model", Select)
        current = self._select("model") or self.wanted.get("model", "")
        if self._is_preset_source() and self.preset is not None:
            # The service's own model stays offered (an admin's list does not hold it).
            names = sorted({*names, str(self.preset["model"])})
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
        current = self._select("version") or self.wanted.get("version", "")
        preset = self.preset
        own = preset is not None and self._is_preset_source() and chosen == str(preset["model"])
        if own and preset is not None and str(preset["version"]) not in versions:
            versions.append(str(preset["version"]))  # the service's own version stays offered
        select.set_options([(v, v) for v in versions])
        if current in versions:
            select.value = current
        elif versions:
            select.value = versions[-1]

    def fill_flavors(self, flavors: list[dict[str, Any]], models: list[dict[str, Any]]) -> None:
        """Every flavor of the pool, as the core form offers them for this version's kind of
        model: those it cannot take dimmed with the reason, and never chosen by default."""
        self.flavor_choices = form.flavor_choices(flavors, self._origin(models))
        options: list[tuple[str | Text, str]] = []
        for c in self.flavor_choices:
            if c.available:
                options.append((f"{c.value}  {c.label}", c.value))
            else:
                text = f"{c.value}  unavailable: {c.reason}"
                options.append((Text(text, style="dim"), c.value))
        select = self.query_one("#flavor", Select)
        current = self._select("flavor") or self.wanted.get("flavor", "")
        select.set_options(options)
        preset = self.preset
        own = preset is not None and self.ref == (str(preset["model"]), str(preset["version"]))
        ids = [c.value for c in self.flavor_choices]
        # A version of the modified service keeps its flavor unless the user picks another.
        chosen = (
            current if own and current in ids else form.default_flavor(self.flavor_choices, current)
        )
        if chosen is not None:
            choose(select, chosen)  # its label may have changed (available in this pool?)

    def refused_flavor(self) -> str:
        """The reason the chosen flavor cannot be chosen, or "" (it can)."""
        chosen = self._select("flavor")
        return next(
            (c.reason for c in self.flavor_choices if c.value == chosen and not c.available), ""
        )

    def _origin(self, models: list[dict[str, Any]]) -> str:
        source = self._select("source") or "mine"
        model, version = self._select("model"), self._select("version")
        for m in models:
            same = m.get("source", "mine") == source and model_ref(m) == model
            if same and m["version"] == version:
                return str(m.get("origin") or "custom")
        return "custom"

    def add_env(self, name: str = "", value: str = "") -> EnvRow:
        row = EnvRow(name, value)
        self.query_one("#env", Vertical).mount(row)
        return row


class RuleRow(Vertical):
    """One routing rule: header H equals (or matches) V -> version X, with its error line below.
    Removable."""

    def __init__(self, rule: dict[str, Any] | None = None) -> None:
        rule = rule or {}
        test = "matches" if rule.get("matches") is not None else "equals"
        self.header_input = Input(
            str(rule.get("header", "")), placeholder="X-User-Group", classes="rule-header"
        )
        self.test_select: Select[str] = Select(
            RULE_TESTS, value=test, allow_blank=False, classes="rule-test", compact=True
        )
        self.value_input = Input(
            str(rule.get(test) or ""), placeholder="value or regex", classes="rule-value"
        )
        self.version_select: Select[str] = Select(
            [], prompt="version", classes="rule-version", compact=True
        )
        #: The version the rule names, until the version select offers it.
        self.wanted: tuple[str | None, str] | None = None
        if rule.get("version"):
            self.wanted = (rule.get("model"), str(rule["version"]))
        self.error = Label("", classes="error rule-error")
        super().__init__(
            Horizontal(
                Label("", classes="rule-number"),
                self.header_input,
                self.test_select,
                self.value_input,
                Label("→", classes="rule-arrow"),
                self.version_select,
                Button("−", classes="remove-rule", compact=True),
                classes="rule-fields",
            ),
            self.error,
            classes="rule-row",
        )

    def offer(self, refs: list[tuple[str, str]]) -> None:
        """Offer the form's versions; keep the chosen one while the form still has it."""
        value = self.version_select.value
        current = str(value) if isinstance(value, str) else ""
        options = [(f"{model} {version}", f"{model}\t{version}") for model, version in refs]
        values = [v for _, v in options]
        if not current and self.wanted is not None:
            model, version = self.wanted
            current = next(
                (f"{m}\t{v}" for m, v in refs if v == version and model in (None, m)), ""
            )
        self.version_select.set_options(options)
        if current in values:
            self.version_select.value = current
            self.wanted = None

    def rule(self, refs: list[tuple[str, str]]) -> dict[str, Any]:
        """The rule for the spec's ``rules``; the model is named only when two versions of the
        form share the version."""
        test = self.test_select.value
        value = self.version_select.value
        model, _, version = (str(value) if isinstance(value, str) else "").partition("\t")
        out: dict[str, Any] = {
            "header": self.header_input.value.strip(),
            str(test) if isinstance(test, str) else "equals": self.value_input.value,
            "version": version,
        }
        if model and sum(1 for _, v in refs if v == version) > 1:
            out["model"] = model
        return out


def choose(select: Select[str], value: str) -> None:
    """Select ``value``, showing its label even when it was selected already: after
    ``set_options`` the label of an unchanged value is not redrawn."""
    if select.value == value:
        select.mutate_reactive(Select.value)  # type: ignore[misc]  # Textual generic reactive
    else:
        select.value = value


def pool_label(pool: dict[str, Any]) -> str:
    """How the pool select names a pool: "team-a (dedicated) · 12 vCPUs, 48.0 GiB free"."""
    kind = " (dedicated)" if pool.get("kind") == "dedicated" else ""
    return f"{pool['name']}{kind} · {pool.get('free_text', '?')} free"


def model_ref(m: dict[str, Any]) -> str:
    """How the spec names a model: NAME for mine, OWNER/NAME for a subscription."""
    if m.get("source", "mine") == "subscribed":
        return f"{m['owner']}/{m['name']}"
    return str(m["name"])


def is_normal(m: dict[str, Any]) -> bool:
    return str(m.get("status", "")).lower() == "normal"


class DeployScreen(Screen[dict[str, Any] | None]):
    """Dismisses with the created service (or None when cancelled).

    Given ``service``, the form starts as that service's configuration, with its name and pool
    fixed (see :class:`ModifyScreen`)."""

    # In a text field, q and ? are text: esc is the key that always goes back.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "app.help", "Help", show=False),
        Binding("escape", "close", "Back"),
        # q goes back too (asking first when the form holds input).
        Binding("q", "close", "Back", show=False),
        Binding("ctrl+s", "submit", "Deploy"),
        Binding("ctrl+n", "add_version", "Add version"),
        Binding("ctrl+y", "copy_key", "Copy the key", show=False),
    ]

    def __init__(self, service: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.original = service
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
        #: Whether the user typed or chose anything (what leaving would throw away).
        self.edited = False

    @property
    def opsbot(self) -> OpsbotApp:
        return cast("OpsbotApp", self.app)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if needs_daemon(action) and self.opsbot.daemon_down:
            return None
        return True

    def reconnected(self) -> None:
        """The daemon is back: its models, pools and flavors again (choices made are kept)."""
        self.load_choices()

    def compose(self) -> ComposeResult:
        s = self.original or {}
        choice, hours = form.auto_stop_choice(str(s.get("auto_stop", "1h")))
        choices = AUTO_STOP_CHOICES
        if choice not in {v for _, v in choices}:  # "90m": the form cannot write it; keep it
            choices = [*choices, (f"Keep {choice}", choice)]
        pool = str(s.get("resource_pool", "public"))
        yield Header(show_clock=False)
        yield ConnectionBanner()
        with VerticalScroll(id="form"):
            yield Static("Basic information", classes="section")
            yield field_row(
                "name",
                Input(
                    str(s.get("name", "")),
                    placeholder="service-name",
                    id="name",
                    disabled=self.original is not None,
                ),
            )
            yield field_row(
                "auto_stop",
                Select(choices, value=choice, allow_blank=False, id="auto-stop"),
                Input(hours, placeholder="hours, 1-24", id="custom-hours"),
            )
            yield field_row(
                "description",
                Input(str(s.get("description", "")), placeholder="optional", id="description"),
            )
            yield Static("Resource pool and model configuration", classes="section")
            yield field_row(
                "resource_pool",
                Select(
                    [(pool, pool)],
                    value=pool,
                    allow_blank=False,
                    id="pool",
                    disabled=self.original is not None,
                ),
            )
            presets = list(s.get("models", [])) or [None]
            yield Vertical(*(ModelGroup(preset=m) for m in presets), id="groups")
            yield Horizontal(
                Button(form.ADD_VERSION_LABEL, id="add-version"),
                Static("", id="ratios"),
                classes="field",
            )
            yield Label("", id="err-models", classes="error field-error")
            yield Label(
                f"Routing rules (up to {MAX_RULES}, checked in order before the ratios)",
                classes="label subsection",
            )
            yield Vertical(*(RuleRow(r) for r in s.get("rules", [])), id="rules")
            yield Horizontal(Button("Add rule", id="add-rule", compact=True), classes="field")
            yield Label("", id="err-rules", classes="error field-error")
            yield Static("Traffic limit", classes="section")
            yield field_row(
                "traffic_limit",
                Input(str(s.get("traffic_limit", 100)), id="traffic-limit"),
            )
            yield Static("", id="warnings", classes="warning")
            yield Static("", id="general-error")
            with Horizontal(id="deploy-buttons"):
                yield Button(self.SUBMIT_LABEL, id="submit", variant="primary")
                yield Button("Cancel", id="cancel")
            with Vertical(id="progress-panel"):
                yield Static("", id="progress-text")
        yield Footer()

    SUBMIT_LABEL = "Deploy"

    def on_mount(self) -> None:
        s = self.original
        self.sub_title = f"Modify {s['owner']}/{s['name']}" if s else "Deploy a real-time service"
        custom = self.query_one("#custom-hours", Input)
        custom.display = self.query_one("#auto-stop", Select).value == form.CUSTOM
        if s is None:
            self.query_one("#name", Input).focus()
        else:
            self.groups[0].query_one("#ratio", Input).focus()
        self._renumber()
        self._renumber_rules()
        self.load_choices()

    # -- choices from the daemon -----------------------------------------------------------------

    def load_choices(self) -> None:
        app = self.opsbot
        app.call_api(lambda: app.client.request("GET", "/v1/models"), self._got_models)
        if self.original is None:  # a modified service stays in its pool
            app.call_api(app.client.pools, self._got_pools)
        self.load_flavors()

    def _pool(self) -> str:
        value = self.query_one("#pool", Select).value
        return str(value) if isinstance(value, str) else "public"

    def _got_pools(self, pools: list[dict[str, Any]]) -> None:
        """The pools the user may deploy to, each with its kind and what is free now."""
        select = self.query_one("#pool", Select)
        current = self._pool()
        usable = [p for p in pools if p.get("may_use", True)]
        select.set_options([(pool_label(p), str(p["name"])) for p in usable])
        names = [str(p["name"]) for p in usable]
        if current in names:
            choose(select, current)
        elif names:
            choose(select, names[0])

    def load_flavors(self) -> None:
        app = self.opsbot
        pool = self._pool()
        app.call_api(
            lambda: app.client.request("GET", "/v1/flavors", query={"pool": pool}),
            self._got_flavors,
        )

    def _got_models(self, models: list[dict[str, Any]]) -> None:
        self.models = models
        for group in self.groups:
            group.fill_models(models)
            group.fill_flavors(self.flavors, models)
        self._offer_versions()

    def _got_flavors(self, flavors: list[dict[str, Any]]) -> None:
        self.flavors = flavors
        for group in self.groups:
            group.fill_flavors(flavors, self.models)

    # -- the spec ------------------------------------------------------------------------------

    @property
    def groups(self) -> list[ModelGroup]:
        """The model groups whose fields exist (one being mounted is left out until it is)."""
        return [g for g in self.query(ModelGroup) if g.query("#source")]

    def spec_body(self) -> dict[str, Any]:
        """The form as a DeploySpec body (what POST /v1/validate and /v1/services take)."""
        choice = self.query_one("#auto-stop", Select).value
        hours = self.query_one("#custom-hours", Input).value
        # The core form's custom-hours rule; what it refuses goes to the core as typed, so the
        # core's error lands on Auto Stop.
        auto_stop, _ = form.auto_stop_value(str(choice), hours)
        body: dict[str, Any] = {
            "name": self.query_one("#name", Input).value.strip(),
            "auto_stop": auto_stop if auto_stop is not None else f"{hours.strip()}h",
            "description": self.query_one("#description", Input).value,
            "resource_pool": self._pool(),
            "models": [g.entry() for g in self.groups],
        }
        limit = whole_or_text(self.query_one("#traffic-limit", Input).value)
        if limit is not None:
            body["traffic_limit"] = limit
        rows = self.rule_rows
        if rows:
            refs = self.version_refs()
            body["rules"] = [row.rule(refs) for row in rows]
        return body

    # -- routing rules -------------------------------------------------------------------------

    @property
    def rule_rows(self) -> list[RuleRow]:
        return list(self.query(RuleRow))

    def version_refs(self) -> list[tuple[str, str]]:
        """The (model, version) of each group that has both, in the form's order."""
        return [ref for ref in (g.ref for g in self.groups) if ref is not None]

    def _offer_versions(self) -> None:
        refs = self.version_refs()
        for row in self.rule_rows:
            row.offer(refs)

    def _renumber_rules(self) -> None:
        rows = self.rule_rows
        for i, row in enumerate(rows):
            row.query_one(".rule-number", Label).update(f"{i + 1}.")
        self.query_one("#add-rule", Button).disabled = len(rows) >= MAX_RULES

    async def add_rule(self) -> RuleRow | None:
        if len(self.rule_rows) >= MAX_RULES:
            self.notify(f"a service has at most {MAX_RULES} routing rules", severity="warning")
            return None
        row = RuleRow()
        await self.query_one("#rules", Vertical).mount(row)
        row.offer(self.version_refs())
        self._renumber_rules()
        self.touched.add("rules")
        row.header_input.focus()
        self.changed(None)
        return row

    async def remove_rule(self, row: RuleRow) -> None:
        await row.remove()
        # Later rules moved up one; what was touched there is ambiguous now.
        self.touched = {t for t in self.touched if not t.startswith("rules[")} | {"rules"}
        self._renumber_rules()
        self.changed(None)

    def _renumber(self) -> None:
        groups = self.groups
        for i, group in enumerate(groups):
            group.query_one(".group-title", Static).update(f"#{i + 1}")
            remove = group.query_one(".remove-group", Button)
            # Hidden and disabled: a hidden button must not be reachable with Tab either.
            remove.display = len(groups) > 1
            remove.disabled = len(groups) <= 1
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
        rule = next((a for a in widget.ancestors if isinstance(a, RuleRow)), None)
        if rule is not None:
            return f"rules[{self.rule_rows.index(rule)}]" if rule in self.rule_rows else None
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
        """A field changed (``None``: a group, variable or rule was added or removed)."""
        # Only what the user touched makes the form worth asking about: the choices the form
        # fills in itself as the daemon's lists arrive change widgets that have no focus.
        if widget is None or widget.has_focus or widget.has_focus_within:
            self.edited = True
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
        self.changed(event.input)

    def on_select_changed(self, event: Select.Changed) -> None:
        select = event.select
        group = next((a for a in select.ancestors if isinstance(a, ModelGroup)), None)
        if select.id == "pool":
            self.load_flavors()
        elif select.id == "auto-stop":
            custom = self.query_one("#custom-hours", Input)
            custom.display = event.value == form.CUSTOM
        elif group is not None and select.id == "source":
            group.fill_models(self.models)
        elif group is not None and select.id == "model":
            group.fill_versions(self.models)
        if group is not None and select.id in ("source", "model", "version"):
            group.fill_flavors(self.flavors, self.models)
            self._offer_versions()
        elif group is not None and select.id == "flavor" and select.has_focus_within:
            reason = group.refused_flavor()
            if reason:  # shown, as on the reference page, but it cannot be chosen
                self.notify(f"{event.value}: {reason}", severity="warning")
                fallback = form.default_flavor(group.flavor_choices)
                if fallback is not None:
                    choose(group.query_one("#flavor", Select), fallback)
                return
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
        if field == "rules":
            return self.query_one("#err-rules", Label)
        rule = RULE_FIELD.match(field)
        if rule:
            rows = self.rule_rows
            index = int(rule.group(1))
            return rows[index].error if index < len(rows) else None
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
            show_error(blank, "")
        lines: list[str] = []
        for error in errors:
            if not self._visible(error.field):
                continue
            label = self.error_label(error.field)
            if label is None:
                lines.append(field_message(error.field, error.message))
                continue
            old = str(label.content)
            line = f"✗ {plain(error.message)}"
            show_error(label, f"{old}\n{line}" if old else line)
        if general is not None:
            lines.append(f"{general.title}: {plain(general.message)}")
        self.query_one("#general-error", Static).update("\n".join(lines))
        self.query_one("#warnings", Static).update(
            "\n".join(f"⚠ {field_message(w.field, w.message)}" for w in warnings)
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
        elif button.id == "add-rule":
            self.run_worker(self.add_rule(), exclusive=False)
        elif button.has_class("remove-rule"):
            rule = next((a for a in button.ancestors if isinstance(a, RuleRow)), None)
            if rule is not None:
                self.run_worker(self.remove_rule(rule), exclusive=False)
        elif group is not None and button.has_class("remove-group"):
            self.run_worker(self.remove_group(group), exclusive=False)
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
        # The next version the form does not list yet (a copy of version 1 is a duplicate).
        offered = [
            (model_ref(m), str(m["version"]))
            for m in self.models
            if m.get("source", "mine") == "mine" and is_normal(m)
        ]
        nxt = form.next_version(offered, self.version_refs())
        if nxt is not None:
            group.wanted = {"model": nxt[0], "version": nxt[1]}
        await self.query_one("#groups", Vertical).mount(group)
        group.fill_models(self.models)
        group.fill_flavors(self.flavors, self.models)
        if self.original is not None:
            # A version added to a running service starts with the first version's environment
            # (masked secrets included, which the daemon copies with their real values).
            rows = [EnvRow(name, value) for name, value in self.groups[0].env.items()]
            if rows:
                await group.query_one("#env", Vertical).mount(*rows)
        self._renumber()
        self._offer_versions()
        self.changed(None)

    async def remove_group(self, group: ModelGroup) -> None:
        if len(self.groups) <= 1:
            self.notify("a service needs at least one model version", severity="warning")
            return
        # Awaited, so the groups left are renumbered and summed without the removed one.
        await group.remove()
        # Paths of later groups moved down one; what was touched there is ambiguous now.
        self.touched = {t for t in self.touched if not t.startswith("models[")}
        self._renumber()
        self._offer_versions()
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
        # Checked first, then the entered information to confirm (the reference page's "After
        # confirming the entered information"), then deployed.
        app.call_api(
            lambda: app.client.request("POST", "/v1/validate", body=body),
            lambda result: self._confirm_deploy(body, result),
            self._submit_failed,
        )

    def _confirm_deploy(self, body: dict[str, Any], result: dict[str, Any]) -> None:
        warnings = [FieldError(**w) for w in result.get("warnings", [])]
        self.show_errors([], warnings)
        lines = [f"{label}: {value}" for label, value in form.deploy_summary(parse_spec(body))]
        notes = [f"⚠ {field_message(w.field, w.message)}" for w in warnings]
        question = "\n".join(["Deploy this service?", *lines, *notes])
        app = self.opsbot

        def answered(yes: bool | None) -> None:
            if not yes:
                self.query_one("#submit", Button).disabled = False
                return
            app.call_api(
                lambda: app.client.request("POST", "/v1/services", body=body),
                self._created,
                self._submit_failed,
            )

        self.app.push_screen(ConfirmModal(question, "Deploy"), answered)

    def _submit_failed(self, exc: OpsbotError) -> None:
        self.query_one("#submit", Button).disabled = False
        self.show_errors(exc.errors, self.warnings, general=None if exc.errors else exc)
        if exc.errors:
            count = len(exc.errors)
            fields = "a field needs" if count == 1 else f"{count} fields need"
            self.notify(f"{fields} fixing: see the red lines under them", title=exc.title)
        else:
            self.notify(plain(exc.message), title=exc.title, severity="error")

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
            lines.append(f"API key (shown once; ctrl+y copies it): {key}")
            self._stop_polling()
        elif status in ("failed", "abnormal", "stopped", "deleting"):
            lines.append(f"Reason: {service.get('reason') or 'see the events (l, enter)'}")
            self._stop_polling()
        else:
            lines.append(f"URL (once Running): {service.get('url', '')}")
            lines.append(f"API key (shown once; ctrl+y copies it): {key}")
        lines.append("escape: back to services")
        self.query_one("#progress-text", Static).update("\n".join(lines))
        if self.created is not None:
            self.created = {**service, "api_key": key}

    def _stop_polling(self) -> None:
        if self._poll is not None:
            self._poll.stop()
            self._poll = None

    def action_close(self) -> None:
        """Back to where the form was opened from; a form holding unsent input asks first."""
        if self.edited and self.created is None:

            def answered(yes: bool | None) -> None:
                if yes:
                    self._leave()

            what = "changes" if self.original is not None else "form"
            self.app.push_screen(
                ConfirmModal(f"Discard this {what}? What you entered is lost.", "Discard"),
                answered,
            )
            return
        self._leave()

    def action_copy_key(self) -> None:
        created = self.created or {}
        self.opsbot.copy(str(created.get("api_key", "")), "key of the new service")

    def _leave(self) -> None:
        self._stop_polling()
        created = self.created
        if created is not None:
            dropped = ("api_key", "warnings", "changes", "snapshot")
            created = {k: v for k, v in created.items() if k not in dropped}
        self.dismiss(created)


class ModifyScreen(DeployScreen):
    """The Deploy form prefilled from a service (name and pool fixed), sent as a modification.

    The edited spec goes to the daemon, which computes the modification once: first
    ``POST /v1/services/{name}/update/plan`` answers what would change and what restarts (a
    masked secret left as it is means "keep"), the user confirms, then ``.../update`` applies
    the same spec. Dismisses with the modified service, or None when nothing was applied.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "submit", "Apply changes")]
    SUBMIT_LABEL = "Apply changes"

    def __init__(self, service: dict[str, Any]) -> None:
        super().__init__(service)
        self.service = service

    def _target(self) -> tuple[str, dict[str, str]]:
        service = self.service
        return f"/v1/services/{service['name']}", {"owner": str(service["owner"])}

    def action_submit(self) -> None:
        if self.created is not None:
            return
        self.submitted = True
        if self._timer is not None:
            self._timer.stop()
        self._seq += 1
        body = {"spec": self.spec_body()}
        path, query = self._target()
        app = self.opsbot
        self.query_one("#submit", Button).disabled = True

        def plan() -> dict[str, Any]:
            result: dict[str, Any] = app.client.request(
                "POST", f"{path}/update/plan", body=body, query=query
            )
            return result

        app.call_api(plan, lambda answer: self._confirm(body, answer), self._submit_failed)

    def _confirm(self, body: dict[str, Any], plan: dict[str, Any]) -> None:
        """Show the daemon's plan; apply it on yes."""
        self.show_errors([], self.warnings)
        changes = [str(c) for c in plan.get("changes", [])]
        if not changes:
            self.query_one("#submit", Button).disabled = False
            self.notify("nothing changed: the form is the service's configuration", title="Modify")
            return
        restarts = [str(r) for r in plan.get("restarts", [])] or ["no instance restarts"]
        question = "\n".join(
            [
                f"Apply to {self.service['name']}? This changes:",
                *(f"  {c}" for c in changes),
                "Instances:",
                *(f"  {r}" for r in restarts),
            ]
        )
        path, query = self._target()
        app = self.opsbot

        def answered(yes: bool | None) -> None:
            if not yes:
                self.query_one("#submit", Button).disabled = False
                return
            app.call_api(
                lambda: app.client.request("POST", f"{path}/update", body=body, query=query),
                self._modified,
                self._submit_failed,
            )

        self.app.push_screen(ConfirmModal(question, "Apply"), answered)

    def _modified(self, result: dict[str, Any]) -> None:
        self.show_errors([], [FieldError(**w) for w in result.get("warnings", [])])
        if result.get("snapshot") is None:
            self.query_one("#submit", Button).disabled = False
            self.notify("nothing changed: the form is the service's configuration", title="Modify")
            return
        self.created = result
        self.query_one("#progress-panel").display = True
        self._show_progress(result)
        self._poll = self.set_interval(MODIFY_POLL_S, self._poll_status)
        self.query_one("#progress-panel").scroll_visible()
        self.notify(f"{result['name']}: snapshot #{result['snapshot']}", title="Modified")

    def _show_progress(self, service: dict[str, Any]) -> None:
        done = self.created or {}
        changes = [str(c) for c in done.get("changes", [])]
        lines = [f"{service['name']}: modified, config snapshot #{done.get('snapshot')}"]
        lines += [f"  {c}" for c in changes]
        lines.append(f"Status: {status_text(service)}, {instances_text(service)} ready")
        status = str(service.get("status", ""))
        settled = service.get("instances_ready") == service.get("instances_desired")
        if status in ("failed", "abnormal"):
            lines.append(f"Reason: {service.get('reason') or 'see the events (l, enter)'}")
            self._stop_polling()
        elif status in ("running", "concerning", "stopped") and settled:
            self._stop_polling()
        lines.append("escape: back")
        self.query_one("#progress-text", Static).update("\n".join(lines))
        if self.created is not None:
            self.created = {**service, "changes": changes, "snapshot": done.get("snapshot")}


def open_modify(
    app: OpsbotApp,
    name: str,
    owner: str,
    done: Callable[[dict[str, Any] | None], None],
) -> None:
    """Fetch the service afresh (in a worker) and open the Modify form on it, unless it may not
    be modified now; ``done`` gets the modified service (or None)."""

    def got(service: dict[str, Any]) -> None:
        reason = refusal("modify", service, app.user, app.admin)
        if reason:
            app.notify(reason, title="Cannot modify", severity="warning")
            return
        app.push_screen(ModifyScreen(service), done)

    app.call_api(lambda: app.client.service(name, owner), got)
