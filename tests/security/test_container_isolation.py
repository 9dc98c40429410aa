"""Containers: non-root, no capabilities, no new privileges, a read-only root, their version's
files only (a copy the container's user may read; the registry's own stay the daemon's), and
their version's instance secret."""

from __future__ import annotations

import os
from pathlib import Path

from homes import instance_spec

from opsbot.core.images import USER, USER_ID
from opsbot.core.instance_auth import INSTANCE_SECRET_ENV
from opsbot.core.runtime import InstanceSpec
from opsbot.core.runtimes.docker import MODEL_MOUNT, container_args, staged_for_container
from opsbot.core.sandbox import release_corner


def _spec(model: Path) -> InstanceSpec:
    return instance_spec(model, service_uid="ctr1", n=1)


def test_a_container_gets_its_version_s_files_as_its_user_and_nothing_more(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    model = home / "models" / "alice" / "iris" / "1.0.0"
    model.mkdir(parents=True)
    (model / "model.joblib").write_bytes(b"w")
    (model / "model.joblib").chmod(0o600)  # the registry's copy: the daemon's alone
    staged = staged_for_container(home, _spec(model))
    try:
        assert staged.path != model
        assert not staged.path.is_relative_to(home)
        copied = staged.path / "model.joblib"
        st = copied.stat()
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_mode & 0o777) == (USER_ID, 0o400)
        else:
            assert st.st_mode & 0o777 == 0o444
        args = container_args(staged, image="i", port=1, home=home, secret="s3cret")
        assert [(m["Target"], m["Source"], m["ReadOnly"]) for m in args["mounts"][:1]] == [
            (MODEL_MOUNT, str(staged.path), True)
        ]
        assert args["environment"][INSTANCE_SECRET_ENV] == "s3cret"
        assert (args["user"], args["cap_drop"], args["security_opt"], args["read_only"]) == (
            USER,
            ["ALL"],
            ["no-new-privileges"],
            True,
        )
    finally:
        release_corner(staged.path.parent)
