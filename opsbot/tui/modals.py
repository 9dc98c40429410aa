"""Small modal screens: a yes/no confirmation, the auto-stop extension choices, and help."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

HELP_TEXT = """\
[b]Services[/b]
  d      deploy a new service     u  modify the selected service
  enter  details: overview, instances, events, logs, monitoring,
         predict, usage, history
  s / r  stop (asks) / start      x  delete (asks)
  e      extend auto stop, or turn it off or on
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


#: What the extend modal offers: (button id, label, endpoint, body).
EXTEND_CHOICES: tuple[tuple[str, str, str, dict[str, object]], ...] = (
    ("extend-1", "Extend 1 h", "extend", {"hours": 1}),
    ("extend-2", "Extend 2 h", "extend", {"hours": 2}),
    ("extend-4", "Extend 4 h", "extend", {"hours": 4}),
    ("autostop-off", "Auto stop off", "autostop", {"auto_stop": "off"}),
    ("autostop-on", "Auto stop on", "autostop", {"auto_stop": "on"}),
)


class ExtendModal(ModalScreen[tuple[str, dict[str, object]] | None]):
    """Choices for the `e` key: dismisses with (endpoint, body) or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "choose('extend-1')", "+1 h"),
        Binding("2", "choose('extend-2')", "+2 h"),
        Binding("4", "choose('extend-4')", "+4 h"),
        Binding("escape", "choose('')", "Cancel"),
    ]

    def __init__(self, service_name: str, current: str) -> None:
        super().__init__()
        self.service_name = service_name
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Auto stop of {self.service_name} (now: {self.current})", id="question")
            with Horizontal(classes="buttons"):
                for ident, label, _, _ in EXTEND_CHOICES:
                    yield Button(label, id=ident)
            yield Button("Cancel", id="cancel", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id or "")

    def action_choose(self, ident: str) -> None:
        for choice, _, endpoint, body in EXTEND_CHOICES:
            if choice == ident:
                self.dismiss((endpoint, body))
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
