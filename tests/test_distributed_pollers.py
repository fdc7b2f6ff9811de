"""Poller replicas as separate ``cloacina poller`` processes (DESIGN §3: several pollers, cron).

- Two pollers share the triggers (each owns some), every trigger is polled at most once per interval across
  both (startup, steady state and takeover included), and when one is SIGKILLed the other takes its triggers over
  within one lease period.
- A cron due time is claimed once however many pollers fire it.
- Services refuse to start on an unmigrated database and say to run ``cloacina db upgrade``.

Polls are counted through a side channel: every call of a trigger's poll function inserts a row with its
process and a timestamp (:mod:`tests.dist_apps.evidence`). Each test has a ``redis-server`` of its own.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from tests.conftest import PG_URL, require_postgres
from tests.distributed_harness import (
    FAST_RECOVERY,
    TICKER_APP,
    Cluster,
    RedisServer,
    Services,
    execute_sql,
    fresh_schema,
    rendezvous_owners,
    service_db_url,
    too_close_polls,
    wait_for_poller_ready,
    wait_for_worker_ready,
)
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
LEASE_TTL_S = float(FAST_RECOVERY["CLOACINA_LEASE_TTL_S"])


def _member_lists_hold(redis_url: str, ids: list[str], joined: dict[str, float]) -> bool:
    """Whether every poller in ``ids`` renewed its lease (and so re-read the member list) after all others joined.

    The lease set scores each member by its lease expiry, i.e. its last renewal + ``LEASE_TTL_S``. A member's
    first score seen is recorded in ``joined`` as when it joined (seen late, that is later than it joined: a
    stricter check).
    """
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = client.keys("*:pollers")
        if len(keys) != 1:
            return False
        renewed = {m: float(score) - LEASE_TTL_S for m, score in client.zrange(keys[0], 0, -1, withscores=True)}
    finally:
        client.close()
    for member, at in renewed.items():
        joined.setdefault(member, at)
    if not set(ids) <= set(renewed):
        return False
    # 0.5 s of margin: a renewal reads the clock just before its Redis round trip.
    return all(renewed[x] > joined[y] + 0.5 for x in ids for y in ids if x != y)


@pytest.mark.timeout(180)
def test_two_pollers_share_triggers_poll_once_per_interval_and_take_over_a_killed_one(cluster: Cluster) -> None:
    tickers, interval_s = 12, 0.3
    names = [f"tick_{n}" for n in range(tickers)]
    env = {"DIST_TICKERS": str(tickers), "DIST_TICK_MS": str(int(interval_s * 1000))}
    pollers = [cluster.services.poller(f"p{n}", TICKER_APP, **env) for n in (1, 2)]
    ids = [wait_for_poller_ready(p) for p in pollers]
    owners = rendezvous_owners(names, ids)
    pgid_of = {poller_id: p.pid for poller_id, p in zip(ids, pollers, strict=True)}

    # Steady state: once both know each other, each trigger is polled by its rendezvous owner only.
    joined: dict[str, float] = {}
    wait_until(lambda: _member_lists_hold(cluster.redis_url, ids, joined), 30, message="both lists to hold both")
    steady_from = time.time()
    time.sleep(3.0)  # the observation window: the steady-state polls are the ones in it
    steady_until = time.time()
    doomed_id = max(ids, key=lambda i: sum(1 for o in owners.values() if o == i))
    survivor_id = ids[1 - ids.index(doomed_id)]
    doomed = pollers[ids.index(doomed_id)]
    doomed.kill()
    killed_at = doomed.killed_at
    assert killed_at is not None
    # Its lease expires at most one lease period after its last renewal (so after its death); then the trigger's
    # next poll is due within one interval. The rest is slack for a loaded machine.
    takeover_bound_s = LEASE_TTL_S + interval_s + 0.75

    def polled_twice_after_the_kill() -> bool:
        rows = cluster.sql("SELECT trigger, count(*) FROM ev_polls WHERE at > :k GROUP BY trigger", k=killed_at)
        return {t for t, n in rows if n >= 2} == set(names)

    wait_until(polled_twice_after_the_kill, takeover_bound_s + 30, message="every trigger to be polled again")
    assert pollers[ids.index(survivor_id)].alive

    polls = cluster.sql("SELECT trigger, pgid, at FROM ev_polls ORDER BY at")
    # The triggers spread over both pollers (12 triggers all hashing to one of 2 pollers: p = 2^-11).
    assert set(owners.values()) == set(ids)
    steady = [(t, pgid) for t, pgid, at in polls if steady_from <= at <= steady_until]
    assert {t for t, _ in steady} == set(names), "every trigger is polled"
    assert {(t, pgid) for t, pgid in steady} == {(t, pgid_of[owners[t]]) for t in names}, "polled by its owner"
    # At most one poll per interval across both pollers, from the first poll to the last (startup, when both may
    # briefly think they own a trigger, and takeover included). The poll claim lasts 0.9 x interval
    # (leases.claim_poll); the side channel's timestamp is taken a moment after the claim, hence 0.85.
    assert too_close_polls(polls, interval_s, factor=0.85) == []
    counts = Counter(t for t, _ in steady)
    assert min(counts.values()) >= 3.0 / interval_s * 0.6, f"triggers were starved: {counts}"

    # The survivor took the killed poller's triggers over within a lease period (plus the trigger's next poll).
    taken_over = [t for t in names if owners[t] == doomed_id]
    for name in names:
        after = [at for t, pgid, at in polls if t == name and at > killed_at]
        assert after, f"{name} was not polled after the kill"
        assert {pgid for t, pgid, at in polls if t == name and at > killed_at} == {pgid_of[survivor_id]}
        if name in taken_over:
            assert after[0] - killed_at <= takeover_bound_s, f"{name} taken over {after[0] - killed_at:.1f}s late"
    delays = sorted(min(at for t, _, at in polls if t == n and at > killed_at) - killed_at for n in taken_over)
    print(f"takeover of {len(taken_over)} triggers after {delays[0]:.2f}..{delays[-1]:.2f}s (lease {LEASE_TTL_S}s)")


@pytest.mark.timeout(180)
def test_cron_due_times_fire_once_across_two_pollers(cluster: Cluster) -> None:
    from cloacina.scheduling import cron_math
    from cloacina.store.cron import CronStore
    from cloacina.store.database import Database

    db = Database(PG_URL, schema=cluster.schema, pool_size=1)
    try:
        store = CronStore(db)
        schedule = store.create_schedule(
            "cron_flow", "* * * * * *", "UTC", "skip", cron_math.next_due("* * * * * *", "UTC", datetime.now(UTC))
        )
        worker = cluster.services.worker("w1", TICKER_APP, concurrency=2)
        pollers = [cluster.services.poller(f"p{n}", TICKER_APP) for n in (1, 2)]
        wait_for_worker_ready(worker)
        ids = [wait_for_poller_ready(p) for p in pollers]
        wait_until(
            lambda: cluster.sql("SELECT count(*) FROM cron_executions")[0][0] >= 6,
            60,
            message="six cron due times to fire",
            interval_s=0.2,
        )
        store.set_enabled(schedule.id, False)
        # A pass that read the schedule before it was disabled still fires its due time. That pass runs in another
        # process and leaves no trace until it has fired, so this grace period is a sleep, not a wait.
        time.sleep(1.5)
        wait_until(lambda: cluster.active_runs() == 0, 60, message="the cron runs to complete", interval_s=0.2)
    finally:
        db.dispose()

    claims = cluster.sql("SELECT scheduled_time, run_id FROM cron_executions ORDER BY scheduled_time")
    times = [t for t, _ in claims]
    assert len(times) == len(set(times)) >= 6
    assert all(t.microsecond == 0 for t in times), "due times are whole seconds"
    runs = cluster.runs()
    assert len(runs) == len(claims), "every cron run has exactly one claimed due time"
    assert Counter(r["status"] for r in runs) == Counter({"Completed": len(claims)})
    assert {r["owner"] for r in runs} <= {f"poller-{i}" for i in ids}
    # The evidence: each due time's workflow ran exactly once.
    executions = cluster.executions()
    assert Counter(e.run_key for e in executions) == Counter(r["key"] for r in runs)
    assert sorted(datetime.fromisoformat(e.run_key) for e in executions) == times
    print(f"{len(times)} due times; runs created per poller: {Counter(r['owner'] for r in runs)}")


@pytest.mark.timeout(120)
def test_services_refuse_to_start_on_an_unmigrated_database(tmp_path: Path, redis_server: RedisServer) -> None:
    require_postgres()
    with fresh_schema(PG_URL) as schema:
        execute_sql(PG_URL, "public", f'CREATE SCHEMA "{schema}"')  # exists, but no cloacina tables
        env = {"CLOACINA_DATABASE_URL": service_db_url(PG_URL, schema), "CLOACINA_BROKER_URL": redis_server.url}
        services = Services(tmp_path, env)
        try:
            worker = services.worker("w1", TICKER_APP)
            poller = services.poller("p1", TICKER_APP)
            for service in (worker, poller):
                code = service.wait_exit(60)
                output = service.log_text()
                assert code != 0, output
                assert "run `cloacina db upgrade`" in output, output
                assert "Traceback" not in output, output
        finally:
            services.stop_all()
            services.dump_logs()
