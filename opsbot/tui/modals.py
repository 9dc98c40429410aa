"""Small modal screens: a yes/no confirmation, the auto-stop extension choices, and help."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from opsbot.core.deadlines import EXTEND_HOURS, ExtendPlan
from opsbot.core.timefmt import format_remaining
from opsbot.tui.view import local_time

HELP_TEXT = """\
[b]Services[/b]
  d      deploy a new service     u  modify the selected service
  enter  details: overview, instances, events, logs, monitoring,
         predict, usage, history
  s / r  stop (asks) / start      x  delete (asks)
  e      extend auto stop (adds to the time left), or turn it off or on
  p      send a test prediction   l  tail the service's logs
  c      copy the service's URL (OSC 52)
  m      models (My Models, My Subscriptions)
  a      my services or everyone's
  /      filter by name, owner, status or model (esc clears)
  o / O  sort by the next column / the other way (or click a header)
  j k    down / up                g G  first / last
[b]Details[/b]  u modify  b roll back (History)  c copy URL
         R rotate the key (asks)  K copy the new key
[b]Forms[/b]    ctrl+s deploy / apply   ctrl+n add a version   ctrl+y copy key
[b]Anywhere[/b] ? this help   : or ctrl+p every command   q / esc back
         (q quits from the services table; a filled form asks first)
"""


class ConfirmModal(ModalScreen[bool]):
    """Asks before a destructive action; dismisses with True only on an explicit yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, confirm_label: str = "Delete") -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ExtendModal(ModalScreen[int | str | None]):
    """Choices for the `e` key: dismisses with the hours to add, the auto stop to set ("off",
    "on"), or None.

    Each Extend button says when the service would stop (the core's rule: the hours add to
    the time left, capped at 24 h from now); a service without auto stop says so and offers to
    turn it on instead."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(str(h), f"choose('extend-{h}')", f"+{h} h") for h in EXTEND_HOURS),
        Binding("escape", "choose('')", "Cancel"),
    ]

    def __init__(
        self, service_name: str, current: str, left_s: float | None = None, now: float = 0.0
    ) -> None:
        """``left_s``: the seconds left before auto stop, None when none runs; ``now``: the
        dashboard's clock, so each choice names its new deadline in local time."""
        super().__init__()
        self.service_name = service_name
        self.current = current
        due = None if current == "off" or left_s is None else now + left_s
        self.plans = [ExtendPlan.compute(service_name, h, now, due) for h in EXTEND_HOURS]
        #: (button id, label, what the modal answers).
        self.choices: list[tuple[str, str, int | str]] = [
            (f"extend-{p.hours}", f"{p.choice} (at {local_time(p.new_due)})", p.hours)
            for p in self.plans
            if p.new_due is not None and p.added > 0
        ]
        self.choices += [
            ("autostop-off", "Auto stop off", "off"),
            ("autostop-on", "Turn auto stop on", "on"),
        ]

    def question(self) -> str:
        plan = self.plans[0]
        if plan.auto_stop_off:
            if self.current == "off":
                return f"{self.service_name} has auto stop off: it runs until stopped."
            return f"Auto stop of {self.service_name}: {self.current}, counted once it runs."
        return (
            f"Auto stop of {self.service_name}: {format_remaining(plan.time_left)} left "
            f"(stops at {local_time(plan.due)}). Extending adds to it, up to 24 h from now."
        )

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question(), id="question")
            # One choice a line: each says when the service would stop.
            with Vertical(classes="choices"):
                for ident, label, _ in self.choices:
                    yield Button(label, id=ident)
            yield Button("Cancel", id="cancel", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id or "")

    def action_choose(self, ident: str) -> None:
        for choice, _, answer in self.choices:
            if choice == ident:
                self.dismiss(answer)
                return
        self.dismiss(None)


class HelpModal(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP_TEXT, id="help-text")
            yield Button("Close", id="close", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
