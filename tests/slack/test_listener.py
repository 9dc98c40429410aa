"""The HTTP listener of Slack's HTTP mode: what it answers to bursts, replays, slow and
malformed requests, before Bolt sees anything."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from conftest import Bot
from slack_support import (
    SECRET,
    FakeSlack,
    block_action,
    command_body,
    post,
    sign,
    suggestion_body,
)

from opsbot.core import services as services_mod
from opsbot.core.app import Core
from opsbot.core.status import Status
from opsbot.slack import views
from opsbot.slack.app import build_app, make_client
from opsbot.slack.http import SlackHTTPServer

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def quick(core: Core, fake: FakeSlack) -> Iterator[SlackHTTPServer]:
    """The bot behind a listener with short timeouts."""
    app, bot = build_app(
        core,
        client=make_client("xoxb-test", fake.url),
        signing_secret=SECRET,
        on_change=lambda: None,
        gateway_url="http://gw.example:8080",
    )
    server = SlackHTTPServer(app, SECRET, "127.0.0.1", 0, idle_timeout_s=0.5, read_timeout_s=0.5)
    server.start()
    yield server
    server.stop()
    bot.notifier.close()


def raw(url: str, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes to the listener; what it answers until it closes the connection."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


MALFORMED = [
    ("payload=%7Bnot-json", FORM),
    ("{oops", "application/json"),
    ("[1, 2]", "application/json"),
    ('payload=%5B"a"%5D', FORM),
    ("payload=%22text%22", FORM),
    ('{"type": "block_actions", "authorizations": 5}', "application/json"),
]


@pytest.mark.parametrize(("body", "content_type"), MALFORMED)
def test_signed_malformed_bodies_get_400_and_no_traceback(
    bot: Bot, body: str, content_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        reply = post(bot.url, body, content_type)
    assert reply.status == 400, reply
    assert "JSON object" in reply.json()["error"] or "shaped" in reply.json()["error"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_unsigned_bodies_are_refused_before_they_are_parsed(bot: Bot) -> None:
    body = "payload=%7Bnot-json"
    reply = post(bot.url, body, FORM, headers={})
    assert reply.status == 401 and "X-Slack-Signature" in reply.json()["error"]
    headers = {**sign(body), "X-Slack-Request-Timestamp": "soon"}
    reply = post(bot.url, body, FORM, headers=headers)
    assert reply.status == 401 and "whole seconds" in reply.json()["error"]


def test_a_bad_content_length_gets_400(bot: Bot, caplog: pytest.LogCaptureFixture) -> None:
    parts = urlsplit(bot.url)
    with caplog.at_level(logging.WARNING):
        answer = raw(
            bot.url,
            f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n".encode(),
        )
    assert answer.split(b"\r\n")[0].endswith(b"400 Bad Request"), answer[:80]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert any("malformed HTTP request" in r.getMessage() for r in caplog.records)


def test_other_paths_answer_json_404(bot: Bot) -> None:
    base = bot.url.removesuffix("/slack/events")
    reply = post(base + "/elsewhere", "x=1", FORM)
    assert reply.status == 404 and "/slack/events" in reply.json()["error"]


def test_a_replayed_request_is_acted_on_once(bot: Bot, me: str) -> None:
    bot.core.create_service(
        bot.core.user(me), {"name": "once", "models": [{"model": "iris", "version": "1.0.0"}]}
    )
    service = bot.core.service(bot.core.user(me), "once").as_dict(gateway_url="")
    action = {"action_id": views.A_STOP, "block_id": "x", "value": views.action_value(service)}
    body = block_action(action, response_url=bot.fake.response_url)
    headers = sign(body)
    first = post(bot.url, body, FORM, headers=headers)
    assert first.status == 200
    bot.fake.wait_for("response", lambda a: a.get("replace_original") is True)
    assert bot.core.service(bot.core.user(me), "once").status == Status.STOPPING
    again = post(bot.url, body, FORM, headers=headers)
    assert again.status == 200 and again.body == ""
    assert bot.changes == [1]  # the stop, once; the replay reached no listener
    # The same press again, as Slack sends it (its own trigger id): acted on, and refused by
    # the core since the service is stopping already.
    post(bot.url, block_action(action, response_url=bot.fake.response_url), FORM)
    bot.fake.wait_for(
        "response", lambda a: "stop" in a.get("text", "").lower() and not a.get("replace_original")
    )


def test_the_same_typing_again_within_a_second_is_answered_again(bot: Bot) -> None:
    """A select's options request (block_suggestion) sent twice alike, same timestamp and so
    same signature (the user typed, erased and typed the same within a second): answering it
    changes nothing, so both get the options, where a replayed action is not acted on."""
    view = bot.bot.modal(bot.core.slack_user("U1"), views.FormState())
    model = next(b for b in view["blocks"] if b["block_id"].startswith("m0.model."))
    body = suggestion_body(view, model["block_id"], "iris")
    headers = sign(body)
    answers = [post(bot.url, body, FORM, headers=headers) for _ in range(2)]
    assert [a.status for a in answers] == [200, 200]
    for answer in answers:
        assert [o["text"]["text"] for o in answer.json()["options"]] == ["iris", "iris-onnx"]


def test_idle_and_half_sent_connections_are_closed(quick: SlackHTTPServer) -> None:
    parts = urlsplit(quick.url)
    socks = [socket.create_connection((parts.hostname, parts.port)) for _ in range(30)]
    try:
        for i, sock in enumerate(socks):
            sock.settimeout(10)
            if i % 2:  # half the headers, never finished
                sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: x\r\n".encode())
        for sock in socks:
            assert sock.recv(1024) == b""  # closed by the listener, not by our timeout
    finally:
        for sock in socks:
            sock.close()


def test_a_body_that_never_arrives_gets_408(quick: SlackHTTPServer) -> None:
    parts = urlsplit(quick.url)
    head = f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
    answer = raw(quick.url, head.encode())
    assert answer.split(b"\r\n")[0].endswith(b"408 Request Timeout"), answer[:80]


def test_a_burst_of_signed_requests_is_all_answered(bot: Bot) -> None:
    bodies = [command_body("/services", "", bot.fake.response_url) for _ in range(100)]
    with ThreadPoolExecutor(max_workers=100) as pool:
        replies = list(pool.map(lambda b: post(bot.url, b, FORM), bodies))
    assert [r.status for r in replies] == [200] * 100
    bot.fake.wait_count("response", 100)  # and every listener went on to post its list


def test_a_listener_failing_after_its_ack_still_answers_and_says_so(
    bot: Bot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bot.core, "services", broken)
    with caplog.at_level(logging.ERROR):
        reply = post(bot.url, command_body("/services", "", bot.fake.response_url), FORM)
        assert reply.status == 200  # the ack given before the failure, not Bolt's 404
        said = bot.fake.wait_for("response", lambda a: "went wrong" in a.get("text", ""))
    assert "disk on fire" in said["text"] and said["response_type"] == "ephemeral"
    assert any("services_command failed" in r.getMessage() for r in caplog.records)


def test_channel_and_dm_alerts_are_independent_deliveries(bot: Bot, me: str) -> None:
    bot.fake.refuse["C_ALERTS"] = "not_in_channel"
    bot.fake.rate_limit_next.add("chat.postMessage")  # the channel's post: 429 first, retried
    created = bot.core.create_service(
        bot.core.user(me), {"name": "told", "models": [{"model": "iris", "version": "1.0.0"}]}
    )
    bot.dispatcher.dispatch()
    with bot.core.store.write() as db:
        services_mod.transition(
            db, time.time(), created.service, Status.FAILED, actor="controller", message="boom"
        )
    bot.dispatcher.dispatch()
    bot.fake.wait_for("chat.postMessage#429", lambda a: a["channel"] == "C_ALERTS")
    bot.fake.wait_for("chat.postMessage#refused", lambda a: a["channel"] == "C_ALERTS")
    dm = bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1")
    assert "told" in dm["text"]
    assert json.dumps(dm["blocks"])
