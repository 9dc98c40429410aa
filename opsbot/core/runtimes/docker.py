"""The docker runtime: one container per instance on one Docker engine, through docker-py.

A container runs the same model server as the process runtime (``python3 -m
opsbot.serving.server``) from the serving image (``opsbot image build``), with:

- labels ``opsbot.service`` (service uid), ``opsbot.version``, ``opsbot.instance`` (the
  instance key ``uid/idx/n``), ``opsbot.owner``, ``opsbot.home`` (the data directory, so two
  homes on one engine never touch each other's containers) and ``opsbot.socket`` (or
  ``opsbot.port``); a restarted daemon adopts containers by these labels alone and never
  touches one without them;
- the flavor's CPU (``nano_cpus``, at most the engine's CPUs) and memory caps, GPUs as device
  requests for the devices the controller assigned (plus ``CUDA_VISIBLE_DEVICES``), Ascend NPUs
  as device nodes;
- the service's env, the thread-pool variables, the model directory mounted read-only at
  ``/model`` and the daemon's own ``opsbot`` package read-only at ``/opt/opsbot/opsbot``;
- user 10001, ``no-new-privileges``, every capability dropped, a read-only root filesystem with a
  tmpfs ``/tmp``; restart policy on-failure (3 tries), a health check on the readiness route;
- no network at all (``network_mode: none``; config ``container_network = "host"`` gives the
  machine's, for models that fetch at load): the server listens on a unix socket in a
  directory of the daemon's own, made for the instance in the run directory's ``containers``
  (0700, the daemon's; as root, a 64 KiB tmpfs of its own, so the container writes no more
  there than its socket) and mounted at ``/run/opsbot``. So model code reaches nothing on the
  machine's network, nobody can take the instance's address before it binds it (a TCP port
  picked free can be taken between the pick and the bind), and only the daemon reaches it.

A model of format ``image`` runs its own image instead (named by the version's entry): it gets
the same labels, caps, user, env and ``/model`` mount, ``OPSBOT_PORT``, host networking on a free
port, and must serve ``POST /predict`` and ``GET /v2/health/ready`` on
``127.0.0.1:$OPSBOT_PORT`` (the contract is ``opsbot.core.images.IMAGE_CONTRACT``); its own
HEALTHCHECK, if any, is kept. Before such an instance's first route the controller asks
:meth:`DockerRuntime.foreign_listener` whether the port is still the container's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest, LogConfig, Mount

from opsbot.core.address import unix_address, unix_path
from opsbot.core.errors import OpsbotError
from opsbot.core.images import IMAGE_FORMAT, USER, USER_ID, require_image
from opsbot.core.instance_auth import INSTANCE_SECRET_ENV, daemon_secret, instance_secret
from opsbot.core.listeners import describe, holders, listeners, pid_namespace
from opsbot.core.logcap import json_file_options
from opsbot.core.runtime import (
    Exit,
    InstanceSpec,
    Owned,
    Started,
    device_env,
    failure_reason,
    server_argv,
    thread_env,
)
from opsbot.core.runtimes.process import (
    fitting_socket_path,
    free_port,
    instance_leaf,
    package_root,
)
from opsbot.core.sandbox import remove_tree, run_root_path, run_subdir

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
LABEL_SERVICE = "opsbot.service"
LABEL_VERSION = "opsbot.version"
LABEL_INSTANCE = "opsbot.instance"
LABEL_OWNER = "opsbot.owner"
LABEL_HOME = "opsbot.home"
LABEL_PORT = "opsbot.port"
#: The host path of the unix socket a container serves on (none for a model of format image).
LABEL_SOCKET = "opsbot.socket"
LABEL_MODEL = "opsbot.model"
MODEL_MOUNT = "/model"
PACKAGE_MOUNT = "/opt/opsbot"
#: Where a container finds its socket's directory, and the socket's name in it.
SOCKET_MOUNT = "/run/opsbot"
SOCKET_NAME = "model.sock"
#: The run directory's directory of the containers' socket directories (the daemon's, 0700).
SOCKET_DIRS = "containers"
#: The size of the filesystem on each socket directory (as root): room for the socket alone.
SOCKET_DIR_BYTES = 64 * 1024
RESTART_MAX = 3
HEALTH_INTERVAL_S = 5
_NS = 1_000_000_000
#: Containers still (or about to be) running: the others have ended.
_ALIVE = ("running", "restarting", "paused")
#: What the engine cannot be reached with.
ENGINE_DOWN = (requests.exceptions.ConnectionError, docker.errors.DockerException)


class EngineUnavailable(OpsbotError):
    title = "No Docker engine"
    status = 503


def connect(base_url: str | None = None, timeout: int = 30) -> Any:
    """A docker-py client for ``base_url`` (default: ``DOCKER_HOST`` or the local socket),
    checked with a ping; a clear error saying the fix when no engine answers."""
    where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=where, timeout=timeout)
        client.ping()
    except ENGINE_DOWN as exc:
        raise EngineUnavailable(
            f"no Docker engine answers at {where} ({type(exc).__name__}); start one "
            "(`systemctl start docker`, or `bash .ci/start-docker` on a bare machine), set "
            "DOCKER_HOST, or use --runtime process",
            field="runtime",
        ) from exc
    return client


def home_id(home: Path) -> str:
    """The ``opsbot.home`` label value: the data directory, as the process runtime names it."""
    return str(Path(home).resolve())


def container_name(spec: InstanceSpec) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", spec.service_uid)[:24]
    return f"opsbot-{safe}-{spec.idx}-{spec.n}-{secrets.token_hex(3)}"


def labels(spec: InstanceSpec, home: Path, port: int, socket: str | None = None) -> dict[str, str]:
    found = {
        LABEL_SERVICE: spec.service_uid,
        LABEL_VERSION: spec.version,
        LABEL_MODEL: spec.model_name,
        LABEL_INSTANCE: spec.key,
        LABEL_OWNER: spec.owner,
        LABEL_HOME: home_id(home),
        LABEL_PORT: str(port),
    }
    if socket is not None:
        found[LABEL_SOCKET] = socket
    return found


def health_test(host: str, port: int) -> list[str]:
    """The container's health check: the model server's readiness route at (``host``,
    ``port``), an address as :mod:`opsbot.core.address` has it, asked as the daemon asks it,
    with the image's python3 (the image has no curl) and the mounted package."""
    code = (
        "import sys; from opsbot.core.address import get_status; "
        f"sys.exit(0 if get_status({host!r}, {port}, '/v2/health/ready', 3) == 200 else 1)"
    )
    return ["CMD", "python3", "-c", code]


