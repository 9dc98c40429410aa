"""The model registry: models and their versions under $OPSBOT_HOME/models.

A version is Building until it has been loaded once and has answered a sample, then Normal, or
Failed with the reason. Only Normal versions can be deployed. A model is private to its owner
until published; others subscribe to a published model and find it under My Subscriptions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opsbot.core.accounts import Account, runtime_account
from opsbot.core.clock import Clock
from opsbot.core.errors import (
    Conflict,
    FieldError,
    InvalidInput,
    ModelInvalid,
    NotFound,
    OpsbotError,
)
from opsbot.core.logcap import LOG_CAP
from opsbot.core.sandbox import (
    MARKER,
    Limits,
    Reader,
    clean_env,
    copy_tree,
    corner,
    kill_tree,
    pick_python,
    private_dir,
    release_corner,
    spawn,
    stage,
)
from opsbot.core.spec import NAME_PATTERN, TOKEN_PATTERN, Source
from opsbot.core.store import Store, table

FORMATS = ("sklearn", "onnx", "python", "image")  # image: see opsbot.core.images
ORIGINS = ("custom", "exeml")
BUILDING, NORMAL, FAILED = "building", "normal", "failed"
MANIFEST = "opsbot-model.json"
CHECK_TIMEOUT_S = 300
#: A python model's entry: MODULE:Class, the module a dotted name of a file inside the copy.
ENTRY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ModelVersion:
    """One version of one model, as the registry knows it."""

    id: int
    model_id: int
    owner: str
    name: str
    version: str
    format: str
    origin: str
    status: str
    reason: str
    path: str
    entry: str | None
    public: bool
    description: str
    created_at: float

    @property
    def ref(self) -> str:
        """OWNER/NAME, how others name the model."""
        return f"{self.owner}/{self.name}"

    def as_dict(self, source: str | None = None) -> dict[str, Any]:
        out = asdict(self)
        out["public"] = bool(self.public)
        if source:
            out["source"] = source
        return out


_SELECT = """
SELECT v.id, v.model_id, m.owner, m.name, v.version, v.format, v.origin, v.status, v.reason,
       v.path, v.entry, m.public, m.description, v.created_at
