"""Fixtures of the Slack tests: a core with the iris examples, the fake Web API, the bot."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from slack_support import SECRET, FakeSlack, big_probe

from opsbot.core.app import Core
from opsbot.core.notify import Dispatcher
from opsbot.core.store import Store
from opsbot.slack.app import SlackBot, build_app, make_client
from opsbot.slack.drafts import Drafts
from opsbot.slack.http import SlackHTTPServer, serve


@dataclass
class Bot:
    core: Core
    bot: SlackBot
    fake: FakeSlack
    server: SlackHTTPServer
    dispatcher: Dispatcher
    changes: list[int]

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    server = FakeSlack()
    yield server
    server.stop()


@pytest.fixture
def drafts(tmp_path: Path) -> Iterator[Drafts]:
    """Drafts kept in a store of their own, as the bot keeps them in the daemon's."""
    store = Store(tmp_path / "drafts.db")
    yield Drafts(store)
    store.close()


@pytest.fixture
def core(examples_home: Path, me: str) -> Iterator[Core]:
    """The examples home; Slack user U1 is linked to ``me``, who owns the iris models."""
    core = Core(examples_home, probe=big_probe())
    core.link_slack(core.user(me), me, "U1")
    yield core
    core.store.close()


@pytest.fixture
def bot(core: Core, fake: FakeSlack) -> Iterator[Bot]:
    changes: list[int] = []
    app, slack_bot = build_app(
        core,
        client=make_client("xoxb-test", fake.url),
        signing_secret=SECRET,
        on_change=lambda: changes.append(1),
        gateway_url="http://gw.example:8080",
        alert_channel="C_ALERTS",
        request_verification_enabled=True,
    )
    server = serve(app, SECRET, 0, host="127.0.0.1")
    dispatcher = Dispatcher(core.store)
    dispatcher.subscribe(slack_bot.notifier)
    yield Bot(core, slack_bot, fake, server, dispatcher, changes)
    server.stop()
    slack_bot.notifier.close()