def server_command(spec: InstanceSpec, port: int, unix: str | None = None) -> list[str]:
    """The model server's arguments, as the process runtime gives them, with in-container
    paths: listening on the unix socket ``unix``, else on ``port``."""
    return server_argv("python3", MODEL_MOUNT, spec, HOST, port, unix=unix)


def _devices(spec: InstanceSpec) -> dict[str, Any]:
    """GPUs as device requests for exactly the assigned devices; Ascend NPUs as device nodes."""
    out: dict[str, Any] = {}
    nvidia = [str(d.index) for d in spec.devices if d.kind == "nvidia"]
    if nvidia:
        out["device_requests"] = [
            DeviceRequest(driver="nvidia", device_ids=nvidia, capabilities=[["gpu"]])
        ]
    ascend = [d.index for d in spec.devices if d.kind == "ascend"]
    if ascend:
        nodes = [f"/dev/davinci{i}" for i in ascend]
        nodes += ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
        out["devices"] = [f"{n}:{n}:rwm" for n in nodes]
    return out


#: The name of a version's staged copy in the run directory: ``container-<uid>-<idx>``.
STAGED_PREFIX = "container-"


def _staged_leaf(service_uid: str, idx: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{STAGED_PREFIX}{service_uid}-{idx}")


def staged_for_container(home: Path, spec: InstanceSpec, root: Path | None = None) -> InstanceSpec:
    """``spec`` with its model directory replaced by a copy the container's user may read: the
    registry's own files are the daemon's alone. One copy per service version, made once
    (a version's files never change), under the run directory (``root``, as
    :func:`opsbot.core.sandbox.run_root` made it; else the one config.toml names).
    :class:`StagedModels` removes it once the version has no instance left."""
    from opsbot.core.accounts import Account, privileged
    from opsbot.core.config import load_config
    from opsbot.core.sandbox import remove_tree, run_root, stage

    run = root if root is not None else run_root(home, load_config(home).run_dir)
    base = run / _staged_leaf(spec.service_uid, spec.idx)
    target = base / "model"
    if not target.is_dir():
        base.mkdir(exist_ok=True)
        os.chmod(base, 0o711)  # explicit: the daemon's umask is 077
        # Staged aside, then renamed in: instances starting together, or a daemon killed
        # halfway, never leave a container a half-copied model.
        aside = base / f".staging-{secrets.token_hex(4)}"
        if privileged():
            stage(spec.path, aside, Account(USER_ID, USER_ID, "container"))
        else:
            stage(spec.path, aside, None, world=True)
        try:
            os.rename(aside, target)
        except OSError:  # another start put it there first
            remove_tree(aside)
    return replace(spec, path=target)


class StagedModels:
    """The staged copies of one home's versions (:func:`staged_for_container`), for the
    runtimes that mount them (docker, swarm). A copy lives while its version has an instance:
    the controller, which alone starts and stops them, says which versions still have one."""

    def __init__(self, home: Path, run_dir: str | None):
        """``run_dir``: config.toml's setting (None: see :func:`opsbot.core.sandbox.run_root`)."""
        from opsbot.core.sandbox import run_root_path

        self.home = Path(home)
        self._configured = run_dir
        self.root = run_root_path(self.home, self._configured)
        # Service uid -> slots with a copy: what this life staged and what the sweep kept, so
        # the controller's question after every reconciliation costs no I/O when none goes.
        self._held: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def stage(self, spec: InstanceSpec) -> InstanceSpec:
        """``spec`` with its model directory replaced by its version's staged copy."""
        from opsbot.core.sandbox import run_root

        with self._lock:
            self._held.setdefault(spec.service_uid, set()).add(spec.idx)
        # Made (and its owner checked) afresh: a runtime's release may have removed it.
        return staged_for_container(self.home, spec, run_root(self.home, self._configured))

    def release(self, service_uid: str, keep: Collection[int]) -> None:
        """Remove the copies of ``service_uid``'s versions other than ``keep``."""
        with self._lock:
            held = self._held.get(service_uid, set())
            going = held - set(keep)
            if not going:
                return
            held -= going
            if not held:
                del self._held[service_uid]
        for idx in sorted(going):
            self._remove(self.root / _staged_leaf(service_uid, idx))

    def sweep(self, keep: Mapping[str, Collection[int]]) -> None:
        """Remove every copy but those of the versions in ``keep`` (service uid -> slots)."""
        wanted = {
            _staged_leaf(uid, idx): (uid, idx) for uid, slots in keep.items() for idx in slots
        }
        try:
            with os.scandir(self.root) as entries:
                found = [e.name for e in entries if e.name.startswith(STAGED_PREFIX)]
        except FileNotFoundError:
            found = []
        for name in found:
            if name in wanted:
                uid, idx = wanted[name]
                with self._lock:
                    self._held.setdefault(uid, set()).add(idx)
            else:
                self._remove(self.root / name)

    @staticmethod
    def _remove(path: Path) -> None:
        from opsbot.core.sandbox import remove_tree

        if path.exists():
            log.info("removing %s: no instance of its version is left", path)
            remove_tree(path)


def container_args(
    spec: InstanceSpec,
    *,
    image: str,
    port: int,
    home: Path,
    engine_cpus: int | None = None,
    package_dir: Path | None = None,
    secret: str | None = None,
    socket_dir: Path | None = None,
    network: str = "none",
) -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for one instance: served on a unix
    socket in ``socket_dir`` (the instance's own directory, mounted), with ``network`` (config
    ``container_network``), when it is given; else on ``port`` with host networking (a model of
    format image, swarm's tasks)."""
    if socket_dir is not None and spec.format == IMAGE_FORMAT:
        raise ValueError("a model of format image serves on its port: it has no socket_dir")
    env: dict[str, str] = dict(spec.env)
    if secret:  # what the server asks of every caller (see opsbot.core.instance_auth)
        env[INSTANCE_SECRET_ENV] = secret
    env.update(thread_env(spec.flavor))
    env.update(device_env(spec.flavor, spec.devices))
    env.update(
        {
            "OPSBOT_INSTANCE": spec.key,
            "OPSBOT_HOME_ID": home_id(home),
            "OPSBOT_MODEL_DIR": MODEL_MOUNT,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/tmp",
        }
    )
    mounts = [Mount(MODEL_MOUNT, str(spec.path), type="bind", read_only=True)]
    inside: str | None = None  # the socket's path in the container
    if socket_dir is None:
        env["OPSBOT_PORT"] = str(port)
    else:
        inside = f"{SOCKET_MOUNT}/{SOCKET_NAME}"
        mounts.append(Mount(SOCKET_MOUNT, str(socket_dir), type="bind", read_only=False))
    if spec.format == IMAGE_FORMAT:
        if not spec.entry:
            raise OpsbotError("a model of format image names its image in its entry", field="entry")
        image, command = spec.entry, None  # its own server, and its own health check
    else:
        package = package_dir or Path(package_root()) / "opsbot"
        mounts.append(Mount(f"{PACKAGE_MOUNT}/opsbot", str(package), type="bind", read_only=True))
        env["PYTHONPATH"] = PACKAGE_MOUNT
        command = server_command(spec, port, inside)
    cpus = spec.flavor.cpus if engine_cpus is None else min(spec.flavor.cpus, engine_cpus)
    args: dict[str, Any] = {
        "image": image,
        "command": command,
        "name": container_name(spec),
        "labels": labels(
            spec, home, port, None if socket_dir is None else str(socket_dir / SOCKET_NAME)
        ),
        "environment": env,
        "mounts": mounts,
        "user": USER,
        "working_dir": "/tmp",
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
        "read_only": True,
        "tmpfs": {"/tmp": "rw,size=256m"},
        "init": True,
        "nano_cpus": int(cpus * _NS),
        "mem_limit": spec.flavor.memory_bytes,
        "network_mode": "host" if inside is None else network,
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": RESTART_MAX},
        "healthcheck": {
            "test": health_test(HOST, port)
            if inside is None
            else health_test(*unix_address(inside)),
            "interval": HEALTH_INTERVAL_S * _NS,
            "timeout": 4 * _NS,
            "retries": 3,
            "start_period": 60 * _NS,
        },
        "log_config": LogConfig(type="json-file", config=json_file_options()),
        "detach": True,
    }
    if spec.format == IMAGE_FORMAT:
        del args["healthcheck"]  # it may have no python3: its image's HEALTHCHECK, if any
    args.update(_devices(spec))
    return args


def _stats_view(raw: dict[str, Any]) -> dict[str, float]:
    """CPU % (of one CPU, as ``docker stats``) and memory from one engine stats sample."""
    cpu = raw.get("cpu_stats") or {}
    pre = raw.get("precpu_stats") or {}
    used = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
        "total_usage", 0
    )
    system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or [1])
    percent = 100.0 * used / system * online if system > 0 and used >= 0 else 0.0
    memory = raw.get("memory_stats") or {}
    mem_stats = memory.get("stats") or {}
    cache = mem_stats.get("inactive_file", mem_stats.get("total_inactive_file", 0))
    return {
        "cpu_percent": round(percent, 1),
        "memory_bytes": float(max(0, memory.get("usage", 0) - cache)),
        "memory_limit_bytes": float(memory.get("limit", 0)),
    }


