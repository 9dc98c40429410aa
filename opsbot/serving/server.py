"""The model server: one model version behind plain JSON and the Open Inference Protocol v2.

Every runtime starts one per instance::

    python -m opsbot.serving.server --path DIR --format sklearn|onnx|python [--entry module:Class]
        --name NAME --version VERSION (--host 127.0.0.1 --port PORT | --listen-fd FD ...)

The process runtime binds each instance's socket itself (a unix socket in a directory only the
daemon may enter) and passes it with ``--listen-fd``; the container runtimes give a port.

The socket listens at once, so liveness answers while the model loads in a background thread;
readiness turns 200 only once the model has loaded (and predicted its sample once, to warm up).
A load failure prints one line starting with ``LOAD FAILED:`` to stderr and exits with code 3:
the controller marks the service Failed with that line as the reason. A port that cannot be bound
(or a descriptor that is no listening socket) exits with code 4; SIGTERM or SIGINT stops it
cleanly with code 0.

Routes: ``POST /predict`` (``{"instances": [...]}`` -> ``{"predictions": [...]}``) and the Open
Inference Protocol v2 (KServe v2 REST): ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2``, ``GET /v2/models/{name}[/versions/{version}]`` and its ``/ready`` and ``/infer``.
Every error is ``{"error": "..."}``; malformed input gets a 400 that says what to send, never a
500. Parsing, prediction and encoding all run in a thread pool, so the event loop only moves bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from opsbot import __version__
from opsbot.core.address import LISTEN_BACKLOG
from opsbot.core.instance_auth import INSTANCE_HEADER, INSTANCE_SECRET_ENV, secret_matches
from opsbot.serving import HEADER_LENGTH, MODEL_NAME_HEADER
from opsbot.serving.http_errors import allow_header, json_errors
from opsbot.serving.loaders import (
    FORMATS,
    LoadedModel,
    LoadError,
    OnnxModel,
    PredictError,
    load_model,
    required_files,
)
from opsbot.serving.oip import (
    Declared,
    TensorError,
    encode_reply,
    output_tensor,
    parse_request,
    split_body,
)
from opsbot.serving.oip import dumps as _dumps

log = logging.getLogger("opsbot.serving.server")

SERVER_NAME = "opsbot-model-server"
LOAD_FAILED = "LOAD FAILED:"
EXIT_LOAD_FAILED = 3
EXIT_LISTEN_FAILED = 4
# Above the gateway's default 12 MB cap, so the gateway, not the instance, decides the limit.
MAX_BODY_BYTES = 64 * 1024 * 1024
# SIGTERM waits this long for requests in flight; the process runtime's grace period is longer.
SHUTDOWN_GRACE_S = 10.0
# A hint longer than this (an image model's sample row) is replaced by the input's shape.
MAX_HINT_CHARS = 200

PLATFORMS = {"sklearn": "sklearn", "onnx": "onnxruntime_onnx", "python": "python"}
Loader = Callable[[Path, str, str | None], LoadedModel]
JSON_TYPE = "application/json"
#: Predictions queued per prediction thread before calls are turned away with 503.
QUEUE_PER_THREAD = 64
_T = TypeVar("_T")


class BadRequest(TensorError):
    """The request body is malformed; the message says what is wrong and what to send."""


def onnx_providers(visible: str | None = None, available: list[str] | None = None) -> list[str]:
    """The onnxruntime execution providers for this instance.

    CUDA only when ``CUDA_VISIBLE_DEVICES`` names at least one device (the controller sets it
    empty for CPU flavors; ``-1`` hides every GPU too) and onnxruntime was built with CUDA.
    """
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if available is None:
        import onnxruntime

        available = list(onnxruntime.get_available_providers())
    devices = [d.strip() for d in visible.split(",") if d.strip()]
    wants_gpu = bool(devices) and not devices[0].startswith("-")
    if wants_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_for_serving(path: Path, fmt: str, entry: str | None) -> LoadedModel:
    """Load a model version as the server runs it: ONNX on the GPUs it was given, if any."""
    if fmt != "onnx":
        return load_model(path, fmt, entry)
    problem = required_files(path, fmt, entry)
    if problem:
        raise LoadError(problem)
    return OnnxModel(path, providers=onnx_providers())


def default_threads() -> int:
    """Prediction threads: the flavor's CPU cap (the runtime sets OMP_NUM_THREADS) or the CPUs."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON_TYPE)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=_dumps({"error": message}),
        content_type=JSON_TYPE,
        headers=headers,
    )


