"""The gateway's worker processes: one listening socket, N processes answering on it.

One asyncio process tops out near one core's worth of calls, whatever the instances behind it
can take. ``python -m opsbot.serving.gateway --workers N`` binds the port once and forks N
workers that accept on the same socket; what must stay one across them lives here:

- traffic limits: :class:`SharedBuckets`, token buckets in memory shared by every worker, so a
  service's limit holds for the sum of its calls whichever worker takes them;
- numbers: each worker also listens on a private loopback port (:class:`Siblings`), so the one
  that answers ``/stats``, ``/metrics`` or ``POST /-/routes`` adds up what every worker counts
  (:func:`merge_stats`, :func:`merge_metrics`) and knows every worker routes an instance.

The supervising process only forwards SIGTERM and SIGINT; when a worker dies on its own it stops
the others and exits 1, so whoever started the gateway (the daemon) starts it again whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import math
import mmap
import multiprocessing
import os
import secrets
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

#: Header by which workers know each other's calls on their private ports.
SIBLING_HEADER: Final = "X-Opsbot-Sibling"

# One shared bucket: key (0 = free), tokens, stamp, rate.
_SLOT: Final = struct.Struct("=Qddd")
SLOTS: Final = 4096


def _key(uid: str) -> int:
    # Never 0, which marks a free slot.
    return int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "little") | 1


class SharedBucket:
    """One service's token bucket in shared memory: ``rate`` tokens a second, at most ``rate``
    (and at least one) saved up; the same rule as the single-process TokenBucket."""

    __slots__ = ("_lock", "_mem", "_offset")

    def __init__(self, mem: mmap.mmap, lock: Any, offset: int):
        self._mem = mem
        self._lock = lock
        self._offset = offset

    def configure(self, rate: float) -> None:
        """Take a new limit, keeping what is saved up (never above the new burst)."""
        rate = max(float(rate), 1e-9)
        with self._lock:
            key, tokens, stamp, _ = _SLOT.unpack_from(self._mem, self._offset)
            _SLOT.pack_into(self._mem, self._offset, key, min(tokens, max(1.0, rate)), stamp, rate)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be.

        ``now`` is ``time.perf_counter()``: CLOCK_MONOTONIC on Linux, one clock for every
        process on the machine."""
        mem, offset = self._mem, self._offset
        with self._lock:
            key, tokens, stamp, rate = _SLOT.unpack_from(mem, offset)
            burst = rate if rate > 1.0 else 1.0
            if now > stamp:
                tokens += (now - stamp) * rate
                stamp = now
            if tokens > burst:
                tokens = burst
            if tokens >= 1.0:
                _SLOT.pack_into(mem, offset, key, tokens - 1.0, stamp, rate)
                return 0.0
            _SLOT.pack_into(mem, offset, key, tokens, stamp, rate)
        return float((1.0 - tokens) / rate)


class SharedBuckets:
    """Token buckets by service id, in memory every forked worker shares.

    Made before the workers are forked. A service keeps its slot for the gateway's life (a
    deleted one's slot is not reused); with more than ``slots`` services the rest are refused
    a slot and :meth:`bucket` returns None (the caller falls back to a bucket of its own).
    """

    def __init__(self, slots: int = SLOTS):
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * _SLOT.size)
        self._lock = multiprocessing.get_context("fork").Lock()

    def bucket(self, uid: str, rate: float, now: float) -> SharedBucket | None:
        """The service's bucket, full at ``rate`` when no worker made it before."""
        key = _key(uid)
        rate = max(float(rate), 1e-9)
        with self._lock:
            for probe in range(self.slots):
                offset = ((key + probe) % self.slots) * _SLOT.size
                found = _SLOT.unpack_from(self._mem, offset)[0]
                if found == key:
                    return SharedBucket(self._mem, self._lock, offset)
                if found == 0:
                    _SLOT.pack_into(self._mem, offset, key, max(1.0, rate), now, rate)
                    return SharedBucket(self._mem, self._lock, offset)
        return None