FROM model_versions v JOIN models m ON m.id = v.model_id
"""


def _row(row: tuple[Any, ...]) -> ModelVersion:
    (mid, model_id, owner, name, version, fmt, origin, status, reason, path, entry) = row[:11]
    return ModelVersion(
        mid,
        model_id,
        owner,
        name,
        version,
        fmt,
        origin,
        status,
        reason,
        path,
        entry,
        bool(row[11]),
        row[12],
        row[13],
    )


class Registry:
    def __init__(
        self,
        store: Store,
        home: Path,
        clock: Clock,
        *,
        python: str | None = None,
        run_dir: str | None = None,
    ):
        self.store = store
        #: The interpreter configured for model code (None: see sandbox.pick_python).
        self.python = python
        #: Where the check's copy goes (config ``run_dir``; None: see sandbox.run_root).
        self.run_dir = run_dir
        self.home = home
        self.root = home / "models"
        self.clock = clock

    # -- reading ---------------------------------------------------------------------------

    def _query(self, where: str, params: tuple[Any, ...]) -> list[ModelVersion]:
        sql = f"{_SELECT} WHERE {where} ORDER BY m.owner, m.name, v.created_at, v.version"
        return [_row(r) for r in self.store.db.execute(sql, params).fetchall()]

    def mine(self, user: str) -> list[ModelVersion]:
        """My Models: every version of every model the user owns."""
        return self._query("m.owner = ?", (user,))

    def subscribed(self, user: str) -> list[ModelVersion]:
        """My Subscriptions: versions of published models the user subscribed to."""
        return self._query(
            "m.public = 1 AND m.id IN (SELECT model_id FROM subscriptions WHERE user = ?)",
            (user,),
        )

    def published(self) -> list[ModelVersion]:
        return self._query("m.public = 1", ())

    def listing(self, user: str, source: Source | None = None) -> list[tuple[str, ModelVersion]]:
        """What the Deploy form offers: (source, version) pairs, mine first."""
        out: list[tuple[str, ModelVersion]] = []
        if source in (None, "mine"):
            out += [("mine", v) for v in self.mine(user)]
        if source in (None, "subscribed"):
            out += [("subscribed", v) for v in self.subscribed(user)]
        return out

    def resolve(self, user: str, source: Source, model: str, version: str) -> ModelVersion:
        """The version a form entry names. Raises NotFound with what to do."""
        if source == "mine":
            if "/" in model:
                owner, _, name = model.partition("/")
                if owner != user:
                    raise NotFound(
                        f"{model} belongs to {owner}, so it is not in My Models: leave the "
                        "source out (OWNER/NAME means My Subscriptions) or set it to subscribed",
                        field="model",
                    )
                model = name
            found = self._query("m.owner = ? AND m.name = ?", (user, model))
            where = "My Models"
        else:
            owner, sep, name = model.partition("/")
            if not sep:
                raise NotFound(
                    f'name a subscribed model as OWNER/NAME, e.g. "alice/{model}"', field="model"
                )
            found = [v for v in self.subscribed(user) if v.owner == owner and v.name == name]
            where = "My Subscriptions"
        if not found:
            hint = (
                "create it with `opsbot model create` (or `opsbot model examples`)"
                if source == "mine"
                else f"subscribe with `opsbot model subscribe {model}`"
            )
            raise NotFound(f"no model {model!r} in {where}: {hint}", field="model")
        match = [v for v in found if v.version == version]
        if not match:
            versions = ", ".join(v.version for v in found)
            raise NotFound(
                f"{model} has no version {version!r}; it has: {versions}", field="version"
            )
        return match[0]

    def get(self, owner: str, name: str, version: str) -> ModelVersion:
        found = self._query("m.owner = ? AND m.name = ? AND v.version = ?", (owner, name, version))
        if not found:
            raise NotFound(f"no model {owner}/{name} version {version}")
        return found[0]

    # -- creating --------------------------------------------------------------------------

    def create(
        self,
        owner: str,
        name: str,
        version: str,
        path: Path,
        fmt: str,
        *,
        origin: str = "custom",
        entry: str | None = None,
        description: str = "",
        reader: Reader | None = None,
        limits: Limits | None = None,
    ) -> ModelVersion:
        """Register a version: copy the directory in and record it as Building.

        The directory is copied first (see :func:`opsbot.core.sandbox.copy_tree`: nothing
        followed out of it, a bounded walk, only what ``reader`` may read itself) and everything
        after looks at the copy alone, so a file changed meanwhile cannot slip in. Bad input
        (name, version, format, entry, a directory without the format's files, a version that
        exists) raises before anything is stored.
        """
        from opsbot.core.images import IMAGE_FORMAT, image_model_problem
        from opsbot.serving.loaders import required_files

        errors = []
        if not NAME_PATTERN.match(name):
            errors.append(
                FieldError("name", "use 1-64 letters, digits, - or _, starting with a letter")
            )
        # The spec's own rule: a version a spec can name, and never "." or ".." (a path).
        if len(version) > 64 or not TOKEN_PATTERN.match(version):
            errors.append(
                FieldError(
                    "version",
                    "use letters, digits, '.', '_' and '-', starting with a letter or digit, "
                    "like 1.0.0",
                )
            )
        if fmt not in FORMATS:
            errors.append(FieldError("format", f"use one of {', '.join(FORMATS)}"))
        if origin not in ORIGINS:
            errors.append(FieldError("origin", f"use one of {', '.join(ORIGINS)}"))
        if len(description) > 100:
            errors.append(FieldError("description", "at most 100 characters"))
        if fmt == "python" and entry is not None and not ENTRY_PATTERN.match(entry):
            errors.append(
                FieldError(
                    "entry",
                    "name a module inside the directory and its class as module:Class, like "
                    "predictor:Model or pkg.module:Model (no paths)",
                )
            )
        if errors:
            raise InvalidInput(errors, title="Invalid model")
        existing = self._query(
            "m.owner = ? AND m.name = ? AND v.version = ?", (owner, name, version)
        )
        if existing:
            raise Conflict(
                f"{name} {version} exists; choose a new version or delete it first",
                field="version",
            )

        target = self.root / _safe(owner) / name / version
        fresh = not self.root.exists()
        private_dir(self.root)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            copy = staging / "model"
            copy_tree(Path(path), copy, reader=reader, limits=limits)
            where, problem = (
                image_model_problem(copy, entry)
                if fmt == IMAGE_FORMAT
                else ("path", required_files(copy, fmt, entry))
            )
            if problem:
                raise ModelInvalid(problem.replace(str(copy), str(path)), field=where)
            now = self.clock.now()
            with self.store.write() as db:
                row = db.execute(
                    "SELECT id FROM models WHERE owner = ? AND name = ?", (owner, name)
                ).fetchone()
                if row:
                    model_id = row[0]
                else:
                    model_id = (
                        table(db, "models")
                        .insert(
                            {
                                "owner": owner,
                                "name": name,
                                "description": description,
                                "public": 0,
                                "created_at": now,
                            }
                        )
                        .last_pk
                    )
                version_id = (
                    table(db, "model_versions")
                    .insert(
                        {
                            "model_id": model_id,
                            "version": version,
                            "format": fmt,
                            "origin": origin,
                            "status": BUILDING,
                            "reason": "",
                            "path": str(target),
                            "entry": entry,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                    .last_pk
                )
                manifest = {
                    "owner": owner,
                    "name": name,
                    "version": version,
                    "format": fmt,
                    "origin": origin,
                    "entry": entry,
                    "created_at": now,
                }
                (copy / MANIFEST).write_text(json.dumps(manifest, indent=2))
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if target.exists():  # left by a crash between copy and commit
                    shutil.rmtree(target)
                os.replace(copy, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if fresh:  # bad input changes nothing: not even the models directory
                with contextlib.suppress(OSError):
                    self.root.rmdir()
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return self._query("v.id = ?", (version_id,))[0]

    def check(self, mv: ModelVersion, timeout: float = CHECK_TIMEOUT_S) -> ModelVersion:
        """Load the version once in a child process and predict its sample: Normal or Failed.

        The child is model code: it runs as the owner's runtime account, on a private copy of
        the version, with a clean environment, and is killed with all it started after
        ``timeout`` seconds."""
        if mv.format == "image":  # its own server: the image must be on the engine
            from opsbot.core.images import check_image_model

            result = check_image_model(mv.entry or "")
        else:
            result = self._sandboxed_check(mv, timeout)
        status = NORMAL if result.get("ok") else FAILED
        reason = "" if result.get("ok") else str(result.get("reason", "unknown"))
        with self.store.write() as db:
            db.execute(
                "UPDATE model_versions SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                (status, reason, self.clock.now(), mv.id),
            )
            if result.get("ok"):
                manifest_path = Path(mv.path) / MANIFEST
                manifest = json.loads(manifest_path.read_text())
                manifest["framework"] = result.get("framework", {})
                manifest_path.write_text(json.dumps(manifest, indent=2))
                db.execute(
                    "UPDATE model_versions SET manifest = ? WHERE id = ?",
                    (json.dumps(manifest), mv.id),
                )
        return self._query("v.id = ?", (mv.id,))[0]

    def _sandboxed_check(self, mv: ModelVersion, timeout: float) -> dict[str, Any]:
        account = runtime_account(self.store, mv.owner)
        base = corner(self.home, self.run_dir, f"check-{secrets.token_hex(8)}")
        os.chmod(base, 0o711)  # the account enters it; it lists nothing
        try:
            model = stage(Path(mv.path), base / "model", account)
            try:
                python = pick_python(self.python, account)
            except OpsbotError as exc:
                return {"ok": False, "reason": exc.message}
            cmd = [python, "-m", "opsbot.serving.check", "--path", str(model)]
            cmd += ["--format", mv.format] + (["--entry", mv.entry] if mv.entry else [])
            return _child_check(cmd, timeout, account=account, base=base)
        finally:
            release_corner(base)

    # -- changing --------------------------------------------------------------------------

    def delete(self, owner: str, name: str, version: str | None = None) -> list[ModelVersion]:
        """Delete one version, or the whole model. Refused while a service uses a version."""
        where = "m.owner = ? AND m.name = ?" + (" AND v.version = ?" if version else "")
        params: tuple[Any, ...] = (owner, name, version) if version else (owner, name)
        with self.store.write() as db:
            targets = self._query(where, params)
            if not targets:
                what = f"{name} {version}" if version else name
                raise NotFound(
                    f"no model {what} in My Models: see `opsbot model list`", field="model"
                )
            ids = [v.id for v in targets]
            marks = ",".join("?" * len(ids))
            users = db.execute(
                f"""SELECT s.owner, s.name, v.version FROM service_versions sv
                    JOIN services s ON s.id = sv.service_id
                    JOIN model_versions v ON v.id = sv.model_version_id
                    WHERE sv.model_version_id IN ({marks})""",
                ids,
            ).fetchall()
            if users:
                used = ", ".join(f"{o}/{s} (version {v})" for o, s, v in users)
                raise Conflict(f"in use by {used}: delete those services first")
            db.execute(f"DELETE FROM model_versions WHERE id IN ({marks})", ids)
            model_id = targets[0].model_id
            left = db.execute(
                "SELECT COUNT(*) FROM model_versions WHERE model_id = ?", (model_id,)
            ).fetchone()[0]
            if not left:
                db.execute("DELETE FROM subscriptions WHERE model_id = ?", (model_id,))
                db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        for v in targets:
            shutil.rmtree(v.path, ignore_errors=True)
        return targets

    def _model_id(self, owner: str, name: str) -> int:
        row = self.store.db.execute(
            "SELECT id FROM models WHERE owner = ? AND name = ?", (owner, name)
        ).fetchone()
        if not row:
            raise NotFound(f"no model {owner}/{name}: see `opsbot model list`", field="model")
        return int(row[0])

    def publish(self, owner: str, name: str, public: bool = True) -> None:
        """Make a model visible to every user (or private again)."""
        model_id = self._model_id(owner, name)
        with self.store.write() as db:
            db.execute("UPDATE models SET public = ? WHERE id = ?", (int(public), model_id))

    def subscribe(self, user: str, ref: str) -> None:
        """Add a published model (OWNER/NAME) to the user's subscriptions."""
        owner, name = split_ref(ref)
        if owner == user:
            raise Conflict(f"{name} is yours: it is under My Models already", field="model")
        model_id = self._model_id(owner, name)
        with self.store.write() as db:
            public = db.execute("SELECT public FROM models WHERE id = ?", (model_id,)).fetchone()
            if not public or not public[0]:
                raise NotFound(f"{ref} is not published: ask {owner} to publish it", field="model")
            db.execute(
                "INSERT OR IGNORE INTO subscriptions (user, model_id, created_at) VALUES (?, ?, ?)",
                (user, model_id, self.clock.now()),
            )

    def unsubscribe(self, user: str, ref: str) -> None:
        owner, _, name = ref.partition("/")
        model_id = self._model_id(owner, name)
        with self.store.write() as db:
            db.execute(
                "DELETE FROM subscriptions WHERE user = ? AND model_id = ?", (user, model_id)
            )


