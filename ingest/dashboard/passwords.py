"""Operator passwords: scrypt (memory-hard), parameters stored with each hash so they can grow."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# N=2**15, r=8: 32 MiB and ~0.1 s per guess; an attacker pays the same memory for every try.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_KEY_LEN = 32
MIN_PASSWORD_LENGTH = 10


class PasswordTooWeak(ValueError):
    """The password is shorter than MIN_PASSWORD_LENGTH."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: 128 * r * N * p bytes plus some slack
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_LEN,
                          maxmem=256 * r * n * p + 1024 * 1024)


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$key`; refuses passwords shorter than MIN_PASSWORD_LENGTH."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordTooWeak(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = os.urandom(16)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches `stored`; an unknown operator (None) costs the same time."""
    if stored is None:
        _scrypt(password, b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return False
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)

