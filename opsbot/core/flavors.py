"""Flavors (the "Specifications" of the Deploy form) and whether the nodes can host them."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsbot.core.errors import ConfigInvalid, FieldError
from opsbot.core.hardware import GIB, Node

ModelOrigin = Literal["custom", "exeml"]


class Accelerator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["nvidia", "ascend"]
    model: str = Field("", description='matched against the device name; "" is any model')
    count: int = Field(1, ge=1, le=64)

    def __str__(self) -> str:
        what = {"nvidia": "NVIDIA", "ascend": "Ascend"}[self.kind]
        model = f" {self.model}" if self.model else " (any model)"
        return f"{self.count} x {what}{model}"


def _custom_only() -> list[ModelOrigin]:
    return ["custom"]


class Flavor(BaseModel):
    """One specification: what one instance gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str
    cpus: float = Field(..., gt=0)
    memory_gib: float = Field(..., gt=0)
    arch: Literal["any", "x86_64", "aarch64"] = "any"
    allows: list[ModelOrigin] = Field(default_factory=_custom_only, min_length=1)
    accelerator: Accelerator | None = None
    description: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def exeml_only(self) -> bool:
        return self.allows == ["exeml"]


@dataclass(frozen=True)
class FlavorStatus:
    """A flavor with whether some node can host one instance of it, and why not."""

    flavor: Flavor
    available: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        f = self.flavor
        return {
            "id": f.id,
            "name": f.name,
            "cpus": f.cpus,
            "memory_gib": f.memory_gib,
            "arch": f.arch,
            "accelerator": f.accelerator.model_dump() if f.accelerator else None,
            "allows": list(f.allows),
            "description": f.description,
            "available": self.available,
            "reason": self.reason,
        }


def builtin_flavors_path() -> Path:
    """flavors.toml shipped in the wheel, or the top-level one in a source checkout."""
    packaged = resources.files("opsbot").joinpath("flavors.toml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "flavors.toml"


def load_flavors(path: Path | None = None) -> list[Flavor]:
    """Read a flavors file (the built-in one by default). Raises ConfigInvalid on bad input."""
    path = path or builtin_flavors_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigInvalid([FieldError(str(path), f"cannot read it: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigInvalid([FieldError(str(path), "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid([FieldError(str(path), f"not valid TOML: {exc}")]) from None
    raw = data.get("flavor")
    if not isinstance(raw, list) or not raw:
        raise ConfigInvalid(
            [FieldError(str(path), "no [[flavor]] tables: list at least one flavor")]
        )
    flavors: list[Flavor] = []
    errors: list[FieldError] = []
    for i, item in enumerate(raw):
        try:
            flavors.append(Flavor.model_validate(item))
        except ValidationError as exc:
            for d in exc.errors(include_url=False):
                key = ".".join(str(p) for p in d["loc"])
                errors.append(FieldError(f"{path.name}: flavor[{i}].{key}", d["msg"]))
    ids = [f.id for f in flavors]
    for dup in sorted({x for x in ids if ids.count(x) > 1}):
        errors.append(FieldError(f"{path.name}: flavor {dup}", "ids must be unique"))
    if errors:
        raise ConfigInvalid(errors)
    return flavors


def fits_node(flavor: Flavor, node: Node, cpu_factor: float, memory_factor: float) -> str:
    """Why one instance of the flavor cannot run on this node; "" when it can."""
    problems = []
    if flavor.arch != "any" and node.arch != flavor.arch:
        problems.append(f"needs {flavor.arch} CPUs, the node is {node.arch}")
    acc = flavor.accelerator
    if acc and node.count(acc.kind, acc.model) < acc.count:
        problems.append(f"needs {acc}, the node has {node.count(acc.kind, acc.model)}")
    if flavor.cpus > node.cpus * cpu_factor:
        problems.append(f"needs {flavor.cpus:g} vCPUs, the node offers {node.cpus * cpu_factor:g}")
    if flavor.memory_bytes > node.memory_bytes * memory_factor:
        problems.append(
            f"needs {flavor.memory_gib:g} GiB, the node offers "
            f"{node.memory_gib * memory_factor:.1f} GiB"
        )
    return "; ".join(problems)


def flavor_status(
    flavor: Flavor, nodes: Sequence[Node], cpu_factor: float = 1.0, memory_factor: float = 1.0
) -> FlavorStatus:
    """Available when at least one node can host one instance; else the reason per node."""
    if not nodes:
        return FlavorStatus(flavor, False, "no nodes are known")
    reasons = []
    for node in nodes:
        why = fits_node(flavor, node, cpu_factor, memory_factor)
        if not why:
            return FlavorStatus(flavor, True, "")
        reasons.append(why if len(nodes) == 1 else f"{node.name}: {why}")
    return FlavorStatus(flavor, False, " | ".join(reasons))
