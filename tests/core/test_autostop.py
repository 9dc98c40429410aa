"""Auto stop: on by default (1 h); presets 1, 2, 4, 6 h; custom whole hours 1-24; minutes from
the API and spec files ("90m"); "off". A bare number is refused: hours or minutes?"""

from __future__ import annotations

import pytest
from core_support import message_for, ok, refused, spec

from opsbot.core.autostop import AutoStop, format_auto_stop
from opsbot.core.spec import spec_to_dict


def test_default_is_on_for_one_hour() -> None:
    auto = ok(spec()).auto_stop
    assert auto.enabled is True
    assert auto.minutes == 60
    assert auto.seconds == 3600
    assert spec_to_dict(ok(spec()))["auto_stop"] == "1h"


@pytest.mark.parametrize("hours", [1, 2, 4, 6])
def test_presets(hours: int) -> None:
    auto = ok(spec(auto_stop=f"{hours}h")).auto_stop
    assert (auto.enabled, auto.minutes) == (True, hours * 60)
    assert format_auto_stop(auto) == f"{hours}h"


@pytest.mark.parametrize("hours", range(1, 25))
def test_custom_whole_hours_1_to_24(hours: int) -> None:
    auto = ok(spec(auto_stop=f"{hours}h")).auto_stop
    assert auto.minutes == hours * 60
    assert str(auto) == f"{hours}h"


@pytest.mark.parametrize(("text", "minutes"), [("2 hours", 120), ("1 hour", 60), ("3H", 180)])
def test_hours_spelt_out(text: str, minutes: int) -> None:
    assert ok(spec(auto_stop=text)).auto_stop.minutes == minutes


@pytest.mark.parametrize(
    ("text", "minutes", "written"),
    [("90m", 90, "90m"), ("1m", 1, "1m"), ("45 min", 45, "45m"), ("120m", 120, "2h")],
)
def test_minutes_from_api_and_files(text: str, minutes: int, written: str) -> None:
    auto = ok(spec(auto_stop=text)).auto_stop
    assert (auto.enabled, auto.minutes) == (True, minutes)
    assert format_auto_stop(auto) == written


def test_1440_minutes_is_the_most() -> None:
    assert ok(spec(auto_stop="1440m")).auto_stop.minutes == 1440
    message_for(refused(spec(auto_stop="1441m")), "auto_stop", "24 hours", '"off"')


@pytest.mark.parametrize("value", ["off", "OFF", " off ", False, None])
def test_off(value: object) -> None:
    auto = ok(spec(auto_stop=value)).auto_stop
    assert auto.enabled is False
    assert format_auto_stop(auto) == "off"
    assert spec_to_dict(ok(spec(auto_stop=value)))["auto_stop"] == "off"


@pytest.mark.parametrize("value", ["on", True])
def test_on_means_the_default_hour(value: object) -> None:
    auto = ok(spec(auto_stop=value)).auto_stop
    assert (auto.enabled, auto.minutes) == (True, 60)


@pytest.mark.parametrize("value", [1, 2, 90, 0, 1.5])
def test_bare_number_is_refused(value: object) -> None:
    message_for(refused(spec(auto_stop=value)), "auto_stop", "no unit", '"1h"', '"90m"')


@pytest.mark.parametrize("text", ["25h", "0h", "0m", "48 hours"])
def test_outside_one_minute_to_24_hours(text: str) -> None:
    message_for(refused(spec(auto_stop=text)), "auto_stop", "outside", "24h")


@pytest.mark.parametrize("text", ["1.5h", "soon", "", "h", "-1h", "1d", "1h30m"])
def test_text_that_is_no_duration(text: str) -> None:
    message_for(refused(spec(auto_stop=text)), "auto_stop", "not a duration", '"off"')


def test_table_with_hours() -> None:
    assert ok(spec(auto_stop={"hours": 3})).auto_stop.minutes == 180


@pytest.mark.parametrize("hours", [1.5, "3", True])
def test_table_with_hours_that_are_not_whole(hours: object) -> None:
    message_for(refused(spec(auto_stop={"hours": hours})), "auto_stop", "whole number", "24")


def test_table_with_hours_over_24() -> None:
    message_for(refused(spec(auto_stop={"hours": 30})), "auto_stop.minutes", "1440")


def test_table_with_a_misspelt_key_is_refused() -> None:
    message = message_for(refused(spec(auto_stop={"hour": 3})), "auto_stop.hour", "unknown")
    assert "minutes" in message


def test_table_with_fields() -> None:
    auto = ok(spec(auto_stop={"enabled": True, "minutes": 30})).auto_stop
    assert (auto.enabled, auto.minutes) == (True, 30)
    assert ok(spec(auto_stop={"enabled": False})).auto_stop.enabled is False


def test_auto_stop_of_the_wrong_type() -> None:
    message_for(refused(spec(auto_stop=["1h"])), "auto_stop", '"off"')


def test_autostop_object_passes_through() -> None:
    given = AutoStop(minutes=240)
    assert ok(spec(auto_stop=given)).auto_stop == given
    assert AutoStop.model_validate("4h") == given
