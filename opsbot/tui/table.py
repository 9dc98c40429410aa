"""ServicesTable: the live table of services, updated cell by cell by row key."""

from __future__ import annotations

import contextlib
from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

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


class ServicesTable(DataTable[str | Text]):
    """Services keyed by OWNER/NAME.

    A live update touches only the cells that changed, so the cursor stays on its service and the
    cost does not grow with the number of rows (see ``bench/tui.py``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.services: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, ServiceStats] = {}
        self.cells: dict[str, dict[str, str]] = {}
        self.filter_text = ""
        self.sort_column: str | None = None
        self.now = 0.0

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

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
        key = row_key(service)
        self.services[key] = service
        if not matches(service, self.filter_text):
            self._drop_row(key)
            return
        cells = self._cells_of(service)
        old = self.cells.get(key)
        if old is None:
            self.add_row(*(self._styled(c, cells[c], service) for c in COLUMN_KEYS), key=key)
            self.cells[key] = cells
            if self.sort_column:
                self._resort()
            return
        changed = [c for c in COLUMN_KEYS if cells[c] != old[c]]
        for column in changed:
            self.update_cell(key, column, self._styled(column, cells[column], service))
        self.cells[key] = cells
        if self.sort_column and self.sort_column in changed:
            self._resort()

    def remove_service(self, key: str) -> None:
        self.services.pop(key, None)
        self._drop_row(key)

    def _drop_row(self, key: str) -> None:
        if self.cells.pop(key, None) is not None:
            with contextlib.suppress(RowDoesNotExist):
                self.remove_row(key)

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
        for key, service in self.services.items():
            if key in self.cells:
                self.upsert(service)

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
