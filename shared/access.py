"""Access keys: generated once, stored as keyed hashes, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_KEY_ID = re.compile(r"key_[0-9a-f]{12}")

RIGHTS = ("orders:write", "products:create", "admin")
DEFAULT_RIGHTS = ("orders:write", "products:create")


def new_key_id() -> str:
    """Public id of a key: printed by `key list`, part of the key itself."""
    return "key_" + secrets.token_hex(6)


def new_access_key(key_id: str) -> str:
    """The secret handed to the client once: `ak_<key_id>_<secret>`."""
    return f"ak_{key_id}_{secrets.token_urlsafe(24)}"


def key_id_of(access_key: str) -> str | None:
    """The key id inside an access key, or None when it is not shaped like ours."""
    if not access_key.startswith("ak_key_"):
        return None
    body = access_key[3:]
    key_id, sep, secret = body[:16], body[16:17], body[17:]
    if sep != "_" or not secret or not _KEY_ID.fullmatch(key_id):
        return None
    return key_id


def hash_key(pepper: str, access_key: str) -> bytes:
    """HMAC-SHA256 under the deployment's pepper."""
    return hmac.new(pepper.encode(), access_key.encode(), hashlib.sha256).digest()


def key_matches(pepper: str, access_key: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented key with the stored hash."""
    return hmac.compare_digest(hash_key(pepper, access_key), stored_hash)


class KeyHasher:
    """hash_key and key_matches with the pepper's HMAC state keyed once, not per request."""

    def __init__(self, pepper: str) -> None:
        self._mac = hmac.new(pepper.encode(), digestmod=hashlib.sha256)

    def hash(self, access_key: str) -> bytes:
        """hash_key(pepper, access_key)."""
        mac = self._mac.copy()
        mac.update(access_key.encode())
        return mac.digest()

    def matches(self, access_key: str, stored_hash: bytes) -> bool:
        """key_matches(pepper, access_key, stored_hash), in constant time."""
        return hmac.compare_digest(self.hash(access_key), stored_hash)


def parse_rights(text: str) -> tuple[str, ...]:
    """Comma-separated rights, each one we know."""
    rights = tuple(r.strip() for r in text.split(",") if r.strip())
    unknown = [r for r in rights if r not in RIGHTS]
    if unknown:
        raise ValueError(f"unknown right(s) {', '.join(unknown)}; known: {', '.join(RIGHTS)}")
    return rights
