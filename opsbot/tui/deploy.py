"""The Deploy screen: the reference page's form, validated live by the core through the daemon.

The screen holds no rules. It turns the widgets (:mod:`opsbot.tui.form_widgets`) into a
DeploySpec body, sends it to ``POST /v1/validate`` as the user types, and shows each returned
error beside the field the core's form definition says it belongs to. :class:`ModifyScreen` is
the same form prefilled from a running service (name and pool fixed), planned and applied by
the daemon (``POST /v1/services/{name}/update/plan``, then ``/update``).
"""

from __future__ import annotations

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

from opsbot.client import wire
from opsbot.core import form
from opsbot.core.errors import FieldError, OpsbotError
from opsbot.core.form import whole_or_text
from opsbot.core.spec import MAX_RULES, parse_spec
from opsbot.tui.connection import ConnectionBanner, needs_daemon
from opsbot.tui.form_widgets import (
    AUTO_STOP_CHOICES,
    EnvRow,
    ModelGroup,
    RuleRow,
    choose,
    field_row,
    is_normal,
    model_ref,
    pool_label,
    show_error,
    source_of,
)
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.view import instances_text, refusal, status_text
from opsbot.tui.wording import field_message, plain

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

#: The fields outside the versions and rules (each has its error line at the form's top level).
TOP_FIELDS = frozenset(f.key for f in form.FIELDS if f.section in ("basic", "limit"))
VALIDATE_DELAY_S = 0.3
POLL_S = 0.5
MODIFY_POLL_S = 1.0


