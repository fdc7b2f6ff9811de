"""The Celery application: configuration, and the one task every canvas node runs.

Settings that make recovery work (DESIGN §4): JSON only; ``acks_late`` + ``reject_on_worker_lost`` so a message
is only acknowledged after its task finished; prefetch 1 so a worker never sits on messages another worker
could run; a visibility timeout above the longest task. We do not rely on that timeout for recovery: task
heartbeats in SQL and the sweeper re-run a killed worker's task within ``task_heartbeat_timeout_s``.

A publishing process (poller, runner client) builds an app without a node runner; a worker process builds one
with a factory for its :class:`NodeRunner`, which runs in each prefork child, created there on first use
(children must not share the parent's database connections or Redis sockets).

Deferring tasks (``handle.defer_until``) and the worker slot. A prefork child is one execution slot (a threads
pool has ``concurrency`` of them): a :class:`~cloacina.dispatch.threads.SlotPool` of the process. A node message
runs its stretch on a thread of the process (:class:`StretchExecution`) holding a slot while the Celery task
waits for it. When a task defers, it releases the slot, the Celery task returns and its message is acknowledged:
the child takes other messages while the deferring thread polls its condition, holding no slot and blocking no
child. When the condition holds, the thread takes the slot back (messages arriving while it waits for it are
handed back to the broker with a short countdown, so a child never blocks on a slot), finishes the task and its
stretch, and hands what comes next (a retry delay, the rest of the stretch) to Celery as a new message.
Durably the deferring attempt stays Running with its heartbeat: if the child dies, the sweeper gives the attempt
back and republishes the run, as for any lost attempt. Successor nodes already published by the acknowledged
message find the deferring task unfinished and wait for it with backoff (at most 2 s between checks).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import redis
from celery import Celery, Task
from celery.signals import worker_init, worker_process_init
from sqlalchemy.exc import InterfaceError, OperationalError

from cloacina.backoff import Backoff
from cloacina.definitions.workflow import Workflow
from cloacina.dispatch import redis_transport
from cloacina.dispatch.canvas import TASK_NAME, node_signature, publish_stretches, stretch_from
from cloacina.dispatch.result_backend import backend_url
from cloacina.dispatch.threads import SlotLease, SlotPool
from cloacina.execution.cached_threads import CachedThreads
from cloacina.execution.coordinator import NodeOutcome
from cloacina.execution.task_handle import holding_slot
from cloacina.store.runs import ContinueWith, StartedAttempt

log = logging.getLogger("cloacina.celery")
FUSE_SETTING = "cloacina_fuse_stretches"  # app.conf key: whether a message carries a whole stretch
WAITING_BACKOFF = Backoff(initial_s=0.05, max_s=2.0)  # a duplicate delivery waits for its dependency
STORE_DOWN_BACKOFF = Backoff(initial_s=0.5, max_s=30.0)  # the database or Redis is briefly unreachable
T = TypeVar("T")


@dataclass(frozen=True)
class CeleryOptions:
    """What the Celery app needs to know of a deployment (mapped from its settings by the wiring)."""

    broker_url: str
    result_url: str  # Redis result backend (nothing on the hot path stores a result)
    queue: str = "cloacina"
    visibility_timeout_s: int = 3600
    task_events: bool = False
    fuse_stretches: bool = True  # as in Celery: Flower turns events on for the workers it watches


class NodeRunner(Protocol):
    """Runs one delivery of a canvas node in a worker process."""

    def run_node(
        self,
        run_id: str,
        task_id: str,
        *,
        record_start: bool = False,
        continue_with: ContinueWith | None = None,
        started: StartedAttempt | None = None,
    ) -> NodeOutcome: ...


def celery_config(options: CeleryOptions) -> dict[str, Any]:
    """The Celery configuration cloacina needs, as a dict (tests and docs read it too)."""
    transport = {"visibility_timeout": options.visibility_timeout_s}
    # redis:// brokers use kombu's Redis transport minus its per-command client construction (redis_transport).
    plain_redis = options.broker_url.startswith("redis://")
    return {
        "broker_url": options.broker_url,
        **({"broker_transport": redis_transport.TRANSPORT} if plain_redis else {}),
        # No message stores a result; the backend is configured for what Celery itself may ask of it.
        "result_backend": backend_url(options.result_url),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "result_expires": 3600,
        "task_default_queue": options.queue,
        "task_send_sent_event": options.task_events,
        "worker_send_task_events": options.task_events,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_time_limit": None,
        "enable_utc": True,
        FUSE_SETTING: options.fuse_stretches,
    }


class PerProcess(Generic[T]):
    """A value built by ``factory`` once in each process (after a prefork fork, in the child)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: dict[int, T] = {}
        self._lock = threading.Lock()

    def get(self) -> T:
        pid = os.getpid()
        value = self._values.get(pid)
        if value is None:
            with self._lock:
                value = self._values.get(pid)
                if value is None:
                    value = self._values[pid] = self._factory()
        return value


