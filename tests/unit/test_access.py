"""Access-key hashing: the pre-keyed hasher the receiver uses agrees with hash_key."""

from __future__ import annotations

from shared.access import KeyHasher, hash_key, key_matches, new_access_key, new_key_id


def test_key_hasher_agrees_with_hash_key_and_key_matches() -> None:
    hasher = KeyHasher("pepper-1")
    for _ in range(20):
        key = new_access_key(new_key_id())
        stored = hash_key("pepper-1", key)
        assert hasher.hash(key) == stored
        assert hasher.matches(key, stored) and key_matches("pepper-1", key, stored)
        assert not hasher.matches(key + "x", stored)
        assert not KeyHasher("pepper-2").matches(key, stored)
    assert hasher.hash("ünï") == hash_key("pepper-1", "ünï")  # the state is copied, never consumed
