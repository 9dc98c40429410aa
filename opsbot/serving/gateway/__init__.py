"""The inference gateway: the one door between callers and the model server instances.

Per service, named by its id, ``owner.name`` or a name only one owner uses: ``POST
/v1/infers/{service}`` (ModelArts style) and ``POST /v1/models/{service}:predict`` (KServe v1)
go to an instance's ``/predict``; the Open Inference Protocol v2 surface (``/v2/models/{service}
[/versions/{v}]`` metadata, ``/ready`` and ``/infer``) to the instance's ``/v2/models/{model}``,
where ``model`` is the name the runtime starts the model server with (the model's name without
its owner), with ``X-Opsbot-Model-Name`` saying what the caller named; server-level
``/v2/health/*``, ``/v2`` and ``/`` describe the gateway. For every call the gateway checks the
service key (``X-Auth-Token`` or ``Authorization: Bearer``), holds request bodies within a
byte budget shared by all calls, decodes gzip and deflate bodies, enforces the service's traffic
limit with a token bucket once a body has arrived whole, picks a version (the one the path
names, else the one the first matching routing rule names, else one by traffic ratio) and an
instance by fewest outstanding requests, and tries another instance when a connection fails
before any answer or an instance answers 503. ``X-Model-Version`` names the version that
answered. ``/metrics`` (Prometheus text; the scrape token as ``Authorization: Bearer``, or the
daemon's token), ``/stats`` (JSON; the daemon's token) and ``/healthz`` describe it.

An instance that leaves the routes stops getting calls at the next poll; the calls in flight there
finish and stay counted (``/stats`` lists it under ``draining`` and in ``upstreams`` with
``routed`` false) until none is left, which is what a controller waits for before stopping it.

It runs in its own process (``python -m opsbot.serving.gateway --home HOME --port PORT``) so
inference load cannot starve the control plane.

Its parts, by concern: :mod:`.options` (what they share), :mod:`.routing` (versions, split,
rules, instance picks), :mod:`.limits` (keys, the scrape token, token buckets), :mod:`.metrics`
(``/stats`` and ``/metrics``), :mod:`.drain`, :mod:`.core` (routes from the store, a call from
admission to answer), :mod:`.http` (the aiohttp front) and :mod:`.cli`.
"""

from opsbot.core.store import DB_NAME
from opsbot.serving.gateway.core import Gateway
from opsbot.serving.gateway.http import GATEWAY, make_app, serve, sibling_app
from opsbot.serving.gateway.limits import TokenBucket
from opsbot.serving.gateway.options import INTERNAL_HEADER, INTERNAL_SECRET, GatewayOptions

__all__ = [
    "DB_NAME",
    "GATEWAY",
    "INTERNAL_HEADER",
    "INTERNAL_SECRET",
    "Gateway",
    "GatewayOptions",
    "TokenBucket",
    "make_app",
    "serve",
    "sibling_app",
]
