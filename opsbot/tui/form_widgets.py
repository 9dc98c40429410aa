"""The Deploy form's widgets, each rendered from the core's form definition (core/form.py).

A field row with its label and error line, one model version of the service (its fields, the
Normal versions and the Specifications the core offers it, its environment editor) and one
routing rule. Labels, choices, defaults and rules are the core's: nothing here restates them.
The screens that hold these widgets are in :mod:`opsbot.tui.deploy`.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static

from opsbot.client.wire import FlavorInfo, ModelInfo, PoolInfo, RuleInfo, ServiceVersion
from opsbot.core import form
from opsbot.core.form import whole_or_text
from opsbot.tui.wording import FIELD_LABELS

#: The core form's choices as Textual's (label, value) pairs.
AUTO_STOP_CHOICES: list[tuple[str, str]] = [
    (label, value) for value, label in form.AUTO_STOP_CHOICES
]
SOURCES: list[tuple[str, str]] = [(label, value) for value, label in form.SOURCES]
RULE_TESTS: list[tuple[str, str]] = [(label, value) for value, label in form.RULE_TESTS]


def field_row(field: str, *widgets: Widget) -> Vertical:
    """A form row: the field's label (its help from the core's definition as the tooltip) and
    widgets, and its error line under them, at the form's full width (beside them, a narrow
    terminal leaves it a strip)."""
    label = Label(FIELD_LABELS[field], classes="label")
    label.tooltip = form.FIELD_BY_KEY[field].help
    return Vertical(
        Horizontal(label, *widgets, classes="field"),
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

    def __init__(self, ratio: str = "100", preset: ServiceVersion | None = None) -> None:
        self.preset = preset
        #: Set once the group is being removed: its children go one by one, and the form
        #: must not read it meanwhile (a validation timer firing mid-removal would).
        self.removing = False
        #: Select values wanted before the select has its options (model, version, flavor).
        self.wanted: dict[str, str] = {}
        #: The Specifications offered, as the core form judged them for this version.
        self.flavor_choices: list[form.Choice] = []
        source = "mine"
        instances = "1"
        env: dict[str, str] = {}
        if preset is not None:
            source = preset.source or "mine"
            ratio = str(preset.traffic_ratio or ratio)
            instances = str(preset.instances)
            env = dict(preset.env)
            self.wanted = {
                "model": preset.model,
                "version": preset.version,
                "flavor": preset.flavor,
            }
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
        return preset is not None and (self._select("source") or "mine") == (
            preset.source or "mine"
        )

    @property
    def ref(self) -> tuple[str, str] | None:
        """(model, version) chosen in this group, or None until both are."""
        model, version = self._select("model"), self._select("version")
        return (model, version) if model and version else None

    @property
    def env(self) -> dict[str, str]:
        return dict(self.entry()["env"])

    def fill_models(self, models: list[ModelInfo]) -> None:
        """Offer the models of the chosen source that have a Normal version."""
        source = self._select("source") or "mine"
        names = sorted({model_ref(m) for m in models if source_of(m) == source and is_normal(m)})
        select = self.query_one("#model", Select)
        current = self._select("model") or self.wanted.get("model", "")
        if self._is_preset_source() and self.preset is not None:
            # The service's own model stays offered (an admin's list does not hold it).
            names = sorted({*names, self.preset.model})
        select.set_options([(n, n) for n in names])
        if current in names:
            select.value = current
        elif names:
            select.value = names[0]
        self.fill_versions(models)

    def fill_versions(self, models: list[ModelInfo]) -> None:
        """Offer only the Normal versions of the chosen model."""
        source = self._select("source") or "mine"
        chosen = self._select("model")
        versions = [
            m.version
            for m in models
            if model_ref(m) == chosen and source_of(m) == source and is_normal(m)
        ]
        select = self.query_one("#version", Select)
        current = self._select("version") or self.wanted.get("version", "")
        preset = self.preset
        own = preset is not None and self._is_preset_source() and chosen == preset.model
        if own and preset is not None and preset.version not in versions:
            versions.append(preset.version)  # the service's own version stays offered
        select.set_options([(v, v) for v in versions])
        if current in versions:
            select.value = current
        elif versions:
            select.value = versions[-1]

    def fill_flavors(self, flavors: list[FlavorInfo], models: list[ModelInfo]) -> None:
        """Every flavor of the pool, as the core form offers them for this version's kind of
        model: those it cannot take dimmed with the reason, and never chosen by default."""
        self.flavor_choices = form.flavor_choices(
            [f.model_dump(mode="json") for f in flavors], self._origin(models)
        )
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
        own = preset is not None and self.ref == (preset.model, preset.version)
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

    def _origin(self, models: list[ModelInfo]) -> str:
        source = self._select("source") or "mine"
        model, version = self._select("model"), self._select("version")
        for m in models:
            same = source_of(m) == source and model_ref(m) == model
            if same and m.version == version:
                return m.origin or "custom"
        return "custom"

    def add_env(self, name: str = "", value: str = "") -> EnvRow:
        row = EnvRow(name, value)
        self.query_one("#env", Vertical).mount(row)
        return row


class RuleRow(Vertical):
    """One routing rule: header H equals (or matches) V -> version X, with its error line below.
    Removable."""

    def __init__(self, rule: RuleInfo | None = None) -> None:
        if rule is None:
            test, value, header = "equals", "", ""
        elif rule.matches is not None:
            test, value, header = "matches", rule.matches, rule.header
        else:
            test, value, header = "equals", rule.equals or "", rule.header
        self.header_input = Input(header, placeholder="X-User-Group", classes="rule-header")
        self.test_select: Select[str] = Select(
            RULE_TESTS, value=test, allow_blank=False, classes="rule-test", compact=True
        )
        self.value_input = Input(value, placeholder="value or regex", classes="rule-value")
        self.version_select: Select[str] = Select(
            [], prompt="version", classes="rule-version", compact=True
        )
        #: The version the rule names, until the version select offers it.
        self.wanted: tuple[str | None, str] | None = None
        if rule is not None and rule.version:
            self.wanted = (rule.model, rule.version)
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


def pool_label(pool: PoolInfo) -> str:
    """How the pool select names a pool: "team-a (dedicated) · 12 vCPUs, 48.0 GiB free"."""
    kind = " (dedicated)" if pool.kind == "dedicated" else ""
    return f"{pool.name}{kind} · {pool.free_text} free"


def source_of(m: ModelInfo) -> str:
    """Where a model version comes from: "mine" or "subscribed"."""
    return m.source or "mine"


def model_ref(m: ModelInfo) -> str:
    """How the spec names a model: NAME for mine, OWNER/NAME for a subscription."""
    return m.ref if source_of(m) == "subscribed" else m.name


def is_normal(m: ModelInfo) -> bool:
    return m.status.lower() == "normal"
