"""The Runtime protocol: how the controller starts, watches and stops model instances.

A runtime knows nothing of services or statuses; it runs one model server per
:class:`InstanceSpec` and tells whether it still runs. Implementations: ``process`` (the embedded
default), ``docker`` and ``swarm``; tests use :class:`FakeRuntime`.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from opsbot.core.flavors import Flavor
from opsbot.core.hardware import Device


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a runtime needs to run one instance of one service version."""

    service_uid: str
    owner: str
    idx: int
    n: int
    model_name: str
    version: str
    path: Path
    format: str
    entry: str | None
    flavor: Flavor
    env: Mapping[str, str]
    devices: tuple[Device, ...] = ()
    #: The resource pool the service runs in (the swarm runtime places by node label).
    pool: str = "public"

    @property
    def key(self) -> str:
        """The instance's identity across restarts: ``uid/idx/n``."""
        return f"{self.service_uid}/{self.idx}/{self.n}"


@dataclass(frozen=True)
class Started:
    handle: str
    host: str
    port: int


@dataclass(frozen=True)
class Owned:
    """An instance the runtime found running, with the identity it was started under."""

    handle: str
    key: str
    host: str
    port: int


@dataclass(frozen=True)
class Exit:
    """Why an instance is no longer running: exit code (if known) and the last log lines."""

    code: int | None
    reason: str


class Runtime(Protocol):
    name: str

    def start(self, spec: InstanceSpec) -> Started:
        """Start one instance; return at once (readiness is the controller's business)."""
        ...

    def exited(self, handle: str) -> Exit | None:
        """None while the instance runs; otherwise how it ended."""
        ...

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        """Stop the instance (SIGTERM, then SIGKILL after the grace period). Idempotent."""
        ...

    def foreign_listener(self, handle: str, host: str, port: int) -> str | None:
        """Why what answers on the instance's address is not the instance (another program
        took the port it was given before it bound it), or None: it is, or nothing else can
        be there (a socket the daemon bound itself), or the runtime cannot tell. The
        controller asks before it first routes to an instance."""
        ...

    def owned(self) -> Sequence[Owned]:
        """Every instance this runtime runs for this OPSBOT_HOME, found by its labels."""
        ...

    def release(self, service_uid: str, keep: Collection[int]) -> None:
        """Remove what the runtime keeps on disk for the service's versions (slots) other
        than ``keep``: the controller calls it once none of their instances runs or starts
        (a deleted service's, a version a modification dropped, a failed deploy's)."""
        ...

    def sweep(self, keep: Mapping[str, Collection[int]]) -> None:
        """At start, before any instance starts: remove what the runtime keeps on disk for
        every service version not in ``keep`` (service uid -> slots with an instance), which
        a daemon killed or failing before its release left behind."""
        ...

    def logs(self, handle: str, tail: int = 100) -> list[str]: ...

    def rotate_logs(self) -> None:
        """Keep the instances' logs within :data:`opsbot.core.logcap.LOG_CAP`; the controller
        calls it on every pass, so it must be quick when there is nothing to rotate."""
        ...


LOAD_FAILED = "LOAD FAILED:"
SERVER_MODULE = "opsbot.serving.server"


def _killing_signal(code: int | None) -> str | None:
    """The signal that ended a process: a negative return code (a child), or 128+N (a
    container's exit code, the shell's convention)."""
    if code is None:
        return None
    number = -code if code < 0 else code - 128 if 128 < code < 160 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def failure_reason(lines: Sequence[str], code: int | None) -> str:
    """The most telling line of a dead instance's log: the model server's LOAD FAILED line if
    any, else how it ended: the signal that killed it (its log, whose last line may well say
    "ready", is not the cause then), or the exit code with the last non-empty line."""
    for line in reversed(lines):
        if LOAD_FAILED in line:
            return line[line.index(LOAD_FAILED) + len(LOAD_FAILED) :].strip()
    killed = _killing_signal(code)
    if killed is not None:
        return (
            f"killed by {killed} (exit code {code}): not a failure of the model server; out "
            "of memory, or stopped from outside opsbot"
        )
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    if code is None:
        return f"ended, exit code unknown; last log line: {last}" if last else "ended"
    return f"exit code {code}: {last}" if last else f"exit code {code}"


