"""Where opsbot keeps its data, and the admin's config file ($OPSBOT_HOME/config.toml)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from opsbot.core.errors import ConfigInvalid, FieldError
from opsbot.core.zygote import DEFAULT_PRELOAD

HOME_ENV = "OPSBOT_HOME"
CONFIG_NAME = "config.toml"


def default_home() -> Path:
    """$OPSBOT_HOME, else the user's data directory (~/.local/share/opsbot on Linux)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("opsbot", appauthor=False))


#: The node label key that gives a node to a dedicated pool when the pool names no other label.
POOL_LABEL_KEY = "opsbot.pool"
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}=[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class PoolConfig(BaseModel):
    """A dedicated resource pool: machines (or capacity) set aside for some users and flavors.

    Its nodes are the nodes carrying its label (``label``, default ``opsbot.pool=<name>``) and
    those ``nodes`` names. Capacity: ``cpus``/``memory_gib``/``accelerators`` when declared (a
    share of one machine, or a cap on the nodes), else what its nodes have.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    label: str = Field(
        "",
        description="node label KEY=VALUE of the pool's nodes; empty: opsbot.pool=<name>",
    )
    cpus: float | None = Field(
        None, gt=0, description="vCPUs the pool may hand out; unset: its nodes' vCPUs"
    )
    memory_gib: float | None = Field(
        None, gt=0, description="memory the pool may hand out, in GiB; unset: its nodes' memory"
    )
    accelerators: dict[str, int] = Field(
        default_factory=dict,
        description="accelerators by kind, e.g. {nvidia = 2}; unset: its nodes' accelerators",
    )
    flavors: list[str] = Field(
        default_factory=list, description="flavor ids allowed in this pool; empty means all"
    )
    members: list[str] = Field(
        default_factory=list, description="user names who may deploy here; empty means everyone"
    )
    nodes: list[str] = Field(
        default_factory=list,
        description="node names (hostnames) in the pool besides those carrying its label",
    )

    @field_validator("name")
    @classmethod
    def _not_public(cls, value: str) -> str:
        if value == "public":
            raise ValueError('"public" is the shared pool; give a dedicated pool another name')
        return value

    @field_validator("label")
    @classmethod
    def _label_shape(cls, value: str) -> str:
        if value and not re.match(_LABEL, value):
            raise ValueError(
                f"{value!r} is no node label; write KEY=VALUE of letters, digits, '.', '_' "
                "and '-', like opsbot.pool=team-a (set on a node with `docker node update "
                "--label-add opsbot.pool=team-a NODE`)"
            )
        return value

    @model_validator(mode="after")
    def _whole_capacity(self) -> PoolConfig:
        if (self.cpus is None) != (self.memory_gib is None):
            raise ValueError(
                "declare both cpus and memory_gib (a share of the machine), or neither (the "
                "pool is what its labelled nodes have)"
            )
        return self

    @property
    def declared(self) -> bool:
        """Whether the pool's capacity is declared rather than read from its nodes."""
        return self.cpus is not None

    @property
    def node_label(self) -> tuple[str, str]:
        """The (key, value) of the node label that puts a node in this pool."""
        key, _, value = (self.label or f"{POOL_LABEL_KEY}={self.name}").partition("=")
        return key, value


class PublicPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu_overcommit: float = Field(
        4.0,
        gt=0,
        le=64,
        description="the public pool offers the nodes' vCPUs times this factor",
    )
    memory_overcommit: float = Field(
        2.0, gt=0, le=16, description="the public pool offers the nodes' memory times this factor"
    )


class Config(BaseModel):
    """Everything the admin can set in config.toml; every key has a default."""

    model_config = ConfigDict(extra="forbid")

    admins: list[str] = Field(
        default_factory=list, description="local user names who may act on any service"
    )
    quota: int = Field(20, ge=1, le=10_000, description="services one user may hold")
    runtime: Literal["process", "docker", "swarm"] = "process"
    public_pool: PublicPoolConfig = Field(default_factory=PublicPoolConfig)
    pools: list[PoolConfig] = Field(default_factory=list)
    deploy_timeout_s: int = Field(1200, ge=10, description="Deploying longer than this: Failed")
    reminder_minutes: int = Field(10, ge=1, le=1440)
    event_retention_days: int = Field(30, ge=1)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8780, ge=0, le=65535, description="0: any free port")
    gateway_max_body_mb: float = Field(12, gt=0, le=1024, description="request body cap")
    gateway_timeout_s: float = Field(40, gt=0, le=3600, description="upstream call timeout")
    gateway_workers: int = Field(
        0, ge=0, le=256, description="gateway worker processes on its port; 0: one per core"
    )
    socket_group: str | None = Field(
        None, description="group given the control socket (mode 0660), e.g. opsbot"
    )
    api_listen: str | None = Field(
        None, description="HOST:PORT of an optional TCP control listener (user tokens)"
    )
    model_python: str | None = Field(
        None,
        description="the interpreter model code runs with (the registry's check, process "
        "instances); default: opsbot's own. Every owner's account must be able to run it: when "
        "opsbot's own lives where they cannot (a pyenv under /root), name a system python3 of "
        "the same version, and opsbot puts its packages on that interpreter's path",
    )
    model_preload: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PRELOAD),
        description="modules a preloaded process imports once so that each process instance "
        "starts as a fork of it instead of importing them again (the model libraries); "
        "[]: every instance starts its own interpreter",
    )
    container_network: Literal["none", "host"] = Field(
        "none",
        description="docker runtime: the network of a container of opsbot's model server: none "
        "(it reaches nothing) or host (the machine's, for a model that fetches what it needs as it "
        "loads; it then reaches whatever the machine serves). Served on its unix socket either "
        "way; a model of format image always has host",
    )
    run_dir: str | None = Field(
        None,
        description="where each instance's own copy of its model lives, outside OPSBOT_HOME "
        "(default: a directory per daemon under the system's temporary directory)",
    )
    flavors_file: str | None = Field(
        None, description="path to a flavors.toml that replaces the built-in list"
    )

    @field_validator("pools")
    @classmethod
    def _unique_pools(cls, pools: list[PoolConfig]) -> list[PoolConfig]:
        names = [p.name for p in pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique; {', '.join(dupes)} repeats")
        labels = ["=".join(p.node_label) for p in pools]
        shared = sorted({a for a in labels if labels.count(a) > 1})
        if shared:
            raise ValueError(
                f"each pool needs its own node label; {', '.join(shared)} names more than one "
                "pool (set label = KEY=VALUE on one of them)"
            )
        return pools

    def is_admin(self, user: str) -> bool:
        return user in self.admins

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)


def load_config(home: Path) -> Config:
    """Read $OPSBOT_HOME/config.toml; a missing file means every default.

    Raises ConfigInvalid naming the key and the fix when the file breaks a rule.
    """
    path = home / CONFIG_NAME
    if not path.exists():
        return Config()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigInvalid([FieldError(str(path), f"cannot read it: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid([FieldError(str(path), f"not valid TOML: {exc}")]) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = []
        for d in exc.errors(include_url=False):
            key = ".".join(str(p) for p in d["loc"]) or "config"
            msg = str(d["msg"]).removeprefix("Value error, ")
            if d["type"] == "extra_forbidden":
                msg = "unknown key; see the configuration section of the README"
            elif d["type"] == "missing":
                msg = "required key: add it; see the configuration section of the README"
            errors.append(FieldError(f"{path.name}: {key}", msg))
        raise ConfigInvalid(errors) from None