class Siblings:
    """The workers' private loopback ports, shared; each worker finds the others by them."""

    def __init__(self, count: int):
        self.count = count
        self.secret = secrets.token_hex(16)
        self._ports = multiprocessing.get_context("fork").Array("i", count, lock=False)
        self.index = 0
        self._session: aiohttp.ClientSession | None = None

    def publish(self, index: int, port: int) -> None:
        self.index = index
        self._ports[index] = port

    def others(self) -> list[int]:
        return [p for i, p in enumerate(self._ports) if i != self.index and p]

    def ready(self) -> bool:
        """Whether every worker has published its port."""
        return all(self._ports)

    async def gather(self, method: str, path: str) -> list[bytes]:
        """Each other worker's answer to ``method path`` on its private port."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        session = self._session

        async def one(port: int) -> bytes:
            async with session.request(
                method, f"http://127.0.0.1:{port}{path}", headers={SIBLING_HEADER: self.secret}
            ) as resp:
                resp.raise_for_status()
                return await resp.read()

        return list(await asyncio.gather(*(one(p) for p in self.others())))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- adding up what the workers count -------------------------------------------------------


def _sum_codes(docs: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for doc in docs:
        for code, n in doc.items():
            out[code] = out.get(code, 0) + n
    return dict(sorted(out.items()))


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """Median, 99th percentile and mean of ``seconds``, in milliseconds (None when empty)."""
    recent = sorted(seconds)
    if not recent:
        return {"p50": None, "p99": None, "mean": None}
    n = len(recent)
    return {
        "p50": round(recent[(n - 1) // 2] * 1000, 3),
        "p99": round(recent[min(n - 1, math.ceil(0.99 * n) - 1)] * 1000, 3),
        "mean": round(sum(recent) / n * 1000, 3),
    }


_VERSION_SUMS: Final = (
    "calls",
    "failures",
    "upstream_errors",
    "inflight",
    "rule_hits",
    "rule_fallbacks",
)
_SERVICE_SUMS: Final = ("unauthorized", "rate_limited", "too_large", "unavailable")


def merge_stats(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One ``/stats`` document from every worker's (each with its ``recent_s`` latencies):
    counts add up, latency percentiles come from all the recent calls together, an instance is
    routed when every worker routes it and draining while any still has calls on it."""
    first = docs[0]
    # Calls that reached a version, per worker: how the kernel spread the connections.
    worker_calls = [sum(v["calls"] for s in d["services"] for v in s["versions"]) for d in docs]
    services: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for service in doc["services"]:
            into = services.get(service["id"])
            if into is None:
                services[service["id"]] = into = {**service, "versions": []}
                for name in (*_SERVICE_SUMS, "refused"):
                    into[name] = 0 if name != "refused" else {}
            for name in _SERVICE_SUMS:
                into[name] += service[name]
            into["refused"] = _sum_codes([into["refused"], service["refused"]])
            into["versions"].append(service["versions"])
    for into in services.values():
        into["versions"] = _merge_versions(into["versions"])
    upstreams: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for address, up in doc["upstreams"].items():
            seen = upstreams.get(address)
            if seen is None:
                upstreams[address] = {**up, "workers": 1}
            else:
                seen["inflight"] += up["inflight"]
                seen["routed"] = seen["routed"] and up["routed"]
                seen["workers"] += 1
    for up in upstreams.values():
        # Routed only where every worker routes it.
        routing = up.pop("workers")
        up["routed"] = up["routed"] and routing == len(docs)
    return {
        "loaded_at": min(d["loaded_at"] for d in docs),
        "reloads": min(d["reloads"] for d in docs),
        "workers": len(docs),
        "worker_calls": worker_calls,
        "buffered_bytes": sum(d["buffered_bytes"] for d in docs),
        "unrouted": _sum_codes(d["unrouted"] for d in docs),
        "services": [services[s["id"]] for s in first["services"] if s["id"] in services]
        + [s for uid, s in services.items() if uid not in {x["id"] for x in first["services"]}],
        "upstreams": upstreams,
    }


