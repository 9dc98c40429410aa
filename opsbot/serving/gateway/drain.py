"""Drain: an instance that leaves the routes gets no new call, and the calls in flight there
finish and stay counted (``/stats`` lists it under ``draining`` and in ``upstreams`` with
``routed`` false) until none is left, which is what a controller waits for before stopping it."""

from __future__ import annotations

from collections.abc import Mapping

from opsbot.serving.gateway.routing import Target

#: A target's identity across route changes: host, port and model name.
TargetKey = tuple[str, int, str]


class Drain:
    """The instances out of the routes that still have calls outstanding on them."""

    def __init__(self) -> None:
        self._targets: dict[TargetKey, Target] = {}

    def get(self, key: TargetKey) -> Target | None:
        """The draining target at ``key``, so a route bringing it back keeps its counts."""
        return self._targets.get(key)

    def update(self, old: Mapping[TargetKey, Target], routed: Mapping[TargetKey, Target]) -> None:
        """After a route change from ``old`` to ``routed``: calls in flight to an instance that
        left the routes finish there; none starts there."""
        self._targets = {
            key: target
            for key, target in (*self._targets.items(), *old.items())
            if key not in routed and target.outstanding > 0
        }

    def current(self) -> list[Target]:
        """The draining instances now, forgetting those whose last call finished."""
        self._targets = {k: t for k, t in self._targets.items() if t.outstanding > 0}
        return list(self._targets.values())
