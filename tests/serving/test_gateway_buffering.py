"""What the gateway holds for its callers: request bytes across calls, slow senders, tokens.

In process over loopback sockets (the buffered-bytes cap and the body read timeout), and the real
gateway process for the head read timeout, which lives in how ``serve`` sets up aiohttp.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from aiohttp import ClientSession

from serving.test_gateway import AUTH, KEY, Home, _free_port
from serving.test_gateway_limits import gateway_process


async def _stats(client: Any) -> dict[str, Any]:
    document: dict[str, Any] = await (await client.get("/stats")).json()
    return document


@pytest.mark.asyncio
async def test_calls_over_the_buffered_bytes_cap_get_503_and_the_bytes_come_back(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    up.hold = asyncio.Event()
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway(max_buffered_mb=1.0)
    held = asyncio.create_task(client.post(f"/v1/infers/{uid}", data=b"x" * 800_000, headers=AUTH))
    deadline = time.monotonic() + 10
    while not up.calls and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert up.calls, "the first call never reached the instance"
    assert (await _stats(client))["buffered_bytes"] == 800_000
    refused = await client.post(f"/v1/infers/{uid}", data=b"y" * 500_000, headers=AUTH)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    reply = await refused.json()
    assert reply["reason"] == "busy" and "1 MB" in reply["error"]
    # A call that fits beside the held one still goes through.
    up.hold.set()
    assert (await held).status == 200
    assert (await _stats(client))["buffered_bytes"] == 0
    again = await client.post(f"/v1/infers/{uid}", data=b"y" * 500_000, headers=AUTH)
    assert again.status == 200


@pytest.mark.asyncio
async def test_a_body_that_never_arrives_gets_408_and_takes_no_token(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], traffic_limit=1)
    client = await gateway(read_timeout_s=0.3)
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST /v1/infers/{uid} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {KEY}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"instances"'.encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 408")
    writer.close()
    # The service's one token a second is still there: the slow call never took it.
    resp = await client.post(f"/v1/infers/{uid}", json={"instances": [[1]]}, headers=AUTH)
    assert resp.status == 200
    assert up.calls and len(up.calls) == 1


@pytest.mark.asyncio
async def test_a_head_that_trickles_in_is_cut_off(store_home: Home) -> None:
    store_home.add_service([("1.0.0", 100, [_free_port()])])
    async with gateway_process(store_home, "--read-timeout-s", "1") as url:
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            sock.settimeout(10)
            started = time.monotonic()
            closed = False
            # A byte every 0.2 s: the head never completes, however busy the sender looks.
            for byte in b"POST /v1/infers/x HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"a" * 100:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                sock.settimeout(0.2)
                try:
                    if sock.recv(1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
            assert closed, "the gateway kept a trickling connection open"
            assert time.monotonic() - started < 5
        finally:
            sock.close()
        async with ClientSession() as session, session.get(f"{url}/v2/health/live") as resp:
            assert resp.status == 200
