"""The gateway's side of "instances answer only the gateway": it sends each version's instances
their own secret, and its ``/stats`` (owners, services, instance addresses) wants the daemon's
token."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from serving.test_gateway import _call, gateway, instance, store_home

from opsbot.core.instance_auth import INSTANCE_HEADER, instance_secret
from opsbot.serving.gateway import INTERNAL_HEADER

__all__ = ["gateway", "instance", "store_home"]  # fixtures, used by name

TOKEN = "daemon-token"


@pytest.mark.asyncio
async def test_each_version_s_instances_get_their_own_secret(
    store_home: Any, instance: Any, gateway: Any
) -> None:
    one, two = await instance("v1"), await instance("v2")
    uid = store_home.add_service([("1.0.0", 100, [one.port]), ("2.0.0", 0, [two.port])])
    other = store_home.add_service([("1.0.0", 100, [two.port])], key="ob_other-key")
    client = await gateway(
        internal_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(), instance_key=TOKEN
    )
    assert (await _call(client, uid)).status == 200
    assert (await _call(client, other, {"X-Auth-Token": "ob_other-key"})).status == 200
    sent = [headers.get(INSTANCE_HEADER) for _, _, headers in one.calls + two.calls]
    assert sent == [instance_secret(TOKEN, uid, 0), instance_secret(TOKEN, other, 0)]
    assert len(set(sent)) == 2  # another service's instances would refuse this one's secret


@pytest.mark.asyncio
async def test_stats_want_the_daemon_s_token(store_home: Any, gateway: Any) -> None:
    client = await gateway(internal_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest())
    refused = await client.get("/stats")
    assert refused.status == 401
    assert INTERNAL_HEADER in (await refused.json())["error"]
    assert (await client.get("/stats", headers={INTERNAL_HEADER: "guess"})).status == 401
    allowed = await client.get("/stats", headers={INTERNAL_HEADER: TOKEN})
    assert allowed.status == 200
    assert "services" in await allowed.json()