class NodeTask(Task[Any, None]):
    """Base class of the canvas-node task. Each app registers a subclass of its own that carries its runner."""

    node_runner: ClassVar[PerProcess[NodeRunner] | None] = None


# -- execution slots of a worker process ---------------------------------------------------------------------
# A prefork child (and the solo pool) runs one message at a time: one slot. A threads pool runs `concurrency`.
_slot_permits = 1


@worker_init.connect(weak=False, dispatch_uid="cloacina-slot-permits")
def _worker_starting(sender: Any = None, **_: Any) -> None:
    global _slot_permits
    concurrency = getattr(sender, "concurrency", 1)
    _slot_permits = concurrency if isinstance(concurrency, int) and concurrency > 0 else 1


@worker_process_init.connect(weak=False, dispatch_uid="cloacina-slot-permits-child")
def _pool_process_starting(**_: Any) -> None:
    global _slot_permits
    _slot_permits = 1


@dataclass
class NodeHost:
    """What one worker process runs nodes with: its execution slots and the threads node stretches run on."""

    slots: SlotPool
    threads: CachedThreads

    @classmethod
    def create(cls) -> NodeHost:
        return cls(SlotPool(_slot_permits), CachedThreads("cloacina-node"))


_hosts: PerProcess[NodeHost] = PerProcess(NodeHost.create)


@dataclass(frozen=True)
class FollowUp:
    """The rest of a stretch goes back to Celery: ``kwargs`` of the node message, after ``countdown_s``."""

    kwargs: dict[str, Any]
    countdown_s: float


ReadyPublisher = Callable[[str, Workflow, list[str]], None]  # (run_id, workflow, heads): one message per stretch


def _run_stretch(
    runner: NodeRunner,
    workflow: str,
    run_id: str,
    task_ids: list[str],
    retries: int,
    publish_ready: ReadyPublisher,
    *,
    fuse: bool = True,
    redelivered: bool = False,
    queue: str | None = None,
    deployment_queue: str | None = None,
) -> FollowUp | None:
    """Run the stretch's tasks back to back until one must wait; then say what to hand back to Celery.

    A finish starts the task this stretch runs next (the next of the stretch or, once the stretch is done, the
    first task the finish makes Ready; that one's stretch joins this one: no publish, no broker round trip), so
    its own start costs nothing. The other tasks a finish makes Ready are published, one message each. Without
    fusion every Ready task is published (a message per task). A ``redelivered`` message (its worker was lost)
    records each task's start before running it, so repeated losses are counted.

    Routing: ``queue`` is the queue this message came from; only a task routed there joins the stretch (a task
    routed nowhere belongs to ``deployment_queue``). A task of another queue is published to it, so a worker never
    runs a task routed to a queue it was not given. ``queue=None``: any task joins.
    """
    task_ids = list(task_ids)
    index = 0
    started: StartedAttempt | None = None  # the next task, already started by its dependency's finish
    while index < len(task_ids):
        task_id = task_ids[index]
        rest = {"workflow": workflow, "run_id": run_id, "tasks": task_ids[index:]}
        following = task_ids[index + 1] if index + 1 < len(task_ids) else None
        continue_with = ContinueWith(
            following, first_ready=fuse and following is None, queue=queue, deployment_queue=deployment_queue
        )
        try:
            outcome = runner.run_node(
                run_id, task_id, record_start=redelivered, continue_with=continue_with, started=started
            )
        except (OperationalError, InterfaceError, redis.ConnectionError) as exc:
            # The database (or Redis) is briefly unavailable: keep the message and try again with backoff.
            # If the attempt itself had started, its heartbeat stops and the sweeper gives it back.
            delay = STORE_DOWN_BACKOFF.delay(retries)
            log.warning(
                "store unavailable running %s of run %s, retrying in %.1fs: %s",
                task_id,
                run_id,
                delay,
                str(exc).splitlines()[0],
                extra={"run_id": run_id, "task": task_id},
            )
            return FollowUp(rest, delay)
        if outcome.kind == "retry":
            return FollowUp(rest, outcome.delay_s)
        if outcome.kind == "waiting":  # a dependency is still running (duplicate delivery, recovery, a deferral)
            return FollowUp(rest, max(WAITING_BACKOFF.delay(retries), outcome.delay_s))
        index += 1
        started = None
        if outcome.continued is not None and outcome.workflow is not None:
            next_id, started = outcome.continued
            if index == len(task_ids):  # the first task it made Ready: its stretch joins this one
                task_ids.extend(stretch_from(outcome.workflow, next_id, fuse=fuse))
        if outcome.ready and outcome.workflow is not None:
            wf, held = outcome.workflow, set(task_ids[index:])
            heads = [t for t in outcome.ready if t not in held]
            mine = next((h for h in heads if continue_with.may_run(wf, h)), None)  # routed to this queue
            if fuse and mine is not None and index == len(task_ids):  # stretch done: go on with a newly Ready one
                heads.remove(mine)
                task_ids.extend(stretch_from(wf, mine, fuse=fuse))
            if heads:
                publish_ready(run_id, wf, heads)
    return None


