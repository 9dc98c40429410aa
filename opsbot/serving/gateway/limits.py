"""Who may call and how often: service keys, the daemon's token, instance secrets and the
traffic limit's token buckets (one per service; shared across worker processes by
:mod:`opsbot.serving.workers`)."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Final

from opsbot.core.instance_auth import INSTANCE_HEADER, instance_secret
from opsbot.core.keys import hash_key
from opsbot.serving.gateway.options import INTERNAL_HEADER
from opsbot.serving.upstream import header_lines
from opsbot.serving.workers import SharedBucket, SharedBuckets

log = logging.getLogger("opsbot.serving.gateway")

_BEARER: Final = "bearer "


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a call takes one token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float):
        self.rate = max(float(rate), 1e-9)
        self.burst = max(1.0, float(rate))
        self.tokens = self.burst
        self.stamp = now

    def configure(self, rate: float) -> None:
        """Take a new limit, keeping what is saved up (never above the new burst)."""
        self.rate = max(float(rate), 1e-9)
        self.burst = max(1.0, float(rate))
        self.tokens = min(self.tokens, self.burst)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


def make_bucket(
    shared: SharedBuckets | None, uid: str, rate: int, now: float
) -> TokenBucket | SharedBucket:
    """A new service's bucket: the workers' shared one when there are several workers."""
    if shared is not None:
        found = shared.bucket(uid, rate, now)
        if found is not None:
            found.configure(rate)  # another worker may have made it under an older limit
            return found
        log.warning("no shared traffic bucket left for %s: this worker limits it alone", uid)
    return TokenBucket(rate, now)


#: :func:`hash_key` of the keys a gateway sees again and again (each caller sends its key with
#: every call), hashed once.
_digest = lru_cache(maxsize=256)(hash_key)


def carries_internal(headers: Mapping[str, str], expected: str | None) -> bool:
    """Whether the call carries the daemon's own token (``expected``: its SHA-256)."""
    token = headers.get(INTERNAL_HEADER)
    return expected is not None and token is not None and _digest(token) == expected


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, if the call has one."""
    authorization = headers.get("Authorization")
    if authorization is not None and authorization[:7].lower() == _BEARER:
        return authorization[7:].strip()
    return None


def carries_key(headers: Mapping[str, str], key_hashes: frozenset[str] | set[str]) -> bool:
    """Whether the call carries one of a service's keys (``X-Auth-Token`` or Bearer)."""
    key = headers.get("X-Auth-Token")
    if key is None:
        key = bearer(headers)
    # Keys are compared by their SHA-256, the only form the store holds.
    return key is not None and _digest(key) in key_hashes


class ScrapeToken:
    """The token a scraper of ``/metrics`` sends as ``Authorization: Bearer``, read from its
    file (:func:`opsbot.core.keys.metrics_token`) and read again whenever the file changes, so
    a rotation applies from the next scrape on, in every worker."""

    def __init__(self, path: str | None):
        """``path``: None when the gateway has no scrape token (only the daemon reads then)."""
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._hash: str | None = None

    def _current(self) -> str | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:  # removed: nobody scrapes until it is there again
            self._seen = self._hash = None
            return None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            try:
                with open(self.path, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as exc:
                log.warning("cannot read the /metrics scrape token in %s: %s", self.path, exc)
                return None
            self._seen, self._hash = seen, hash_key(token) if token else None
        return self._hash

    def carried(self, headers: Mapping[str, str]) -> bool:
        """Whether the call carries the scrape token."""
        expected = self._current()
        token = bearer(headers)
        return (
            expected is not None
            and token is not None
            and hmac.compare_digest(_digest(token), expected)
        )


class InstanceSecrets:
    """The secret each service version's instances ask of every caller, derived once."""

    def __init__(self, key: str | None):
        """``key``: the daemon's token; None: instances are called without a secret."""
        self._key = key
        self._lines: dict[tuple[str, int], bytes] = {}

    def line(self, uid: str, idx: int) -> bytes:
        """The header line carrying the secret of version ``idx`` of service ``uid`` (empty
        when instances are called without one), made once per version."""
        key = self._key
        if key is None:
            return b""
        found = self._lines.get((uid, idx))
        if found is None:
            found = self._lines[(uid, idx)] = header_lines(
                [(INSTANCE_HEADER, instance_secret(key, uid, idx))]
            )
        return found
