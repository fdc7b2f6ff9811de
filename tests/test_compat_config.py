"""CLOACA_API §11: ``DefaultRunnerConfig`` (the 14 fields in order, types, validation, ``default()``, ``to_dict()``,
repr) and the settings they configure, including cron recovery."""

from __future__ import annotations

from typing import Any

import pytest

import cloacina as cloaca
from cloacina.deployment.settings import CloacinaSettings

# The contract's table: name, type, default.
FIELDS: list[tuple[str, type, Any]] = [
    ("max_concurrent_tasks", int, 4),
    ("scheduler_poll_interval_ms", int, 100),
    ("task_timeout_seconds", int, 300),
    ("workflow_timeout_seconds", int, 3600),
    ("db_pool_size", int, 10),
    ("enable_recovery", bool, True),
    ("enable_cron_scheduling", bool, True),
    ("cron_poll_interval_seconds", int, 30),
    ("cron_max_catchup_executions", int, 100),
    ("cron_enable_recovery", bool, True),
    ("cron_recovery_interval_seconds", int, 300),
    ("cron_lost_threshold_minutes", int, 10),
    ("cron_max_recovery_age_seconds", int, 86400),
    ("cron_max_recovery_attempts", int, 3),
]
NAMES = [name for name, _, _ in FIELDS]
# A value other than the default for every field, valid for it.
OTHER: dict[str, Any] = {
    "max_concurrent_tasks": 8,
    "scheduler_poll_interval_ms": 250,
    "task_timeout_seconds": 60,
    "workflow_timeout_seconds": 120,
    "db_pool_size": 3,
    "enable_recovery": False,
    "enable_cron_scheduling": False,
    "cron_poll_interval_seconds": 5,
    "cron_max_catchup_executions": 1000,
    "cron_enable_recovery": False,
    "cron_recovery_interval_seconds": 60,
    "cron_lost_threshold_minutes": 2,
    "cron_max_recovery_age_seconds": 3600,
    "cron_max_recovery_attempts": 5,
}


def test_defaults_have_the_documented_values_and_exact_types() -> None:
    config = cloaca.DefaultRunnerConfig()
    for name, kind, default in FIELDS:
        value = getattr(config, name)
        assert value == default and type(value) is kind, name
    assert cloaca.DefaultRunnerConfig.default().to_dict() == config.to_dict()


def test_the_fourteen_fields_are_positional_in_table_order() -> None:
    config = cloaca.DefaultRunnerConfig(*(OTHER[name] for name in NAMES))
    assert [getattr(config, name) for name in NAMES] == [OTHER[name] for name in NAMES]
    assert cloaca.DefaultRunnerConfig(**OTHER).to_dict() == config.to_dict()  # and keyword


def test_none_keeps_each_default() -> None:
    assert cloaca.DefaultRunnerConfig(*([None] * 14)).to_dict() == cloaca.DefaultRunnerConfig().to_dict()
    assert cloaca.DefaultRunnerConfig(workflow_timeout_seconds=None).workflow_timeout_seconds == 3600


def test_properties_are_read_write_and_validated() -> None:
    config = cloaca.DefaultRunnerConfig()
    for name in NAMES:
        setattr(config, name, OTHER[name])
        assert getattr(config, name) == OTHER[name]
    config.workflow_timeout_seconds = None  # removes the limit
    assert config.workflow_timeout_seconds is None and config.to_dict()["workflow_timeout_seconds"] is None
    with pytest.raises(ValueError):
        config.max_concurrent_tasks = 0
    assert config.max_concurrent_tasks == OTHER["max_concurrent_tasks"]  # a refused value changes nothing


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_concurrent_tasks", 0),
        ("max_concurrent_tasks", -3),
        ("scheduler_poll_interval_ms", 9),
        ("db_pool_size", 0),
        ("cron_max_catchup_executions", 1001),
        ("task_timeout_seconds", -1),
        ("workflow_timeout_seconds", -1),
        ("cron_poll_interval_seconds", -5),
        ("cron_lost_threshold_minutes", -1),
        ("cron_max_recovery_attempts", -1),
    ],
)
def test_invalid_values_are_value_errors(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        cloaca.DefaultRunnerConfig(**{name: value})
    with pytest.raises(ValueError, match=name):
        setattr(cloaca.DefaultRunnerConfig(), name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_concurrent_tasks", 2.0),  # int, not float
        ("task_timeout_seconds", 1.5),
        ("db_pool_size", "10"),
        ("enable_recovery", 1),
        ("enable_cron_scheduling", "yes"),
        ("cron_max_recovery_attempts", True),
    ],
)
def test_wrong_types_are_type_errors(name: str, value: object) -> None:
    with pytest.raises(TypeError, match=name):
        cloaca.DefaultRunnerConfig(**{name: value})
    with pytest.raises(TypeError, match=name):
        setattr(cloaca.DefaultRunnerConfig(), name, value)


