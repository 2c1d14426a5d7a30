"""API keys: bearer tokens from a file of one key per line (a mounted Secret), compared in constant time.
A job belongs to the key that created it, by a digest of the key: the stores never hold a key itself."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path

# The owner of every job when the API runs without keys (on loopback only).
LOCAL_OWNER = "local"


def read_keys(path: Path) -> list[str]:
    """The keys of ``path``: one per line; blank lines and lines starting with # are left out."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise SystemExit(f"openspeedy api: cannot read the API keys file {path}: {error}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise SystemExit(f"openspeedy api: the API keys file {path} holds no key")
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Keys:
    """The accepted keys; none means every caller is the one local owner."""

    def __init__(self, keys: list[str]):
        self._owners = [(key.encode(), owner_of(key)) for key in keys]

    @property
    def required(self) -> bool:
        return bool(self._owners)

    def owner(self, presented: str) -> str | None:
        """The owner of a presented key, or None when it is not one of the keys."""
        found = None
        for key, owner in self._owners:  # every key compared, so the time does not tell which one matched
            if hmac.compare_digest(key, presented.encode()):
                found = owner
        return found
