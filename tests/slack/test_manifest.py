"""The Slack app manifest the README has admins paste: every request Slack makes goes to the
daemon's one listener path, the Options Load URL included (selects past 100 choices)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

from opsbot.slack.http import EVENTS_PATH

MANIFEST = Path(__file__).resolve().parents[2] / "manifest.yaml"


def test_every_url_of_the_manifest_is_the_listener_options_included() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    settings = manifest["settings"]
    interactivity = settings["interactivity"]
    assert interactivity["is_enabled"] is True
    urls = [
        *(command["url"] for command in manifest["features"]["slash_commands"]),
        settings["event_subscriptions"]["request_url"],
        interactivity["request_url"],
        interactivity["message_menu_options_url"],  # block_suggestion: external_select options
    ]
    assert {urlsplit(url).path for url in urls} == {EVENTS_PATH}
    assert len(set(urls)) == 1, "one public URL, replaced once"
