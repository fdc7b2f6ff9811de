"""One pass of the trigger poller (``TriggerScheduler.run_once``) at a time, with an injected clock.

The test sets the clock, calls ``run_once`` and waits (on a condition, :meth:`TriggerScheduler.polls_in_progress`)
for the polls that pass started: no real time has to go by for an interval to elapse or a poll to time out. Polls
run on the scheduler's own thread pool as in production; a hung poll is a real call blocked on an event that the
test releases. Runs are created by a real ``RunCoordinator`` on a real store; nothing executes their tasks unless the
test does, so a run fired with ``allow_concurrent=False`` stays active and its key taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling import poll_book
from cloacina.scheduling.poll_book import PollBook
from cloacina.scheduling.trigger_poller import TriggerScheduler
from cloacina.store.database import Database
from cloacina.store.runs import RunStore
from cloacina.store.triggers import PollStats, TriggerStore
from tests.conftest import Backend
from tests.support import FakeClock, declare_one_task_workflow, wait_until

T0 = 1_000.0
Event = tuple[str, str, dict[str, Any]]


class Stack:
    """A store, a coordinator and an injected clock; schedulers built on them are stopped at the end."""

    def __init__(self, backend: Backend) -> None:
        self.db = Database(backend.url, schema=backend.schema)
        self.db.upgrade()
        self.store = TriggerStore(self.db)
        self.runs = RunStore(self.db)
        self.coordinator = RunCoordinator(self.runs, lambda name, *_: registry.get_workflow(name))
        self.clock = FakeClock(T0)
        self.events: list[Event] = []
        self._schedulers: list[TriggerScheduler] = []

    def scheduler(self, **kwargs: Any) -> TriggerScheduler:
        kwargs.setdefault("refresh_interval_s", 3600.0)  # refreshes only when a test asks for one
        scheduler = TriggerScheduler(self.store, self.coordinator, registry.get_workflow, clock=self.clock, **kwargs)
        scheduler.add_listener(lambda event, name, info: self.events.append((event, name, info)))
        self._schedulers.append(scheduler)
        return scheduler

    def pass_at(self, scheduler: TriggerScheduler, at: float, *, hung: tuple[str, ...] = ()) -> float:
        """Set the clock to ``T0 + at``, run one pass, and wait until the polls it started are done (except the
        ``hung`` ones). Returns what ``run_once`` returned."""
        self.clock.now = T0 + at
        sleep_s = scheduler.run_once()
        wait_until(
            lambda: set(scheduler.polls_in_progress()) <= set(hung),
            10,
            interval_s=0.005,
            message=lambda: f"the polls of the pass at {at} to end (in progress: {scheduler.polls_in_progress()})",
        )
        return sleep_s

    def schedule(self, scheduler: TriggerScheduler, name: str) -> dict[str, Any]:
        scheduler.flush_stats()
        found = self.store.get_schedule(name)
        assert found is not None
        return found

    def events_of(self, name: str, event: str) -> list[dict[str, Any]]:
        return [info for e, n, info in list(self.events) if (e, n) == (event, name)]

    def close(self) -> None:
        for scheduler in self._schedulers:
            scheduler.stop(wait_s=1.0)
        self.db.dispose()


@pytest.fixture
def stack() -> Iterator[Stack]:
    opened = Stack(Backend("sqlite-memory", ":memory:"))
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def workflow() -> None:
    declare_one_task_workflow()


def definition(
    name: str, function: Callable[[], Any], interval_s: float = 1.0, *, allow_concurrent: bool = False,
    workflow: str = "wf",
) -> TriggerDefinition:  # fmt: skip
    return TriggerDefinition(
        name=name,
        function=function,
        workflow=workflow,
        poll_interval_ms=int(interval_s * 1000),
        allow_concurrent=allow_concurrent,
    )


class Calls:
    """A poll function that records the (injected) clock time of every call and returns ``result``."""

    def __init__(self, clock: FakeClock[float], result: Any = False) -> None:
        self.clock = clock
        self.result = result
        self.at: list[float] = []

    def __call__(self) -> Any:
        self.at.append(self.clock() - T0)
        return self.result() if callable(self.result) else self.result


# -- which triggers a pass polls ---------------------------------------------------------------------------------
def test_polls_only_due_triggers_each_interval_from_the_start_of_the_previous_poll(stack: Stack) -> None:
    scheduler = stack.scheduler()
    fast, slow = Calls(stack.clock), Calls(stack.clock)
    assert scheduler.add(definition("fast", fast, interval_s=1.0))
    assert scheduler.add(definition("slow", slow, interval_s=3.0))
    assert scheduler.trigger_names == ["fast", "slow"]

    stack.pass_at(scheduler, 0.0)  # the first poll comes one interval after registration
    stack.pass_at(scheduler, 0.999)
    assert fast.at == [] and slow.at == []
    stack.pass_at(scheduler, 1.0)
    assert fast.at == [1.0] and slow.at == []
    stack.pass_at(scheduler, 2.5)  # half an interval late: the next poll is due one interval after *this* one
    stack.pass_at(scheduler, 3.0)
    assert fast.at == [1.0, 2.5] and slow.at == [3.0]
    stack.pass_at(scheduler, 3.499)
    assert fast.at == [1.0, 2.5]
    sleep_s = stack.pass_at(scheduler, 3.5)
    assert fast.at == [1.0, 2.5, 3.5] and slow.at == [3.0]
    assert sleep_s == pytest.approx(1.0)  # fast is next due at 4.5, slow at 6.0

    counts = stack.schedule(scheduler, "fast")
    assert (counts["poll_count"], counts["skip_count"], counts["error_count"]) == (3, 3, 0)
    assert stack.schedule(scheduler, "slow")["poll_count"] == 1


def test_run_once_says_how_long_the_loop_may_sleep(stack: Stack) -> None:
    scheduler = stack.scheduler(refresh_interval_s=0.25)
    scheduler.add(definition("t", Calls(stack.clock), interval_s=2.0))
    assert stack.pass_at(scheduler, 0.0) == pytest.approx(0.25)  # the next refresh comes before the next poll
    idle = stack.scheduler(refresh_interval_s=5.0)  # nothing registered: it sleeps a whole refresh interval
    assert idle.run_once() == pytest.approx(5.0)


def test_a_poll_still_running_is_not_started_again(stack: Stack) -> None:
    release = threading.Event()
    calls = Calls(stack.clock, result=lambda: release.wait(10) and False)
    scheduler = stack.scheduler()
    scheduler.add(definition("busy", calls, interval_s=1.0))
    stack.pass_at(scheduler, 1.0, hung=("busy",))
    assert scheduler.polls_in_progress() == ["busy"]
    stack.pass_at(scheduler, 2.0, hung=("busy",))  # due again, but its poll has not returned
    assert calls.at == [1.0]
    release.set()
    stack.pass_at(scheduler, 2.5)
    assert scheduler.polls_in_progress() == []
    stack.pass_at(scheduler, 3.0)
    assert calls.at == [1.0, 3.0]


def test_a_removed_trigger_is_not_polled(stack: Stack) -> None:
    scheduler = stack.scheduler()
    calls = Calls(stack.clock)
    scheduler.add(definition("gone", calls))
    stack.pass_at(scheduler, 1.0)
    scheduler.remove("gone")
    for at in (2.0, 3.0, 10.0):
        stack.pass_at(scheduler, at)
    assert calls.at == [1.0] and scheduler.trigger_names == []
    assert stack.store.get_schedule("gone") is not None  # its schedule row and history stay


# -- enabled / disabled --------------------------------------------------------------------------------------------
def test_disabled_triggers_are_not_polled_and_reenabled_ones_are_polled_at_once(stack: Stack) -> None:
    scheduler = stack.scheduler()
    calls = Calls(stack.clock)
    scheduler.add(definition("toggled", calls))
    stack.pass_at(scheduler, 1.0)
    scheduler.set_enabled("toggled", False)
    for at in (2.0, 3.0, 4.0):
        stack.pass_at(scheduler, at)
    assert calls.at == [1.0]
    stack.clock.now = T0 + 4.25
    scheduler.set_enabled("toggled", True)
    stack.pass_at(scheduler, 4.25)  # due at once, not one interval later
    stack.pass_at(scheduler, 5.0)
    stack.pass_at(scheduler, 5.25)
    assert calls.at == [1.0, 4.25, 5.25]
    scheduler.set_enabled("no_such_trigger", False)  # ignored


def test_a_trigger_disabled_in_the_database_stops_at_the_next_refresh(stack: Stack) -> None:
    scheduler = stack.scheduler()
    calls = Calls(stack.clock)
    scheduler.add(definition("remote", calls))
    stack.pass_at(scheduler, 1.0)
    assert stack.store.set_enabled("remote", False)  # the CLI, or another process
    stack.pass_at(scheduler, 2.0)  # not refreshed yet: this process still polls it
    scheduler.refresh()
    for at in (3.0, 4.0):
        stack.pass_at(scheduler, at)
    assert calls.at == [1.0, 2.0]
    assert stack.store.set_enabled("remote", True)
    stack.clock.now = T0 + 4.5
    scheduler.refresh()
    stack.pass_at(scheduler, 4.5)
    assert calls.at == [1.0, 2.0, 4.5]


def test_a_trigger_disabled_before_registration_starts_disabled(stack: Stack) -> None:
    first = stack.scheduler()
    first.add(definition("off", Calls(stack.clock)))
    assert stack.store.set_enabled("off", False)
    calls = Calls(stack.clock)
    second = stack.scheduler()  # e.g. a restarted process
    second.add(definition("off", calls))
    for at in (1.0, 2.0, 3.0):
        stack.pass_at(second, at)
    assert calls.at == []
    assert stack.schedule(second, "off")["enabled"] is False


def test_a_trigger_without_a_workflow_is_refused(stack: Stack) -> None:
    scheduler = stack.scheduler()
    assert scheduler.add(TriggerDefinition(name="unbound", function=bool, workflow=None, poll_interval_ms=100)) is False
    assert scheduler.trigger_names == [] and stack.store.get_schedule("unbound") is None


# -- bad polls ----------------------------------------------------------------------------------------------------
def test_raising_wrong_type_timeout_and_unknown_workflow_are_recorded_and_polling_continues(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def raising() -> Any:
        raise RuntimeError("cannot reach the inbox")

    hung = Calls(stack.clock, result=lambda: release.wait(10) and cloaca.TriggerResult.skip())
    healthy = Calls(stack.clock, result=lambda: cloaca.TriggerResult.fire({"n": len(healthy.at)}))
    scheduler = stack.scheduler(poll_timeout_s=5.0)
    scheduler.add(definition("raising", raising))
    scheduler.add(definition("wrong_type", lambda: "yes please"))
    scheduler.add(definition("unknown_workflow", lambda: True, workflow="no_such_workflow"))
    scheduler.add(definition("hung", hung))
    scheduler.add(definition("healthy", healthy, allow_concurrent=True))
    try:
        for at in (1.0, 2.0, 3.0, 4.0, 5.0):
            stack.pass_at(scheduler, at, hung=("hung",))
        assert stack.events_of("hung", "poll_error") == []  # 4 s into a 5 s timeout
        stack.pass_at(scheduler, 6.0, hung=("hung",))  # 5 s after the hung poll started
        assert [e["reason"] for e in stack.events_of("hung", "poll_error")] == ["poll timed out after 5s"]
        assert scheduler.polls_in_progress() == ["hung"]  # not polled again until the hung call returns
    finally:
        release.set()
    stack.pass_at(scheduler, 6.5)  # the late answer of the timed-out poll is discarded
    stack.pass_at(scheduler, 7.0)  # and the trigger is polled again
    assert hung.at == [1.0, 7.0]
    assert healthy.at == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # the bad triggers delayed nothing

    raising_s = stack.schedule(scheduler, "raising")
    assert raising_s["error_count"] == raising_s["poll_count"] == 7
    assert "RuntimeError: cannot reach the inbox" in raising_s["last_error"]
    wrong_s = stack.schedule(scheduler, "wrong_type")
    assert wrong_s["error_count"] == 7 and "returned str" in wrong_s["last_error"]
    unknown_s = stack.schedule(scheduler, "unknown_workflow")
    assert unknown_s["error_count"] == 7 and "no_such_workflow" in unknown_s["last_error"]
    assert unknown_s["fire_count"] == 0
    hung_s = stack.schedule(scheduler, "hung")
    assert (hung_s["poll_count"], hung_s["error_count"], hung_s["skip_count"]) == (1, 1, 1)
    assert "timed out after 5s" in hung_s["last_error"]
    healthy_s = stack.schedule(scheduler, "healthy")
    assert (healthy_s["fire_count"], healthy_s["error_count"]) == (7, 0)
    assert len(stack.events_of("healthy", "fire")) == 7
    # Logged with the trigger's name, once per reason (not on every poll).
    messages = [r.getMessage() for r in caplog.records]
    assert sum("'raising'" in m and "cannot reach the inbox" in m for m in messages) == 1


# -- fires and deduplication -------------------------------------------------------------------------------------
def test_a_fire_creates_a_run_with_the_trigger_context(stack: Stack) -> None:
    scheduler = stack.scheduler()
    scheduler.add(definition("files", lambda: cloaca.TriggerResult.fire({"file": "a.csv"})))
    stack.pass_at(scheduler, 1.0)
    (fire,) = stack.events_of("files", "fire")
    run = stack.runs.get_run(fire["run_id"])
    assert run is not None and run.workflow_name == "wf"
    assert run.input_context["file"] == "a.csv" and run.input_context["trigger_name"] == "files"
    assert "triggered_at" in run.input_context
    assert fire["context_hash"] == cloaca.context_hash({"file": "a.csv"})


def test_a_fire_of_an_active_key_is_a_counted_dedup_skip_and_the_key_frees_when_the_run_ends(
    backend: Backend,
) -> None:
    stack = Stack(backend)
    try:
        scheduler = stack.scheduler()
        scheduler.add(definition("same", lambda: cloaca.TriggerResult.fire({"item": 1})))
        stack.pass_at(scheduler, 1.0)
        (fire,) = stack.events_of("same", "fire")
        stack.pass_at(scheduler, 2.0)  # the run is still active (nothing ran its task)
        stack.pass_at(scheduler, 3.0)
        assert len(stack.events_of("same", "fire")) == 1
        assert [e["context_hash"] for e in stack.events_of("same", "dedup_skip")] == [fire["context_hash"]] * 2
        counts = stack.schedule(scheduler, "same")
        assert (counts["fire_count"], counts["dedup_skip_count"], counts["error_count"]) == (1, 2, 0)
        assert [h["run_id"] for h in stack.store.execution_history("same")] == [fire["run_id"]]

        assert stack.coordinator.run_task(fire["run_id"], "only").kind == "completed"  # the run ends
        stack.pass_at(scheduler, 4.0)
        assert len(stack.events_of("same", "fire")) == 2  # the key is free again at once
    finally:
        stack.close()


def test_allow_concurrent_fires_every_time(stack: Stack) -> None:
    scheduler = stack.scheduler()
    scheduler.add(definition("every", lambda: cloaca.TriggerResult.fire({"item": 1}), allow_concurrent=True))
    for at in (1.0, 2.0, 3.0):
        stack.pass_at(scheduler, at)
    assert len({e["run_id"] for e in stack.events_of("every", "fire")}) == 3
    assert stack.events_of("every", "dedup_skip") == []


def test_an_async_trigger_is_polled_on_the_event_loop(stack: Stack) -> None:
    async def async_fire() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire({"async": True})

    scheduler = stack.scheduler()
    scheduler.add(definition("async_fire", async_fire, allow_concurrent=True))
    stack.pass_at(scheduler, 1.0)
    stack.pass_at(scheduler, 2.0)
    assert len(stack.events_of("async_fire", "fire")) == 2
    assert stack.schedule(scheduler, "async_fire")["poll_count"] == 2


# -- keeping time: lateness never accumulates ----------------------------------------------------------------------
def test_a_slightly_late_poll_keeps_the_schedule_so_lateness_never_accumulates(stack: Stack) -> None:
    scheduler = stack.scheduler()
    calls = Calls(stack.clock)
    scheduler.add(definition("steady", calls, interval_s=1.0))
    # (Times in the tests of this section are exact binary fractions: T0 + at - T0 == at.)
    stack.pass_at(scheduler, 1.25)  # 0.25 s late (the loop woke up late, or started a batch)
    stack.pass_at(scheduler, 1.9375)
    assert calls.at == [1.25]
    sleep_s = stack.pass_at(scheduler, 2.0)  # due one interval after 1.0, when it was due; not after 1.25
    assert sleep_s == pytest.approx(1.0)
    for at in (3.375, 4.125, 5.4375, 6.0):  # late by 0.375, 0.125, 0.4375 and 0: still on the 1 s grid
        stack.pass_at(scheduler, at)
    stack.pass_at(scheduler, 6.9375)
    assert calls.at == [1.25, 2.0, 3.375, 4.125, 5.4375, 6.0]


def test_triggers_registered_apart_keep_their_phases_when_one_pass_starts_both(stack: Stack) -> None:
    scheduler = stack.scheduler()
    early, later = Calls(stack.clock), Calls(stack.clock)
    scheduler.add(definition("early", early, interval_s=1.0))  # due at 1.0, 2.0, ...
    stack.clock.now = T0 + 0.25
    scheduler.add(definition("later", later, interval_s=1.0))  # due at 1.25, 2.25, ...
    stack.pass_at(scheduler, 1.375)  # one pass starts both
    stack.pass_at(scheduler, 2.0)
    assert early.at == [1.375, 2.0] and later.at == [1.375]  # not gathered into one batch for good
    stack.pass_at(scheduler, 2.25)
    assert later.at == [1.375, 2.25]


def test_a_poll_later_than_half_an_interval_re_anchors_without_catching_up(stack: Stack) -> None:
    scheduler = stack.scheduler()
    calls = Calls(stack.clock)
    scheduler.add(definition("paused", calls, interval_s=1.0))
    stack.pass_at(scheduler, 1.0)
    stack.pass_at(scheduler, 2.75)  # 0.75 s late (the process was paused)
    stack.pass_at(scheduler, 3.0)  # its old slot: no catch-up poll 0.25 s after the last one
    assert calls.at == [1.0, 2.75]
    stack.pass_at(scheduler, 3.75)  # a full interval after the late poll
    stack.pass_at(scheduler, 6.5)  # missed slots are not made up for either: one poll, then one interval
    stack.pass_at(scheduler, 7.0)
    stack.pass_at(scheduler, 7.5)
    assert calls.at == [1.0, 2.75, 3.75, 6.5, 7.5]


def test_the_lateness_a_long_interval_absorbs_is_bounded(stack: Stack) -> None:
    scheduler = stack.scheduler()
    calls = Calls(stack.clock)
    scheduler.add(definition("hourly", calls, interval_s=3600.0))
    stack.pass_at(scheduler, 3600.75)  # 0.75 s late: kept (below MAX_KEPT_LATENESS_S)
    stack.pass_at(scheduler, 7200.0)
    stack.pass_at(scheduler, 10_805.0)  # 5 s late: re-anchored, never a poll 3,595 s after the previous one
    stack.pass_at(scheduler, 14_400.0)
    assert calls.at == [3600.75, 7200.0, 10_805.0]
    stack.pass_at(scheduler, 14_405.0)
    assert calls.at[-1] == 14_405.0


def test_polls_queued_behind_busy_workers_are_not_left_in_progress_at_stop(stack: Stack) -> None:
    release = threading.Event()
    hung = Calls(stack.clock, result=lambda: release.wait(10) and False)
    queued = Calls(stack.clock)
    scheduler = stack.scheduler(poll_workers=1)  # the one worker is held by the hung poll
    scheduler.add(definition("hung", hung))
    scheduler.add(definition("queued", queued))
    try:
        stack.clock.now = T0 + 1.0
        scheduler.run_once()
        wait_until(lambda: hung.at, 10, interval_s=0.005, message="the hung poll to start")
        assert scheduler.polls_in_progress() == ["hung", "queued"]
        scheduler.stop(wait_s=0.0)
        assert scheduler.polls_in_progress() == ["hung"] and queued.at == []
    finally:
        release.set()
    wait_until(lambda: scheduler.polls_in_progress() == [], 10, interval_s=0.005, message="the hung poll to end")


# -- statistics ----------------------------------------------------------------------------------------------------
class FlakyStatsStore:
    """Records what each ``flush_poll_stats`` call writes; the second call fails (the database went away)."""

    def __init__(self) -> None:
        self.calls = 0
        self.written: list[dict[str, tuple[int, int]]] = []

    def flush_poll_stats(self, stats: Mapping[str, PollStats]) -> None:
        self.calls += 1
        if self.calls == 2:
            raise OSError("database gone")
        self.written.append({name: (st.polls, st.skips) for name, st in stats.items()})


def test_a_flush_writes_in_chunks_and_keeps_what_a_failure_left_unwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poll_book, "FLUSH_CHUNK", 2)
    store = FlakyStatsStore()
    book = PollBook(store, FakeClock(T0))  # type: ignore[arg-type]
    for name in ("a", "b", "c", "d"):
        book.polled(name, timedelta(seconds=1), skipped=True)
    with pytest.raises(OSError, match="database gone"):
        book.flush()  # a and b are written, c and d are not
    book.polled("c", timedelta(seconds=1), skipped=False)  # counted while its earlier poll waits to be written
    book.flush()
    assert store.written == [{"a": (1, 1), "b": (1, 1)}, {"c": (2, 1), "d": (1, 1)}]
    book.flush()  # nothing new: nothing written
    assert store.calls == 3 and book.pending() == {}
