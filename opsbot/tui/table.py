"""ServicesTable: the live table of services, updated cell by cell by row key."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.binding import Binding, BindingType
from textual.events import Resize
from textual.geometry import Region, Size
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist, RowKey

from opsbot.tui.view import (
    COLUMN_KEYS,
    COLUMN_LABELS,
    STATUS_STYLE,
    Row,
    ServiceStats,
    auto_stop_text,
    matches,
    row_cells,
    row_key,
    shown_columns,
    sort_key,
)

STATUS_WIDTH = 14


class ServicesTable(DataTable[str | Text]):
    """Services keyed by OWNER/NAME.

    A live update touches only the cells that changed, so the cursor stays on its service, and
    repaints only that row, and only when it is on screen: ``DataTable.update_cell`` repaints the
    whole visible table, which with a tall terminal costs tens of milliseconds per event (see
    ``bench/tui.py``).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "first", "First", show=False),
        Binding("G", "last", "Last", show=False),
    ]

    #: While set, a bare refresh() (the one update_cell ends with) is dropped.
    _quiet = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.services: dict[str, Row] = {}
        self.stats: dict[str, ServiceStats] = {}
        self.cells: dict[str, dict[str, str]] = {}
        self.filter_text = ""
        self.sort_column: str | None = None
        self.sort_reverse = False
        #: The columns on screen (a narrow terminal drops some, see ``shown_columns``).
        self.shown: tuple[str, ...] = COLUMN_KEYS
        self.now = 0.0

    def watch_virtual_size(self, old: Size, new: Size) -> None:
        """Forget rendered cells when the table's dimensions change.

        DataTable measures new rows on its next idle, but caches rendered cells by its update
        count alone: a paint that lands between ``add_row`` and that idle (a busy machine) keeps
        cells cut to the old column widths. New widths always change the virtual size.
        """
        if old != new:
            self.notify_style_update()

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for key in self.shown:
            # Status is as wide as "Deploying 100%" from the start, so it never jumps.
            self.add_column(
                self._header(key), key=key, width=STATUS_WIDTH if key == "status" else None
            )

    def _header(self, column: str) -> str:
        """The column's label, with ▲ or ▼ when the rows are sorted by it."""
        label = COLUMN_LABELS[column]
        if column == self.sort_column:
            label += " ▼" if self.sort_reverse else " ▲"
        return label

    def on_resize(self, event: Resize) -> None:
        if self._fit_columns():
            self.rebuild()

    def _fit_columns(self) -> bool:
        """Choose the columns that fit the table's width (a narrow terminal drops some, by
        priority); whether they changed, in which case the table is left without rows."""
        width = self.size.width
        if width <= 0:
            return False
        if len(self.cells) > self.size.height - 1:
            width -= self.scrollbar_size_vertical or 2  # rows overflow: a scrollbar shows
        widths = {c: 0 for c in COLUMN_KEYS}
        for cells in self.cells.values():
            for c, text in cells.items():
                widths[c] = max(widths[c], cell_len(text))
        widths["status"] = STATUS_WIDTH
        shown = shown_columns(width, widths, self.sort_column)
        if shown == self.shown:
            return False
        self.shown = shown
        self.clear(columns=True)
        self._add_columns()
        return True

    # -- keys ----------------------------------------------------------------------------------

    def action_first(self) -> None:
        if self.row_count:
            self.move_cursor(row=0)

    def action_last(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1)

    # -- reading -------------------------------------------------------------------------------

    @property
    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return str(key.value) if key.value is not None else None

    @property
    def selected(self) -> Row | None:
        key = self.selected_key
        return self.services.get(key) if key else None

    # -- writing -------------------------------------------------------------------------------

    def _styled(self, column: str, text: str, service: Row) -> str | Text:
        if column == "status":
            return Text(text, style=STATUS_STYLE.get(service.status.value, ""))
        if column == "failed" and text not in ("0", ""):
            return Text(text, style="red")
        return text

    def _cells_of(self, service: Row) -> dict[str, str]:
        return row_cells(service, self.stats.get(service.id), self.now)

    def upsert(self, service: Row) -> None:
        """Add or update one service's row; only changed cells are written."""
        self._update_rows([service])

    def _update_rows(self, services: list[Row]) -> None:
        """Write the cells that changed, then repaint once: the changed rows that are on screen,
        or the whole table when a row was added, a column widened or the order changed."""
        repaint: list[str] = []
        full = resort = False
        with self._no_repaint():
            for service in services:
                key = row_key(service)
                self.services[key] = service
                if not matches(service, self.filter_text):
                    full |= self._drop_row(key)
                    continue
                cells = self._cells_of(service)
                old = self.cells.get(key)
                self.cells[key] = cells
                if old is None:
                    self.add_row(*(self._styled(c, cells[c], service) for c in self.shown), key=key)
                    full = True
                    resort |= self.sort_column is not None
                    continue
                changed = [c for c in self.shown if cells[c] != old[c]]
                if not changed:
                    continue
                values = {c: self._styled(c, cells[c], service) for c in changed}
                widens = any(self._widens(c, v) for c, v in values.items())
                for column, value in values.items():
                    self.update_cell(key, column, value, update_width=widens)
                full |= widens
                resort |= self.sort_column is not None
                repaint.append(key)
        if resort:
            self._resort()
        elif full:
            self.refresh()
        else:
            for key in repaint:
                self._repaint_row(key)

    def _widens(self, column: str, value: str | Text) -> bool:
        """Whether the value is wider than its auto-sized column (fixed ones never change)."""
        col = self.columns[ColumnKey(column)]
        text = value.plain if isinstance(value, Text) else value
        return col.auto_width and cell_len(text) > col.content_width

    def _repaint_row(self, key: str) -> None:
        """Repaint one row if it is on screen (rows are one line high; none is added taller).

        DataTable.refresh_row finds the row's place by walking every row above it, which a
        countdown tick over every row would turn into a quadratic cost.
        """
        header = self.header_height if self.show_header else 0
        width = max(self.size.width, self.virtual_size.width)
        region = Region(0, header + self.get_row_index(key), width, 1)
        if self.window_region.overlaps(region):
            self.refresh(region.translate(-self.scroll_offset))

    @contextlib.contextmanager
    def _no_repaint(self) -> Iterator[None]:
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def refresh(self, *regions: Region, **kwargs: Any) -> ServicesTable:
        # update_cell() and add_row() end with a refresh of the whole table; _update_rows
        # repaints once, and only what changed.
        if self._quiet and not regions and not kwargs:
            return self
        return super().refresh(*regions, **kwargs)

    def remove_service(self, key: str) -> None:
        self.services.pop(key, None)
        self._drop_row(key)

    def _drop_row(self, key: str) -> bool:
        """Remove the row if it is shown; whether it was."""
        if self.cells.pop(key, None) is None:
            return False
        with contextlib.suppress(RowDoesNotExist):
            self.remove_row(key)
        return True

    def replace_all(self, services: list[Row]) -> None:
        """Show exactly these services (a reload, a filter or mine/all), keeping the cursor."""
        keep = self.selected_key
        self.services = {row_key(s): s for s in services}
        self.rebuild(keep)

    def rebuild(self, keep: str | None = None) -> None:
        """Clear and refill every row: the baseline a live update is measured against."""
        keep = keep if keep is not None else self.selected_key
        self.clear()
        self.cells = {
            key: self._cells_of(service)
            for key, service in self.services.items()
            if matches(service, self.filter_text)
        }
        self._fit_columns()  # the widest cells may have changed which columns fit
        for key, cells in self.cells.items():
            service = self.services[key]
            self.add_row(*(self._styled(c, cells[c], service) for c in self.shown), key=key)
        if self.sort_column:
            self._resort(keep)
        else:
            self._restore_cursor(keep)

    def refresh_cells(self) -> None:
        """Recompute every row from the services and stats held."""
        self._update_rows([s for k, s in self.services.items() if k in self.cells])

    def set_stats(self, stats: dict[str, ServiceStats]) -> None:
        """New gateway numbers: only the rows whose calls or failures moved are recomputed."""
        old, self.stats = self.stats, stats

        def numbers(s: ServiceStats | None) -> tuple[int, int]:
            return (0, 0) if s is None else (s.calls, s.failures)

        moved = [
            s
            for k, s in self.services.items()
            if k in self.cells and numbers(old.get(s.id)) != numbers(stats.get(s.id))
        ]
        if moved:
            self._update_rows(moved)

    def visible_keys(self) -> list[str]:
        """The keys of the rows on screen now."""
        header = self.header_height if self.show_header else 0
        top = int(self.scroll_y)
        bottom = min(self.row_count, top + max(0, self.size.height - header))
        rows = self.ordered_rows
        return [str(rows[i].key.value) for i in range(top, bottom)]

    def tick(self) -> None:
        """The countdown moved on: rewrite the Auto stop cells of the rows on screen only (a
        row scrolled into view gets its own on the scroll, see ``watch_scroll_y``)."""
        if "auto_stop" not in self.shown:
            return
        repaint: list[str] = []
        with self._no_repaint():
            for key in self.visible_keys():
                cells = self.cells.get(key)
                service = self.services.get(key)
                if cells is None or service is None:
                    continue
                text = auto_stop_text(service, self.now)
                if text == cells["auto_stop"]:
                    continue
                cells["auto_stop"] = text
                self.update_cell(key, "auto_stop", text)
                repaint.append(key)
        for key in repaint:
            self._repaint_row(key)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if int(old) != int(new):
            self.tick()

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self.rebuild()

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        """Sort by ``column``; again on the same column, the other way round."""
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else False
        previous = self.sort_column
        self.sort_column, self.sort_reverse = column, reverse
        for c in {previous, column}:
            if c in self.shown:
                self.columns[ColumnKey(c)].label = Text(self._header(c))
        self._resort()

    def _resort(self, keep: str | None = None) -> None:
        """Order the rows by the sort column's real value (then name and owner).

        DataTable.sort hands its key only the cells' text; the order here needs the services
        (a deadline, a number), so the rows are placed by key as DataTable.sort places them.
        """
        keep = keep if keep is not None else self.selected_key
        column = self.sort_column
        if column is None:
            return

        def order(key: str) -> tuple[Any, ...]:
            service = self.services[key]
            stats = self.stats.get(service.id)
            return (sort_key(service, column, stats), service.name, key)

        keys = sorted(self.cells, key=order, reverse=self.sort_reverse)
        self._row_locations = TwoWayDict({RowKey(k): i for i, k in enumerate(keys)})
        self._update_count += 1
        self.refresh()
        self._restore_cursor(keep)

    def _restore_cursor(self, keep: str | None) -> None:
        if keep is None or keep not in self.cells:
            return
        index = self.get_row_index(keep)
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False)
