"""The serving image: a Debian root filesystem with python3 and the model libraries, no registry.

``opsbot image build`` makes it in three steps, each skipped when its result exists:

1. a root filesystem tarball made by ``mmdebstrap`` (or ``debootstrap``) from Debian packages
   (``python3`` and the C++/OpenMP runtimes the wheels need), into which the host's pip installs
   the model libraries at the very versions the daemon's own environment has (numpy,
   scikit-learn, scipy, joblib, onnxruntime, aiohttp), so a model the registry checked loads the
   same inside the container, their bytecode compiled by the image's own python3; plus an
   unprivileged ``opsbot`` user (uid 10001);
2. ``docker import`` of that tarball as ``opsbot-serving:<content hash>``;
3. the tag ``opsbot-serving:latest`` on it.

The content hash covers everything that goes in (Debian suite, packages, pinned Python packages,
the recipe's version), so a change of any of them makes a new image and an unchanged recipe
reuses the cached tarball and the existing image. The opsbot package itself is not in the image:
the docker runtime mounts the daemon's own copy read-only, so the image does not change when
opsbot does and the containers always run the daemon's code.

The tarball cache is ``$OPSBOT_CACHE_DIR``, else ``~/.cache/opsbot``. ``OPSBOT_SERVING_IMAGE``
names another image to run instead (it must follow the same recipe).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from opsbot.core.errors import OpsbotError

IMAGE_REPO = "opsbot-serving"
LATEST = f"{IMAGE_REPO}:latest"
#: Bump when the recipe below changes in a way the lists do not show.
#: 2: the libraries' bytecode is compiled into the image (a container otherwise recompiles
#: numpy, scipy and scikit-learn on every start: 3.9 s instead of 1.6 s to import them).
RECIPE_VERSION = 2
SUITE = "bookworm"
PYTHON_VERSION = "3.11"  # bookworm's python3
GLIBC_MINOR = 36  # bookworm's glibc 2.36
MIRROR = os.environ.get("OPSBOT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_PACKAGES = ("python3", "libstdc++6", "libgomp1")
#: The model libraries, pinned to the versions installed beside the daemon.
PYTHON_PACKAGES = ("numpy", "scipy", "scikit-learn", "joblib", "threadpoolctl", "onnxruntime")
#: The model server's own needs.
SERVER_PACKAGES = ("aiohttp",)
USER_ID = 10001
USER = f"{USER_ID}:{USER_ID}"
SITE_PACKAGES = f"/usr/local/lib/python{PYTHON_VERSION}/dist-packages"

Progress = Callable[[str], None]


class ImageError(OpsbotError):
    title = "Serving image"
    status = 409


def _quiet(_: str) -> None:
    return None


def cache_dir() -> Path:
    """Where the root filesystem tarballs are kept."""
    env = os.environ.get("OPSBOT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "opsbot"


def pinned_packages() -> list[str]:
    """``name==version`` for each model and server library, as installed beside the daemon."""
    pins = []
    for name in (*PYTHON_PACKAGES, *SERVER_PACKAGES):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


@dataclass(frozen=True)
class Recipe:
    suite: str
    arch: str
    debian: tuple[str, ...]
    python: tuple[str, ...]

    @classmethod
    def current(cls) -> Recipe:
        return cls(SUITE, _debian_arch(), DEBIAN_PACKAGES, tuple(pinned_packages()))

    @property
    def content_hash(self) -> str:
        text = json.dumps(
            {
                "recipe": RECIPE_VERSION,
                "suite": self.suite,
                "arch": self.arch,
                "debian": self.debian,
                "python": self.python,
                "user": USER_ID,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.content_hash}"


def _debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def serving_image() -> str:
    """The image tag the docker runtimes run: ``OPSBOT_SERVING_IMAGE`` or this recipe's tag."""
    return os.environ.get("OPSBOT_SERVING_IMAGE") or Recipe.current().tag


