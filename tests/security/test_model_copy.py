"""``model create`` copies first, follows nothing out of the directory, and walks a bounded tree.

Each test here is one of the ways the old copy fell: a symlink to a root-only file, a file
swapped for such a symlink between the check and the copy, a directory symlink loop that kept a
daemon thread busy for good, an entry naming code outside the directory.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from opsbot.core import sandbox
from opsbot.core.errors import ModelInvalid
from opsbot.core.sandbox import Limits, copy_tree, reader_for

from .conftest import People


def _model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.joblib").write_bytes(b"weights")
    (path / "sub").mkdir()
    (path / "sub" / "vocab.txt").write_text("a b c")
    return path


def test_a_plain_directory_is_copied_as_private_files(tmp_path: Path) -> None:
    src = _model(tmp_path / "src")
    (src / "alias.txt").symlink_to("sub/vocab.txt")  # a link inside: copied as the file
    copy_tree(src, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert (copy / "model.joblib").read_bytes() == b"weights"
    assert (copy / "alias.txt").read_text() == "a b c"
    assert not (copy / "alias.txt").is_symlink()
    assert (copy.stat().st_mode & 0o777, (copy / "model.joblib").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("/etc/shadow", "outside the directory"),
        ("../secret.txt", "outside the directory"),
        ("sub", "directory links (and loops) are refused"),
        ("..", "outside the directory"),
    ],
)
def test_symlinks_out_or_to_directories_are_refused(
    tmp_path: Path, target: str, words: str
) -> None:
    (tmp_path / "secret.txt").write_text("not yours")
    src = _model(tmp_path / "src")
    (src / "link").symlink_to(target)
    with pytest.raises(ModelInvalid, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        copy_tree(src, tmp_path / "copy")
    assert info.value.field == "path"
    assert str(src / "link") in info.value.message


def test_a_symlink_loop_is_refused_at_once(tmp_path: Path) -> None:
    src = _model(tmp_path / "src")
    (src / "sub" / "loop").symlink_to("..")
    (src / "self").symlink_to("self")
    started = time.monotonic()
    with pytest.raises(ModelInvalid):
        copy_tree(src, tmp_path / "copy")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        (Limits(files=1), "more than 1 files"),
        (Limits(bytes=8), "GiB"),
        (Limits(depth=0), "nested deeper than 0"),
    ],
)
def test_the_walk_is_bounded(tmp_path: Path, limits: Limits, words: str) -> None:
    src = _model(tmp_path / "src")
    with pytest.raises(ModelInvalid, match=words):
        copy_tree(src, tmp_path / "copy", limits=limits)


def test_a_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    src = _model(tmp_path / "src")
    os.mkfifo(src / "pipe")
    with pytest.raises(ModelInvalid, match="not a file or directory"):
        copy_tree(src, tmp_path / "copy")


@pytest.mark.parametrize("window", ["listdir", "stat"])
def test_a_file_swapped_for_a_symlink_meanwhile_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    """The race of the issue (4 of 25 tries copied a root-only file), made certain: the file
    becomes a symlink to a root-only file right after the directory is listed, or right after
    the entry was looked at and before it is opened."""
    src = _model(tmp_path / "src")
    victim = tmp_path / "root-only"
    victim.write_text("root's secret")
    victim.chmod(0o600)
    real = getattr(os, window)
    swapped = threading.Event()

    def then_swap(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not swapped.is_set() and (window == "listdir" or args[0] == "model.joblib"):
            (src / "model.joblib").unlink()
            (src / "model.joblib").symlink_to(victim)
            swapped.set()
        return result

    monkeypatch.setattr(sandbox.os, window, then_swap)
    with pytest.raises(ModelInvalid, match="symlink"):
        copy_tree(src, tmp_path / "copy")
    assert swapped.is_set()
    copied = [p.read_text() for p in (tmp_path / "copy").rglob("*") if p.is_file()]
    assert "root's secret" not in copied


def test_only_what_the_caller_may_read_is_copied(tmp_path: Path, people: People) -> None:
    src = _model(Path("/tmp") / f"copy-src-{people.alice.name}")
    try:
        for path in (src, src / "sub"):
            path.chmod(0o755)
        for path in (src / "model.joblib", src / "sub" / "vocab.txt"):
            path.chmod(0o644)
        alice = reader_for(people.alice.name)
        copy_tree(src, tmp_path / "ok", reader=alice)
        # A file alice may not read, reached by a hard link or a plain root-only file.
        (src / "sub" / "vocab.txt").chmod(0o600)
        with pytest.raises(ModelInvalid, match="may not read"):
            copy_tree(src, tmp_path / "denied", reader=alice)
    finally:
        sandbox.remove_tree(src)
