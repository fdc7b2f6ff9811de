"""DistributedGate, the poller replicas' side of polling and dedup, built directly (no poller service): real Redis
(a database of the test's own), a real store on every backend, trigger schedulers driven one pass at a time.

- Dedup fast path: the Redis lock is taken *before* the SQL claim and its token stored on the trigger-execution
  row; a lock held by another token refuses the fire without touching SQL; a fire SQL refuses gives the lock back;
  ``renew_locks`` extends the locks of active runs and forgets ended or lost ones; Redis down falls through to SQL.
- Polling: only the rendezvous owner polls a trigger, at most one poll per interval across replicas even while
  their member lists disagree, and a replica takes the triggers of one that left over.

The schedulers and memberships share one injected clock; only Redis TTLs (the 0.9 x interval poll claims) run in
real time, and the tests wait for them as conditions. Intervals are 125 ms, a binary fraction, so that the clock
arithmetic is exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import select

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling.distributed_gate import DistributedGate
from cloacina.scheduling.leases import PollerMembership, rendezvous_owner
from cloacina.scheduling.redis_locks import TokenLocks
from cloacina.scheduling.trigger_poller import TriggerScheduler
from cloacina.store.database import Database
from cloacina.store.models import TriggerExecution
from cloacina.store.runs import RunStore
from cloacina.store.triggers import TriggerStore
from tests.conftest import Backend
from tests.support import FakeClock, declare_one_task_workflow, free_port, wait_until

T0 = 1_000.0
INTERVAL_S = 0.125
LOCK_TTL_S = 60.0


class RecordingCoordinator(RunCoordinator):
    """The real coordinator; for every SQL trigger claim it is asked to make, it remembers the lock token the claim
    carries and who held the Redis dedup key at that moment."""

    def __init__(self, store: RunStore, locks: TokenLocks) -> None:
        super().__init__(store, lambda name, *_: registry.get_workflow(name))
        self.locks = locks
        self.claims: list[tuple[str | None, str | None]] = []

    def create_run(self, workflow: Any, input_context: Any, **kwargs: Any) -> str | None:
        trigger = kwargs.get("trigger")
        if trigger is not None:
            key = self.locks.dedup_key(trigger.trigger_name, trigger.context_hash)
            self.claims.append((trigger.lock_token, self.locks.holder(key)))
        return super().create_run(workflow, input_context, **kwargs)


class Replica:
    """One poller replica: its membership, gate and trigger scheduler (all on the shared clock)."""

    def __init__(self, deployment: Deployment, poller_id: str) -> None:
        self.membership = PollerMembership(
            deployment.locks, lease_ttl_s=10.0, poller_id=poller_id, clock=deployment.clock
        )
        self.gate = DistributedGate(deployment.locks, self.membership, deployment.db, LOCK_TTL_S)
        self.scheduler = TriggerScheduler(
            TriggerStore(deployment.db),
            deployment.coordinator,
            registry.get_workflow,
            clock=deployment.clock,
            refresh_interval_s=3600.0,
            gate=self.gate,
        )
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.scheduler.add_listener(lambda event, name, info: self.events.append((event, name, info)))

    def polled(self) -> Counter[str]:
        return Counter(name for event, name, _ in list(self.events) if event == "poll")

    def of(self, event: str) -> list[dict[str, Any]]:
        return [info for e, _, info in list(self.events) if e == event]


class Deployment:
    """A database, a Redis namespace and the replicas sharing them."""

    def __init__(self, backend: Backend, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.locks = TokenLocks(self.client, namespace="ns")
        self.db = Database(backend.url, schema=backend.schema)
        self.db.upgrade()
        self.store = TriggerStore(self.db)
        self.runs = RunStore(self.db)
        self.coordinator = RecordingCoordinator(self.runs, self.locks)
        self.clock = FakeClock(T0)
        self.replicas: list[Replica] = []

    def replica(self, poller_id: str) -> Replica:
        replica = Replica(self, poller_id)
        self.replicas.append(replica)
        return replica

    def add(self, definition: TriggerDefinition) -> None:
        for replica in self.replicas:
            assert replica.scheduler.add(definition)

    def pass_at(self, at: float) -> None:
        """One pass of every replica's scheduler at ``T0 + at``; returns once all the polls it started are done."""
        self.clock.now = T0 + at
        for replica in self.replicas:
            replica.scheduler.run_once()
        for replica in self.replicas:
            wait_until(lambda r=replica: not r.scheduler.polls_in_progress(), 10, interval_s=0.005)

    def claims_expired(self, *names: str) -> None:
        """Wait until the poll claims of ``names`` (0.9 x the interval, in real time) have expired in Redis."""
        keys = [self.locks.key("poll", name) for name in names]
        wait_until(lambda: self.client.exists(*keys) == 0, 5, interval_s=0.01, message=f"poll claims {keys} to expire")

    def dedup_key(self, trigger: str, context: dict[str, Any]) -> str:
        return self.locks.dedup_key(trigger, cloaca.context_hash(context))

    def close(self) -> None:
        for replica in self.replicas:
            replica.scheduler.stop(wait_s=1.0)
        self.db.dispose()
        self.client.close()