def _has_image(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def require_image(client: Any) -> str:
    """The serving image's tag, or a clear error saying how to build it."""
    tag = serving_image()
    if not _has_image(client, tag):
        raise ImageError(
            f"the serving image {tag} is not built on this Docker engine; run "
            "`opsbot image build` (a few minutes the first time, no registry needed)",
            field="runtime",
        )
    return tag


def _pip_hook(recipe: Recipe) -> str:
    """The mmdebstrap hook (run on the host, $1 is the new root) that installs the wheels."""
    machine = platform.machine()
    args = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--only-binary=:all:",
        "--no-compile",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        # bookworm's glibc is 2.36: wheels for it or any older manylinux (pip takes the list)
        *(f"--platform=manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)),
        f"--platform=manylinux2014_{machine}",
        "--target",
        f'"$1{SITE_PACKAGES}"',
        *recipe.python,
    ]
    return " ".join(args)


def _compile_hook() -> str:
    """Compile the libraries' bytecode with the image's own python3, so its version writes it.

    The image runs with PYTHONDONTWRITEBYTECODE and the libraries are read-only to the model's
    user, so bytecode missing here would be compiled again in memory at every container start.
    Unchecked hashes: the tarball does not keep the sources' modification times, which the
    default check compares, and the image's libraries never change under a given tag.
    """
    return (
        f'chroot "$1" python3 -m compileall -q --invalidation-mode unchecked-hash {SITE_PACKAGES}'
        " >/dev/null"
    )


def _user_hook() -> str:
    line = f"opsbot:x:{USER_ID}:{USER_ID}:opsbot model server:/tmp:/usr/sbin/nologin"
    return f"echo '{line}' >> \"$1/etc/passwd\" && echo 'opsbot:x:{USER_ID}:' >> \"$1/etc/group\""


def rootfs_command(recipe: Recipe, target: Path) -> list[str]:
    """The command that makes the root filesystem tarball (mmdebstrap, else debootstrap)."""
    if shutil.which("mmdebstrap"):
        return [
            "mmdebstrap",
            "--variant=essential",
            f"--architectures={recipe.arch}",
            f"--include={','.join(recipe.debian)}",
            "--dpkgopt=path-exclude=/usr/share/{doc,man,locale,info}/*",
            f"--customize-hook={_pip_hook(recipe)}",
            f"--customize-hook={_compile_hook()}",
            f"--customize-hook={_user_hook()}",
            '--customize-hook=rm -rf "$1/var/cache/apt"/* "$1/var/lib/apt/lists"/*',
            recipe.suite,
            str(target),
            MIRROR,
        ]
    if shutil.which("debootstrap"):
        script = (
            "set -e; root=$(mktemp -d); trap 'rm -rf \"$root\"' EXIT; "
            f"debootstrap --variant=minbase --arch={recipe.arch} "
            f'--include={",".join(recipe.debian)} {recipe.suite} "$root" {MIRROR}; '
            f'set -- "$root"; {_pip_hook(recipe)}; {_compile_hook()}; {_user_hook()}; '
            'rm -rf "$root/var/cache/apt"/* "$root/var/lib/apt/lists"/*; '
            f'tar -C "$root" -cf {target} .'
        )
        return ["sh", "-c", script]
    raise ImageError(
        "neither mmdebstrap nor debootstrap is installed; install one "
        "(`apt-get install mmdebstrap`) and run `opsbot image build` again",
        field="image",
    )


def build_rootfs(recipe: Recipe, on_progress: Progress = _quiet) -> Path:
    """The recipe's root filesystem tarball, made unless the cache holds it."""
    cache = cache_dir()
    tarball = cache / f"rootfs-{recipe.content_hash}.tar"
    if tarball.exists():
        on_progress(f"root filesystem cached: {tarball}")
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=cache)) / "rootfs.tar"
    cmd = rootfs_command(recipe, partial)
    on_progress(f"making the root filesystem with {cmd[0]} ({recipe.suite}, {recipe.arch})")
    tail: list[str] = []
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail = [*tail[-19:], line]
                on_progress(line)
        if proc.wait() != 0:
            raise ImageError(
                f"{cmd[0]} failed (exit code {proc.returncode}); last lines:\n" + "\n".join(tail),
                field="image",
            )
        os.replace(partial, tarball)
    finally:
        shutil.rmtree(partial.parent, ignore_errors=True)
    return tarball


