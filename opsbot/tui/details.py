"""The Details screen of one service: overview, instances, events, logs, monitoring (with the
per-version numbers), predict, usage and history (config snapshots, rollback). Everything is
fetched in workers; the tabs refresh while the screen is open."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Log,
    Static,
    TabbedContent,
    TabPane,
    TextArea,
)

from opsbot.client import wire
from opsbot.core.errors import OpsbotError
from opsbot.tui.connection import ConnectionBanner, needs_daemon
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.view import (
    VERSION_COLUMNS,
    Row,
    auto_stop_line,
    curl_example,
    history_rows,
    instances_text,
    local_time,
    new_lines,
    parse_stats,
    refusal,
    rule_lines,
    sparkline,
    status_text,
    table_row,
    version_cells,
    version_name,
    versions_text,
)

if TYPE_CHECKING:
    from opsbot.tui.app import OpsbotApp

REFRESH_S = 2.0
#: How often the Logs tab asks for new lines while it is shown.
LOGS_S = 1.0
#: The per-version numbers take the daemon about a second (two CPU samples): not more often.
VERSIONS_S = 5.0
LOG_TAIL = 200
SAMPLE = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'


class DetailsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "back", "Back"),
        Binding("escape", "back", "Back", show=False),
        Binding("u", "modify", "Modify"),
        Binding("b", "rollback", "Roll back"),
        Binding("c", "copy_url", "Copy URL"),
        Binding("K", "copy_key", "Copy the new key", show=False),
        Binding("R", "rotate_key", "Rotate the key", show=False),
        Binding("ctrl+r", "send_predict", "Send prediction", show=False),
        Binding("colon", "app.command_palette", "Command", show=False),
    ]

    def __init__(self, service: Row, tab: str = "overview") -> None:
        super().__init__()
        self.service = service
        self.initial_tab = tab
        self.api_key = ""
        self.snapshots: dict[int, list[str]] = {}
        self._versions_busy = False
        self._logs_busy = False
        self.log_lines: list[str] = []

    @property
    def opsbot(self) -> OpsbotApp:
        return cast("OpsbotApp", self.app)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if needs_daemon(action) and self.opsbot.daemon_down:
            return None
        return True

    def reconnected(self) -> None:
        self.load()
        self.load_history()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_copy_url(self) -> None:
        self.opsbot.copy(self.service.url, f"the URL of {self.service.name}")

    def action_copy_key(self) -> None:
        self.opsbot.copy(self.api_key, "new key (rotate it on the Usage tab: R)")

    def action_rotate_key(self) -> None:
        self.query_one(TabbedContent).active = "usage"
        self.rotate_key()

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield ConnectionBanner()
        with TabbedContent(initial=self.initial_tab):
            with TabPane("Overview", id="overview"), VerticalScroll():
                yield Static("", id="overview-text")
            with TabPane("Instances", id="instances"):
                yield DataTable(id="instances-table", cursor_type="row")
            with TabPane("Events", id="events"):
                yield DataTable(id="events-table", cursor_type="row")
            with TabPane("Logs", id="logs"):
                yield Log(id="log", max_lines=2000)
            with TabPane("Monitoring", id="monitoring"), VerticalScroll():
                yield Static("[b]Per version[/b]", classes="table-title")
                yield DataTable(id="versions-table", cursor_type="none", zebra_stripes=True)
                yield Static("", id="versions-note")
                yield Static("waiting for the gateway's numbers", id="monitoring-text")
            with TabPane("Predict", id="predict"):
                yield TextArea(SAMPLE, id="predict-input", language="json")
                yield Button("Send (ctrl+r)", id="send", variant="primary")
                yield Static("", id="predict-result")
            with TabPane("Usage", id="usage"), VerticalScroll():
                yield Static("", id="usage-text")
                with Horizontal(classes="field"):
                    yield Button("Rotate key", id="rotate", variant="warning")
            with TabPane("History", id="history"):
                yield DataTable(id="history-table", cursor_type="row")
                yield Static("", id="history-diff")
        yield Footer()

    def on_mount(self) -> None:
        s = self.service
        self.sub_title = f"{s.owner}/{s.name}"
        self.query_one("#instances-table", DataTable).add_columns(
            "Version", "#", "State", "Node", "Address", "Restarts", "Started", "Reason"
        )
        self.query_one("#events-table", DataTable).add_columns(
            "Time", "Level", "Kind", "Who", "Message"
        )
        self.query_one("#versions-table", DataTable).add_columns(*VERSION_COLUMNS)
        self.query_one("#history-table", DataTable).add_columns("#", "Time", "Who", "Changes")
        self.render_overview(s)
        self.render_usage()
        self.load()
        self.load_logs()
        self.load_history()
        if self.initial_tab == "monitoring":
            self.load_versions()
        if self.opsbot.live:
            self.set_interval(REFRESH_S, self.load)
            self.set_interval(VERSIONS_S, self.load_versions)
            self.set_interval(LOGS_S, self.follow_logs)

    def follow_logs(self) -> None:
        """New log lines while the Logs tab is shown, one call at a time."""
        if self._logs_busy or self.query_one(TabbedContent).active != "logs":
            return
        self.load_logs()

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        app = self.opsbot
        name, owner = self.service.name, self.service.owner
        app.call_api(lambda: app.client.service(name, owner), self._got_service, group="details")
        app.call_api(
            lambda: app.client.events(name, owner=owner),
            self._got_events,
            group="details",
        )
        fetch, url = app.stats_fetcher, app.gateway_url
        if fetch is not None and url:

            def stats() -> dict[str, Any]:
                try:
                    return fetch(url)
                except OSError as exc:
                    raise OpsbotError(f"the gateway did not answer ({exc})") from None

            app.call_api(stats, self._got_stats, self._stats_failed, group="details")

    def load_logs(self) -> None:
        app = self.opsbot
        name, owner = self.service.name, self.service.owner
        self._logs_busy = True

        def failed(exc: OpsbotError) -> None:
            self._logs_busy = False

        app.call_api(
            lambda: app.client.logs(name, LOG_TAIL, owner),
            self._got_logs,
            failed,
            group="details",
        )

    def load_versions(self) -> None:
        """The per-version numbers (``?stats=1``), while the Monitoring tab is shown; one call
        at a time."""
        if self._versions_busy or self.query_one(TabbedContent).active != "monitoring":
            return
        self._versions_busy = True
        app = self.opsbot
        name, owner = self.service.name, self.service.owner

        def failed(exc: OpsbotError) -> None:
            self._versions_busy = False
            self.query_one("#versions-note", Static).update(f"{exc.title}: {exc.message}")

        app.call_api(
            lambda: app.client.service(name, owner, stats=True),
            self._got_versions,
            failed,
            group="versions",
        )

    def _got_versions(self, service: wire.ServiceDetail) -> None:
        self._versions_busy = False
        table = self.query_one("#versions-table", DataTable)
        table.clear()
        for row in service.versions:
            table.add_row(*version_cells(row), key=str(row.idx))
        self.query_one("#versions-note", Static).update(
            "CPU and memory summed over the version's instances; '-': not measured (yet)"
        )

    def load_history(self) -> None:
        app = self.opsbot
        name, owner = self.service.name, self.service.owner
        app.call_api(
            lambda: app.client.history(name, owner),
            self._got_history,
            group="details",
        )

    def _got_history(self, snapshots: list[wire.Snapshot]) -> None:
        table = self.query_one("#history-table", DataTable)
        row = table.cursor_row
        table.clear()
        self.snapshots = {}
        for n, at, actor, lines in history_rows(snapshots):
            self.snapshots[n] = lines
            table.add_row(f"#{n}", local_time(at), actor, "; ".join(lines), key=str(n))
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))
        self._show_snapshot()

    def _selected_snapshot(self) -> int | None:
        table = self.query_one("#history-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return int(key) if key is not None else None

    def _show_snapshot(self) -> None:
        n = self._selected_snapshot()
        out = self.query_one("#history-diff", Static)
        if n is None:
            out.update("no snapshots yet")
            return
        lines = [f"[b]#{n}[/b] changed, from the snapshot before it:"]
        lines += [f"  {line}" for line in self.snapshots.get(n, [])]
        lines.append("b: roll back to this snapshot (the difference is shown first)")
        out.update("\n".join(lines))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "history-table":
            self._show_snapshot()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane.id
        if pane == "monitoring":
            self.load_versions()
        elif pane == "history":
            self.load_history()

    def _got_service(self, answer: wire.ServiceDetail) -> None:
        service = table_row(answer, self.opsbot.now())
        if service.updated_at != self.service.updated_at:
            self.load_history()
        self.service = service
        self.render_overview(service)
        self.render_usage()
        table = self.query_one("#instances-table", DataTable)
        table.clear()
        for inst in answer.instances:
            table.add_row(
                version_name(service, inst.version_index),
                str(inst.n),
                inst.state,
                inst.node,
                inst.address,
                str(inst.restarts),
                local_time(inst.started_at),
                inst.reason,
            )

    def _got_events(self, events: list[wire.EventInfo]) -> None:
        table = self.query_one("#events-table", DataTable)
        table.clear()
        for e in reversed(events[-200:]):
            table.add_row(
                local_time(e.time),
                e.level,
                e.kind,
                e.actor,
                e.message,  # last: the long one, cut by a narrow terminal
            )

    def _got_logs(self, lines: list[str]) -> None:
        """Append what is new since the last tail; the Log keeps following the end unless the
        user scrolled up."""
        self._logs_busy = False
        tail = [str(line) for line in lines]
        fresh = new_lines(self.log_lines, tail)
        self.log_lines = tail
        if fresh:
            self.query_one("#log", Log).write_lines(fresh)

    def _got_stats(self, document: dict[str, Any]) -> None:
        stats = parse_stats(document).get(self.service.id)
        out = self.query_one("#monitoring-text", Static)
        if stats is None or not stats.versions:
            out.update("no calls routed yet (the gateway has no route for this service)")
            return
        lines: list[str] = []
        for version, v in stats.versions.items():
            p50 = "-" if v.p50 is None else f"{v.p50:.1f} ms"
            p99 = "-" if v.p99 is None else f"{v.p99:.1f} ms"
            lines.append(f"[b]{version}[/b]  calls {v.calls}  failed {v.failures}  ")
            lines[-1] += f"p50 {p50}  p99 {p99}  ready {v.ready}"
            lines.append(f"  calls/s  {sparkline(v.calls_per_s)}")
            lines.append(f"  failed/s {sparkline(v.failures_per_s)}")
        out.update("\n".join(lines))

    def _stats_failed(self, exc: OpsbotError) -> None:
        self.query_one("#monitoring-text", Static).update(f"{exc.title}: {exc.message}")

    # -- rendering -----------------------------------------------------------------------------

    def render_overview(self, s: Row) -> None:
        rows = [
            ("Name", s.name),
            ("Owner", s.owner),
            ("Status", status_text(s) + (f" ({s.reason})" if s.reason else "")),
            ("Versions", versions_text(s)),
            ("Instances", f"{instances_text(s)} ready"),
            ("Resource pool", s.resource_pool),
            ("Traffic limit", f"{s.traffic_limit} calls/s"),
            ("Auto stop", auto_stop_line(s, self.opsbot.now())),
            ("Description", s.description or "-"),
            ("URL", f"{s.url}  (c copies it)"),
            ("Created", local_time(s.created_at)),
        ]
        text = "\n".join(f"[b]{k:<14}[/b] {escape(str(v))}" for k, v in rows)
        for m in s.models:
            env = ", ".join(f"{k}={v}" for k, v in m.env.items()) or "-"
            text += (
                f"\n\n[b]{escape(m.model)} {escape(m.version)}[/b] ({m.source})"
                f"\n  ratio {m.traffic_ratio}%  flavor {m.flavor}  "
                f"instances {m.instances}\n  env {escape(env)}"
            )
        rules = rule_lines(s)
        text += "\n\n[b]Routing rules[/b] (checked in order, before the ratios)\n"
        text += "\n".join(f"  {escape(r)}" for r in rules) if rules else "  none"
        self.query_one("#overview-text", Static).update(text)

    def render_usage(self) -> None:
        url = self.service.url
        key = self.api_key or "$OPSBOT_KEY"
        lines = [
            f"[b]URL[/b]  {url}",
            "",
            "[b]Call it[/b]",
            curl_example(url, key),
        ]
        if self.api_key:
            lines += [
                "",
                f"[b]New API key (shown once; K copies it)[/b]  {self.api_key}",
            ]
        else:
            lines += ["", "R: rotate the key (the new one is shown once); c: copy the URL"]
        self.query_one("#usage-text", Static).update("\n".join(lines), layout=True)

    # -- predict and rotate --------------------------------------------------------------------

    # -- modify and roll back ------------------------------------------------------------------

    def _refused(self, verb: str) -> bool:
        app = self.opsbot
        reason = refusal(verb, self.service, app.user, app.admin)
        if reason:
            self.notify(reason, title=f"Cannot {verb}", severity="warning")
        return reason is not None

    def action_modify(self) -> None:
        from opsbot.tui.deploy import open_modify

        if not self._refused("modify"):
            open_modify(self.opsbot, self.service.name, self.service.owner, self._modified)

    def _modified(self, service: wire.ServiceInfo | None) -> None:
        if service:
            self.load()
            self.load_history()

    def action_rollback(self) -> None:
        tabs = self.query_one(TabbedContent)
        n = self._selected_snapshot()
        if tabs.active != "history" or n is None:
            tabs.active = "history"
            self.notify("choose a snapshot here, then press b", title="Roll back")
            return
        if self._refused("roll back"):
            return
        app = self.opsbot
        name, owner = self.service.name, self.service.owner

        def previewed(preview: wire.RollbackPreview) -> None:
            changes = preview.changes
            if not changes:
                self.notify(
                    f"{name} already has the configuration of snapshot #{n}", title="Roll back"
                )
                return
            question = f"Roll back {name} to snapshot #{n}? This changes:\n" + "\n".join(
                f"  {c}" for c in changes
            )
            self.app.push_screen(ConfirmModal(question, "Roll back"), answered)

        def answered(yes: bool | None) -> None:
            if yes:
                app.call_api(lambda: app.client.rollback(name, n, owner), applied)

        def applied(result: wire.Modified) -> None:
            self.notify(
                "\n".join(result.changes) or "nothing changed",
                title=f"Rolled back to #{n}: snapshot #{result.snapshot}",
            )
            self.load()
            self.load_history()

        app.call_api(lambda: app.client.rollback_preview(name, n, owner), previewed)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send":
            self.action_send_predict()
        elif event.button.id == "rotate":
            self.rotate_key()

    def action_send_predict(self) -> None:
        text = self.query_one("#predict-input", TextArea).text
        out = self.query_one("#predict-result", Static)
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            out.update(f"[red]the input is not JSON: {exc}[/red]")
            return
        app = self.opsbot
        name, owner = self.service.name, self.service.owner
        out.update("sending…")

        def done(reply: wire.Prediction) -> None:
            body = json.dumps(reply.response, indent=2)
            out.update(
                f"HTTP {reply.status}  version {reply.version or '-'}  "
                f"{reply.latency_ms} ms\n{body}"
            )

        def failed(exc: OpsbotError) -> None:
            out.update(f"[red]{exc.title}: {exc.message}[/red]")

        app.call_api(
            lambda: app.client.predict(name, text.encode(), owner),
            done,
            failed,
        )

    def rotate_key(self) -> None:
        app = self.opsbot
        name, owner = self.service.name, self.service.owner

        def answered(yes: bool | None) -> None:
            if not yes:
                return

            def done(reply: wire.KeyRotated) -> None:
                self.api_key = reply.api_key
                self.render_usage()
                self.notify("the old key stopped working", title="Key rotated")

            app.call_api(lambda: app.client.rotate_key(name, owner), done)

        self.app.push_screen(
            ConfirmModal(f"Rotate the key of {name}? The old key stops working at once.", "Rotate"),
            answered,
        )
