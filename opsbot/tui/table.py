"""ServicesTable: the live table of services, updated cell by cell by row key."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.geometry import Region, Size
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist

from opsbot.tui.view import (
    COLUMN_KEYS,
    COLUMNS,
    STATUS_STYLE,
    ServiceStats,
    matches,
    row_cells,
    row_key,
    sort_value,
)

STATUS_WIDTH = 14


class ServicesTable(DataTable[str | Text]):
    """Services keyed by OWNER/NAME.

    A live update touches only the cells that changed, so the cursor stays on its service, and
    repaints only that row, and only when it is on screen: ``DataTable.update_cell`` repaints the
    whole visible table, which with a tall terminal costs tens of milliseconds per event (see
    ``bench/tui.py``).
    """

    #: While set, a bare refresh() (the one update_cell ends with) is dropped.
    _quiet = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.services: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, ServiceStats] = {}
        self.cells: dict[str, dict[str, str]] = {}
        self.filter_text = ""
        self.sort_column: str | None = None
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
        for key, label in COLUMNS:
            # Status is as wide as "Deploying 100%" from the start, so it never jumps.
            self.add_column(label, key=key, width=STATUS_WIDTH if key == "status" else None)

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
    def selected(self) -> dict[str, Any] | None:
        key = self.selected_key
        return self.services.get(key) if key else None

    # -- writing -------------------------------------------------------------------------------

    def _styled(self, column: str, text: str, service: dict[str, Any]) -> str | Text:
        if column == "status":
            return Text(text, style=STATUS_STYLE.get(str(service.get("status")), ""))
        if column == "failed" and text not in ("0", ""):
            return Text(text, style="red")
        return text

    def _cells_of(self, service: dict[str, Any]) -> dict[str, str]:
        uid = str(service.get("id", ""))
        return row_cells(service, self.stats.get(uid), self.now)

    def upsert(self, service: dict[str, Any]) -> None:
        """Add or update one service's row; only changed cells are written."""
        self._update_rows([service])

    def _update_rows(self, services: list[dict[str, Any]]) -> None:
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
                    self.add_row(
                        *(self._styled(c, cells[c], service) for c in COLUMN_KEYS), key=key
                    )
                    full = True
                    resort |= self.sort_column is not None
                    continue
                changed = [c for c in COLUMN_KEYS if cells[c] != old[c]]
                if not changed:
                    continue
                values = {c: self._styled(c, cells[c], service) for c in changed}
                widens = any(self._widens(c, v) for c, v in values.items())
                for column, value in values.items():
                    self.update_cell(key, column, value, update_width=widens)
                full |= widens
                resort |= self.sort_column in changed
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

    def replace_all(self, services: list[dict[str, Any]]) -> None:
        """Show exactly these services (a reload, a filter or mine/all), keeping the cursor."""
        keep = self.selected_key
        self.services = {row_key(s): s for s in services}
        self.rebuild(keep)

    def rebuild(self, keep: str | None = None) -> None:
        """Clear and refill every row: the baseline a live update is measured against."""
        keep = keep if keep is not None else self.selected_key
        self.clear()
        self.cells = {}
        for key, service in self.services.items():
            if not matches(service, self.filter_text):
                continue
            cells = self._cells_of(service)
            self.add_row(*(self._styled(c, cells[c], service) for c in COLUMN_KEYS), key=key)
            self.cells[key] = cells
        if self.sort_column:
            self._resort(keep)
        else:
            self._restore_cursor(keep)

    def refresh_cells(self) -> None:
        """Recompute every row from the services and stats held (countdowns, calls)."""
        self._update_rows([s for k, s in self.services.items() if k in self.cells])

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self.rebuild()

    def sort_by(self, column: str) -> None:
        self.sort_column = column
        self._resort()

    def _resort(self, keep: str | None = None) -> None:
        keep = keep if keep is not None else self.selected_key
        column = self.sort_column
        if column is None:
            return

        def order(values: tuple[Any, ...]) -> tuple[Any, ...]:
            text = str(values[0])
            return (sort_value({column: text}, column), str(values[1]), str(values[2]))

        self.sort(column, "name", "owner", key=order)
        self._restore_cursor(keep)

    def _restore_cursor(self, keep: str | None) -> None:
        if keep is None or keep not in self.cells:
            return
        index = self.get_row_index(keep)
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False)
