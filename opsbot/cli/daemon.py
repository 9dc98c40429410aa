"""The daemon (`opsbot up`, `opsbot down`), the dashboard that talks to it, and the serving
image its docker runtimes run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from opsbot.cli.base import JSON_OPT, app, client, image_app, me
from opsbot.cli.output import document, err, home, out, print_json, reports_errors
from opsbot.client import ControlClient
from opsbot.core.app import Core
from opsbot.core.errors import OpsbotError
from opsbot.core.logcap import tail_lines
from opsbot.core.sandbox import SOCKET_NAME
from opsbot.daemon.server import LOCK_NAME, Daemon


@app.command()
@reports_errors
def up(
    runtime: str | None = typer.Option(
        None, help="process (default), docker or swarm; overrides config.toml."
    ),
    gateway_port: int | None = typer.Option(
        None,
        min=0,
        max=65535,
        help="Gateway port (default from config.toml: 8780; 0 picks a free one). A port another "
        "program holds is refused, naming it.",
    ),
    listen: str | None = typer.Option(
        None, help="Also serve the control API on HOST:PORT (callers need a user token)."
    ),
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Run in the background; return once it answers."
    ),
    examples: bool = typer.Option(True, help="Create the iris example models on first start."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the daemon: control API, controller, gateway. Model instances outlive it."""
    where = home()
    if detach:
        started = _detach(where, runtime, gateway_port, listen, examples)
        if as_json:
            print_json(started)
        return
    Daemon(
        where,
        runtime=runtime,
        gateway_port=gateway_port,
        api_listen=listen,
        examples=examples,
        say=lambda m: err.print(m, markup=False),
    ).run()


def _detach(
    home: Path, runtime: str | None, gateway_port: int | None, listen: str | None, examples: bool
) -> dict[str, Any]:
    """Start the daemon in the background; what it answers once it does (whoami, pid, log)."""
    control = ControlClient.for_home(home)
    if control.available():
        err.print(f"an opsbot daemon already answers on {home / SOCKET_NAME}", markup=False)
        return {**document(control.whoami()), "pid": None, "already_running": True}
    if examples:
        here = Core(home)
        here.create_examples(me(here), lambda w: err.print(f"example model: {w}", markup=False))
    argv = [sys.executable, "-m", "opsbot", "--home", str(home), "up", "--no-examples"]
    for flag, value in (
        ("--runtime", runtime),
        ("--gateway-port", gateway_port),
        ("--listen", listen),
    ):
        if value is not None:
            argv += [flag, str(value)]
    log_path = home / "logs" / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    with err.status("starting the daemon"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                # Its own one-line error (port busy, home not writable) says it best.
                lines = tail_lines(log_path, 8)
                said = [ln for ln in lines if ln.startswith("Error: ")]
                why = said[-1].removeprefix("Error: ") if said else " / ".join(lines[-3:])
                raise OpsbotError(
                    f"the daemon exited at start: {why} (log: {log_path})",
                    title="Daemon not started",
                )
            if control.available():
                who = control.whoami()
                err.print(
                    f"opsbot daemon running (pid {proc.pid}), runtime {who.runtime}, "
                    f"gateway {who.gateway_url}; log: {log_path}",
                    markup=False,
                )
                return {**document(who), "pid": proc.pid, "log": str(log_path)}
            time.sleep(0.2)
    raise OpsbotError(f"the daemon did not answer within 60 s; see {log_path}")


@app.command()
@reports_errors
def down(as_json: bool = JSON_OPT) -> None:
    """Stop the daemon (SIGTERM). Model instances keep running; `opsbot up` adopts them."""
    lock = home() / LOCK_NAME
    if not client().available():
        if as_json:
            print_json({"stopped": None})
        else:
            err.print("no opsbot daemon is running", markup=False)
        return
    pid = int(lock.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    if as_json:
        print_json({"stopped": pid})
    else:
        err.print(f"daemon {pid} stopped", markup=False)


@app.command()
@reports_errors
def tui() -> None:
    """The live dashboard (Textual), for a terminal or `ssh -t box opsbot tui`."""
    from opsbot.tui.app import run  # Textual loads only for this command

    run(home())


@image_app.command("build")
@reports_errors
def image_build(
    force: bool = typer.Option(False, help="Rebuild the root filesystem even if cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the tag."),
    as_json: bool = JSON_OPT,
) -> None:
    """Build the serving image from Debian packages (no registry pull) and `docker import` it
    as opsbot-serving:<content hash> and :latest; skipped when that image exists. The root
    filesystem is cached in $OPSBOT_CACHE_DIR (default ~/.cache/opsbot)."""
    from opsbot.core.images import ensure_image
    from opsbot.core.runtimes.docker import connect

    client = connect()
    if quiet or as_json:
        built = ensure_image(client, force=force)
    else:
        with err.status("serving image") as status:

            def progress(line: str) -> None:
                err.print(line, markup=False)
                status.update(line[:80])

            built = ensure_image(client, force=force, on_progress=progress)
    if as_json:
        print_json({"tag": built.tag, "built": built.built, "seconds": built.seconds})
        return
    if not quiet:
        what = f"built in {built.seconds:.0f} s" if built.built else "already built"
        err.print(f"{built.tag}: {what}", markup=False)
    out.print(built.tag, markup=False)
