"""An instance's log cannot fill the disk: one cap for every runtime, rotation by copy and
truncate on the process runtime, and a file size backstop a real instance survives."""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from homes import RlimitOnly, call_instance, python_model_spec, wait_ready

from opsbot.core.config import load_config
from opsbot.core.flavors import load_flavors
from opsbot.core.instance_auth import INSTANCE_HEADER, daemon_secret, instance_secret
from opsbot.core.logcap import (
    LOG_CAP,
    MIN_BACKSTOP_BYTES,
    LogCap,
    json_file_options,
    rotate,
    rotated,
    tail_lines,
)
from opsbot.core.registry import _child_check
from opsbot.core.runtime import InstanceSpec, Started
from opsbot.core.runtimes.docker import container_args
from opsbot.core.runtimes.process import PRELOADER_LOG, ProcessRuntime
from opsbot.core.runtimes.swarm import task_template

SMALL = LogCap(max_bytes=1000, files=3, backstop_bytes=MIN_BACKSTOP_BYTES)


def _lines(prefix: str, count: int) -> bytes:
    return b"".join(f"{prefix}-{i:04d}\n".encode() for i in range(count))


def _private(path: Path) -> None:
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode), f"{path} is not a regular file"
    assert stat.S_IMODE(info.st_mode) == 0o600, f"{path} is {oct(info.st_mode)}"
    assert info.st_uid == os.geteuid()


# -- the figures -------------------------------------------------------------------------------


def test_every_runtime_takes_its_figures_from_the_one_cap(tmp_path: Path) -> None:
    assert json_file_options() == {"max-size": "10m", "max-file": "3"}
    assert json_file_options(LogCap(max_bytes=3 * 1024, files=2)) == {
        "max-size": "3k",
        "max-file": "2",
    }
    assert json_file_options(SMALL)["max-size"] == "1000"
    flavor = next(f for f in load_flavors() if f.id == "cpu.2u8g")
    (tmp_path / "model").mkdir()
    spec = InstanceSpec(
        service_uid="svc",
        owner="alice",
        idx=0,
        n=1,
        model_name="m",
        version="1",
        path=tmp_path / "model",
        format="sklearn",
        entry=None,
        flavor=flavor,
        env={},
    )
    docker = container_args(spec, image="i", port=1, home=tmp_path)["log_config"]
    assert (docker["Type"], docker["Config"]) == ("json-file", json_file_options())
    swarm = task_template(
        spec,
        image="i",
        home=tmp_path,
        port_base=20000,
        config=load_config(tmp_path),
        max_node_cpus=2,
        container_labels={},
    )["LogDriver"]
    assert swarm == {"Name": "json-file", "Options": json_file_options()}
    # The backstop comes well after rotation, and bounds what one instance keeps.
    assert LOG_CAP.backstop_bytes >= 4 * LOG_CAP.max_bytes
    assert LOG_CAP.kept_bytes == LOG_CAP.backstop_bytes + 2 * LOG_CAP.max_bytes


