"""Keys and tokens: random, 256 bits each.

Service API keys are shown once and stored only as a SHA-256 hash: with 256 bits of randomness a
fast hash is enough, nobody can guess a preimage. The daemon's own tokens (its token for the
gateway and instances, the scrape token of the gateway's ``/metrics``) live in 0600 files in
``OPSBOT_HOME``, made whole on first use and replaced whole when rotated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Final

PREFIX = "ob_"
#: The scrape token's prefix, so a leaked one is told from a service key at a glance.
METRICS_PREFIX: Final = "obm_"
#: The file, under $OPSBOT_HOME, holding the token a scraper sends to the gateway's /metrics.
METRICS_TOKEN_FILE: Final = "metrics-token"


def new_key(prefix: str = PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """A key's or token's SHA-256, the only form a service key is stored in. A header value
    that is not UTF-8 (decoded with surrogateescape) hashes to what matches no key."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_prefix(key: str) -> str:
    """The part of a key that may be shown to tell keys apart."""
    return key[: len(PREFIX) + 6]


def _write_aside(path: Path, prefix: str) -> Path:
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key(prefix) + "\n")
    return aside


def token_file(path: Path, prefix: str = "") -> str:
    """The token kept in ``path``, a 0600 file made on first use (written aside and linked
    in, so a reader never sees it half written and two first uses agree on one token)."""
    if not path.exists():
        aside = _write_aside(path, prefix)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink()
    return path.read_text().strip()


def rotate_token_file(path: Path, prefix: str = "") -> str:
    """Replace the token in ``path`` with a new one (whole, at once); returns it."""
    os.replace(_write_aside(path, prefix), path)
    return path.read_text().strip()


def metrics_token(home: Path) -> str:
    """The scrape token of the gateway's ``/metrics`` (made on first use)."""
    return token_file(Path(home) / METRICS_TOKEN_FILE, METRICS_PREFIX)


def rotate_metrics_token(home: Path) -> str:
    """A new scrape token; the gateway refuses the old one from its next ``/metrics`` on."""
    return rotate_token_file(Path(home) / METRICS_TOKEN_FILE, METRICS_PREFIX)
