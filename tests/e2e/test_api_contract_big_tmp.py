"""The control API against its OpenAPI document, with schemathesis and every one of its checks.

A real daemon (its TCP listener, with a token) answers requests generated from the document:
valid ones and invalid ones (negative testing), without a token and with a wrong one. Any 5xx,
any answer outside the document, any invalid request accepted, fails the test.

Two settings, both about what a schema cannot say: a request valid by the document may still
be refused with 422 by the core's rules (a model version the registry does not hold, a flavor
the pool lacks), so 422 is an accepted answer to valid data; and the event stream, which never
ends, is left out (tests/e2e/test_daemon.py follows it).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from homes import clone_home
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from e2e.test_daemon import start_daemon, stop_everything
from opsbot.core.app import Core
from opsbot.daemon.openapi import openapi_document
from opsbot.daemon.server import store_token

pytestmark = pytest.mark.slow

#: Generated requests per operation and mode: bounded, so CI stays within a few minutes.
EXAMPLES = 200

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"mode": "all"},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
            }
        },
    }
)
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG).exclude(
    path="/v1/events/stream"
)


#: The token the daemon is given: schemathesis asks for it already while it collects the tests.
TOKEN = secrets.token_urlsafe(24)


@schema.auth()
class BearerToken:
    """The token as schemathesis knows it: its auth checks then send none, or a wrong one."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def api_url(template: Path, tmp_path_factory: pytest.TempPathFactory, me: str) -> Iterator[str]:
    """The TCP listener of a real daemon, where TOKEN acts as ``me``."""
    home = clone_home(template, tmp_path_factory.mktemp("contract") / "home")
    core = Core(home)
    store_token(core, me, TOKEN)
    core.store.close()
    daemon = start_daemon(home)
    try:
        yield f"http://{daemon.listen}"
    finally:
        stop_everything(home, daemon.proc)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_control_api_keeps_its_contract(case: schemathesis.Case, api_url: str) -> None:
    case.call_and_validate(base_url=api_url)
