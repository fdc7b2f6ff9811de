"""TokenLocks against a real Redis (a database of the test's own): SET NX with a token, token-checked release and
extend, expiry, and the namespace in every key."""

from __future__ import annotations

import pytest
import redis

from cloacina.scheduling import redis_locks
from cloacina.scheduling.redis_locks import TokenLocks
from tests.support import wait_until


@pytest.fixture
def locks(client: redis.Redis) -> TokenLocks:
    return TokenLocks(client, namespace="ns-test")


def test_acquire_sets_the_key_to_a_token_with_a_ttl_and_refuses_a_second_taker(
    locks: TokenLocks, client: redis.Redis
) -> None:
    token = locks.acquire("k", ttl_ms=60_000)
    assert token is not None and len(token) == 32
    assert client.get("k") == token.encode() and locks.holder("k") == token
    assert 0 < client.pttl("k") <= 60_000
    assert locks.acquire("k", ttl_ms=60_000) is None  # NX: held
    assert locks.acquire("k", ttl_ms=60_000, token="mine") is None
    assert locks.holder("k") == token  # the refused attempts changed nothing
    assert locks.acquire("other", ttl_ms=1_000, token="chosen") == "chosen"  # a caller-chosen token


def test_release_only_with_the_right_token(locks: TokenLocks, client: redis.Redis) -> None:
    token = locks.acquire("k", ttl_ms=60_000)
    assert token is not None
    assert locks.release("k", "someone-else") is False
    assert client.exists("k") == 1
    assert locks.release("k", token) is True
    assert client.exists("k") == 0
    assert locks.release("k", token) is False  # already gone
    assert locks.acquire("k", ttl_ms=60_000) is not None  # free again at once


def test_extend_renews_the_ttl_only_for_the_holder(locks: TokenLocks, client: redis.Redis) -> None:
    token = locks.acquire("k", ttl_ms=5_000)
    assert token is not None
    assert locks.extend("k", "someone-else", ttl_ms=60_000) is False
    assert client.pttl("k") <= 5_000
    assert locks.extend("k", token, ttl_ms=60_000) is True
    assert 5_000 < client.pttl("k") <= 60_000
    assert locks.extend("missing", token, ttl_ms=60_000) is False  # a lost lock is not re-created
    assert client.exists("missing") == 0


def test_extend_many_in_one_round_trip(locks: TokenLocks, client: redis.Redis) -> None:
    a = locks.acquire("a", ttl_ms=1_000)
    b = locks.acquire("b", ttl_ms=1_000)
    assert a is not None and b is not None
    results = locks.extend_many([("a", a), ("b", "wrong"), ("c", "nobody")], ttl_ms=60_000)
    assert results == [True, False, False]
    assert client.pttl("a") > 1_000 and client.pttl("b") <= 1_000
    assert locks.extend_many([], ttl_ms=1_000) == []


def test_a_lock_expires_after_its_ttl_and_the_old_token_cannot_touch_the_new_holder(
    locks: TokenLocks, client: redis.Redis
) -> None:
    old = locks.acquire("k", ttl_ms=50)
    assert old is not None
    wait_until(lambda: client.exists("k") == 0, 5, interval_s=0.01, message="the lock to expire")
    new = locks.acquire("k", ttl_ms=60_000)
    assert new is not None and new != old
    # The previous owner, unaware its lock expired, can neither delete nor extend the new holder's lock.
    assert locks.release("k", old) is False and locks.extend("k", old, 60_000) is False
    assert locks.holder("k") == new


def test_a_ttl_below_one_millisecond_is_one_millisecond(locks: TokenLocks, client: redis.Redis) -> None:
    assert locks.acquire("k", ttl_ms=0) is not None
    wait_until(lambda: client.exists("k") == 0, 5, interval_s=0.01, message="the 1 ms lock to expire")


def test_namespace_is_in_every_key_and_separates_deployments(client: redis.Redis) -> None:
    a, b = TokenLocks(client, namespace="deploy-a"), TokenLocks(client, namespace="deploy-b")
    assert a.key("poller", "p1") == "deploy-a:poller:p1"
    assert a.dedup_key("files", "abc") == "deploy-a:dedup:files:abc"
    assert TokenLocks(client).dedup_key("files", "abc") == redis_locks.dedup_key("files", "abc")
    assert redis_locks.dedup_key("files", "abc") == "cloacina:dedup:files:abc"
    # The same logical lock in two namespaces: two different keys, both can be held.
    ta = a.acquire(a.dedup_key("files", "abc"), 60_000)
    tb = b.acquire(b.dedup_key("files", "abc"), 60_000)
    assert ta is not None and tb is not None
    assert sorted(k.decode() for k in client.keys("*")) == ["deploy-a:dedup:files:abc", "deploy-b:dedup:files:abc"]


def test_from_url_talks_to_that_database(redis_url: str, client: redis.Redis) -> None:
    locks = TokenLocks.from_url(redis_url, namespace="ns")
    try:
        token = locks.acquire(locks.key("x"), 60_000)
        assert token is not None and client.get("ns:x") == token.encode()
    finally:
        locks.client.close()