@pytest.mark.parametrize(
    ("figures", "field"),
    [
        ({"max_bytes": 0}, "max_bytes"),
        ({"files": 0}, "files"),
        ({"backstop_bytes": MIN_BACKSTOP_BYTES - 1}, "backstop_bytes"),
        ({"max_bytes": 2 * MIN_BACKSTOP_BYTES, "backstop_bytes": MIN_BACKSTOP_BYTES}, "backstop"),
    ],
)
def test_a_cap_that_cannot_work_is_refused_naming_its_field(
    figures: dict[str, int], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        LogCap(**figures)


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_keeps_the_newest_lines_within_the_cap_and_private(tmp_path: Path) -> None:
    log = tmp_path / "svc-0-1.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as an instance holds it
    try:
        assert not rotate(log, SMALL)  # nothing yet: nothing to do
        for round_ in range(5):
            os.write(fd, _lines(f"r{round_}", 150))  # 1500 bytes, past the 1000 cap
            assert rotate(log, SMALL)
            assert not rotate(log, SMALL)  # once is enough
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    # O_APPEND: the instance's next write landed at the start of the truncated log, no hole.
    assert log.read_bytes() == b"after\n"
    copies = [rotated(log, n) for n in (1, 2)]
    assert not rotated(log, 3).exists()
    for path in [log, *copies]:
        _private(path)
    assert all(p.stat().st_size <= SMALL.max_bytes for p in copies)
    # Whole lines only, the newest round in .1, the one before in .2.
    one = copies[0].read_text().splitlines()
    two = copies[1].read_text().splitlines()
    assert one[-1] == "r4-0149" and all(ln.startswith("r4-") and len(ln) == 7 for ln in one)
    assert two[-1] == "r3-0149" and all(ln.startswith("r3-") and len(ln) == 7 for ln in two)
    # The newest lines, reading into the copies when the live log holds fewer.
    assert tail_lines(log, 3, SMALL.files) == ["r4-0148", "r4-0149", "after"]
    assert tail_lines(log, len(one) + len(two) + 1, SMALL.files) == [*two, *one, "after"]
    assert tail_lines(log, 10_000, SMALL.files) == [*two, *one, "after"]
    assert tail_lines(log, 3, files=1) == ["after"]  # copies not wanted: not read


def test_the_tail_reads_back_as_far_as_the_lines_asked_for(tmp_path: Path) -> None:
    log = tmp_path / "svc-0-1.log"
    log.write_bytes(_lines("line", 20_000))  # 200 KiB: more than one read from the end
    want = [f"line-{i:04d}" for i in range(10_000, 20_000)]
    assert tail_lines(log, 10_000) == want  # the most `opsbot logs --tail` asks for
    assert tail_lines(log, 1) == ["line-19999"]
    # A line longer than is read from one file is left out, not cut and shown as whole.
    log.write_bytes(b"y" * (5 * 1024 * 1024) + b"\nend\n")
    assert tail_lines(log, 2) == ["end"]
    assert tail_lines(log, 0) == []


def test_rotation_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious"
    target.write_bytes(b"root:secret-hash\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "svc-0-1.log"
    log.write_bytes(_lines("a", 150))
    rotated(log, 1).symlink_to(target)  # planted where the first copy goes
    rotated(log, 2).symlink_to(target)

    assert rotate(log, SMALL)
    assert target.read_bytes() == b"root:secret-hash\n"  # neither written through nor moved
    _private(rotated(log, 1))
    assert rotated(log, 1).read_text().splitlines()[-1] == "a-0149"
    assert rotated(log, 2).is_symlink()  # the planted .1 moved up, still only a link

    log.write_bytes(_lines("b", 150))
    assert rotate(log, SMALL)
    assert target.read_bytes() == b"root:secret-hash\n"
    assert not rotated(log, 2).is_symlink()  # the link was replaced, never opened
    _private(rotated(log, 2))

    # Reading never goes through a link either: a planted copy is not in the tail.
    rotated(log, 1).unlink()
    rotated(log, 1).symlink_to(target)
    tail = tail_lines(log, 50, SMALL.files)  # the live log is empty, the link skipped: .2's
    assert tail == [f"a-{i:04d}" for i in range(100, 150)]
    # A link in place of the live log is neither rotated nor read.
    log.unlink()
    big = outside / "big"
    big.write_bytes(_lines("c", 500))
    log.symlink_to(big)
    assert not rotate(log, SMALL)
    assert big.read_bytes() == _lines("c", 500)
    assert tail_lines(log, 5, SMALL.files) == [f"a-{i:04d}" for i in range(145, 150)]  # .2's


# -- a real instance past the cap ----------------------------------------------------------------

CHATTY_PY = """
import os


class Model:
    sample = [1]

    def load(self, path):
        pass

    def predict(self, instances):
        out = []
        for item in instances:
            data = (item + "\\n").encode() if isinstance(item, str) else b"x" * 99 + b"\\n"
            want = len(data) if isinstance(item, str) else int(item)
            written, error = 0, None
            while written < want:
                try:
                    written += os.write(1, data)
                except OSError as exc:
                    error = exc.errno
                    break
            out.append({"written": written, "errno": error})
        return out
"""
#: Small, so that a test writes 1 MiB instead of 40 (a smaller backstop would truncate the
#: bytecode caches the instance writes: see MIN_BACKSTOP_BYTES).
TINY = LogCap(max_bytes=64 * 1024, files=3, backstop_bytes=MIN_BACKSTOP_BYTES)
FLOOD = 2 * MIN_BACKSTOP_BYTES


@pytest.fixture(params=["cold", "forked"])
def chatty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessRuntime]:
    home = tmp_path / "home"
    home.mkdir()
    preload = ["opsbot.serving.server"] if request.param == "forked" else []
    runtime = ProcessRuntime(
        home, accounts=lambda _: None, limiter=RlimitOnly(), preload=preload, log_cap=TINY
    )
    try:
        yield runtime
    finally:
        for owned in runtime.owned():
            runtime.stop(owned.handle, grace_s=2)
        runtime.close()


def _ask(runtime: ProcessRuntime, spec: InstanceSpec, started: Started, *items: Any) -> Any:
    """What the instance answered to ``items``, once it answers (it is loading at first)."""
    secret = instance_secret(daemon_secret(runtime.home), spec.service_uid, spec.idx)
    wait_ready(started)
    status, answer = call_instance(
        started, "POST", "/predict", {"instances": list(items)}, {INSTANCE_HEADER: secret}
    )
    assert status == 200, answer
    return answer["predictions"]


def _limits(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max file size"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no file size line")


def _ignores_sigxfsz(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGXFSZ - 1) & 1)
    raise AssertionError("no SigIgn line")


