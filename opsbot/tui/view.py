"""Pure functions that turn control-API answers into what the dashboard shows.

No Textual here: the services table, the details screen and the bench share these, and tests can
check them without an app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opsbot.client.wire import ServiceInfo, Snapshot, VersionNumbers
from opsbot.core.form import Verb
from opsbot.core.form import allowed_verbs as _allowed
from opsbot.core.status import Status
from opsbot.core.timefmt import format_remaining


def _verbs(status: Status) -> frozenset[Verb]:
    return _allowed(status, owner=True, admin=False)


#: The statuses from which each operation is allowed: the core form's verbs by status, used to
#: explain a refused key before asking the daemon (the daemon still decides).
CAN_START = frozenset(str(s.value) for s in Status if Verb.START in _verbs(s))
CAN_STOP = frozenset(str(s.value) for s in Status if Verb.STOP in _verbs(s))
CAN_EXTEND = frozenset(str(s.value) for s in Status if Verb.EXTEND in _verbs(s))
CAN_MODIFY = frozenset(str(s.value) for s in Status if Verb.MODIFY in _verbs(s))
#: Statuses whose countdown is shown (Deploying: the duration it will run once up).
COUNTING = CAN_EXTEND | {Status.DEPLOYING.value}

#: Versions come last: the one column of any length is the one a narrow terminal cuts.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("owner", "Owner"),
    ("status", "Status"),
    ("flavor", "Flavor"),
    ("instances", "Ready"),
    ("calls", "Calls"),
    ("failed", "Failed"),
    ("auto_stop", "Auto stop"),
    ("versions", "Versions (traffic)"),
)
COLUMN_KEYS: tuple[str, ...] = tuple(key for key, _ in COLUMNS)
COLUMN_LABELS: dict[str, str] = dict(COLUMNS)
#: The columns a narrow terminal drops, first to last; name, status, auto stop and versions stay.
DROP_ORDER: tuple[str, ...] = ("owner", "flavor", "failed", "calls", "instances")

STATUS_STYLE = {
    "running": "green",
    "deploying": "cyan",
    "concerning": "yellow",
    "abnormal": "red",
    "failed": "bold red",
    "stopping": "magenta",
    "stopped": "dim",
    "deleting": "magenta",
}

SPARK = "▁▂▃▄▅▆▇█"

#: Below this the table's countdown shows seconds; above it, minutes (as k9s shows ages): a
#: cell that changes once a minute costs a repaint once a minute, not every second.
SECONDS_BELOW_S = 600


StatsFetcher = Callable[[str], dict[str, Any]]


class Row(ServiceInfo):
    """A service as the table and the screens keep it: the daemon's answer and when it was
    fetched, from which its time left counts down."""

    fetched_at: float


def table_row(service: ServiceInfo, fetched_at: float) -> Row:
    """The row of a service the daemon answered at ``fetched_at`` (its instances and
    per-version numbers, which a details answer has, are not kept)."""
    return Row.model_validate({**service.model_dump(), "fetched_at": fetched_at})


def row_key(service: ServiceInfo) -> str:
    """The DataTable row key of a service: OWNER/NAME (names are unique per owner)."""
    return f"{service.owner}/{service.name}"


@dataclass
class VersionStats:
    calls: int = 0
    failures: int = 0
    ready: int = 0
    p50: float | None = None
    p99: float | None = None
    calls_per_s: list[int] = field(default_factory=list)
    failures_per_s: list[int] = field(default_factory=list)


@dataclass
class ServiceStats:
    """The gateway's numbers for one service, summed over its versions and kept per version."""

    versions: dict[str, VersionStats] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(v.calls for v in self.versions.values())

    @property
    def failures(self) -> int:
        return sum(v.failures for v in self.versions.values())

    @property
    def ready(self) -> int:
        return sum(v.ready for v in self.versions.values())


def parse_stats(document: dict[str, Any]) -> dict[str, ServiceStats]:
    """The gateway's ``/stats`` document as service uid -> ServiceStats."""
    out: dict[str, ServiceStats] = {}
    for svc in document.get("services", []):
        stats = ServiceStats()
        for v in svc.get("versions", []):
            latency = v.get("latency_ms") or {}
            stats.versions[str(v.get("version", ""))] = VersionStats(
                calls=int(v.get("calls", 0)),
                failures=int(v.get("failures", 0)),
                ready=sum(1 for t in v.get("instances", []) if not t.get("ejected")),
                p50=latency.get("p50"),
                p99=latency.get("p99"),
                calls_per_s=list(v.get("calls_per_s", [])),
                failures_per_s=list(v.get("failures_per_s", [])),
            )
        out[str(svc.get("id", ""))] = stats
    return out


def status_text(service: ServiceInfo) -> str:
    status = service.status.value
    label = status.capitalize()
    if service.status is Status.DEPLOYING:
        label += f" {service.progress}%"
    return label