def split_ref(ref: str) -> tuple[str, str]:
    """OWNER and NAME of a reference to someone's model; InvalidInput when it is not one."""
    owner, sep, name = ref.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise InvalidInput([FieldError("model", f"name it OWNER/NAME, not {ref!r}")])
    return owner, name


def _child_check(
    cmd: list[str], timeout: float, *, account: Account | None, base: Path
) -> dict[str, Any]:
    """Run ``opsbot.serving.check`` as ``account`` in ``base`` (its scratch home there); its
    JSON verdict. Output goes to files the daemon opened (a pipe a grandchild keeps open would
    hold the wait past the time limit); whatever the check started is killed with it."""
    from opsbot.core.runtimes.process import model_pythonpath

    scratch = base / "home"
    scratch.mkdir(mode=0o700)
    if account is not None:
        os.chown(scratch, account.uid, account.gid)
    marker = secrets.token_hex(16)
    env = clean_env(
        {
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "PYTHONPATH": model_pythonpath(cmd[0]),
            "PYTHONUNBUFFERED": "1",
            MARKER: marker,
        }
    )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = spawn(
            cmd,
            account=account,
            env=env,
            cwd=scratch,
            stdout=out,
            stderr=err,
            file_size=LOG_CAP.backstop_bytes,  # what model code prints cannot fill the disk
        )
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        kill_tree(proc.pid, marker, grace_s=1.0, reap=proc)
        proc.wait()
        if timed_out:
            return {"ok": False, "reason": f"loading took longer than {timeout:.0f} s"}
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    try:
        lines = stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        return {"ok": False, "reason": "the check printed something that is not JSON"}
    if not isinstance(result, dict):
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        return {"ok": False, "reason": f"the check crashed: {tail[0]}"}
    return result


def _safe(owner: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in owner)
