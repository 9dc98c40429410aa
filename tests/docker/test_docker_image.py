"""The serving image: what is in it, its content hash, and the caches that skip a rebuild."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import engine_fixture, image_fixture  # noqa: F401 - the fixtures

from opsbot.core import images
from opsbot.core.images import IMAGE_REPO, USER, Recipe, ensure_image


def test_the_hash_covers_every_input() -> None:
    base = Recipe("bookworm", "amd64", ("python3",), ("numpy==2.0.0",))
    assert (
        base.content_hash
        == Recipe("bookworm", "amd64", ("python3",), ("numpy==2.0.0",)).content_hash
    )
    others = [
        Recipe("trixie", "amd64", ("python3",), ("numpy==2.0.0",)),
        Recipe("bookworm", "arm64", ("python3",), ("numpy==2.0.0",)),
        Recipe("bookworm", "amd64", ("python3", "curl"), ("numpy==2.0.0",)),
        Recipe("bookworm", "amd64", ("python3",), ("numpy==2.0.1",)),
    ]
    assert len({r.content_hash for r in [base, *others]}) == 5
    assert base.tag == f"{IMAGE_REPO}:{base.content_hash}"


def test_the_recipe_pins_the_daemons_library_versions() -> None:
    pins = dict(p.split("==") for p in Recipe.current().python)
    for name in ("numpy", "scikit-learn", "joblib", "onnxruntime", "aiohttp"):
        assert pins[name] == metadata.version(name)


def test_a_cached_root_filesystem_is_not_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSBOT_CACHE_DIR", str(tmp_path))
    recipe = Recipe.current()
    cached = tmp_path / f"rootfs-{recipe.content_hash}.tar"
    cached.write_bytes(b"a tarball")

    def no_build(*_: Any) -> list[str]:
        raise AssertionError("the cached tarball should have been used")

    monkeypatch.setattr(images, "rootfs_command", no_build)
    assert images.build_rootfs(recipe) == cached


def test_missing_bootstrap_tools_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.shutil, "which", lambda _: None)
    with pytest.raises(images.ImageError, match="apt-get install mmdebstrap"):
        images.rootfs_command(Recipe.current(), Path("/tmp/x.tar"))


def test_an_existing_image_is_not_built_again(engine: Any, image: str) -> None:
    said: list[str] = []
    again = ensure_image(engine, on_progress=said.append)
    assert again.tag == image and again.built is False
    assert said == [f"{image} is up to date"]
    assert engine.images.get(f"{IMAGE_REPO}:latest").id == engine.images.get(image).id


def test_the_image_runs_unprivileged_with_the_same_libraries(engine: Any, image: str) -> None:
    code = (
        "import json, os, sys; from importlib import metadata; "
        "names = ['numpy', 'scikit-learn', 'joblib', 'onnxruntime', 'aiohttp']; "
        "print(json.dumps({'uid': os.getuid(), 'python': sys.version_info[:2], "
        "'libs': {n: metadata.version(n) for n in names}}))"
    )
    out = engine.containers.run(image, ["python3", "-c", code], remove=True, network_mode="none")
    seen = json.loads(out)
    assert seen["uid"] == int(USER.split(":")[0])
    assert seen["python"] == [3, 11]
    assert seen["libs"] == {n: metadata.version(n) for n in seen["libs"]}
    assert engine.images.get(image).attrs["Config"]["User"] == USER


def test_the_libraries_load_from_the_images_bytecode(engine: Any, image: str) -> None:
    """Every module the model server and an sklearn model import comes from compiled bytecode:
    the container may not write any, so a source file read here is compiled again at every
    start (numpy, scipy and scikit-learn took 3.9 s to import instead of 1.5 s)."""
    code = "import aiohttp, joblib, numpy, sklearn.linear_model"
    out = engine.containers.run(
        image, ["python3", "-v", "-c", code], remove=True, network_mode="none", stderr=True
    ).decode()
    loaded = [line for line in out.splitlines() if line.startswith("# code object from")]
    from_source = [line for line in loaded if not line.rstrip("'").endswith(".pyc")]
    assert len(loaded) > 500, "python3 -v did not list the modules it loaded"
    assert from_source == [], f"{len(from_source)} modules compiled at start: {from_source[:5]}"
