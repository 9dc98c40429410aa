"""Fixtures of the dashboard's tests: the daemon's real control API over a test home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tui_live import LiveApi, live_api


@pytest.fixture
def api(examples_home: Path) -> Iterator[LiveApi]:
    """The control API on a copy of the template home (the example models, the ExeML one)."""
    with live_api(examples_home) as served:
        yield served
