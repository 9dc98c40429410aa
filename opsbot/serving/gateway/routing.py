"""Routing state, rebuilt from the store's routes on every change: instances (targets), versions
with their traffic ratios and routing rules, and services; how a call picks a version (rule, else
ratio) and an instance (fewest outstanding calls), and where a retry goes."""

from __future__ import annotations

import bisect
import random
from collections.abc import Collection, Mapping, Sequence
from typing import Final
from urllib.parse import quote

from opsbot.core.address import show
from opsbot.core.routes import ServiceRoute, VersionRoute
from opsbot.serving.gateway.limits import TokenBucket
from opsbot.serving.gateway.metrics import ServiceCounters, VersionStats
from opsbot.serving.upstream import header_lines
from opsbot.serving.workers import SharedBucket

# Added to an ejected instance's load so it is chosen only when nothing else is left.
_EJECTED_PENALTY: Final = 1 << 30


class Target:
    """One ready instance of one version, with the calls now outstanding on it.

    A Target outlives route changes while its address stays routed, and while calls are still
    outstanding on it after it left the routes (it is then draining: no new call goes there).
    """

    __slots__ = ("ejected_until", "host", "label", "outstanding", "paths", "port", "uid")

    def __init__(self, host: str, port: int, model_name: str):
        self.host = host
        self.port = port
        self.outstanding = 0
        self.ejected_until = 0.0
        # The service and version label it was last routed for (set by Gateway.apply).
        self.uid = ""
        self.label = ""
        # By call kind: PREDICT, V2_INFER, V2_METADATA.
        model = f"/v2/models/{quote(model_name, safe='')}"
        self.paths = ("/predict", f"{model}/infer", model)

    @property
    def address(self) -> str:
        """``host:port`` or ``unix:PATH`` (statistics, metrics labels, drain)."""
        return show(self.host, self.port)


class Version:
    """One version of a service as the gateway routes to it."""

    __slots__ = (
        "_turn",
        "idx",
        "label",
        "label_line",
        "model",
        "ratio",
        "secret_line",
        "stats",
        "targets",
    )

    def __init__(
        self,
        route: VersionRoute,
        label: str,
        targets: tuple[Target, ...],
        stats: VersionStats,
        secret_line: bytes = b"",
    ):
        self.idx = route.idx
        self.label = label
        # What each call's answer and each call to an instance carry, made once per version.
        self.label_line = header_lines([("X-Model-Version", label)])
        self.secret_line = secret_line
        """The instance secret's header line (see InstanceSecrets.line), or empty."""
        self.model = route.model
        self.ratio = route.ratio
        self.targets = targets
        self.stats = stats
        self._turn = 0

    def pick(self, now: float, avoid: Sequence[Target] = ()) -> Target | None:
        """The instance with the fewest outstanding calls, ties taken in turn.

        Instances in ``avoid`` are skipped; ejected ones are chosen only when no other is left.
        """
        targets = self.targets
        n = len(targets)
        if n == 1:
            only = targets[0]
            return None if only in avoid else only
        start = self._turn
        self._turn = start + 1
        best: Target | None = None
        best_load = _EJECTED_PENALTY * 2
        for i in range(n):
            target = targets[(start + i) % n]
            if target in avoid:
                continue
            load = target.outstanding
            if target.ejected_until > now:
                load += _EJECTED_PENALTY
            if load < best_load:
                best, best_load = target, load
        return best


class Service:
    """One servable service: its key hashes, its traffic bucket and its weighted versions."""

    __slots__ = (
        "_by_idx",
        "_by_label",
        "_cumulative",
        "_live",
        "bucket",
        "counters",
        "key_hashes",
        "route",
        "rules",
        "uid",
        "versions",
    )

    def __init__(
        self,
        route: ServiceRoute,
        versions: tuple[Version, ...],
        bucket: TokenBucket | SharedBucket,
        counters: ServiceCounters,
    ):
        self.route = route
        self.uid = route.uid
        self.key_hashes = route.key_hashes
        self.versions = versions
        self.bucket = bucket
        self.counters = counters
        self.rules = bool(route.rules)
        self._by_idx = {v.idx: v for v in versions}
        self._by_label = {v.label: v for v in versions}
        self._live, self._cumulative = weights([v for v in versions if v.targets])

    @property
    def ready(self) -> bool:
        return bool(self._live)

    def choose(self) -> Version:
        """A version with a ready instance, drawn by traffic ratio. Only call when ``ready``."""
        live = self._live
        if len(live) == 1:
            return live[0]
        cumulative = self._cumulative
        return live[bisect.bisect_right(cumulative, random.random() * cumulative[-1])]

    def first(self, headers: Mapping[str, str]) -> Version:
        """The version a call goes to first: the one the first matching routing rule names,
        when it has a ready instance, else one drawn by ratio. Only call when ``ready``.

        A rule sends calls to its version whatever that version's ratio, 0 % included.
        """
        if self.rules:
            idx = self.route.ruled(headers)
            if idx is not None:
                named = self._by_idx.get(idx)
                if named is not None:
                    if named.targets:
                        named.stats.rule_hits += 1
                        return named
                    named.stats.rule_fallbacks += 1
        return self.choose()

    def version(self, label: str) -> Version | None:
        return self._by_label.get(label)

    def fallback(self, tried: Collection[str]) -> Version | None:
        """Another version with a ready instance, by ratio, after those labelled ``tried``."""
        live, cumulative = weights([v for v in self.versions if v.targets and v.label not in tried])
        if not live:
            return None
        return live[bisect.bisect_right(cumulative, random.random() * cumulative[-1])]

    def next_target(
        self, version: Version, tried: list[Target], tried_labels: list[str], now: float
    ) -> tuple[Version, Target] | None:
        """Where the next attempt of a call goes: an instance of ``version`` not yet tried, else
        one of another version by ratio, else (all tried) ``version``'s again; None when the
        service has no ready instance left."""
        target = version.pick(now, tried)
        if target is not None:
            return version, target
        other: Version | None = version
        while other is not None:
            tried_labels.append(other.label)
            other = self.fallback(tried_labels)
            if other is not None and (target := other.pick(now, tried)) is not None:
                return other, target
        if version.targets:
            again = version.pick(now)
            assert again is not None
            return version, again
        if self.ready:
            chosen = self.choose()
            again = chosen.pick(now)
            assert again is not None
            return chosen, again
        return None


def weights(versions: list[Version]) -> tuple[list[Version], list[float]]:
    """The versions to draw from and their cumulative weights.

    Versions with a ratio take the traffic; the share of a version without a ready instance goes
    to the others in proportion. When only 0 % versions are ready they share the traffic evenly,
    because answering from a version the owner is moving away from beats answering 503.
    """
    weighted = [v for v in versions if v.ratio > 0]
    if weighted:
        versions = weighted
    cumulative: list[float] = []
    total = 0.0
    for v in versions:
        total += v.ratio if weighted else 1.0
        cumulative.append(total)
    return versions, cumulative


def labels(versions: Sequence[VersionRoute]) -> list[str]:
    """What names each version in headers and metrics: its version, or model@version when two
    versions of different models in one service share a version string."""
    seen: dict[str, int] = {}
    for v in versions:
        seen[v.version] = seen.get(v.version, 0) + 1
    return [
        v.version if seen[v.version] == 1 else f"{v.model.rpartition('/')[2]}@{v.version}"
        for v in versions
    ]