@pytest.fixture
def deployment(backend: Backend, redis_url: str) -> Iterator[Deployment]:
    opened = Deployment(backend, redis_url)
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def workflow() -> None:
    declare_one_task_workflow()


def fires(name: str, context: dict[str, Any], *, allow_concurrent: bool = False) -> TriggerDefinition:
    return TriggerDefinition(
        name=name,
        function=lambda: cloaca.TriggerResult.fire(context),
        workflow="wf",
        poll_interval_ms=int(INTERVAL_S * 1000),
        allow_concurrent=allow_concurrent,
    )


def skips(name: str) -> TriggerDefinition:
    return TriggerDefinition(name=name, function=lambda: False, workflow="wf", poll_interval_ms=int(INTERVAL_S * 1000))


def lock_tokens(db: Database) -> list[str | None]:
    with db.session() as s:
        return list(s.scalars(select(TriggerExecution.lock_token).order_by(TriggerExecution.id)).all())


# -- the dedup fast path -------------------------------------------------------------------------------------------
def test_the_dedup_lock_is_taken_before_the_sql_claim_and_kept_while_the_run_is_active(deployment: Deployment) -> None:
    a = deployment.replica("a")
    a.membership.renew()
    deployment.add(fires("same", {"item": 1}))
    key = deployment.dedup_key("same", {"item": 1})

    deployment.pass_at(INTERVAL_S)
    (fire,) = a.of("fire")
    [(token, holder_at_claim)] = deployment.coordinator.claims
    assert token is not None and holder_at_claim == token  # locked in Redis before SQL was asked
    assert lock_tokens(deployment.db) == [token]  # the token is on the trigger-execution row, for the release
    assert deployment.locks.holder(key) == token  # kept for the run
    assert 0 < deployment.client.pttl(key) <= LOCK_TTL_S * 1000

    deployment.claims_expired("same")
    deployment.pass_at(2 * INTERVAL_S)  # the run is still active: refused by Redis alone
    assert [e["context_hash"] for e in a.of("dedup_skip")] == [fire["context_hash"]]
    assert len(deployment.coordinator.claims) == 1  # SQL was not asked
    a.scheduler.flush_stats()
    schedule = deployment.store.get_schedule("same")
    assert schedule is not None and (schedule["fire_count"], schedule["dedup_skip_count"]) == (1, 1)


def test_a_lock_held_by_another_token_refuses_the_fire_without_touching_sql(deployment: Deployment) -> None:
    a = deployment.replica("a")
    a.membership.renew()
    deployment.add(fires("same", {"item": 1}))
    key = deployment.dedup_key("same", {"item": 1})
    assert deployment.locks.acquire(key, 60_000, token="another-poller") == "another-poller"

    deployment.pass_at(INTERVAL_S)
    assert a.of("fire") == [] and len(a.of("dedup_skip")) == 1
    assert deployment.coordinator.claims == []
    assert deployment.locks.holder(key) == "another-poller"  # not ours to release


def test_a_fire_that_sql_refuses_gives_the_lock_back(deployment: Deployment) -> None:
    a = deployment.replica("a")
    a.membership.renew()
    deployment.add(fires("same", {"item": 1}))
    key = deployment.dedup_key("same", {"item": 1})
    deployment.pass_at(INTERVAL_S)
    assert len(a.of("fire")) == 1
    deployment.client.delete(key)  # the lock was lost (Redis restarted empty) while the run is active

    deployment.claims_expired("same")
    deployment.pass_at(2 * INTERVAL_S)
    assert len(a.of("fire")) == 1 and len(a.of("dedup_skip")) == 1  # SQL, the arbiter, refused it
    (_, (second_token, holder)) = deployment.coordinator.claims
    assert second_token is not None and holder == second_token  # locked again before asking SQL...
    assert deployment.client.exists(key) == 0  # ...and given back once SQL said no
    assert len(lock_tokens(deployment.db)) == 1


def test_renew_locks_extends_active_runs_and_forgets_ended_and_lost_ones(deployment: Deployment) -> None:
    a = deployment.replica("a")
    a.membership.renew()
    deployment.add(fires("first", {"item": 1}))
    deployment.add(fires("second", {"item": 2}))
    deployment.pass_at(INTERVAL_S)
    first_run = next(info["run_id"] for event, name, info in a.events if (event, name) == ("fire", "first"))
    keys = {"first": deployment.dedup_key("first", {"item": 1}), "second": deployment.dedup_key("second", {"item": 2})}
    for key in keys.values():
        deployment.client.pexpire(key, 1_000)

    assert a.gate.renew_locks() == 2
    assert all(deployment.client.pttl(key) > 1_000 for key in keys.values())

    assert deployment.coordinator.run_task(first_run, "only").kind == "completed"  # the run ends: its SQL key frees
    deployment.client.pexpire(keys["first"], 1_000)
    assert a.gate.renew_locks() == 1  # only the active run's lock
    assert 0 < deployment.client.pttl(keys["first"]) <= 1_000  # the ended run's lock is left to its release/TTL

    deployment.client.set(keys["second"], "someone-else")  # lost: expired and taken by another fire
    assert a.gate.renew_locks() == 0
    assert deployment.locks.holder(keys["second"]) == "someone-else"  # never extended for us
    assert a.gate.renew_locks() == 0  # and forgotten


