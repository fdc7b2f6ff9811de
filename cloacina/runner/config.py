"""``DefaultRunnerConfig``: the runner's tunables under cloaca's names, validated on creation and on every assignment.

The first 14 parameters are cloaca's, in cloaca's order, positional or keyword; ``None`` keeps a field's default.
The fields after them are cloacina's (keyword-only). Values have exactly the documented types (``int``, not
``float``; ``bool``); a wrong type is a ``TypeError``, a value out of range a ``ValueError``.

>>> DefaultRunnerConfig(8).max_concurrent_tasks
8
>>> DefaultRunnerConfig(max_concurrent_tasks=0)
Traceback (most recent call last):
...
ValueError: max_concurrent_tasks must be > 0, got 0
>>> DefaultRunnerConfig.default()
DefaultRunnerConfig(max_concurrent_tasks=4, enable_cron_scheduling=true, db_pool_size=10)

The runner turns its config into the deployment's :class:`~cloacina.deployment.settings.CloacinaSettings`
(:meth:`DefaultRunnerConfig.to_settings`) and builds everything from that, as the services do. Each name maps to
one setting:

======================================  ===============================================================
``DefaultRunnerConfig``                 ``CloacinaSettings`` (``CLOACINA_*``)
======================================  ===============================================================
``max_concurrent_tasks``                ``max_concurrent_tasks``
``scheduler_poll_interval_ms``          none: kept for cloaca code; no cloacina loop ticks (all wait on events)
``task_timeout_seconds``                ``task_timeout_s``
``workflow_timeout_seconds``            ``workflow_timeout_s`` (also how long ``execute()`` waits)
``db_pool_size``                        ``db_pool_size``
``enable_recovery``                     the runner starts a sweeper (services always do)
``enable_cron_scheduling``              the runner fires cron schedules; off, the cron API refuses too
``cron_poll_interval_seconds``          ``cron_poll_interval_s``
``cron_max_catchup_executions``         ``cron_max_catchup_executions``
``cron_enable_recovery``                ``cron_enable_recovery``
``cron_recovery_interval_seconds``      ``cron_recovery_interval_s``
``cron_lost_threshold_minutes``         ``cron_lost_threshold_s`` (times 60)
``cron_max_recovery_age_seconds``       ``cron_max_recovery_age_s``
``cron_max_recovery_attempts``          ``cron_max_recovery_attempts``
``recovery_stale_after_seconds``        ``task_heartbeat_timeout_s`` and ``stale_run_s`` (runner default 60 s)
``enable_trigger_scheduling``           the runner polls triggers (pollers always do)
``trigger_base_poll_interval_ms``       ``trigger_refresh_interval_s`` (÷ 1000)
``trigger_poll_timeout_seconds``        ``trigger_poll_timeout_s``
``trigger_poll_workers``                ``trigger_poll_workers``
``cron_catchup_policy``                 ``cron_catchup_policy``
``broker_url``                          ``broker_url`` (unset: ``CLOACINA_BROKER_URL``)
``redis_url``                           ``redis_url`` (unset: ``CLOACINA_REDIS_URL``)
======================================  ===============================================================

>>> s = DefaultRunnerConfig(task_timeout_seconds=5).to_settings(":memory:")
>>> s.task_timeout_s, s.trigger_refresh_interval_s, s.task_heartbeat_timeout_s, s.cron_lost_threshold_s
(5.0, 1.0, 60.0, 600.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from cloacina.deployment.settings import CloacinaSettings

RUNNER_RECOVERY_STALE_AFTER_S = 60.0  # an embedded runner waits longer than a poller before adopting work
T = TypeVar("T")
Check = Callable[[str, object], T]


def _int(low: int, high: int | None = None) -> Check[int]:
    def check(name: str, value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < low:
            bound = "> 0" if low == 1 else f">= {low}"
            raise ValueError(f"{name} must be {bound}, got {value}")
        if high is not None and value > high:
            raise ValueError(f"{name} must be <= {high}, got {value}")
        return value

    return check


def _optional_int(low: int) -> Check[int | None]:
    inner = _int(low)

    def check(name: str, value: object) -> int | None:
        return None if value is None else inner(name, value)

    return check


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _seconds(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _choice(*allowed: str) -> Check[str]:
    def check(name: str, value: object) -> str:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return str(value)

    return check


def _optional_url(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a URL string, got {type(value).__name__}")
    return value


class Setting(Generic[T]):
    """A validated read/write property of :class:`DefaultRunnerConfig`; ``default`` is what ``None`` keeps."""

    def __init__(self, default: T, check: Check[T], doc: str) -> None:
        self.default = default
        self.check = check
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, obj: DefaultRunnerConfig, owner: type) -> T: ...
    def __get__(self, obj: DefaultRunnerConfig | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        value: T = obj._values[self.name]
        return value

    def __set__(self, obj: DefaultRunnerConfig, value: object) -> None:
        obj._values[self.name] = self.check(self.name, value)


class DefaultRunnerConfig:
    """Settings of a :class:`cloacina.DefaultRunner`. Durations carry their unit in the name."""

    __slots__ = ("_values",)

    # -- cloaca's fields, in cloaca's order ------------------------------------------------------------------
    max_concurrent_tasks = Setting(4, _int(1), "Task attempts running at once in-process (> 0).")
    scheduler_poll_interval_ms = Setting(100, _int(10), "Accepted for cloaca code (>= 10); unused.")
    task_timeout_seconds = Setting(300, _int(1), "Timeout of one task attempt; a timeout is transient.")
    workflow_timeout_seconds = Setting[int | None](
        3600, _optional_int(1), "A run still going after this fails and execute() raises; None: no limit."
    )
    db_pool_size = Setting(10, _int(1), "Database connections (> 0).")
    enable_recovery = Setting(True, _bool, "Resume runs left unfinished by a dead runner.")
    enable_cron_scheduling = Setting(True, _bool, "Fire cron schedules; False also refuses the cron API.")
    cron_poll_interval_seconds = Setting(30, _int(1), "How often cron schedule rows are re-read.")
    cron_max_catchup_executions = Setting(100, _int(1, 1000), "Missed cron times replayed by run_all (<= 1000).")
    cron_enable_recovery = Setting(True, _bool, "Re-fire cron due times claimed but never handed off to a run.")
    cron_recovery_interval_seconds = Setting(300, _int(1), "How often cron recovery runs.")
    cron_lost_threshold_minutes = Setting(10, _int(0), "Age at which a claim without a run counts as lost.")
    cron_max_recovery_age_seconds = Setting(86_400, _int(0), "Lost due times older than this are not recovered.")
    cron_max_recovery_attempts = Setting(3, _int(0), "Re-fires tried per lost due time.")

    # -- cloacina's fields ------------------------------------------------------------------------------------
    recovery_stale_after_seconds = Setting(
        RUNNER_RECOVERY_STALE_AFTER_S, _seconds, "Heartbeat age after which a run is adopted."
    )
    enable_trigger_scheduling = Setting(True, _bool, "Poll registered @trigger functions.")
    trigger_base_poll_interval_ms = Setting(1000, _int(10, 3_600_000), "How often trigger rows are re-read.")
    trigger_poll_timeout_seconds = Setting(30.0, _seconds, "A poll running longer is abandoned.")
    trigger_poll_workers = Setting(8, _int(1, 512), "Threads that run trigger polls.")
    cron_catchup_policy = Setting("skip", _choice("skip", "run_all"), "Default for missed cron times.")
    broker_url = Setting[str | None](None, _optional_url, "Celery broker (Redis): run tasks on Celery workers.")
    redis_url = Setting[str | None](None, _optional_url, "Redis for locks and leases (defaults to broker_url).")

    def __init__(
        self,
        max_concurrent_tasks: int | None = None,
        scheduler_poll_interval_ms: int | None = None,
        task_timeout_seconds: int | None = None,
        workflow_timeout_seconds: int | None = None,
        db_pool_size: int | None = None,
        enable_recovery: bool | None = None,
        enable_cron_scheduling: bool | None = None,
        cron_poll_interval_seconds: int | None = None,
        cron_max_catchup_executions: int | None = None,
        cron_enable_recovery: bool | None = None,
        cron_recovery_interval_seconds: int | None = None,
        cron_lost_threshold_minutes: int | None = None,
        cron_max_recovery_age_seconds: int | None = None,
        cron_max_recovery_attempts: int | None = None,
        *,
        recovery_stale_after_seconds: float | None = None,
        enable_trigger_scheduling: bool | None = None,
        trigger_base_poll_interval_ms: int | None = None,
        trigger_poll_timeout_seconds: float | None = None,
        trigger_poll_workers: int | None = None,
        cron_catchup_policy: str | None = None,
        broker_url: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        given = dict(locals())
        self._values: dict[str, Any] = {}
        for name in FIELD_NAMES:
            setting: Setting[Any] = getattr(type(self), name)
            value = given[name]
            self._values[name] = setting.default if value is None else setting.check(name, value)

    @staticmethod
    def default() -> DefaultRunnerConfig:
        """A config with every field at its default."""
        return DefaultRunnerConfig()

    def to_dict(self) -> dict[str, Any]:
        """Every field by name: cloaca's 14 first, then cloacina's; ``DefaultRunnerConfig(**d)`` rebuilds it."""
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DefaultRunnerConfig) and self._values == other._values

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value, not hashable

    def __repr__(self) -> str:
        cron = "true" if self.enable_cron_scheduling else "false"
        return (
            f"DefaultRunnerConfig(max_concurrent_tasks={self.max_concurrent_tasks}, "
            f"enable_cron_scheduling={cron}, db_pool_size={self.db_pool_size})"
        )

    def to_settings(self, database_url: str, *, schema: str | None = None) -> CloacinaSettings:
        """The deployment settings of a runner on ``database_url`` with this config (see the module's table).

        Settings the config has no name for (queue, Redis namespace, visibility timeout...) come from the
        ``CLOACINA_*`` environment, as for the services.
        """
        values: dict[str, Any] = {
            "database_url": database_url,
            "database_schema": schema,
            "db_pool_size": self.db_pool_size,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "task_timeout_s": float(self.task_timeout_seconds),
            "workflow_timeout_s": self.workflow_timeout_seconds,
            "task_heartbeat_timeout_s": self.recovery_stale_after_seconds,
            "stale_run_s": self.recovery_stale_after_seconds,
            "trigger_refresh_interval_s": self.trigger_base_poll_interval_ms / 1000,
            "trigger_poll_timeout_s": self.trigger_poll_timeout_seconds,
            "trigger_poll_workers": self.trigger_poll_workers,
            "cron_poll_interval_s": float(self.cron_poll_interval_seconds),
            "cron_catchup_policy": self.cron_catchup_policy,
            "cron_max_catchup_executions": self.cron_max_catchup_executions,
            "cron_enable_recovery": self.cron_enable_recovery,
            "cron_recovery_interval_s": float(self.cron_recovery_interval_seconds),
            "cron_lost_threshold_s": float(self.cron_lost_threshold_minutes * 60),
            "cron_max_recovery_age_s": float(self.cron_max_recovery_age_seconds),
            "cron_max_recovery_attempts": self.cron_max_recovery_attempts,
        }
        if self.broker_url is not None:
            values["broker_url"] = self.broker_url
        if self.redis_url is not None:
            values["redis_url"] = self.redis_url
        return CloacinaSettings(**values)


CLOACA_FIELDS = (
    "max_concurrent_tasks",
    "scheduler_poll_interval_ms",
    "task_timeout_seconds",
    "workflow_timeout_seconds",
    "db_pool_size",
    "enable_recovery",
    "enable_cron_scheduling",
    "cron_poll_interval_seconds",
    "cron_max_catchup_executions",
    "cron_enable_recovery",
    "cron_recovery_interval_seconds",
    "cron_lost_threshold_minutes",
    "cron_max_recovery_age_seconds",
    "cron_max_recovery_attempts",
)
FIELD_NAMES = tuple(name for name, value in vars(DefaultRunnerConfig).items() if isinstance(value, Setting))