def import_changes() -> list[str]:
    """Dockerfile instructions applied at import: who runs, where, with which defaults."""
    return [
        f"USER {USER}",
        "WORKDIR /tmp",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp LANG=C.UTF-8",
        'CMD ["python3", "-m", "opsbot.serving.server", "--help"]',
    ]


@dataclass(frozen=True)
class Built:
    tag: str
    built: bool
    seconds: float


def ensure_image(client: Any, *, force: bool = False, on_progress: Progress = _quiet) -> Built:
    """Make sure the serving image of the current recipe is on the engine; build what is missing.

    Returns the tag (``opsbot-serving:<hash>``, also tagged ``latest``) and whether anything
    was built. The swarm and docker runtimes call :func:`require_image` instead, which never
    builds.
    """
    started = time.monotonic()
    recipe = Recipe.current()
    tag = recipe.tag
    if not force and _has_image(client, tag):
        on_progress(f"{tag} is up to date")
        client.api.tag(tag, IMAGE_REPO, "latest")
        return Built(tag, False, time.monotonic() - started)
    if force:
        stale = cache_dir() / f"rootfs-{recipe.content_hash}.tar"
        stale.unlink(missing_ok=True)
    tarball = build_rootfs(recipe, on_progress)
    size_mb = tarball.stat().st_size / 1e6
    on_progress(f"importing {tarball.name} ({size_mb:.0f} MB) as {tag}")
    client.api.import_image_from_file(
        str(tarball), repository=IMAGE_REPO, tag=recipe.content_hash, changes=import_changes()
    )
    client.api.tag(tag, IMAGE_REPO, "latest")
    on_progress(f"built {tag} (also {LATEST})")
    return Built(tag, True, time.monotonic() - started)


# -- models of format "image": an image of the user's own that serves the model ----------------

#: The model format whose version names its own serving image (in its entry).
IMAGE_FORMAT = "image"
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
IMAGE_CONTRACT = (
    "the image gets OPSBOT_PORT and the model directory read-only at /model, runs as user "
    "10001 with host networking, and must answer POST /predict and GET /v2/health/ready on "
    "127.0.0.1:$OPSBOT_PORT"
)


def image_model_problem(path: Path, entry: str | None) -> tuple[str, str]:
    """The field and why a directory and entry cannot register a model of format ``image``;
    ("", "") when they can."""
    if not path.is_dir():
        return "path", f"{path} is not a directory (mounted read-only at /model; may be empty)"
    if not entry:
        return "entry", "the image format names its image: --entry IMAGE, like acme/scorer:1.0"
    if not IMAGE_REF.match(entry):
        return "entry", f"{entry!r} is not an image reference; use NAME[:TAG], like acme/app:1.0"
    return "", ""


def check_image_model(entry: str) -> dict[str, Any]:
    """The registry's check of an ``image`` model: its image must be on the Docker engine
    (opsbot pulls from no registry). Same result shape as ``opsbot.serving.check``."""
    from opsbot.core.runtimes.docker import EngineUnavailable, connect

    try:
        client = connect()
    except EngineUnavailable as exc:
        return {"ok": False, "reason": exc.message}
    if not _has_image(client, entry):
        return {
            "ok": False,
            "reason": f"image {entry} is not on the Docker engine; build it or `docker load` it "
            "there (opsbot pulls from no registry), then register the version again",
        }
    return {"ok": True, "framework": {"image": entry, "id": client.images.get(entry).id}}
