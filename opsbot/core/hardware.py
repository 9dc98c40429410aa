"""What the nodes really have: CPUs, memory, architecture, NVIDIA GPUs, Ascend NPUs.

Detection sits behind the small ``HardwareProbe`` protocol so tests use a fake inventory.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

GIB = 1024**3
UNKNOWN_ASCEND = "Ascend"


@dataclass(frozen=True)
class Device:
    """One accelerator: kind "nvidia" or "ascend", its model name and its index on the node."""

    kind: str
    model: str
    index: int


@dataclass(frozen=True)
class Reserved:
    """What the instances placed on a node hold of it (Swarm's reservations)."""

    cpus: float = 0.0
    memory_bytes: int = 0
    #: Accelerators by opsbot kind ("nvidia", "ascend").
    accelerators: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Node:
    """One machine that can run instances."""

    name: str
    cpus: int
    memory_bytes: int
    arch: str
    devices: tuple[Device, ...] = field(default_factory=tuple)
    labels: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: "ready", or why it takes no instances now ("down", "drain", "pause", ...).
    state: str = "ready"
    #: The address its instances answer on ("" when unknown: this machine).
    addr: str = ""
    #: What its instances hold now, when the probe can tell (None: unknown).
    reserved: Reserved | None = None

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def matching(self, kind: str, model: str = "") -> list[Device]:
        """The devices of this kind whose model contains ``model`` (case-insensitive).

        An Ascend device whose model could not be read (no npu-smi) matches any Ascend model.
        """
        needle = model.lower()
        return [
            d
            for d in self.devices
            if d.kind == kind and (needle in d.model.lower() or d.model == UNKNOWN_ASCEND)
        ]

    def count(self, kind: str, model: str = "") -> int:
        return len(self.matching(kind, model))

    def label(self, key: str) -> str | None:
        """The value of one of its labels, if it has it."""
        return dict(self.labels).get(key)


class HardwareProbe(Protocol):
    def nodes(self) -> Sequence[Node]:
        """The nodes that take instances now (ready and active)."""
        ...


def inventory(probe: HardwareProbe) -> Sequence[Node]:
    """Every node the probe knows, those that take no instances now included (their
    ``state`` says why): the probe's ``inventory()`` when it has one, else its ``nodes()``."""
    listed = getattr(probe, "inventory", None)
    return list(listed()) if callable(listed) else list(probe.nodes())


def normalise_arch(machine: str) -> str:
    machine = machine.lower()
    if machine in ("amd64", "x86_64", "x64"):
        return "x86_64"
    if machine in ("arm64", "aarch64", "armv8l"):
        return "aarch64"
    return machine


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def detect_nvidia(nvidia_smi: str | None = None) -> list[Device]:
    """GPUs as nvidia-smi lists them; none when nvidia-smi is absent or fails."""
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[Device]:
    devices = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",", 1)]
        if len(parts) == 2 and parts[0].isdigit():
            devices.append(Device("nvidia", parts[1], int(parts[0])))
    return devices


def detect_ascend(dev: Path = Path("/dev"), npu_smi: str | None = None) -> list[Device]:
    """Ascend NPUs from /dev/davinciN; the model (310, 910) from npu-smi when it is there."""
    indexes = sorted(
        int(m.group(1))
        for p in (dev.glob("davinci*") if dev.is_dir() else [])
        if (m := re.fullmatch(r"davinci(\d+)", p.name))
    )
    if not indexes:
        return []
    model = UNKNOWN_ASCEND
    exe = npu_smi or shutil.which("npu-smi")
    if exe:
        try:
            out = subprocess.run(
                [exe, "info"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            found = re.search(r"\b(310[A-Z]?|910[A-Z]?)\b", out)
            if found:
                model = f"Ascend {found.group(1)}"
        except (OSError, subprocess.SubprocessError):
            pass
    return [Device("ascend", model, i) for i in indexes]


class LocalProbe:
    """The machine opsbot runs on, detected once per process."""

    def __init__(self) -> None:
        self._nodes: list[Node] | None = None

    def nodes(self) -> Sequence[Node]:
        if self._nodes is None:
            self._nodes = [
                Node(
                    name=socket.gethostname(),
                    cpus=_cpus(),
                    memory_bytes=_memory_bytes(),
                    arch=normalise_arch(platform.machine()),
                    devices=tuple(detect_nvidia() + detect_ascend()),
                )
            ]
        return self._nodes


class FakeProbe:
    """A fixed inventory, for tests and for describing a cluster by hand."""

    def __init__(self, nodes: Sequence[Node]):
        self._nodes = list(nodes)

    def nodes(self) -> Sequence[Node]:
        return self._nodes