class DockerRuntime:
    """Model servers as containers on one Docker engine (see the module docstring)."""

    name = "docker"

    def __init__(self, home: Path, *, client: Any = None, image: str | None = None):
        self.home = Path(home).resolve()
        self.client = client if client is not None else connect()
        self.image = image or require_image(self.client)
        self.engine_cpus = int(self.client.info().get("NCPU") or 0) or None
        self._warned_down = False
        self._warned_tmpfs = False
        from opsbot.core.config import load_config

        config = load_config(self.home)
        self._run_dir = config.run_dir
        self._network = config.container_network
        self.staged = StagedModels(self.home, self._run_dir)

    @property
    def label_filter(self) -> list[str]:
        return [f"{LABEL_HOME}={home_id(self.home)}", LABEL_INSTANCE]

    def _containers(self, key: str | None = None) -> list[dict[str, Any]]:
        filters = list(self.label_filter)
        if key is not None:
            filters.append(f"{LABEL_INSTANCE}={key}")
        found: list[dict[str, Any]] = self.client.api.containers(
            all=True, filters={"label": filters}
        )
        return found

    def _remove(
        self, container_id: str, grace_s: float = 10.0, labels: Mapping[str, str] | None = None
    ) -> None:
        """Stop and remove a container, then its socket directory (named by its ``labels``,
        read from the engine unless the caller has them)."""
        if labels is None:
            try:
                info = self._inspect(container_id)
            except ENGINE_DOWN:
                info = None
            labels = ((info or {}).get("Config") or {}).get("Labels") or {}
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.stop(container_id, timeout=max(0, int(grace_s)))
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True)
        socket = labels.get(LABEL_SOCKET)
        if socket:
            self._remove_socket_dir(Path(socket).parent)

    def _socket_dir(self, spec: InstanceSpec) -> Path:
        """A new directory for the instance's socket, in the daemon's own (0700) directory of
        them, which the container's user may write: it binds the socket there."""
        parent = run_subdir(self.home, self._run_dir, SOCKET_DIRS)
        path = parent / f"{instance_leaf(spec.key)}.{secrets.token_hex(4)}"
        fitting_socket_path(path / SOCKET_NAME)
        os.mkdir(path, 0o700)
        if os.geteuid() == 0:
            # Its own small filesystem, so what the container may write there is capped as its
            # /tmp is (the rest of its root is read-only).
            options = (
                f"nosuid,nodev,noexec,size={SOCKET_DIR_BYTES},nr_inodes=16,mode=0700,"
                f"uid={USER_ID},gid={USER_ID}"
            )
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "opsbot-socket", str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            if mounted.returncode != 0:
                if not self._warned_tmpfs:
                    log.warning(
                        "cannot give containers' socket directories a capped filesystem (%s): "
                        "they are plain directories",
                        mounted.stderr.strip() or f"mount exited {mounted.returncode}",
                    )
                    self._warned_tmpfs = True
                os.chown(path, USER_ID, USER_ID)
        else:  # the container's user is another account: it may add entries, not list them
            os.chmod(path, 0o733)
        return path

    def _remove_socket_dir(self, path: Path) -> None:
        """Remove an instance's socket directory (only ever one in the daemon's own), and the
        filesystem mounted on it."""
        if path.parent != run_root_path(self.home, self._run_dir) / SOCKET_DIRS:
            return
        if os.path.ismount(path):
            subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=False)
        remove_tree(path)

    def start(self, spec: InstanceSpec) -> Started:
        # One container per instance: whatever an earlier life left under this key goes first.
        for old in self._containers(spec.key):
            self._remove(old["Id"], grace_s=2, labels=old.get("Labels") or {})
        own_server = spec.format != IMAGE_FORMAT
        port = 0 if own_server else free_port()
        spec = self.staged.stage(spec)
        socket_dir = self._socket_dir(spec) if own_server else None
        try:
            args = container_args(
                spec,
                image=self.image,
                port=port,
                home=self.home,
                engine_cpus=self.engine_cpus,
                secret=instance_secret(daemon_secret(self.home), spec.service_uid, spec.idx),
                socket_dir=socket_dir,
                network=self._network,
            )
            container = self.client.containers.create(**args)
        except BaseException:
            if socket_dir is not None:
                self._remove_socket_dir(socket_dir)
            raise
        try:
            container.start()
        except docker.errors.APIError:
            self._remove(container.id, grace_s=0, labels=args["labels"])
            raise
        if socket_dir is not None:
            return Started(container.id, *unix_address(str(socket_dir / SOCKET_NAME)))
        return Started(container.id, HOST, port)

    def _inspect(self, handle: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.client.api.inspect_container(handle)
            return found
        except docker.errors.NotFound:
            return None

    def exited(self, handle: str) -> Exit | None:
        if not handle:  # claimed by the controller, but no container was made for it
            return Exit(None, "no container was started")
        try:
            info = self._inspect(handle)
        except ENGINE_DOWN as exc:
            # Unknown is not dead: the readiness probe tells the truth meanwhile, and the
            # event watcher repairs once the engine is back.
            if not self._warned_down:
                log.warning("docker engine unreachable: %s", exc)
                self._warned_down = True
            return None
        self._warned_down = False
        if info is None:
            return Exit(None, f"container {handle[:12]} is gone")
        state = info.get("State") or {}
        if state.get("Status") in _ALIVE:
            return None
        if state.get("Status") == "created":
            return Exit(None, f"container {handle[:12]} was created but never started")
        code = state.get("ExitCode")
        if state.get("OOMKilled"):
            limit = (info.get("HostConfig") or {}).get("Memory", 0) / 2**30
            return Exit(code, f"killed for using more than its {limit:g} GiB memory cap")
        lines = self.logs(handle, 50)
        reason = failure_reason(lines, code)
        if state.get("Error"):
            reason = f"{reason} ({state['Error']})"
        return Exit(code, reason)

    def foreign_listener(self, handle: str, host: str, port: int) -> str | None:
        """Whether the socket listening on the container's port is the container's: held by
        processes of its pid namespace (when this daemon may read other accounts' descriptors,
        as root), else at least made by its user. A program that took the port between
        :func:`free_port` and the container's bind would otherwise be routed to."""
        if unix_path(host) is not None:
            return None  # its socket's directory is the daemon's: nobody else binds there
        found = listeners(port, host)
        if not found:
            return None  # nothing listens now: the next readiness probe says so
        try:
            info = self._inspect(handle)
        except ENGINE_DOWN:
            return None
        if info is None:
            return None  # gone: exited() says how
        pid = (info.get("State") or {}).get("Pid") or 0
        # No process (it exited, say on finding its port taken, and waits to restart): whatever
        # listens is another program's.
        namespace = pid_namespace(pid) if pid else None
        for listener in found:
            who = f"uid {listener.uid}"
            holding = holders(listener.inode) if namespace is not None or not pid else None
            if holding:
                outside = [p for p in holding if not pid or pid_namespace(p) != namespace]
                if not outside:
                    continue
                who = f"{describe(outside[0])}; uid {listener.uid}"
            elif pid and listener.uid == USER_ID:  # every container runs as it (container_args)
                continue  # as far as can be told (another account's descriptors unread)
            return f"another program holds its port {port} ({who}), not its container"
        return None

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        self._remove(handle, grace_s)

    def release(self, service_uid: str, keep: Collection[int]) -> None:
        self.staged.release(service_uid, keep)

    def sweep(self, keep: Mapping[str, Collection[int]]) -> None:
        self.staged.sweep(keep)
        # Socket directories whose container is gone (removed while the daemon was down).
        parent = run_root_path(self.home, self._run_dir) / SOCKET_DIRS
        used = {
            Path(c["Labels"][LABEL_SOCKET]).parent
            for c in self._containers()
            if (c.get("Labels") or {}).get(LABEL_SOCKET)
        }
        with contextlib.suppress(FileNotFoundError), os.scandir(parent) as entries:
            for entry in list(entries):
                if Path(entry.path) not in used:
                    self._remove_socket_dir(Path(entry.path))

    def rotate_logs(self) -> None:
        """Nothing to do: the engine's json-file driver keeps the logs within the cap."""

    def owned(self) -> Sequence[Owned]:
        containers = self._containers()
        # Running ones first (newest first), so adoption keeps a live container over a dead
        # duplicate of the same instance.
        containers.sort(key=lambda c: (c.get("State") not in _ALIVE, -int(c.get("Created", 0))))
        found = []
        for c in containers:
            lab = c.get("Labels") or {}
            try:
                port = int(lab.get(LABEL_PORT, ""))
            except ValueError:
                port = 0
            socket = lab.get(LABEL_SOCKET, "")
            host, port = unix_address(socket) if socket.startswith("/") else (HOST, port)
            found.append(Owned(c["Id"], lab[LABEL_INSTANCE], host, port))
        return found

    def logs(self, handle: str, tail: int = 100) -> list[str]:
        try:
            raw = self.client.api.logs(handle, stdout=True, stderr=True, tail=tail)
        except (docker.errors.NotFound, *ENGINE_DOWN):
            return []
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return text.splitlines()

    def stats(self, handle: str) -> dict[str, float] | None:
        """CPU % and memory of a running instance from the engine (about 1 s: two samples)."""
        try:
            raw = self.client.api.stats(handle, stream=False)
        except (ValueError, *ENGINE_DOWN):  # gone, stopping (an empty answer), engine away
            return None
        if not raw or not raw.get("memory_stats"):
            return None
        return _stats_view(raw)

    # -- the event watcher ---------------------------------------------------------------------

    def watch(
        self,
        stop: threading.Event,
        on_change: Callable[[], None],
        on_reconnect: Callable[[], None],
        window_s: int = 2,
    ) -> None:
        """Follow the engine's events for this home's containers until ``stop`` is set.

        Any container event wakes ``on_change`` (the controller). When the engine goes away,
        wait for it, then call ``on_reconnect`` (re-list and adopt) before following again, so
        what happened meanwhile (an engine restart that stopped every container) is repaired.
        Events are read in windows of ``window_s`` seconds, back to back, so a stop is noticed
        within one window and no event between windows is lost.
        """
        since = int(time.time())
        connected = True
        delay = 0.5
        while not stop.is_set():
            if not connected:
                try:
                    self.client.ping()
                except ENGINE_DOWN:
                    stop.wait(delay)
                    delay = min(5.0, delay * 2)
                    continue
                log.warning("docker engine is back: re-listing containers")
                connected, delay = True, 0.5
                since = int(time.time())
                try:
                    on_reconnect()
                except Exception:  # the watcher must outlive a bad repair pass; logged in full
                    log.exception("repair after the engine came back failed")
                    connected = False
                    continue
            until = since + window_s
            try:
                for event in self.client.api.events(
                    since=since,
                    until=until,
                    decode=True,
                    filters={"type": "container", "label": self.label_filter},
                ):
                    log.debug("docker event %s %s", event.get("status"), event.get("id"))
                    on_change()
                if until - time.time() > 0.2:
                    # A window cut short: the stream broke. Is the engine still there?
                    self.client.ping()
                    stop.wait(0.2)
                since = min(until, int(time.time()))
            except Exception as exc:  # a broken stream takes many forms; all mean: re-connect
                log.warning("lost the docker engine (%s); waiting for it", type(exc).__name__)
                connected = False
                on_change()
                stop.wait(0.5)


def remove_all(runtime: DockerRuntime) -> int:
    """Remove every container of the runtime's home; returns how many (tests, clean-ups)."""
    found = runtime.owned()
    for owned in found:
        runtime.stop(owned.handle, grace_s=2)
    return len(found)