def _merge_versions(per_worker: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[int, dict[str, Any]] = {}
    recent: dict[int, list[float]] = {}
    for versions in per_worker:
        for v in versions:
            idx = v["idx"]
            samples = v.pop("recent_s", [])
            into = merged.get(idx)
            if into is None:
                merged[idx] = {**v, "instances": [], "draining": []}
                into = merged[idx]
                recent[idx] = []
                for name in _VERSION_SUMS:
                    into[name] = 0
                into["codes"] = {}
                into["calls_per_s"] = [0] * len(v["calls_per_s"])
                into["failures_per_s"] = [0] * len(v["failures_per_s"])
            for name in _VERSION_SUMS:
                into[name] += v[name]
            into["codes"] = _sum_codes([into["codes"], v["codes"]])
            for series in ("calls_per_s", "failures_per_s"):
                into[series] = [a + b for a, b in zip(into[series], v[series], strict=True)]
            recent[idx].extend(samples)
            into["instances"].append(v["instances"])
            into["draining"].append(v["draining"])
    for idx, into in merged.items():
        into["latency_ms"] = latency_summary(recent[idx])
        into["instances"] = _merge_instances(into["instances"])
        into["draining"] = _merge_instances(into["draining"])
    return [merged[i] for i in sorted(merged)]


def _merge_instances(per_worker: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for instances in per_worker:
        for inst in instances:
            seen = out.get(inst["address"])
            if seen is None:
                out[inst["address"]] = dict(inst)
                continue
            for name in ("inflight", "outstanding"):
                if name in inst:
                    seen[name] += inst[name]
            if "ejected" in inst:
                seen["ejected"] = seen["ejected"] or inst["ejected"]
    return list(out.values())


#: Samples that are the same in every worker (or a bound), not a count: taken once.
_TAKE_MAX: Final = frozenset(
    {
        "opsbot_gateway_latency_recent_seconds",
        "opsbot_gateway_upstreams_ready",
        "opsbot_gateway_service_info",
        "opsbot_gateway_route_reloads_total",
        "process_max_fds",
        "process_virtual_memory_max_bytes",
    }
)
_TAKE_MIN: Final = frozenset({"process_start_time_seconds"})


def merge_metrics(texts: Sequence[str]) -> str:
    """One Prometheus text exposition from every worker's: counters, histograms and gauges of
    amounts (calls in flight, bytes, memory, CPU seconds) add up; what every worker reports
    alike (routes, service names) is taken once; the recent-latency percentiles are the highest
    of the workers' (an upper bound: each worker's own are exact in /stats' merged figures)."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            _, _, values = families.setdefault(family.name, (family.type, family.documentation, {}))
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                value = sample.value
                if key not in values:
                    values[key] = value
                elif sample.name in _TAKE_MAX:
                    values[key] = max(values[key], value)
                elif sample.name in _TAKE_MIN:
                    values[key] = min(values[key], value)
                else:
                    values[key] = values[key] + value
    out: list[str] = []
    for name, (kind, doc, values) in families.items():
        exposed = f"{name}_total" if kind == "counter" else name
        help_ = doc.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {exposed} {help_}")
        out.append(f"# TYPE {exposed} {kind}")
        for (sample_name, labels), value in values.items():
            out.append(_sample_line(Sample(sample_name, dict(labels), value)))
    return "\n".join(out) + "\n"


def _sample_line(sample: Sample) -> str:
    value = str(floatToGoString(sample.value))  # type: ignore[no-untyped-call]
    if not sample.labels:
        return f"{sample.name} {value}"
    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
    return f"{sample.name}{{{labels}}} {value}"


def _escape(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# -- the supervising process ----------------------------------------------------------------


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The one listening socket every worker accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def supervise(count: int, work: Callable[[int], None]) -> int:
    """Fork ``count`` workers, each running ``work(index)``; forward SIGTERM and SIGINT to them
    and wait. Returns 0 once they stopped when told, 1 when one died on its own first."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    children: dict[int, int] = {}
    parent = os.getpid()
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
                _die_with(parent)
                code = 1
                try:
                    work(index)
                    code = 0
                except BaseException:
                    log.exception("gateway worker %d failed", index)
                finally:
                    os._exit(code)
            children[pid] = index
        failed = False
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in children:
                continue
            index = children.pop(pid)
            if not stopping:
                log.error(
                    "gateway worker %d (pid %d) ended (%s); stopping the others",
                    index,
                    pid,
                    os.waitstatus_to_exitcode(status),
                )
                failed = True
                stop(signal.SIGTERM, None)
        return 1 if failed else 0
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


_PR_SET_PDEATHSIG: Final = 1


def _die_with(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies, even by SIGKILL:
    no worker outlives it holding the port."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