def versions_text(service: ServiceInfo) -> str:
    models = service.models
    if len(models) == 1:
        return f"{models[0].model} {models[0].version}"
    parts: list[str] = []
    last = ""
    for m in models:
        # Repeat the model name only when it changes: "iris 1.0.0 90%/2.0.0 10%".
        head = f"{m.model} " if m.model != last else ""
        parts.append(f"{head}{m.version} {m.traffic_ratio or 0}%")
        last = m.model
    return "/".join(parts)


def flavor_text(service: ServiceInfo) -> str:
    return ",".join(sorted({m.flavor for m in service.models}))


def instances_text(service: ServiceInfo) -> str:
    """READY/DESIRED, as the daemon counts them (the core's ``instances_ready`` and
    ``instances_desired``)."""
    return f"{service.instances_ready}/{service.instances_desired}"


def countdown(seconds: float | None) -> str:
    """Time left as "1h 05m", "4m 09s", or "now"; "off" when there is no deadline."""
    if seconds is None:
        return "off"
    if int(seconds) <= 0:
        return "now"
    return format_remaining(seconds)


def local_time(ts: float | None) -> str:
    """A time in the dashboard's local zone, with the zone named: "2026-11-29 10:05:00 CET"."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def auto_stop_line(service: Row, now: float) -> str:
    """The auto stop setting, the time left and the deadline: "1h · stops in 42m 10s, at
    2026-11-29 11:05:00 CET"."""
    setting = service.auto_stop
    if setting == "off":
        return "off"
    if service.status.value not in COUNTING:
        return f"{setting} (counts while the service runs)"
    left = remaining_s(service, now)
    if left is None:
        return f"{setting} · starts counting once the service is Running"
    return f"{setting} · stops in {countdown(left)}, at {local_time(now + left)}"


def version_name(service: ServiceInfo, index: int) -> str:
    """The version an instance's ``version_index`` points at: "iris 2.0.0"."""
    if not 0 <= index < len(service.models):
        return str(index)
    m = service.models[index]
    return f"{m.model} {m.version}"


def rule_lines(service: ServiceInfo) -> list[str]:
    """The routing rules in order: "1. X-Group equals beta → iris 2.0.0"."""
    out: list[str] = []
    for i, rule in enumerate(service.rules, start=1):
        test, value = (
            ("matches", rule.matches) if rule.matches is not None else ("equals", rule.equals)
        )
        target = rule.version
        model = rule.model or next((m.model for m in service.models if m.version == target), "")
        out.append(f"{i}. {rule.header} {test} {value!r} → {model} {target}".rstrip())
    return out


def new_lines(before: list[str], after: list[str]) -> list[str]:
    """Lines of a fresh tail not shown yet: those after the longest end of ``before`` that
    ``after`` starts with (the whole tail when they share nothing)."""
    for k in range(min(len(before), len(after)), 0, -1):
        if before[-k:] == after[:k]:
            return after[k:]
    return after if before != after else []


def remaining_s(service: Row, now: float) -> float | None:
    """Seconds until auto stop, from the daemon's ``remaining_s`` and when it was fetched."""
    if service.remaining_s is None:
        return None
    return max(0.0, service.remaining_s - (now - service.fetched_at))


def auto_stop_text(service: Row, now: float) -> str:
    """The countdown; before the clock starts (Deploying), the time it will run once up."""
    if service.auto_stop == "off":
        return "off"
    if service.status.value not in COUNTING:
        return "-"
    left = remaining_s(service, now)
    if left is None:
        return f"{service.auto_stop} once up"
    if SECONDS_BELOW_S <= left < 3600:
        return f"{int(left) // 60}m"
    return countdown(left)


def sort_key(service: Row, column: str, stats: ServiceStats | None) -> tuple[int, float, str]:
    """What a column sorts by: its real value (numbers as numbers, the auto-stop deadline as a
    time, with "off" and stopped services last), never its text."""
    text = ""
    number = 0.0
    missing = 0
    if column == "auto_stop":
        deadline = _deadline(service)
        missing, number = (1, 0.0) if deadline is None else (0, deadline)
    elif column in ("calls", "failed"):
        number = float(0 if stats is None else stats.calls if column == "calls" else stats.failures)
    elif column == "instances":
        number = float(service.instances_ready)
        text = f"{service.instances_desired:09d}"
    elif column == "status":
        # The status first, then (among Deploying ones) the progress: a Stopped service's
        # progress of 0 must not put it before a Running one.
        text = f"{service.status.value}:{service.progress:03d}"
    elif column == "versions":
        text = versions_text(service).lower()
    elif column == "flavor":
        text = flavor_text(service)
    elif column == "owner":
        text = service.owner.lower()
    else:
        text = service.name.lower()
    return (missing, number, text)


def _deadline(service: Row) -> float | None:
    """When auto stop fires (the daemon's ``remaining_s`` from when it was fetched), or None
    when it is off or not counting."""
    if service.auto_stop == "off" or service.status.value not in COUNTING:
        return None
    if service.remaining_s is None:
        # Not started yet: it will run its full auto stop after the deploy.
        return float("inf")
    return service.fetched_at + service.remaining_s