def test_an_instance_past_the_backstop_fails_its_writes_keeps_running_and_is_rotated(
    chatty: ProcessRuntime, tmp_path: Path
) -> None:
    model = tmp_path / "chatty"
    model.mkdir()
    (model / "model.py").write_text(CHATTY_PY)
    spec = python_model_spec(model, "chatty1")
    started = chatty.start(spec)
    pid = int(started.handle.split(":")[0])
    log = chatty.log_path(spec.key)

    # Printing in a loop: the writes past the backstop fail, the instance lives on.
    (flood,) = _ask(chatty, spec, started, FLOOD)
    assert flood["errno"] == errno.EFBIG
    assert log.stat().st_size <= TINY.backstop_bytes
    assert _limits(pid) == (str(TINY.backstop_bytes),) * 2  # hard too: it cannot lift it
    assert _ignores_sigxfsz(pid)
    (again,) = _ask(chatty, spec, started, "still here")
    assert again == {"written": 0, "errno": errno.EFBIG}  # answered: not killed
    assert chatty.exited(started.handle) is None

    # The controller's pass rotates it: the instance writes again, at the new end.
    chatty.rotate_logs()
    assert log.stat().st_size == 0
    first = rotated(log, 1)
    _private(first)
    _private(log)
    assert 0 < first.stat().st_size <= TINY.max_bytes
    newest = [f"newest-{i}" for i in range(3)]
    assert [a["errno"] for a in _ask(chatty, spec, started, *newest)] == [None] * 3
    assert chatty.exited(started.handle) is None

    # `opsbot logs --tail N` reads the newest lines, into the copy when the log has fewer.
    current = log.read_text().splitlines()
    assert current == newest
    assert chatty.logs(started.handle, 2) == newest[1:]
    tail = chatty.logs(started.handle, len(current) + 5)
    assert len(tail) == len(current) + 5
    assert all(set(ln) == {"x"} for ln in tail[:5]) and tail[5:] == newest

    # More floods and passes: the total kept stays bounded.
    for _ in range(4):
        _ask(chatty, spec, started, FLOOD)
        chatty.rotate_logs()
    kept = [rotated(log, n) for n in range(TINY.files)]
    assert not rotated(log, TINY.files).exists()
    assert sum(p.stat().st_size for p in kept) <= TINY.kept_bytes
    assert chatty.exited(started.handle) is None


def test_the_preloader_and_its_log_are_capped_too(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    runtime = ProcessRuntime(
        home, accounts=lambda _: None, limiter=RlimitOnly(), preload=["json"], log_cap=TINY
    )
    try:
        runtime.warm(next(f for f in load_flavors() if f.id == "cpu.2u8g"))
        (zygote,) = runtime._zygotes.values()
        assert zygote.alive and zygote.pid is not None
        assert _limits(zygote.pid) == (str(TINY.backstop_bytes),) * 2
        assert _ignores_sigxfsz(zygote.pid)
        log = runtime.log_dir / PRELOADER_LOG
        with open(log, "ab") as out:  # as the preloader's own output would, past the cap
            out.write(_lines("preload skipped", 5000))
        runtime.rotate_logs()
        assert log.stat().st_size == 0
        _private(rotated(log, 1))
        assert rotated(log, 1).read_text().splitlines()[-1] == "preload skipped-4999"
    finally:
        runtime.close()


FLOOD_CHECK = """
import errno, os
line = b" " * 1022 + b"0\\n"  # each line valid JSON (0), 1 KiB: the cap falls between two
written = 0
while True:
    try:
        written += os.write(1, line)
    except OSError as exc:
        os.write(2, f"{errno.errorcode[exc.errno]} after {written}\\n".encode())
        break
"""


def test_the_registry_s_check_of_a_model_is_capped_too(tmp_path: Path) -> None:
    """Model code run by the registry's check prints into files the daemon reads: capped the
    same way, through the same gate."""
    base = tmp_path / "check"
    base.mkdir()
    result = _child_check([sys.executable, "-c", FLOOD_CHECK], 60, account=None, base=base)
    # It ran on past the cap (no SIGXFSZ), its write failing, and said so last on stderr.
    assert result == {
        "ok": False,
        "reason": f"the check crashed: EFBIG after {LOG_CAP.backstop_bytes}",
    }
