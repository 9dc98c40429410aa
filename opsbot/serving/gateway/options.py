"""What the gateway's parts share: its options, the daemon's token header, the call kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from opsbot.core.instance_auth import DAEMON_SECRET_FILE
from opsbot.serving import HEADER_LENGTH
from opsbot.serving.upstream import ClientKind

#: The file, under $OPSBOT_HOME, holding the daemon's own token: calls that carry it (the owner's
#: `opsbot predict`, the dashboard) pass for any service's key, and still count and meet limits.
INTERNAL_SECRET: Final = DAEMON_SECRET_FILE
INTERNAL_HEADER: Final = "X-Opsbot-Internal"

#: Upstream paths, by call kind: ModelArts style (and KServe v1), Open Inference Protocol v2
#: infer, and v2 model metadata (a GET).
PREDICT: Final = 0
V2_INFER: Final = 1
V2_METADATA: Final = 2

# Request headers an instance may need; everything else (the key above all) stays here.
# Content-Encoding is not among them: the gateway decodes a compressed body itself.
FORWARDED: Final = (
    "Content-Type",
    "Accept",
    "X-Request-Id",
    HEADER_LENGTH,
)
#: Request body encodings the gateway decodes (aiohttp's parser does it as the body is read).
ENCODINGS: Final = frozenset({"gzip", "deflate", "identity"})
UNAVAILABLE_RETRY_S: Final = 5

FrontKind = Literal["fast", "aiohttp"]


@dataclass(frozen=True)
class GatewayOptions:
    """How the gateway treats calls; every field has the default the CLI uses."""

    max_body_mb: float = 12.0
    """Largest request body accepted, in MB (10**6 bytes); larger gets 413."""
    timeout_s: float = 40.0
    """Time allowed for the upstream part of one call, retries included; then 504."""
    attempts: int = 3
    """Instances tried per call when connections fail before an answer; then 502."""
    poll_s: float = 0.2
    """How often the store is polled for route changes."""
    eject_s: float = 1.0
    """How long an instance that refused a connection is passed over while others remain."""
    client: ClientKind = "raw"
    """HTTP client for the hop to instances: the lean asyncio one, or aiohttp's (see upstream)."""
    internal_token_hash: str | None = None
    """SHA-256 of the daemon's token (``X-Opsbot-Internal``), accepted for every service."""
    max_buffered_mb: float = 256.0
    """Request bytes held at once across all calls, in MB; a call that would go over waits
    for no one: it gets 503 with Retry-After before its body is read."""
    read_timeout_s: float = 30.0
    """Time allowed for a request's head and for its body to arrive; then 408."""
    front: FrontKind = "fast"
    """HTTP server side: ``fast`` (inference calls parsed below aiohttp, every other request
    handed to it; see :mod:`.fast`) or ``aiohttp`` (all of it through aiohttp's server)."""
    metrics_token_file: str | None = None
    """The file holding the scrape token ``/metrics`` takes as ``Authorization: Bearer``
    (``$OPSBOT_HOME/metrics-token``), read again when it changes; None: only the daemon's
    token reads ``/metrics``."""
    instance_key: str | None = None
    """The daemon's token, from which each service version's instance secret is derived
    (:mod:`opsbot.core.instance_auth`); None: instances are called without one."""

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)

    @property
    def max_buffered_bytes(self) -> int:
        return int(self.max_buffered_mb * 1_000_000)
