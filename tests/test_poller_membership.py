"""PollerMembership against a real Redis (a database of the test's own), with an injected clock: leases, the member
list, expiry of a dead member's lease, rendezvous ownership (stable, spread, minimal movement), takeover and the
per-interval poll claim.

Member expiry is driven by the injected clock (the member set is scored by lease expiry in clock time), so no test
waits for a lease to run out; only the poll claim's Redis TTL is real, and it is awaited as a condition.
"""

from __future__ import annotations

from collections import Counter

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cloacina.scheduling.leases import PollerMembership, rendezvous_owner
from cloacina.scheduling.redis_locks import TokenLocks
from tests.support import FakeClock, free_port, wait_until

TTL_S = 10.0


@pytest.fixture
def locks(client: redis.Redis) -> TokenLocks:
    return TokenLocks(client, namespace="ns")


@pytest.fixture
def clock() -> FakeClock[float]:
    return FakeClock(1_000_000.0)


def member(locks: TokenLocks, clock: FakeClock[float], poller_id: str) -> PollerMembership:
    return PollerMembership(locks, lease_ttl_s=TTL_S, poller_id=poller_id, clock=clock)


def test_renew_takes_the_lease_and_publishes_the_member(
    locks: TokenLocks, client: redis.Redis, clock: FakeClock[float]
) -> None:
    a = member(locks, clock, "a")
    assert a.key == "ns:poller:a" and a.members_key == "ns:pollers"
    assert a.members() == ["a"]  # always includes itself, even before the first renewal
    assert a.renew() == ["a"]
    token = locks.holder("ns:poller:a")
    assert token is not None
    assert 0 < client.pttl("ns:poller:a") <= TTL_S * 1000
    assert client.zscore("ns:pollers", "a") == clock.now + TTL_S  # scored by lease expiry
    clock.advance(3)
    assert a.renew() == ["a"]
    assert locks.holder("ns:poller:a") == token  # extended, not taken anew
    assert client.zscore("ns:pollers", "a") == clock.now + TTL_S


def test_a_lost_lease_is_taken_again(locks: TokenLocks, client: redis.Redis, clock: FakeClock[float]) -> None:
    a = member(locks, clock, "a")
    a.renew()
    client.delete("ns:poller:a")  # expired, or Redis restarted empty
    assert a.renew() == ["a"]
    assert client.exists("ns:poller:a") == 1 and client.zscore("ns:pollers", "a") is not None


def test_members_see_each_other_after_their_next_renewal(locks: TokenLocks, clock: FakeClock[float]) -> None:
    a, b = member(locks, clock, "a"), member(locks, clock, "b")
    assert a.renew() == ["a"]
    assert b.renew() == ["a", "b"]
    assert a.members() == ["a"]  # a's view is what it last read
    clock.advance(1)
    assert a.renew() == ["a", "b"]


def test_a_member_whose_lease_expires_disappears(
    locks: TokenLocks, client: redis.Redis, clock: FakeClock[float]
) -> None:
    a, b = member(locks, clock, "a"), member(locks, clock, "b")
    a.renew()
    b.renew()
    clock.advance(TTL_S / 2)
    b.renew()  # b stays alive; a (dead) does not renew
    assert b.members() == ["a", "b"]
    clock.advance(TTL_S / 2 + 0.001)  # a's lease has now expired
    assert b.members() == ["b"]  # at once, from the expiry b read last (not only at b's next renewal)
    assert b.renew() == ["b"]
    assert client.zscore("ns:pollers", "a") is None  # and the renewal dropped it from the set


def test_leave_gives_the_lease_back_and_others_take_over_at_once(
    locks: TokenLocks, client: redis.Redis, clock: FakeClock[float]
) -> None:
    a, b = member(locks, clock, "a"), member(locks, clock, "b")
    a.renew()
    b.renew()
    a.renew()
    names = [f"trigger_{n}" for n in range(40)]
    owned_by_a = {n for n in names if a.owns(n)}
    assert owned_by_a and owned_by_a != set(names)
    a.leave()
    assert client.exists("ns:poller:a") == 0 and client.zscore("ns:pollers", "a") is None
    assert b.renew() == ["b"]
    assert all(b.owns(n) for n in names)  # b took a's triggers over
    a.leave()  # idempotent


def test_leave_with_redis_gone_only_logs(clock: FakeClock[float], caplog: pytest.LogCaptureFixture) -> None:
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    dead = TokenLocks(unreachable, namespace="ns")
    m = member(dead, clock, "a")
    m.leave()  # never renewed and Redis unreachable: no exception
    assert any("could not leave the poller group" in r.getMessage() for r in caplog.records)


def test_every_member_computes_the_same_single_owner(locks: TokenLocks, clock: FakeClock[float]) -> None:
    replicas = [member(locks, clock, pid) for pid in ("p1", "p2", "p3")]
    for m in replicas:
        m.renew()
    for m in replicas:
        m.renew()  # every view now holds all three
    names = [f"t{n}" for n in range(60)]
    for name in names:
        owners = [m.poller_id for m in replicas if m.owns(name)]
        assert owners == [rendezvous_owner(name, ["p1", "p2", "p3"])]


def test_rendezvous_ownership_is_stable_spread_and_moves_minimally() -> None:
    members = ["p1", "p2", "p3"]
    names = [f"trigger_{n}" for n in range(300)]
    owners = {n: rendezvous_owner(n, members) for n in names}
    assert owners == {n: rendezvous_owner(n, list(reversed(members))) for n in names}  # order does not matter
    counts = Counter(owners.values())
    assert set(counts) == set(members) and min(counts.values()) >= 60, counts  # ~100 each
    # p3 leaves: only p3's triggers move, and they spread over the others.
    after = {n: rendezvous_owner(n, ["p1", "p2"]) for n in names}
    assert {n for n in names if after[n] != owners[n]} == {n for n in names if owners[n] == "p3"}
    assert set(after.values()) == {"p1", "p2"}
    assert rendezvous_owner("t", []) is None
    assert rendezvous_owner("t", ["only"]) == "only"


def test_claim_poll_allows_one_poll_per_interval_across_replicas(
    locks: TokenLocks, client: redis.Redis, clock: FakeClock[float]
) -> None:
    a, b = member(locks, clock, "a"), member(locks, clock, "b")
    assert a.claim_poll("files", interval_ms=60_000) is True
    assert a.claim_poll("files", interval_ms=60_000) is False  # the owner itself, again within the interval
    assert b.claim_poll("files", interval_ms=60_000) is False  # another replica that thinks it owns it
    assert locks.holder("ns:poll:files") == "a"
    assert 0 < client.pttl("ns:poll:files") <= 54_000  # 0.9 x the interval
    assert b.claim_poll("other", interval_ms=60_000) is True  # claims are per trigger


def test_the_next_interval_can_be_claimed_once_the_claim_expires(
    locks: TokenLocks, client: redis.Redis, clock: FakeClock[float]
) -> None:
    a, b = member(locks, clock, "a"), member(locks, clock, "b")
    assert a.claim_poll("files", interval_ms=100) is True
    assert b.claim_poll("files", interval_ms=100) is False
    wait_until(lambda: client.exists("ns:poll:files") == 0, 5, interval_s=0.01, message="the 90 ms claim to expire")
    assert b.claim_poll("files", interval_ms=100) is True
    assert a.claim_poll("files", interval_ms=100) is False
