"""Socket Mode for real: the Web API hands out a ws:// URL of a local websocket server, the
bot connects to it, and envelopes sent over it are acknowledged with their envelope_id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from budget import check_options
from slack_sdk.models.views import View
from slack_support import FakeSlack, FakeSocketMode, command_body, suggestion_body

from opsbot.core.app import Core
from opsbot.core.notify import Dispatcher
from opsbot.slack import views
from opsbot.slack.app import build_app, make_client, start_slack
from opsbot.slack.socket_mode import SocketModeRunner


@pytest.fixture
def socket_server() -> Iterator[FakeSocketMode]:
    server = FakeSocketMode()
    yield server
    server.stop()


def slash_envelope(envelope_id: str, command: str, text: str, response_url: str) -> dict[str, Any]:
    """A slash command as Socket Mode delivers it: the form fields as a JSON payload."""
    payload = {k: v[0] for k, v in parse_qs(command_body(command, text, response_url)).items()}
    payload.setdefault("text", text)
    return {
        "envelope_id": envelope_id,
        "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": payload,
    }


def socket_env(monkeypatch: pytest.MonkeyPatch, fake: FakeSlack) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-test")
    monkeypatch.setenv("OPSBOT_SLACK_API_URL", fake.url)
    for name in ("SLACK_SIGNING_SECRET", "OPSBOT_SLACK_PORT", "OPSBOT_SLACK_ALERT_CHANNEL"):
        monkeypatch.delenv(name, raising=False)


def test_app_token_runs_the_bot_in_socket_mode(
    core: Core,
    fake: FakeSlack,
    socket_server: FakeSocketMode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.socket_url = socket_server.url
    socket_env(monkeypatch, fake)
    dispatcher = Dispatcher(core.store)
    stop = start_slack(core, on_change=lambda: None, gateway_url="", dispatcher=dispatcher)
    assert stop is not None
    try:
        socket_server.wait_connected()
        opened = fake.wait_for("apps.connections.open")
        assert opened["authorization"] == "Bearer xapp-test"
        # /deploy with no text: an empty ack for the envelope, then the modal opens.
        envelope = slash_envelope("env-1", "/deploy", "", fake.response_url)
        socket_server.send(envelope)
        answer = socket_server.wait_for("env-1")
        assert answer == {"envelope_id": "env-1"}
        modal = fake.wait_for("views.open")
        assert modal["trigger_id"] == envelope["payload"]["trigger_id"]
        assert modal["view"]["callback_id"] == views.DEPLOY_CALLBACK
        View(**modal["view"]).validate_json()
        # An ack that carries a message comes back as the envelope's payload.
        socket_server.send(slash_envelope("env-2", "/deploy", "too few", fake.response_url))
        usage = socket_server.wait_for("env-2")
        assert "/deploy NAME MODEL VERSION" in usage["payload"]["text"]
        assert len(dispatcher.notifiers) == 1
    finally:
        stop()
    # Stopping the bot closes the websocket and lets go of the dispatcher.
    assert socket_server.closed.wait(5)
    assert dispatcher.notifiers == []


def test_socket_mode_retries_until_slack_hands_out_a_url(
    core: Core, fake: FakeSlack, socket_server: FakeSocketMode
) -> None:
    client = make_client("xoxb-test", fake.url)
    app, bot = build_app(core, client=client, signing_secret=None, on_change=lambda: None,
                         gateway_url="", request_verification_enabled=False)  # fmt: skip
    runner = SocketModeRunner(app, "xapp-test", client, first_retry_s=0.05)
    runner.start()
    try:
        fake.wait_for("apps.connections.open")  # answered with an error: no URL yet
        assert not runner.connected.is_set()
        fake.socket_url = socket_server.url
        assert runner.connected.wait(5)
        socket_server.wait_connected()
        assert len(fake.of("apps.connections.open")) >= 2
    finally:
        runner.stop()
        bot.notifier.close()


def test_socket_mode_gives_up_on_a_refused_token(
    core: Core, fake: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake.socket_error = "invalid_auth"
    client = make_client("xoxb-test", fake.url)
    app, bot = build_app(core, client=client, signing_secret=None, on_change=lambda: None,
                         gateway_url="", request_verification_enabled=False)  # fmt: skip
    runner = SocketModeRunner(app, "xapp-wrong", client, first_retry_s=0.01)
    with caplog.at_level("ERROR", logger="opsbot.slack.socket_mode"):
        runner.start()
        runner._thread.join(5)
    try:
        assert not runner._thread.is_alive() and not runner.connected.is_set()
        assert len(fake.of("apps.connections.open")) == 1
        assert "SLACK_APP_TOKEN" in caplog.text and "invalid_auth" in caplog.text
    finally:
        runner.stop()
        bot.notifier.close()


def test_a_selects_options_are_answered_over_the_socket(
    core: Core, fake: FakeSlack, socket_server: FakeSocketMode
) -> None:
    """In Socket Mode a select's options request (block_suggestion) comes as an interactive
    envelope; its answer, the options, goes back as the envelope's payload."""
    fake.socket_url = socket_server.url
    client = make_client("xoxb-test", fake.url)
    app, bot = build_app(core, client=client, signing_secret=None, on_change=lambda: None,
                         gateway_url="", request_verification_enabled=False)  # fmt: skip
    runner = SocketModeRunner(app, "xapp-test", client)
    runner.start()
    try:
        socket_server.wait_connected()
        view = bot.modal(core.slack_user("U1"), views.FormState())
        model = next(b for b in view["blocks"] if b["block_id"].startswith("m0.model."))
        payload = json.loads(
            parse_qs(suggestion_body(view, model["block_id"], "IRIS"))["payload"][0]
        )
        socket_server.send(
            {
                "envelope_id": "env-s",
                "type": "interactive",
                "accepts_response_payload": True,
                "payload": payload,
            }
        )
        answer = socket_server.wait_for("env-s")
        options = check_options(answer["payload"])
        assert [o["text"]["text"] for o in options] == ["iris", "iris-onnx"]
    finally:
        runner.stop()
        bot.notifier.close()