def test_to_dict_has_the_fourteen_keys_first_and_round_trips() -> None:
    config = cloaca.DefaultRunnerConfig(**OTHER, trigger_poll_workers=3, cron_catchup_policy="run_all")
    as_dict = config.to_dict()
    assert list(as_dict)[:14] == NAMES
    assert {k: as_dict[k] for k in NAMES} == OTHER
    rebuilt = cloaca.DefaultRunnerConfig(**as_dict)  # cloacina's extra keys go back through the constructor
    assert rebuilt.to_dict() == as_dict and rebuilt == config


def test_repr() -> None:
    assert repr(cloaca.DefaultRunnerConfig()) == (
        "DefaultRunnerConfig(max_concurrent_tasks=4, enable_cron_scheduling=true, db_pool_size=10)"
    )
    assert repr(cloaca.DefaultRunnerConfig(2, enable_cron_scheduling=False, db_pool_size=5)) == (
        "DefaultRunnerConfig(max_concurrent_tasks=2, enable_cron_scheduling=false, db_pool_size=5)"
    )


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TypeError):
        cloaca.DefaultRunnerConfig(max_concurrent=4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        cloaca.DefaultRunnerConfig(*range(1, 16))  # type: ignore[misc]  # 15 positionals: the extras are keyword-only
    with pytest.raises(AttributeError):
        cloaca.DefaultRunnerConfig().max_concurrent = 4  # type: ignore[attr-defined]


def test_to_settings_maps_each_field() -> None:
    settings = cloaca.DefaultRunnerConfig(**OTHER).to_settings("sqlite://x.db")
    assert isinstance(settings, CloacinaSettings)
    assert (settings.max_concurrent_tasks, settings.db_pool_size) == (8, 3)
    assert (settings.task_timeout_s, settings.workflow_timeout_s) == (60.0, 120)
    assert (settings.cron_poll_interval_s, settings.cron_max_catchup_executions) == (5.0, 1000)
    assert settings.cron_enable_recovery is False
    assert (settings.cron_recovery_interval_s, settings.cron_lost_threshold_s) == (60.0, 120.0)
    assert (settings.cron_max_recovery_age_s, settings.cron_max_recovery_attempts) == (3600.0, 5)
    defaults = cloaca.DefaultRunnerConfig().to_settings(":memory:")
    assert (defaults.workflow_timeout_s, defaults.cron_poll_interval_s, defaults.cron_lost_threshold_s) == (
        3600,
        30.0,
        600.0,
    )
    unlimited = cloaca.DefaultRunnerConfig()
    unlimited.workflow_timeout_seconds = None
    assert unlimited.to_settings(":memory:").workflow_timeout_s is None


def test_a_runner_starts_what_the_config_enables() -> None:
    with cloaca.DefaultRunner.with_config(":memory:", cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False)) as r:
        assert r.cron_scheduler is not None and r.cron_scheduler.is_running
        assert r.cron_recovery is not None and r.cron_recovery.is_running
        assert r.cron_recovery.max_attempts == 3 and r.cron_recovery.lost_threshold_s == 600.0
    no_recovery = cloaca.DefaultRunnerConfig(cron_enable_recovery=False, enable_trigger_scheduling=False)
    with cloaca.DefaultRunner.with_config(":memory:", no_recovery) as r:
        assert r.cron_scheduler is not None and r.cron_recovery is None
    no_cron = cloaca.DefaultRunnerConfig(enable_cron_scheduling=False, enable_trigger_scheduling=False)
    with cloaca.DefaultRunner.with_config(":memory:", no_cron) as r:
        assert r.cron_scheduler is None and r.cron_recovery is None
    with pytest.raises(TypeError, match="DefaultRunnerConfig"):
        cloaca.DefaultRunner.with_config(":memory:", {"max_concurrent_tasks": 2})  # type: ignore[arg-type]
