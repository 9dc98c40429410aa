"""Forms being filled in are kept in the daemon's store: a restart loses none, each is its
opener's alone, and they are forgotten when stale or past the limit."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Bot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_support import (
    SECRET,
    big_probe,
    block_action,
    command_body,
    filled,
    post,
    submission,
    submit,
)

from opsbot.core.app import Core
from opsbot.core.store import Store
from opsbot.slack import views
from opsbot.slack.app import build_app, make_client
from opsbot.slack.drafts import Drafts
from opsbot.slack.http import serve

FORM = "application/x-www-form-urlencoded"

#: Text as a user may type it (any character JSON and SQLite carry, none left out).
_text = st.text(max_size=40)
_groups = st.builds(
    views.GroupState,
    uid=st.integers(0, 2**40),
    source=_text,
    model=st.none() | _text,
    version=st.none() | _text,
    model_gen=st.integers(0, 2**40),
    version_gen=st.integers(0, 2**40),
    traffic_ratio=st.none() | _text,
    flavor=st.none() | _text,
    instances=st.none() | _text,
    env=st.none() | _text,
    kept_env=st.dictionaries(_text, _text, max_size=3),
)
_rules = st.builds(
    views.RuleState,
    uid=st.integers(0, 2**40),
    header=st.none() | _text,
    test=_text,
    value=st.none() | _text,
    version=st.none() | _text,
)
_forms = st.builds(
    views.FormState,
    pool=_text,
    auto_stop=_text,
    custom_hours=st.none() | _text,
    name=st.none() | _text,
    description=st.none() | _text,
    traffic_limit=st.none() | _text,
    flavor_gen=st.integers(0, 2**40),
    next_uid=st.integers(0, 2**40),
    groups=st.lists(_groups, min_size=1, max_size=4),
    warned=_text,
    warnings=st.lists(_text, max_size=2),
    summary=st.lists(_text, max_size=2),
    rules=st.lists(_rules, max_size=3),
    next_rule=st.integers(0, 2**40),
    target=st.none() | st.tuples(_text, _text),
    origin=st.none() | _text,
    everyone=st.booleans(),
    key=_text,
    offered=st.dictionaries(_text, _text, max_size=3),
)


@pytest.fixture(scope="module")
def shared_drafts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drafts]:
    """One store for every example hypothesis draws (a store per example would be slow)."""
    store = Store(tmp_path_factory.mktemp("drafts") / "opsbot.db")
    yield Drafts(store)
    store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=_forms)
def test_a_form_comes_back_from_json_exactly(state: views.FormState) -> None:
    # Dataclass equality is exact: a list read back where a tuple was would differ.
    assert views.form_from_json(views.form_json(state)) == state


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(state=_forms)
def test_a_saved_form_loads_whole_less_what_is_shown_once(
    shared_drafts: Drafts, state: views.FormState
) -> None:
    state.key = ""
    key = shared_drafts.save(state, "alice")
    assert shared_drafts.load(key, "alice") == dataclasses.replace(state, warnings=[], summary=[])
    assert state.key == key  # the caller's form has its key, and its warnings still


def test_the_largest_form_comes_back_whole(drafts: Drafts) -> None:
    from test_budgets import biggest  # the largest service the core takes

    state = views.form_from_spec(biggest(), "o" * 32, origin="https://hooks.example/r")
    views.add_rule(state)
    drafts.save(state, "alice")
    assert drafts.load(state.key, "alice") == state


def test_drafts_forget_the_stale_by_the_wall_clock(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = Store(tmp_path / "opsbot.db")
    try:
        drafts = Drafts(store, ttl=60, clock=lambda: now[0])
        key = drafts.save(views.FormState(name="a"), "alice")
        now[0] += 59
        assert drafts.load(key, "alice").name == "a"  # a use: its 60 s start again
        now[0] += 59
        assert drafts.load(key, "alice").name == "a"
        # The time is the wall clock's, kept in the store: a new process sees it expired.
        now[0] += 60
        again = Drafts(Store(tmp_path / "opsbot.db"), ttl=60, clock=lambda: now[0])
        with pytest.raises(views.DraftGone, match="open it again") as gone:
            again.load(key, "alice")
        assert "restarted" not in gone.value.message
        assert len(again) == 0
    finally:
        store.close()


def test_drafts_forget_the_least_recently_used_past_the_limit(tmp_path: Path) -> None:
    now = [0.0]  # one instant: the order of use decides, not the time
    store = Store(tmp_path / "opsbot.db")
    try:
        drafts = Drafts(store, limit=2, ttl=60, clock=lambda: now[0])
        a, b = views.FormState(name="a"), views.FormState(name="b")
        drafts.save(a, "alice")
        drafts.save(b, "bob")
        assert drafts.load(a.key, "alice").name == "a"  # a is now the most recently used
        drafts.save(views.FormState(name="c"), "alice")
        assert len(drafts) == 2
        with pytest.raises(views.DraftGone, match="open it again"):
            drafts.load(b.key, "bob")
        assert drafts.load(a.key, "alice").name == "a"
        # A copy is kept: changing the state loaded changes nothing until saved.
        drafts.load(a.key, "alice").name = "changed"
        assert drafts.load(a.key, "alice").name == "a"
        drafts.drop(a.key, "alice")
        with pytest.raises(views.DraftGone):
            drafts.load(a.key, "alice")
    finally:
        store.close()


def test_another_users_draft_is_neither_read_nor_changed(drafts: Drafts) -> None:
    state = views.FormState(name="mine", offered={"k1": "iris"})
    key = drafts.save(state, "alice")
    for attempt in (
        lambda: drafts.load(key, "bob"),
        lambda: drafts.save(dataclasses.replace(state, name="theirs"), "bob"),
        lambda: drafts.add_offered(key, "bob", {"k2": "stolen"}),
    ):
        with pytest.raises(views.DraftGone, match="opened by another Slack user") as refused:
            attempt()
        assert refused.value.title == "Not your form"
    drafts.drop(key, "bob")  # only the owner's drop forgets it
    assert drafts.load(key, "alice") == state
    drafts.add_offered(key, "alice", {"k2": "iris2"})
    assert drafts.load(key, "alice").offered == {"k1": "iris", "k2": "iris2"}


def test_concurrent_saves_keep_each_draft_whole(drafts: Drafts) -> None:
    """Threads saving the same draft and their own, as Bolt's pool does: every load sees one
    save whole (all its fields from the same save), never a mix, and no draft is lost."""
    shared = drafts.save(views.FormState(name="0-0", description="0-0"), "alice")
    threads, rounds = 6, 15
    start = threading.Barrier(threads)
    torn: list[Any] = []
    own: dict[int, str] = {}

    def work(n: int) -> None:
        start.wait()
        mine = views.FormState()
        for i in range(rounds):
            mark = f"{n}-{i}"
            form = views.FormState(
                key=shared, name=mark, description=mark, groups=[views.GroupState(0, env=mark)]
            )
            drafts.save(form, "alice")
            mine.name = mark
            drafts.save(mine, "alice")
            seen = drafts.load(shared, "alice")
            if not (seen.name == seen.description and seen.groups[0].env in (seen.name, None)):
                torn.append(seen)
        own[n] = mine.key

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers)
    assert torn == []
    final = drafts.load(shared, "alice")
    assert final.name == final.description == final.groups[0].env
    assert {n: drafts.load(key, "alice").name for n, key in own.items()} == {
        n: f"{n}-{rounds - 1}" for n in range(threads)
    }


def test_a_form_filled_before_a_restart_is_submitted_after_it(
    bot: Bot, examples_home: Path, me: str
) -> None:
    """Open the modal and fill it in (an action merges what was typed into the draft), restart
    the daemon (a new core, bot and listener on the same home), submit: the service deploys
    with what was typed before the restart."""
    post(bot.url, command_body("/deploy", "", bot.fake.response_url), FORM)
    opened = bot.fake.wait_for("views.open")["view"]
    typed = {
        "name": "kept",
        "m0.model": "iris",
        "m0.version": "1.0.0",
        "m0.traffic_ratio": "70",
        "m0.env": "A=1",
    }
    add = {"action_id": views.A_ADD, "block_id": "add_version", "value": "add"}
    assert post(bot.url, block_action(add, view=filled(opened, typed)), FORM).status == 200
    grown = bot.fake.wait_for("views.update")["view"]
    # The daemon goes away: nothing it held in memory is left.
    bot.server.stop()
    bot.bot.notifier.close()
    core = Core(examples_home, probe=big_probe())
    app, again = build_app(
        core,
        client=make_client("xoxb-test", bot.fake.url),
        signing_secret=SECRET,
        on_change=lambda: None,
        gateway_url="http://gw.example:8080",
    )
    server = serve(app, SECRET, 0, host="127.0.0.1")
    try:
        # Only the new version is typed after the restart; the rest is the draft's.
        late = {"m1.version": "2.0.0", "m1.traffic_ratio": "30"}
        assert "kept" not in str(filled(grown, late)["state"])
        # Another Slack user with the same form's key is refused, and nothing is deployed.
        refused = post(server.url, submission(filled(grown, late), "U2"), FORM).json()
        assert refused["response_action"] == "update"
        assert "opened by another Slack user" in str(refused["view"]["blocks"])
        assert core.services(core.slack_user("U2")) == []
        assert submit(server.url, filled(grown, late)).body == ""
        spec = core.service(core.user(me), "kept").spec
        assert [(m.version, m.traffic_ratio, m.env) for m in spec.models] == [
            ("1.0.0", 70, {"A": "1"}),
            ("2.0.0", 30, {}),
        ]
        assert len(again.drafts) == 0  # a form submitted is forgotten
    finally:
        server.stop()
        again.notifier.close()
        core.store.close()