def test_with_redis_down_a_fire_falls_through_to_sql(deployment: Deployment) -> None:
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    dead = TokenLocks(unreachable, namespace="ns")
    gate = DistributedGate(dead, PollerMembership(dead, poller_id="a"), deployment.db, LOCK_TTL_S)
    definition = fires("same", {"item": 1})
    assert gate.before_fire(definition, "abc") == (True, None)  # SQL decides alone
    gate.after_fire(definition, "abc", None, "some-run")  # nothing to keep or give back
    assert gate.renew_locks() == 0


# -- who polls ----------------------------------------------------------------------------------------------------
NAMES = [f"t{n}" for n in range(12)]


def test_only_the_owner_polls_each_trigger(deployment: Deployment) -> None:
    a, b = deployment.replica("a"), deployment.replica("b")
    for replica in (a, b, a):  # a renews again: both member lists hold both
        replica.membership.renew()
    for name in NAMES:
        deployment.add(skips(name))
    owners = {name: rendezvous_owner(name, ["a", "b"]) for name in NAMES}
    assert set(owners.values()) == {"a", "b"}

    deployment.pass_at(INTERVAL_S)
    assert a.polled() + b.polled() == Counter(NAMES)  # every trigger once
    assert set(a.polled()) == {n for n in NAMES if owners[n] == "a"}
    assert set(b.polled()) == {n for n in NAMES if owners[n] == "b"}
    assert deployment.coordinator.claims == []


def test_at_most_one_poll_per_interval_while_the_member_lists_disagree(deployment: Deployment) -> None:
    a, b = deployment.replica("a"), deployment.replica("b")
    a.membership.renew()  # a alone: it owns everything
    b.membership.renew()  # b sees both; a has not renewed since b joined
    contested = [n for n in NAMES if rendezvous_owner(n, ["a", "b"]) == "b"]
    assert contested and all(a.membership.owns(n) and b.membership.owns(n) for n in contested)
    for name in NAMES:
        deployment.add(skips(name))

    for k in (1, 2, 3):
        if k > 1:
            deployment.claims_expired(*NAMES)
        deployment.pass_at(k * INTERVAL_S)
        assert a.polled() + b.polled() == Counter({n: k for n in NAMES}), f"interval {k}"  # claims decide
    assert not set(b.polled()) - set(contested)  # b never polls a trigger it does not own


def test_a_replica_takes_over_the_triggers_of_one_that_left(deployment: Deployment) -> None:
    a, b = deployment.replica("a"), deployment.replica("b")
    for replica in (a, b, a):
        replica.membership.renew()
    for name in NAMES:
        deployment.add(skips(name))
    deployment.pass_at(INTERVAL_S)
    assert set(a.polled()) != set(NAMES)

    a.membership.leave()  # graceful shutdown: its lease is given back at once
    deployment.replicas.remove(a)
    a.scheduler.stop(wait_s=1.0)
    deployment.clock.advance(1.0)
    b.membership.renew()
    assert b.membership.members() == ["b"]
    deployment.claims_expired(*NAMES)
    before = b.polled()
    deployment.pass_at(2 * INTERVAL_S + 1.0)
    assert b.polled() - before == Counter(NAMES)  # b polls every trigger now


def test_an_unreachable_gate_polls_nothing(deployment: Deployment, caplog: pytest.LogCaptureFixture) -> None:
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    dead = TokenLocks(unreachable, namespace="ns")
    membership = PollerMembership(dead, poller_id="a", clock=deployment.clock)  # owns all (knows no one else)
    scheduler = TriggerScheduler(
        deployment.store,
        deployment.coordinator,
        registry.get_workflow,
        clock=deployment.clock,
        refresh_interval_s=3600.0,
        gate=DistributedGate(dead, membership, deployment.db, LOCK_TTL_S),
    )
    polls: list[str] = []
    scheduler.add_listener(lambda event, name, info: polls.append(name) if event == "poll" else None)
    try:
        scheduler.add(skips("t0"))
        deployment.clock.now = T0 + INTERVAL_S
        scheduler.run_once()
        wait_until(lambda: not scheduler.polls_in_progress(), 10, interval_s=0.005)
    finally:
        scheduler.stop(wait_s=1.0)
    assert polls == []  # another replica may be polling: never poll blind
    assert any("poll gate unavailable for trigger 't0'" in r.getMessage() for r in caplog.records)