def shown_columns(
    width: int, widths: dict[str, int], sorted_by: str | None = None
) -> tuple[str, ...]:
    """The columns that fit ``width`` cells (each column is as wide as its widest cell or its
    header, the sort marker included, plus 2 of padding), dropping by :data:`DROP_ORDER`."""
    shown = list(COLUMN_KEYS)
    drop = list(DROP_ORDER)

    def header(c: str) -> int:
        return len(COLUMN_LABELS[c]) + (2 if c == sorted_by else 0)

    def need() -> int:
        return sum(max(widths.get(c, 0), header(c)) + 2 for c in shown)

    while need() > width and drop:
        shown.remove(drop.pop(0))
    return tuple(shown)


def row_cells(service: Row, stats: ServiceStats | None, now: float) -> dict[str, str]:
    """The cells of the service's row, by column key."""
    return {
        "name": service.name,
        "owner": service.owner,
        "status": status_text(service),
        "versions": versions_text(service),
        "flavor": flavor_text(service),
        "instances": instances_text(service),
        "calls": str(stats.calls) if stats is not None else "0",
        "failed": str(stats.failures) if stats is not None else "0",
        "auto_stop": auto_stop_text(service, now),
    }


def matches(service: ServiceInfo, text: str) -> bool:
    """Whether the filter text is in the service's name, owner, status or models."""
    if not text:
        return True
    needle = text.lower()
    hay = " ".join(
        [service.name, service.owner, service.status.value, *(m.model for m in service.models)]
    ).lower()
    return needle in hay


def sparkline(values: Iterable[float], width: int = 60) -> str:
    """Unicode block sparkline of the last ``width`` values, scaled to their maximum."""
    data = list(values)[-width:]
    if not data:
        return ""
    top = max(data)
    if top <= 0:
        return SPARK[0] * len(data)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1)))] for v in data)


def refusal(verb: str, service: ServiceInfo | None, user: str, admin: bool) -> str | None:
    """Why a key does not apply to the selected service, or None when it may be tried."""
    if service is None:
        return "no service is selected"
    name = service.name
    status = service.status.value
    if verb in ("stop", "start", "delete", "extend", "predict", "modify", "roll back") and not (
        admin or service.owner == user
    ):
        return f"{name} belongs to {service.owner}; only its owner or an admin may change it"
    if verb == "start" and status not in CAN_START:
        return f"{name} is {status.capitalize()}; start applies to Stopped or Failed services"
    if verb == "stop" and status not in CAN_STOP:
        return f"{name} is {status.capitalize()}; there is nothing to stop"
    if verb == "extend" and status not in CAN_EXTEND:
        return f"{name} is {status.capitalize()}; auto stop applies to a running service"
    if verb in ("modify", "roll back") and status not in CAN_MODIFY:
        return (
            f"{name} is {status.capitalize()}; wait until it is Running (or Stopped), then "
            f"{verb} it"
        )
    if verb == "delete" and status == "deleting":
        return f"{name} is already being deleted"
    if verb == "predict" and status not in ("running", "concerning"):
        return f"{name} is {status.capitalize()}; predictions need a Running service"
    return None


def curl_example(url: str, key: str = "$OPSBOT_KEY") -> str:
    return (
        f"curl -X POST {url} \\\n"
        f'  -H "X-Auth-Token: {key}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        "  -d '{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}'"
    )


def size_text(n: float | None) -> str:
    """Bytes as "512 B", "12.3 MiB", "1.5 GiB"; "-" when unmeasured."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


#: The headers of the Monitoring tab's per-version table.
VERSION_COLUMNS: tuple[str, ...] = (
    "Version",
    "Ratio",
    "Ready",
    "Calls",
    "Failures",
    "p50 ms",
    "p99 ms",
    "CPU %",
    "Memory",
)


def version_cells(row: VersionNumbers) -> tuple[str, ...]:
    """One row of the per-version numbers (``GET /v1/services/NAME?stats=1``'s ``versions``);
    a figure nobody could measure shows as "-"."""

    def num(value: Any, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    return (
        f"{row.model} {row.version}",
        num(row.traffic_ratio, "{}%"),
        f"{row.ready}/{row.desired}",
        num(row.calls),
        num(row.failures),
        num(row.p50_ms, "{:.1f}"),
        num(row.p99_ms, "{:.1f}"),
        num(row.cpu_percent, "{:.1f}"),
        size_text(row.memory_bytes),
    )


def history_rows(snapshots: list[Snapshot]) -> list[tuple[int, float, str, list[str]]]:
    """(n, time, actor, difference to the previous snapshot) for each config snapshot of
    ``GET /v1/services/NAME/history`` (the daemon sends each with its diff), newest first.
    #1 is the deploy."""
    out: list[tuple[int, float, str, list[str]]] = []
    for snap in sorted(snapshots, key=lambda s: s.n):
        lines = ["deployed"] if not out else snap.changes or ["no change"]
        out.append((snap.n, snap.created_at, snap.actor, lines))
    return out[::-1]
