"""The secret an instance asks of every caller, so only the gateway and the daemon reach it.

Instances listen on ports anyone on the machine can connect to. Each service version's
instances get their own secret, derived from the daemon's (``gateway.secret``, 0600 in
``OPSBOT_HOME``) with HMAC, so model code sees only its own version's secret, never the daemon's
nor another service's. The gateway derives the same value for the instances it calls; the
instance answers 401 to a call without it (health probes excepted).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Final

from opsbot.core.keys import token_file

#: The file, under $OPSBOT_HOME, holding the daemon's own token.
DAEMON_SECRET_FILE: Final = "gateway.secret"
#: The header the gateway sends an instance, and the variable the instance reads its value from.
INSTANCE_HEADER: Final = "X-Opsbot-Instance-Secret"
INSTANCE_SECRET_ENV: Final = "OPSBOT_INSTANCE_SECRET"


def daemon_secret(home: Path) -> str:
    """The daemon's random token, kept in a 0600 file made on first use."""
    return token_file(Path(home) / DAEMON_SECRET_FILE)


def instance_secret(daemon_token: str, service_uid: str, idx: int) -> str:
    """The secret of one service version's instances."""
    message = f"instance/{service_uid}/{idx}".encode()
    return hmac.new(daemon_token.encode(), message, hashlib.sha256).hexdigest()


def secret_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a presented secret."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
