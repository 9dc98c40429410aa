"""Service API keys: random, shown once, stored only as a SHA-256 hash.

A key has 256 bits of randomness, so a fast hash is enough: nobody can guess a preimage.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "ob_"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """The part of a key that may be shown to tell keys apart."""
    return key[: len(PREFIX) + 6]