def _parse_object(raw: bytes, hint: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        what = "the body is empty" if not raw.strip() else f"the body is not valid JSON ({exc})"
        raise BadRequest(f"{what}: send {hint}") from None
    except RecursionError:
        raise BadRequest(f"the body's JSON is nested too deeply: send {hint}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}: send {hint}")
    return body


@dataclass
class ModelState:
    """One model version being served: how to load it, and once loaded, the model itself."""

    path: Path
    fmt: str
    entry: str | None
    name: str
    version: str
    loader: Loader
    executor: ThreadPoolExecutor
    model: LoadedModel | None = None
    error: str | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    load_seconds: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[Declared, ...] = ()
    outputs: tuple[Declared, ...] = (Declared("predictions", "", ()),)
    max_pending: int = 1
    """Predictions queued or running at once; beyond them a call gets 503 at once."""
    pending: int = 0
    predict_hint: str = '{"instances": [[...], ...]}'
    infer_hint: str = '{"inputs": [{"name": "input", "shape": [N, ...], "datatype": "FP32", ...}]}'
    load_thread: threading.Thread | None = None
    _waiter: asyncio.Task[None] | None = None

    # -- loading ---------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load in a daemon thread, so the event loop answers liveness meanwhile and SIGTERM
        during a long load does not have to wait for it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[LoadedModel] = loop.create_future()

        def settle(outcome: LoadedModel | BaseException) -> None:
            if done.done():
                return
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)

        def work() -> None:
            outcome: LoadedModel | BaseException
            try:
                outcome = self._load_sync()
            except Exception as exc:  # handed to the loop, which reports it
                outcome = exc
            except BaseException as exc:  # sys.exit() in user code must not end the server
                outcome = LoadError(f"{type(exc).__name__} raised while loading: {exc}")
            # The loop may have closed (SIGTERM during the load): then nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, outcome)

        self.load_thread = threading.Thread(target=work, name="model-load", daemon=True)
        self.load_thread.start()
        self._waiter = asyncio.create_task(self._finish_loading(done))

    async def _finish_loading(self, done: asyncio.Future[LoadedModel]) -> None:
        try:
            model = await done
        except LoadError as exc:
            self.error = str(exc)
        except Exception as exc:  # a loader bug or user code: still a reason the user can read
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading %s %s raised", self.name, self.version)
        else:
            self.model = model
            log.info(
                "model %s %s (%s) loaded in %.2f s; ready",
                self.name,
                self.version,
                self.fmt,
                self.load_seconds,
            )
        self.loaded.set()

    def _load_sync(self) -> LoadedModel:
        started = time.perf_counter()
        model = self.loader(self.path, self.fmt, self.entry)
        described = model.describe()
        metadata: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORMS.get(self.fmt, self.fmt),
            "inputs": described.get("inputs", []),
            "outputs": described.get("outputs", []),
        }
        session = getattr(model, "session", None)
        if session is not None and hasattr(session, "get_providers"):
            metadata["providers"] = list(session.get_providers())
        self.inputs = Declared.parse(metadata["inputs"])
        # Only the first output is what predict() returns; the others are not served.
        outputs = Declared.parse(metadata["outputs"])[:1]
        if outputs:
            self.outputs = outputs
            metadata["outputs"] = metadata["outputs"][:1]
        self.metadata = metadata
        sample = model.sample()
        if sample:
            self._make_hints(sample[:1], metadata["inputs"])
            # The first call of a fresh model is slow (lazy init); pay it before readiness.
            try:
                model.predict(sample)
            except PredictError as exc:
                log.warning("the model's own sample does not predict: %s", exc)
        self.load_seconds = time.perf_counter() - started
        return model

    def _make_hints(self, rows: list[Any], inputs: list[dict[str, Any]]) -> None:
        predict_hint = json.dumps({"instances": rows})
        if len(predict_hint) <= MAX_HINT_CHARS:
            self.predict_hint = predict_hint
        first = inputs[0] if inputs else {}
        name = first.get("name", "input")
        datatype = first.get("datatype") or "FP32"
        try:
            import numpy as np

            array = np.asarray(rows)
            shape, flat = list(array.shape), array.ravel().tolist()
        except (ValueError, TypeError, OverflowError):
            return
        if array.dtype.kind == "U":
            datatype = "BYTES"
        example = {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": flat}]}
        infer_hint = json.dumps(example)
        if len(infer_hint) <= MAX_HINT_CHARS:
            self.infer_hint = infer_hint

    async def stop(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiter
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- answering -------------------------------------------------------------------------

    def not_ready_reason(self) -> str:
        if self.error is not None:
            return f"model {self.name} {self.version} failed to load: {self.error}"
        return (
            f"model {self.name} {self.version} is still loading: "
            "retry when GET /v2/health/ready answers 200"
        )

    def not_ready(self) -> web.Response:
        headers = None if self.error is not None else {"Retry-After": "1"}
        return _error(503, self.not_ready_reason(), headers=headers)

    def unknown(self, request: web.Request) -> web.Response | None:
        """A 404 when the path names another model or version than this one, else None."""
        name = request.match_info["name"]
        if name != self.name:
            return _error(404, f"no model {name!r} here: this server serves {self.name!r}")
        version = request.match_info.get("version")
        if version is not None and version != self.version:
            return _error(
                404,
                f"model {self.name} has no version {version!r} here: "
                f"this server serves version {self.version!r}",
            )
        return None

    def predict_sync(self, model: LoadedModel, raw: bytes) -> tuple[int, bytes]:
        """The whole of ``POST /predict`` after the body is read: parse, predict, encode."""
        try:
            body = _parse_object(raw, self.predict_hint)
            if "instances" not in body:
                raise BadRequest(f'the body has no "instances": send {self.predict_hint}')
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise BadRequest(
                    f'"instances" must be a non-empty list of inputs: send {self.predict_hint}'
                )
            predictions = self._run(model, instances, self.predict_hint)
        except BadRequest as exc:
            return 400, _dumps({"error": str(exc)})
        return self._encode({"predictions": predictions})

    def infer_sync(
        self, model: LoadedModel, raw: bytes, header_length: str | None, reply_name: str
    ) -> tuple[int, bytes, dict[str, str] | None]:
        """The whole of ``POST /v2/models/{name}/infer`` after the body is read: the status,
        the body and, for binary outputs, the header that says where their bytes start."""
        hint = self.infer_hint
        try:
            head, blob = split_body(raw, header_length)
            body = _parse_object(head, hint)
            request = parse_request(body, blob, self.inputs, self.outputs, hint)
            predictions = self._run(model, request.instances, hint)
        except TensorError as exc:
            return 400, _dumps({"error": str(exc)}), None
        reply: dict[str, Any] = {"model_name": reply_name, "model_version": self.version}
        if request.id is not None:
            reply["id"] = request.id
        declared = self.outputs[0]
        reply["outputs"] = [output_tensor(declared, declared.name, predictions)]
        binary = request.binary or {declared.name: request.binary_default}
        try:
            encoded, json_length = encode_reply(reply, binary)
        except (TypeError, ValueError) as exc:  # the model's output, not the caller's input
            return (*self._unencodable(exc), None)
        if json_length is None:
            return 200, encoded, None
        return 200, encoded, {HEADER_LENGTH: str(json_length)}

    def _run(self, model: LoadedModel, instances: list[Any], hint: str) -> list[Any]:
        try:
            return model.predict(instances)
        except PredictError as exc:
            raise BadRequest(f"{exc}: send {hint}") from None
        except Exception as exc:  # user or library code refusing this input: the caller's 400
            log.warning("predict raised %s: %s", type(exc).__name__, exc)
            what = f"{type(exc).__name__}: {exc}"
            raise BadRequest(
                f"the model could not predict this input ({what}): send {hint}"
            ) from None

    def _encode(self, reply: dict[str, Any]) -> tuple[int, bytes]:
        try:
            return 200, _dumps(reply)
        except (TypeError, ValueError) as exc:  # the model's output, not the caller's input
            return self._unencodable(exc)

    def _unencodable(self, exc: Exception) -> tuple[int, bytes]:
        log.error("the model's output is not JSON: %s", exc)
        message = f"the model returned output that cannot be sent as JSON: {exc}"
        return 500, _dumps({"error": message})

    # -- the worker pool -------------------------------------------------------------------

    async def run(self, work: Callable[..., _T], *args: Any) -> _T | web.Response:
        """Run ``work`` in the prediction pool, or answer 503 when the pool's queue is full.

        The event loop never parses or predicts, so health checks answer while the pool works;
        the bound keeps a burst from queueing more work than the pool can finish in time.
        """
        if self.pending >= self.max_pending:
            return _error(
                503,
                f"this instance has {self.pending} predictions queued or running, its most: "
                "retry after the Retry-After seconds",
                headers={"Retry-After": "1"},
            )
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, work, *args)
        finally:
            self.pending -= 1


STATE = web.AppKey("opsbot_model_state", ModelState)


async def _predict(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = state.model
    if model is None:
        return state.not_ready()
    raw = await request.read()
    done = await state.run(state.predict_sync, model, raw)
    if isinstance(done, web.Response):
        return done
    status, body = done
    return _json(status, body)


async def _infer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    missing = state.unknown(request)
    if missing is not None:
        return missing
    model = state.model
    if model is None:
        return state.not_ready()
    raw = await request.read()
    headers = request.headers
    reply_name = headers.get(MODEL_NAME_HEADER) or state.name
    done = await state.run(state.infer_sync, model, raw, headers.get(HEADER_LENGTH), reply_name)
    if isinstance(done, web.Response):
        return done
    status, body, extra = done
    if extra is None:
        return _json(status, body)
    return web.Response(
        status=status, body=body, content_type="application/octet-stream", headers=extra
    )


async def _live(request: web.Request) -> web.Response:
    return _json(200, b'{"live":true}')


async def _ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.model is not None:
        return _json(200, b'{"ready":true}')
    return _json(503, _dumps({"ready": False, "error": state.not_ready_reason()}))


async def _server_metadata(request: web.Request) -> web.Response:
    return _json(
        200,
        _dumps({"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}),
    )


async def _model_metadata(request: web.Request) -> web.Response:
    state = request.app[STATE]
    missing = state.unknown(request)
    if missing is not None:
        return missing
    if state.model is None:
        return state.not_ready()
    name = request.headers.get(MODEL_NAME_HEADER) or state.name
    return _json(200, _dumps({**state.metadata, "name": name}))


async def _model_ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    missing = state.unknown(request)
    if missing is not None:
        return missing
    ready = state.model is not None
    name = request.headers.get(MODEL_NAME_HEADER) or state.name
    return _json(200 if ready else 503, _dumps({"name": name, "ready": ready}))


_ROUTES_HINT = (
    "POST /predict, POST /v2/models/{name}/infer, GET /v2/models/{name}, GET /v2/health/ready"
)


def _render_error(
    request: web.Request, exc: web.HTTPException, message: str | None
) -> web.StreamResponse:
    """aiohttp's own errors (no route, wrong method, body too large) as ``{"error": ...}``."""
    if message is None and isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = (
            f"the body is larger than this server takes ({MAX_BODY_BYTES // 2**20} MiB): "
            "send fewer instances per request"
        )
    return _error(exc.status, message or exc.text or exc.reason, headers=allow_header(exc))


_json_errors = json_errors(_render_error, _ROUTES_HINT)


#: Paths any caller may probe (liveness and readiness say nothing of the model's data).
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def _secret_check(secret: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware answering 401 to a call without the instance's secret: only the gateway
    and the daemon, who derive it, reach the model."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in _OPEN_PATHS or secret_matches(
            secret, request.headers.get(INSTANCE_HEADER)
        ):
            return await handler(request)
        return _error(401, "call the service through the opsbot gateway, with its key")

    return check


def make_app(
    model_path: Path | str,
    fmt: str,
    entry: str | None,
    name: str,
    version: str,
    *,
    threads: int | None = None,
    queue: int | None = None,
    loader: Loader | None = None,
    secret: str | None = None,
) -> web.Application:
    """The model server as an aiohttp application; loading starts when the app starts.

    ``loader`` replaces how the model is loaded (tests use it to hold loading back);
    ``threads`` sizes the prediction pool (default: the flavor's CPU cap), ``queue`` bounds the
    predictions queued or running at once (default: QUEUE_PER_THREAD per thread); ``secret``,
    when given, is asked of every call but the health probes (``X-Opsbot-Instance-Secret``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    middlewares = [_json_errors] + ([_secret_check(secret)] if secret else [])
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    workers = threads or default_threads()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict")
    state = ModelState(
        path=Path(model_path),
        fmt=fmt,
        entry=entry,
        name=name,
        version=version,
        loader=loader or load_for_serving,
        executor=executor,
        max_pending=queue or workers * QUEUE_PER_THREAD,
    )
    app[STATE] = state

    async def start(app: web.Application) -> None:
        state.start_loading()

    async def cleanup(app: web.Application) -> None:
        await state.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(cleanup)
    app.router.add_post("/predict", _predict)
    app.router.add_get("/v2/health/live", _live)
    app.router.add_get("/v2/health/ready", _ready)
    app.router.add_get("/v2", _server_metadata)
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(base, _model_metadata)
        app.router.add_get(base + "/ready", _model_ready)
        app.router.add_post(base + "/infer", _infer)
    return app


def _inherited(fd: int) -> socket.socket:
    """The listening socket passed as descriptor ``fd`` (any family); OSError when ``fd`` is
    not one."""
    sock = socket.socket(fileno=fd)
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0:
            raise OSError(f"descriptor {fd} is a socket that does not listen")
        sock.setblocking(False)
    except BaseException:
        sock.detach()  # not ours to close: whoever passed it keeps it
        raise
    return sock


def _unix_listener(path: str) -> socket.socket:
    """A listening unix socket at ``path``, which the directory it is in makes private (the
    docker runtime's own directory for the instance, mounted into its container): a socket left
    there by an earlier life of the container goes first, and the new one is open to whoever
    reaches the directory, so the daemon connects whatever its account."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    app: web.Application,
    host: str,
    port: int,
    listen_fds: Sequence[int] = (),
    unix: str | None = None,
) -> int:
    """Listen (on each inherited socket in ``listen_fds``, else on the unix socket ``unix``,
    else on ``host``:``port``), wait for the load and then for SIGTERM/SIGINT; return the exit
    code."""
    state = app[STATE]
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    try:
        sites: list[web.BaseSite] = []
        try:
            if listen_fds:
                for fd in listen_fds:
                    where = f"descriptor {fd}"
                    sites.append(web.SockSite(runner, _inherited(fd)))
            elif unix is not None:
                where = unix
                sites.append(web.SockSite(runner, _unix_listener(unix)))
            else:
                where = f"{host}:{port}"
                sites.append(
                    web.TCPSite(runner, host, port, reuse_address=True, backlog=LISTEN_BACKLOG)
                )
            for site in sites:
                await site.start()
        except OSError as exc:
            sys.stderr.write(f"LISTEN FAILED: cannot listen on {where}: {exc}\n")
            return EXIT_LISTEN_FAILED
        log.info(
            "listening on %s (model %s %s, %s, %s); loading",
            ", ".join(site.name for site in sites),
            state.name,
            state.version,
            state.fmt,
            state.path,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        stopping = asyncio.create_task(stop.wait())
        loading = asyncio.create_task(state.loaded.wait())
        await asyncio.wait({stopping, loading}, return_when=asyncio.FIRST_COMPLETED)
        loading.cancel()
        if not stop.is_set() and state.error is not None:
            stopping.cancel()
            reason = " ".join(state.error.split())  # one line, whatever the loader said
            sys.stderr.write(f"{LOAD_FAILED} {reason}\n")
            sys.stderr.flush()
            return EXIT_LOAD_FAILED
        await stopping
        log.info("stopping on signal")
        return 0
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opsbot.serving.server",
        description="Serve one model version over HTTP (plain JSON and Open Inference v2).",
    )
    parser.add_argument("--path", required=True, type=Path, help="the model version's folder")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--entry", help="module:Class for the python format (model:Model)")
    parser.add_argument("--name", required=True, help="the model name clients use in /v2 paths")
    parser.add_argument("--version", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--listen-fd",
        type=int,
        action="append",
        default=[],
        metavar="FD",
        help="serve on this inherited listening socket, of any family (repeatable; instead of "
        "--host/--port: the process runtime binds the instance's unix socket and passes it)",
    )
    parser.add_argument(
        "--unix",
        metavar="PATH",
        help="serve on a unix socket made at PATH (instead of --host/--port: the docker runtime "
        "gives each container a private directory for it)",
    )
    parser.add_argument("--threads", type=int, help="prediction threads (default: the CPU cap)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = make_app(
        args.path,
        args.format,
        args.entry,
        args.name,
        args.version,
        threads=args.threads,
        secret=os.environ.get(INSTANCE_SECRET_ENV) or None,
    )
    code = asyncio.run(serve(app, args.host, args.port, args.listen_fd, args.unix))
    thread = app[STATE].load_thread
    if thread is not None and thread.is_alive():
        # Stopped mid-load: a load cannot be interrupted, and finalising the interpreter
        # under a thread still importing libraries can crash, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
