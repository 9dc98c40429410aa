"""What the control API answers, as pydantic models (the client's side of the wire).

Built from what ``opsbot.daemon.api`` sends (``Service.as_dict``, ``ModelVersion.as_dict``,
``FlavorStatus.as_dict``...). Unknown keys are ignored, so an older client reads a newer
daemon; ``tests/client/test_wire.py`` holds each model against the real app's answers and the
OpenAPI document, so a key added on one side and not the other is caught there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from opsbot.core.status import Status


class Wire(BaseModel):
    """Base of every answer: read-only, unknown keys ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# -- errors ---------------------------------------------------------------------------------


class FieldProblem(Wire):
    field: str
    message: str


class ErrorDocument(Wire):
    """The Error document every failure answers with."""

    error: str = "OpsbotError"
    title: str = "Error"
    message: str = "error"
    errors: list[FieldProblem] = Field(default_factory=list)


# -- who, flavors, models, pools ----------------------------------------------------------------


class WhoAmI(Wire):
    user: str
    admin: bool
    quota_used: int
    quota: int
    runtime: str
    gateway_url: str


class Accelerator(Wire):
    kind: str
    model: str = ""
    count: int = 1


class FlavorInfo(Wire):
    """A flavor (specification) and whether it can run in the pool asked about, with why not."""

    id: str
    name: str
    cpus: float
    memory_gib: float
    arch: str
    accelerator: Accelerator | None = None
    allows: list[str]
    description: str = ""
    available: bool
    reason: str = ""


class ModelInfo(Wire):
    """A model version of My Models or My Subscriptions."""

    id: int
    model_id: int
    owner: str
    name: str
    version: str
    format: str
    origin: str
    status: str
    reason: str = ""
    path: str
    entry: str | None = None
    public: bool
    description: str = ""
    created_at: float
    source: str | None = None

    @property
    def ref(self) -> str:
        """OWNER/NAME, how others name the model."""
        return f"{self.owner}/{self.name}"


class Published(Wire):
    owner: str
    name: str
    public: bool


class Subscribed(Wire):
    model: str
    subscribed: bool


class Capacity(Wire):
    cpus: float
    memory_gib: float
    accelerators: dict[str, int] = Field(default_factory=dict)


class PoolInfo(Wire):
    name: str
    kind: str
    capacity: Capacity
    free: Capacity
    may_use: bool
    free_text: str
    summary: str


class NodeInfo(Wire):
    name: str
    pool: str
    state: str
    addr: str | None = None
    arch: str
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: Capacity
    accelerator_models: list[str] = Field(default_factory=list)
    free: Capacity | None = None
    capacity_text: str
    free_text: str = ""
    summary: str = ""


class PoolNodes(PoolInfo):
    nodes: list[NodeInfo] = Field(default_factory=list)


class NodeReport(Wire):
    pools: list[PoolNodes]
    warnings: list[str] = Field(default_factory=list)


class GatewayNumbers(Wire):
    services: list[dict[str, Any]]


# -- deploy ---------------------------------------------------------------------------------


class SummaryLine(Wire):
    label: str
    value: str


class Validated(Wire):
    """A spec as the daemon checked it: normalised, its warnings, and the summary the user
    confirms before deploying (the reference page's "After confirming the entered
    information")."""

    spec: dict[str, Any]
    warnings: list[FieldProblem] = Field(default_factory=list)
    registry_checked: bool = True
    summary: list[SummaryLine] = Field(default_factory=list)


# -- services -------------------------------------------------------------------------------


class ServiceVersion(Wire):
    """One version of a service's spec (env values that look secret come masked)."""

    source: str = "mine"
    model: str
    version: str
    traffic_ratio: int | None = None
    flavor: str
    instances: int
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: list[str] = Field(default_factory=list)


class RuleInfo(Wire):
    header: str
    equals: str | None = None
    matches: str | None = None
    version: str
    model: str | None = None


class InstanceInfo(Wire):
    version_index: int
    n: int
    state: str
    host: str | None = None
    port: int | None = None
    #: Where it is reached, as shown: ``host:port``, or ``unix:PATH`` for a unix socket.
    address: str = ""
    reason: str = ""
    restarts: int = 0
    devices: list[str] = Field(default_factory=list)
    started_at: float | None = None
    node: str = ""
    stats: dict[str, float] | None = None


class VersionNumbers(Wire):
    idx: int
    model: str
    version: str
    traffic_ratio: int | None = None
    desired: int
    ready: int
    calls: int | None = None
    failures: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None


class ServiceInfo(Wire):
    """A service as every front shows it (``Service.as_dict`` plus the time left)."""

    id: str
    name: str
    owner: str
    status: Status
    progress: int = 0
    reason: str = ""
    url: str
    auto_stop: str = ""
    due_time: float | None = None
    remaining_s: float | None = None
    resource_pool: str = "public"
    traffic_limit: int
    description: str = ""
    models: list[ServiceVersion]
    rules: list[RuleInfo] = Field(default_factory=list)
    created_at: float
    updated_at: float
    status_since: float | None = None
    status_actor: str | None = None
    instances_ready: int = 0
    instances_desired: int = 0


class Deployed(ServiceInfo):
    """The answer to a deploy: the service, its API key (shown once) and the spec's warnings."""

    api_key: str
    warnings: list[FieldProblem] = Field(default_factory=list)


class ServiceDetail(ServiceInfo):
    """One service with its instances (and, asked with stats, the numbers per version)."""

    instances: list[InstanceInfo] = Field(default_factory=list)
    versions: list[VersionNumbers] = Field(default_factory=list)
    auto_stop_text: str = ""


class Modified(ServiceInfo):
    """A modification's answer: the service, a line per change, the snapshot it made."""

    changes: list[str] = Field(default_factory=list)
    snapshot: int | None = None


class RollbackPreview(Wire):
    changes: list[str]
    snapshot: None = None


class UpdatePlan(Wire):
    """What a modification would change and restart, for the user to confirm."""

    changes: list[str]
    restarts: list[str]
    spec: dict[str, Any]


class ExtendPlan(Wire):
    """What "Extend N h" would do: time left, the new deadline, whether the cap cut it."""

    service: str
    hours: int
    time_left_s: float | None = None
    due_time: float | None = None
    new_due_time: float | None = None
    added_s: float | None = None
    capped: bool = False
    auto_stop_off: bool = False
    text: str


class KeyRotated(Wire):
    name: str
    api_key: str
    routed: bool
    warning: str | None = None


class Snapshot(Wire):
    n: int
    actor: str
    created_at: float
    spec: dict[str, Any]
    changes: list[str] = Field(default_factory=list)


class EventInfo(Wire):
    id: int
    time: float
    service_id: int | None = None
    service: str | None = None
    owner: str | None = None
    level: str
    kind: str
    message: str
    actor: str


class Prediction(Wire):
    """A prediction made through the gateway: its HTTP status, the version that answered."""

    status: int
    version: str = ""
    latency_ms: float
    response: Any = None


class TokenCreated(Wire):
    user: str
    token: str


class MetricsToken(Wire):
    token: str
