"""The rules of the form that need the world: registry, flavors, pools.

:func:`check_spec` turns a structurally valid DeploySpec into the model versions it names,
collecting every problem with its field so a front end can show them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsbot.core.errors import FieldError, NotFound, SpecInvalid
from opsbot.core.pools import Pools
from opsbot.core.registry import NORMAL, ModelVersion, Registry
from opsbot.core.spec import DeploySpec, ModelEntry, parse_spec, spec_parts, spec_warnings


@dataclass(frozen=True)
class CheckedSpec:
    """A spec whose every entry resolved to a Normal version on a usable flavor."""

    spec: DeploySpec
    versions: tuple[ModelVersion, ...]
    warnings: tuple[FieldError, ...]


def check_spec(spec: DeploySpec, user: str, registry: Registry | None, pools: Pools) -> CheckedSpec:
    """Check the spec against pools, flavors and (when given) the registry.

    Raises SpecInvalid with every problem found. Quota, name uniqueness and free capacity are
    checked at creation, inside the write transaction.
    """
    errors, versions = _world_errors(spec.resource_pool, spec.models, user, registry, pools)
    if errors:
        raise SpecInvalid(errors)
    return CheckedSpec(spec, tuple(versions), tuple(spec_warnings(spec)))


def check_data(data: Any, user: str, registry: Registry | None, pools: Pools) -> CheckedSpec:
    """:func:`parse_spec` then :func:`check_spec`: every problem at once. A spec refused on its
    fields has what of it is valid (its versions, its pool) checked against the world too, so
    a user who fixes a bad name does not learn of a missing model version only on the next try.
    """
    try:
        spec = parse_spec(data)
    except SpecInvalid as exc:
        parts = spec_parts(data, exc.errors)
        if parts is None or parts.models is None:
            raise
        more, _ = _world_errors(parts.resource_pool, parts.models, user, registry, pools)
        if not more:
            raise
        raise SpecInvalid([*exc.errors, *more]) from None
    return check_spec(spec, user, registry, pools)


def _world_errors(
    pool: str | None,
    models: list[ModelEntry],
    user: str,
    registry: Registry | None,
    pools: Pools,
) -> tuple[list[FieldError], list[ModelVersion]]:
    """The problems of a spec's pool and versions against the pools, the flavors and (when
    given) the registry, and the versions they resolve to. ``pool`` None: the pool itself is
    invalid (reported as such): no flavor is checked against it."""
    errors: list[FieldError] = []
    pool_ok = pool is not None and pools.exists(pool)
    if pool is not None and not pool_ok:
        errors.append(
            FieldError(
                "resource_pool", f"no pool {pool!r}; choose one of {', '.join(pools.names())}"
            )
        )
    elif pool is not None and not pools.may_use(user, pool):
        errors.append(
            FieldError("resource_pool", f"{user} is not a member of pool {pool}; ask an admin")
        )
        pool_ok = False

    versions: list[ModelVersion] = []
    for i, entry in enumerate(models):
        at = f"models[{i}]"
        flavor = pools.flavors.get(entry.flavor)
        if flavor is None:
            errors.append(
                FieldError(
                    f"{at}.flavor",
                    f"no flavor {entry.flavor!r}; choose one of {', '.join(pools.flavors)}",
                )
            )
        elif pool_ok and pool is not None:
            status = pools.flavor_status(flavor, pool)
            if not status.available:
                errors.append(
                    FieldError(f"{at}.flavor", f"{flavor.id} is unavailable: {status.reason}")
                )
        if registry is None:
            continue
        try:
            mv = registry.resolve(user, entry.source, entry.model, entry.version)
        except NotFound as exc:
            errors.append(FieldError(f"{at}.{exc.field or 'model'}", exc.message))
            continue
        if mv.status != NORMAL:
            why = f": {mv.reason}" if mv.reason else ""
            errors.append(
                FieldError(
                    f"{at}.version",
                    f"{entry.model} {entry.version} is {mv.status.capitalize()}{why}; "
                    "only versions in the Normal state can be deployed",
                )
            )
        if flavor is not None and mv.origin not in flavor.allows:
            allowed = " or ".join(flavor.allows)
            errors.append(
                FieldError(
                    f"{at}.flavor",
                    f"{flavor.id} takes only {allowed} models and {entry.model} is {mv.origin}; "
                    "choose a flavor that allows it",
                )
            )
        versions.append(mv)
    return errors, versions