class DeployScreen(Screen[wire.ServiceInfo | None]):
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

    def __init__(self, service: wire.ServiceInfo | None = None) -> None:
        super().__init__()
        self.original = service
        self.models: list[wire.ModelInfo] = []
        self.flavors: list[wire.FlavorInfo] = []
        self.errors: list[FieldError] = []
        self.warnings: list[FieldError] = []
        self.touched: set[str] = set()
        self.submitted = False
        #: The service once deployed (or modified), as last fetched; its API key, shown once.
        self.created: wire.ServiceInfo | None = None
        self.api_key = ""
        self._seq = 0
        self._timer: Timer | None = None
        self._poll: Timer | None = None
        #: Whether the errors shown answer the form as it is now: False from a change until the
        #: daemon's check of it (VALIDATE_DELAY_S later) has come back.
        self.checked = True
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
        s = self.original
        choice, hours = form.auto_stop_choice(s.auto_stop if s is not None else "1h")
        choices = AUTO_STOP_CHOICES
        if choice not in {v for _, v in choices}:  # "90m": the form cannot write it; keep it
            choices = [*choices, (f"Keep {choice}", choice)]
        pool = s.resource_pool if s is not None else "public"
        yield Header(show_clock=False)
        yield ConnectionBanner()
        with VerticalScroll(id="form"):
            yield Static("Basic information", classes="section")
            yield field_row(
                "name",
                Input(
                    s.name if s is not None else "",
                    placeholder="service-name",
                    id="name",
                    disabled=self.original is not None,
                ),
            )
            yield field_row(
                "auto_stop",
                Select(choices, value=choice, allow_blank=False, id="auto-stop"),
                Input(hours, placeholder=form.CUSTOM_HOURS_LABEL, id="custom-hours"),
            )
            yield field_row(
                "description",
                Input(
                    s.description if s is not None else "", placeholder="optional", id="description"
                ),
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
            presets: list[wire.ServiceVersion | None] = [*(s.models if s is not None else [])]
            yield Vertical(*(ModelGroup(preset=m) for m in presets or [None]), id="groups")
            yield Horizontal(
                Button(form.ADD_VERSION_LABEL, id="add-version"),
                Static("", id="ratios"),
                classes="field",
            )
            yield Label("", id="err-models", classes="error field-error")
            yield Label(
                f"{form.LABELS['rules']} (up to {MAX_RULES}, checked in order before the ratios)",
                classes="label subsection",
            )
            yield Vertical(*(RuleRow(r) for r in (s.rules if s is not None else [])), id="rules")
            yield Horizontal(Button("Add rule", id="add-rule", compact=True), classes="field")
            yield Label("", id="err-rules", classes="error field-error")
            yield Static("Traffic limit", classes="section")
            yield field_row(
                "traffic_limit",
                Input(str(s.traffic_limit if s is not None else 100), id="traffic-limit"),
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
        self.sub_title = f"Modify {s.owner}/{s.name}" if s else "Deploy a real-time service"
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
        app.call_api(app.client.models, self._got_models)
        if self.original is None:  # a modified service stays in its pool
            app.call_api(app.client.pools, self._got_pools)
        self.load_flavors()

    def _pool(self) -> str:
        value = self.query_one("#pool", Select).value
        return str(value) if isinstance(value, str) else "public"

    def _got_pools(self, pools: list[wire.PoolInfo]) -> None:
        """The pools the user may deploy to, each with its kind and what is free now."""
        select = self.query_one("#pool", Select)
        current = self._pool()
        usable = [p for p in pools if p.may_use]
        select.set_options([(pool_label(p), p.name) for p in usable])
        names = [p.name for p in usable]
        if current in names:
            choose(select, current)
        elif names:
            choose(select, names[0])

    def load_flavors(self) -> None:
        app = self.opsbot
        pool = self._pool()
        app.call_api(lambda: app.client.flavors(pool), self._got_flavors)

    def _got_models(self, models: list[wire.ModelInfo]) -> None:
        self.models = models
        for group in self.groups:
            group.fill_models(models)
            group.fill_flavors(self.flavors, models)
        self._offer_versions()

    def _got_flavors(self, flavors: list[wire.FlavorInfo]) -> None:
        self.flavors = flavors
        for group in self.groups:
            group.fill_flavors(flavors, self.models)

    # -- the spec ------------------------------------------------------------------------------

    @property
    def groups(self) -> list[ModelGroup]:
        """The model groups whose fields exist: one being mounted is left out until it is, one
        being removed from the moment its removal starts."""
        return [g for g in self.query(ModelGroup) if not g.removing and g.query("#source")]

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
        if group is None or group not in self.groups:  # a version being removed has no path
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
        self.checked = False
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(VALIDATE_DELAY_S, self.validate)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.changed(event.input)

    def on_select_changed(self, event: Select.Changed) -> None:
        select = event.select
        group = next((a for a in select.ancestors if isinstance(a, ModelGroup)), None)
        if group is not None and group.removing:
            return  # a late change from a version being removed: nothing to fill or check
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

        def done(result: wire.Validated) -> None:
            if seq == self._seq:
                self.show_errors([], field_errors(result.warnings))
                self.checked = True

        def failed(exc: OpsbotError) -> None:
            if seq == self._seq:
                self.show_errors(exc.errors, self.warnings, general=None if exc.errors else exc)
                self.checked = True

        app.call_api(
            lambda: app.client.validate(body),
            done,
            failed,
            group="validate",
        )

    def _visible(self, field: str) -> bool:
        if self.submitted:
            return True
        return any(field == t or field.startswith(t + ".") for t in self.touched)

    def error_label(self, field: str) -> Label | None:
        """The label under the field an error path names (where the core's form definition
        puts it), or None for the general line."""
        if field in ("models", "rules"):  # the list as a whole: under its add button
            return self.query_one(f"#err-{field}", Label)
        ref = form.error_field(field)
        if ref.section == "top":
            return self.query_one(f"#err-{ref.key}", Label) if ref.key in TOP_FIELDS else None
        index = ref.index or 0
        if ref.section == "rule":
            rows = self.rule_rows
            return rows[index].error if index < len(rows) else None
        groups = self.groups
        if index < len(groups):
            found = groups[index].query(f"#err-{ref.key}")
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
        # The next version the form does not list yet (a copy of version 1 is a duplicate),
        # offered as the core's rule takes them: the first version's model first (a gated
        # launch tries a new version of the same model), then the other models.
        mine = [
            (model_ref(m), m.version)
            for m in self.models
            if source_of(m) == "mine" and is_normal(m)
        ]
        first = self.groups[0].ref if self.groups else None
        offered = sorted(mine, key=lambda ref: first is None or ref[0] != first[0])
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
        group.removing = True
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
            lambda: app.client.validate(body),
            lambda result: self._confirm_deploy(body, result),
            self._submit_failed,
        )

    def _confirm_deploy(self, body: dict[str, Any], result: wire.Validated) -> None:
        warnings = field_errors(result.warnings)
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
                lambda: app.client.deploy(body),
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

    def _created(self, result: wire.Deployed) -> None:
        self.created = result
        self.api_key = result.api_key
        self.show_errors([], field_errors(result.warnings))
        self.query_one("#progress-panel").display = True
        self._show_progress(result)
        self._poll = self.set_interval(POLL_S, self._poll_status)
        self.query_one("#progress-panel").scroll_visible()

    def _poll_status(self) -> None:
        created = self.created
        if created is None:
            return
        app = self.opsbot
        name, owner = created.name, created.owner
        app.call_api(lambda: app.client.service(name, owner), self._show_progress, group="poll")

    def _show_progress(self, service: wire.ServiceInfo) -> None:
        status = service.status.value
        key = self.api_key
        lines = [f"{service.name}: {status.capitalize()}"]
        if status == "deploying":
            done = service.progress
            bar = "█" * (done // 5) + "░" * (20 - done // 5)
            lines[0] += f"  {bar} {done}%"
        if status in ("running", "concerning"):
            lines.append(f"URL: {service.url}")
            lines.append(f"API key (shown once; ctrl+y copies it): {key}")
            self._stop_polling()
        elif status in ("failed", "abnormal", "stopped", "deleting"):
            lines.append(f"Reason: {service.reason or 'see the events (l, enter)'}")
            self._stop_polling()
        else:
            lines.append(f"URL (once Running): {service.url}")
            lines.append(f"API key (shown once; ctrl+y copies it): {key}")
        lines.append("escape: back to services")
        self.query_one("#progress-text", Static).update("\n".join(lines))
        if self.created is not None:
            self.created = service

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
        self.opsbot.copy(self.api_key, "key of the new service")

    def _leave(self) -> None:
        self._stop_polling()
        self.dismiss(self.created)


class ModifyScreen(DeployScreen):
    """The Deploy form prefilled from a service (name and pool fixed), sent as a modification.

    The edited spec goes to the daemon, which computes the modification once: first
    ``POST /v1/services/{name}/update/plan`` answers what would change and what restarts (a
    masked secret left as it is means "keep"), the user confirms, then ``.../update`` applies
    the same spec. Dismisses with the modified service, or None when nothing was applied.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "submit", "Apply changes")]
    SUBMIT_LABEL = "Apply changes"

    def __init__(self, service: wire.ServiceInfo) -> None:
        super().__init__(service)
        self.service = service
        #: What the applied modification changed, and the config snapshot it made.
        self.changes: list[str] = []
        self.snapshot: int | None = None

    def _target(self) -> tuple[str, str]:
        return self.service.name, self.service.owner

    def action_submit(self) -> None:
        if self.created is not None:
            return
        self.submitted = True
        if self._timer is not None:
            self._timer.stop()
        self._seq += 1
        spec = self.spec_body()
        name, owner = self._target()
        app = self.opsbot
        self.query_one("#submit", Button).disabled = True
        app.call_api(
            lambda: app.client.update_plan(name, spec=spec, owner=owner),
            lambda answer: self._confirm(spec, answer),
            self._submit_failed,
        )

    def _confirm(self, spec: dict[str, Any], plan: wire.UpdatePlan) -> None:
        """Show the daemon's plan; apply it on yes."""
        self.show_errors([], self.warnings)
        changes = plan.changes
        if not changes:
            self.query_one("#submit", Button).disabled = False
            self.notify("nothing changed: the form is the service's configuration", title="Modify")
            return
        restarts = plan.restarts or ["no instance restarts"]
        question = "\n".join(
            [
                f"Apply to {self.service.name}? This changes:",
                *(f"  {c}" for c in changes),
                "Instances:",
                *(f"  {r}" for r in restarts),
            ]
        )
        name, owner = self._target()
        app = self.opsbot

        def answered(yes: bool | None) -> None:
            if not yes:
                self.query_one("#submit", Button).disabled = False
                return
            app.call_api(
                lambda: app.client.update(name, spec=spec, owner=owner),
                self._modified,
                self._submit_failed,
            )

        self.app.push_screen(ConfirmModal(question, "Apply"), answered)

    def _modified(self, result: wire.Modified) -> None:
        self.show_errors([], [])
        if result.snapshot is None:
            self.query_one("#submit", Button).disabled = False
            self.notify("nothing changed: the form is the service's configuration", title="Modify")
            return
        self.created = result
        self.changes, self.snapshot = result.changes, result.snapshot
        self.query_one("#progress-panel").display = True
        self._show_progress(result)
        self._poll = self.set_interval(MODIFY_POLL_S, self._poll_status)
        self.query_one("#progress-panel").scroll_visible()
        self.notify(f"{result.name}: snapshot #{result.snapshot}", title="Modified")

    def _show_progress(self, service: wire.ServiceInfo) -> None:
        lines = [f"{service.name}: modified, config snapshot #{self.snapshot}"]
        lines += [f"  {c}" for c in self.changes]
        lines.append(f"Status: {status_text(service)}, {instances_text(service)} ready")
        status = service.status.value
        settled = service.instances_ready == service.instances_desired
        if status in ("failed", "abnormal"):
            lines.append(f"Reason: {service.reason or 'see the events (l, enter)'}")
            self._stop_polling()
        elif status in ("running", "concerning", "stopped") and settled:
            self._stop_polling()
        lines.append("escape: back")
        self.query_one("#progress-text", Static).update("\n".join(lines))
        if self.created is not None:
            self.created = service


def field_errors(problems: list[wire.FieldProblem]) -> list[FieldError]:
    """The daemon's warnings (or errors) as the core's field errors the form shows."""
    return [FieldError(p.field, p.message) for p in problems]


def open_modify(
    app: OpsbotApp,
    name: str,
    owner: str,
    done: Callable[[wire.ServiceInfo | None], None],
) -> None:
    """Fetch the service afresh (in a worker) and open the Modify form on it, unless it may not
    be modified now; ``done`` gets the modified service (or None)."""

    def got(service: wire.ServiceDetail) -> None:
        reason = refusal("modify", service, app.user, app.admin)
        if reason:
            app.notify(reason, title="Cannot modify", severity="warning")
            return
        app.push_screen(ModifyScreen(service), done)

    app.call_api(lambda: app.client.service(name, owner), got)