class StretchExecution:
    """One node message's stretch, run on a thread of the worker process while the Celery task waits for it.

    The stretch holds the process's execution slot (``lease``). If one of its tasks defers
    (``handle.defer_until``), the slot is released and the Celery task returns at once: the message is
    acknowledged and the process takes its next message, while this thread waits holding no slot. When the
    condition holds, the task takes the slot again (ahead of new messages, which are handed back to the broker
    meanwhile), the stretch finishes here, and what must happen next goes to Celery as a new message.
    """

    def __init__(self, lease: SlotLease, republish: Callable[[FollowUp], None]) -> None:
        self._lease = lease
        self._republish = republish
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._detached = False
        self._follow_up: FollowUp | None = None
        self._error: BaseException | None = None

    # the ConcurrencySlot of the stretch's attempts
    @property
    def is_held(self) -> bool:
        return self._lease.is_held

    def release(self) -> None:
        self._lease.release()
        with self._lock:
            if self._settled.is_set():
                return
            self._detached = True
        self._settled.set()  # the Celery task returns; this thread goes on without it

    def reacquire(self) -> bool:
        return self._lease.reacquire()

    def run(self, stretch: Callable[[], FollowUp | None]) -> None:
        follow_up: FollowUp | None = None
        error: BaseException | None = None
        try:
            with holding_slot(self):
                follow_up = stretch()
        except BaseException as exc:
            error = exc
        finally:
            self._lease.close()
        with self._lock:
            if not self._detached:
                self._follow_up, self._error = follow_up, error
                self._settled.set()
                return
        if error is not None:
            log.error("a deferred stretch failed: %s", error, exc_info=error)
        elif follow_up is not None:
            try:
                self._republish(follow_up)
            except Exception as exc:  # the run goes stale and the sweeper republishes it
                log.error("could not hand the rest of a deferred stretch back to Celery: %s", exc)

    def wait(self) -> FollowUp | None:
        """Block until the stretch ended (its follow-up) or deferred (``None``: nothing more for Celery)."""
        self._settled.wait()
        with self._lock:
            if self._detached:
                return None
        if self._error is not None:
            raise self._error
        return self._follow_up