@dataclass
class FakeInstance:
    spec: InstanceSpec
    port: int
    exit: Exit | None = None


@dataclass
class FakeRuntime:
    """An in-memory runtime for controller tests: instances 'run' until told to die."""

    name: str = "fake"
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    #: What each version keeps on disk in a real runtime (a staged model): service uid ->
    #: slots, added by start, removed by release and sweep.
    staged: dict[str, set[int]] = field(default_factory=dict)
    #: How many times the controller has had the logs rotated.
    log_rotations: int = 0
    #: Handle -> what foreign_listener says of it (another program answering in its place).
    foreign: dict[str, str] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def start(self, spec: InstanceSpec) -> Started:
        n = next(self._ids)
        handle = f"fake-{n}"
        self.instances[handle] = FakeInstance(spec, 20000 + n)
        self.started.append(handle)
        self.staged.setdefault(spec.service_uid, set()).add(spec.idx)
        return Started(handle, "127.0.0.1", 20000 + n)

    def exited(self, handle: str) -> Exit | None:
        inst = self.instances.get(handle)
        return Exit(None, "gone") if inst is None else inst.exit

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        if self.instances.pop(handle, None) is not None:
            self.stopped.append(handle)

    def foreign_listener(self, handle: str, host: str, port: int) -> str | None:
        return self.foreign.get(handle)

    def owned(self) -> Sequence[Owned]:
        return [
            Owned(h, i.spec.key, "127.0.0.1", i.port)
            for h, i in self.instances.items()
            if i.exit is None
        ]

    def logs(self, handle: str, tail: int = 100) -> list[str]:
        return []

    def rotate_logs(self) -> None:
        self.log_rotations += 1

    def release(self, service_uid: str, keep: Collection[int]) -> None:
        slots = self.staged.get(service_uid, set()) & set(keep)
        if slots:
            self.staged[service_uid] = slots
        else:
            self.staged.pop(service_uid, None)

    def sweep(self, keep: Mapping[str, Collection[int]]) -> None:
        for uid in list(self.staged):
            self.release(uid, keep.get(uid, ()))

    def kill(self, handle: str, code: int = 1, reason: str = "killed") -> None:
        self.instances[handle].exit = Exit(code, reason)


def device_env(flavor: Flavor, devices: Sequence[Device]) -> dict[str, str]:
    """The variables that pin an instance to the accelerators the controller assigned.

    Instances of CPU flavors see no GPU at all, so they cannot take one by accident.
    """
    nvidia = [str(d.index) for d in devices if d.kind == "nvidia"]
    ascend = [str(d.index) for d in devices if d.kind == "ascend"]
    env = {"CUDA_VISIBLE_DEVICES": ",".join(nvidia)}
    if ascend or (flavor.accelerator and flavor.accelerator.kind == "ascend"):
        env["ASCEND_VISIBLE_DEVICES"] = ",".join(ascend)
    return env


def thread_env(flavor: Flavor) -> dict[str, str]:
    """Cap the math libraries' thread pools at the flavor's vCPUs (rounded up)."""
    threads = str(max(1, -int(-flavor.cpus // 1)))
    return {
        name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }


def server_args(
    model_path: str,
    spec: InstanceSpec,
    host: str,
    port: int,
    listen_fd: int | None = None,
    unix: str | None = None,
) -> list[str]:
    """The model server's arguments for one instance: every runtime runs the same ones. It
    listens on ``host``:``port``; given ``listen_fd``, on the socket it inherits there; given
    ``unix``, on a unix socket it makes at that path."""
    args = [
        "--path",
        model_path,
        "--format",
        spec.format,
        "--name",
        spec.model_name,
        "--version",
        spec.version,
    ]
    if listen_fd is not None:
        args += ["--listen-fd", str(listen_fd)]
    elif unix is not None:
        args += ["--unix", unix]
    else:
        args += ["--host", host, "--port", str(port)]
    if spec.entry:
        args += ["--entry", spec.entry]
    return args


def server_argv(
    python: str,
    model_path: str,
    spec: InstanceSpec,
    host: str,
    port: int,
    listen_fd: int | None = None,
    unix: str | None = None,
) -> list[str]:
    """The model server's command line for one instance."""
    return [
        python,
        "-m",
        SERVER_MODULE,
        *server_args(model_path, spec, host, port, listen_fd, unix),
    ]