def run_canvas_node(
    self: NodeTask, workflow: str, run_id: str, tasks: list[str] | None = None, task: str | None = None
) -> None:
    """Run a stretch of a workflow run (a canvas node): its tasks back to back, each through the SQL state
    machine, which decides what happens to it.

    A task that must wait (a retry delay, a dependency still running elsewhere, the store briefly unreachable)
    hands itself and the rest of the stretch back to Celery with a countdown: a worker slot never sleeps. A task
    that defers (``handle.defer_until``) frees the slot and this message at once (:class:`StretchExecution`).
    ``task`` is the single-task form of messages published before stretches existed.

    Routing: the message's queue is its delivery's routing key (the queue name: Celery declares each queue with
    its name as routing key), else the deployment's queue. The tasks of one message share that queue, so what is
    handed back goes back to it; the tasks this stretch makes Ready join it only if they are routed to it too.
    """
    if self.node_runner is None:
        raise RuntimeError("this Celery app publishes runs only; start a worker with `cloacina worker`")
    runner = self.node_runner.get()
    task_ids = list(tasks) if tasks else [task] if task else []
    retries = int(self.request.retries or 0)
    host = _hosts.get()
    lease = host.slots.try_lease()
    if lease is None:  # a task that deferred has resumed and holds this process's slot: hand the message back
        kwargs = {"workflow": workflow, "run_id": run_id, "tasks": task_ids}
        raise self.retry(kwargs=kwargs, countdown=WAITING_BACKOFF.delay(retries))
    app, deployment_queue = self.app, str(self.app.conf.task_default_queue)
    delivery = self.request.delivery_info or {}
    queue = str(delivery.get("routing_key") or deployment_queue)  # the queue this message came from

    fuse = bool(app.conf.get(FUSE_SETTING, True))
    redelivered = bool(delivery.get("redelivered"))

    def republish(follow_up: FollowUp) -> None:
        kw = follow_up.kwargs
        signature = node_signature(app, kw["run_id"], kw["workflow"], kw["tasks"], queue)
        signature.apply_async(countdown=follow_up.countdown_s)

    def publish_ready(run: str, wf: Workflow, heads: list[str]) -> None:
        try:
            publish_stretches(app, run, wf, heads, deployment_queue, fuse=fuse)
        except Exception as exc:  # the broker is down: the tasks stay Ready and the sweeper republishes them
            log.error("publishing the Ready tasks of run %s failed (the sweeper will retry): %s", run, exc)

    execution = StretchExecution(lease, republish)
    host.threads.submit(
        lambda: execution.run(
            lambda: _run_stretch(
                runner,
                workflow,
                run_id,
                task_ids,
                retries,
                publish_ready,
                fuse=fuse,
                redelivered=redelivered,
                queue=queue,
                deployment_queue=deployment_queue,
            )
        )
    )
    follow_up = execution.wait()
    if follow_up is not None:
        raise self.retry(kwargs=follow_up.kwargs, countdown=follow_up.countdown_s, queue=queue)
    return None


_publisher_apps: dict[CeleryOptions, Celery] = {}
_publisher_apps_lock = threading.Lock()


def publisher_app(options: CeleryOptions) -> Celery:
    """The app a process publishes with: one per distinct configuration per process (it holds broker pools)."""
    with _publisher_apps_lock:
        app = _publisher_apps.get(options)
        if app is None:
            app = _publisher_apps[options] = create_app(options)
        return app


def create_app(options: CeleryOptions, node_runner: Callable[[], NodeRunner] | None = None) -> Celery:
    """A Celery app for ``options`` with the node task registered; ``node_runner`` builds the runner of each
    worker process (``None`` for an app that only publishes)."""
    if not options.broker_url:
        raise ValueError("CLOACINA_BROKER_URL is not set: distributed mode needs a Redis broker URL")
    app = Celery("cloacina", set_as_current=False)
    app.conf.update(celery_config(options))
    runner: PerProcess[NodeRunner] | None = PerProcess(node_runner) if node_runner is not None else None
    base = type("CloacinaNodeTask", (NodeTask,), {"node_runner": runner})
    app.task(name=TASK_NAME, base=base, bind=True, max_retries=None, acks_late=True, ignore_result=True)(
        run_canvas_node
    )
    return app


def ping_workers(options: CeleryOptions, timeout_s: float) -> list[str]:
    """Names of the workers that answer a ``ping`` broadcast within ``timeout_s`` (raises if the broker is down)."""
    app = create_app(options)
    app.conf.broker_connection_timeout = timeout_s
    app.conf.broker_connection_max_retries = 0
    try:
        replies = app.control.ping(timeout=timeout_s) or []
        return sorted(name for reply in replies for name in reply)
    finally:
        app.close()
