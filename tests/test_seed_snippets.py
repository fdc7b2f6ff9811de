"""Python samples of seeds 000-002 (trigger API reference, ``@trigger`` decorator page, tutorial 09), run with
``import cloacina as cloaca``.

Each sample is kept as written in its seed (indentation restored). Samples that call functions the reader is
meant to write (``some_condition_is_met()``, ``get_queue_depth()``, ...) are only defined, never called. The
seed-001 fragment that is a bare ``return`` outside any function is not a runnable sample and is left out.
"""

from __future__ import annotations

import random
import textwrap

import pytest

import cloacina as cloaca
from cloacina.definitions import registry

NO_SCHEDULERS = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)


def run_snippet(source: str, namespace: dict | None = None) -> dict:
    """Execute a documentation sample in ``namespace`` (a fresh module namespace by default)."""
    ns = namespace if namespace is not None else {"__name__": "seed_snippet"}
    exec(compile(textwrap.dedent(source), "<seed snippet>", "exec"), ns)
    return ns


def _trigger(name: str):
    definition = registry.get_trigger(name)
    assert definition is not None, f"trigger {name!r} was not registered"
    return definition


# -- seed 000: cloaca.python.bindings.trigger reference -----------------------------------------------------------
def test_seed000_trigger_example_polls() -> None:
    # Seed 000, "Examples" of cloaca.python.bindings.trigger.trigger.
    ns = run_snippet("""
        import cloacina as cloaca
        import random

        @cloaca.trigger(
            workflow="my_workflow",
            poll_interval="5s",
            allow_concurrent=False
        )
        def my_trigger():
            # Check some condition
            if random.randint(1, 100) == 42:
                ctx = cloaca.Context({"triggered_at": "now"})
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
    """)
    definition = _trigger("my_trigger")
    assert (definition.workflow, definition.poll_interval_ms, definition.allow_concurrent) == (
        "my_workflow",
        5000,
        False,
    )
    random.seed(7)
    results = [ns["my_trigger"]() for _ in range(1000)]  # the decorated function stays callable
    fires = [r for r in results if r.is_fire_result()]
    assert fires and len(fires) < len(results)
    assert all(r.context.to_dict() == {"triggered_at": "now"} for r in fires)
    assert all(r.context is None for r in results if r.is_skip_result())


def test_seed000_trigger_result_methods_and_repr() -> None:
    # Seed 000, TriggerResult.skip / fire / is_fire_result / is_skip_result / __repr__ (from the Rust source shown).
    skip, bare, full = (
        cloaca.TriggerResult.skip(),
        cloaca.TriggerResult.fire(),
        cloaca.TriggerResult.fire(cloaca.Context({"k": 1})),
    )
    assert (skip.is_fire_result(), skip.is_skip_result()) == (False, True)
    assert (bare.is_fire_result(), bare.is_skip_result()) == (True, False)
    assert (full.is_fire_result(), full.is_skip_result()) == (True, False)
    assert [repr(skip), repr(bare), repr(full)] == [
        "TriggerResult.Skip",
        "TriggerResult.Fire(None)",
        "TriggerResult.Fire(<context>)",
    ]
    with pytest.raises(ValueError, match="poll_interval"):
        cloaca.trigger(workflow="w", poll_interval="soon")  # "Invalid poll_interval" at decoration


# -- seed 001: the @trigger decorator page -------------------------------------------------------------------------
def test_seed001_basic_usage_defines() -> None:
    run_snippet("""
        import cloacina as cloaca
        @cloaca.trigger(
            workflow="my_workflow",
            poll_interval="5s"
        )
        def my_trigger():
            \"\"\"Example trigger that checks a condition.\"\"\"
            if some_condition_is_met():
                return cloaca.TriggerResult.fire()
            return cloaca.TriggerResult.skip()
    """)
    assert _trigger("my_trigger").allow_concurrent is False  # documented default


@pytest.mark.parametrize("seed", ["001", "002"])
def test_trigger_result_samples(seed: str) -> None:
    # Seed 001 "TriggerResult" section and seed 002 "The TriggerResult class": the same three samples.
    ns = run_snippet("""
        import cloacina as cloaca
        # Skip - don't fire, continue polling
        result = cloaca.TriggerResult.skip()
        assert result.is_skip_result() == True
        # Fire without context
        result = cloaca.TriggerResult.fire()
        assert result.is_fire_result() == True
        # Fire with context
        ctx = cloaca.Context({"key": "value"})
        result = cloaca.TriggerResult.fire(ctx)
    """)
    assert ns["result"].is_fire_result() and ns["result"].context.get("key") == "value"


SEED001_FILE_WATCHER = """
    import cloacina as cloaca
    @cloaca.trigger(
        workflow="file_processor",
        name="file_watcher",
        poll_interval="10s",
        allow_concurrent=False
    )
    def file_watcher():
        \"\"\"Monitor for new files and trigger processing.\"\"\"
        new_file = check_for_new_files("/data/inbox/")
        if new_file:
            ctx = cloaca.Context({
                "filename": new_file,
                "detected_at": datetime.now().isoformat()
            })
            return cloaca.TriggerResult.fire(ctx)
        return cloaca.TriggerResult.skip()
"""


def test_seed001_pattern_samples_define() -> None:
    # Seed 001: context passing, deduplication, concurrency, health check, threshold, best practices,
    # error handling. Each calls a function of the reader's, so each is only decorated.
    run_snippet(SEED001_FILE_WATCHER)
    run_snippet("""
        import cloacina as cloaca
        @cloaca.trigger(
            workflow="order_processor",
            allow_concurrent=False # Default - prevents duplicate processing
        )
        def order_trigger():
            \"\"\"Only process each order once.\"\"\"
            order = get_pending_order()
            if order:
                ctx = cloaca.Context({"order_id": order.id})
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
        @cloaca.trigger(
            workflow="queue_worker",
            poll_interval="1s",
            allow_concurrent=True # Allow parallel queue processing
        )
        def queue_trigger():
            \"\"\"Process queue items in parallel.\"\"\"
            item = peek_queue_item()
            if item:
                ctx = cloaca.Context({"item_id": item.id})
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
        failure_count = 0
        @cloaca.trigger(
            workflow="service_recovery",
            poll_interval="30s"
        )
        def health_check():
            \"\"\"Monitor service health and trigger recovery.\"\"\"
            global failure_count
            if check_service_healthy():
                failure_count = 0
                return cloaca.TriggerResult.skip()
            failure_count += 1
            if failure_count >= 3:
                failure_count = 0
                ctx = cloaca.Context({
                    "service": "api",
                    "consecutive_failures": 3
                })
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
        @cloaca.trigger(
            workflow="scale_up",
            poll_interval="10s",
            allow_concurrent=True
        )
        def queue_depth_trigger():
            \"\"\"Scale workers when queue gets deep.\"\"\"
            depth = get_queue_depth()
            if depth > 100:
                ctx = cloaca.Context({
                    "queue_depth": depth,
                    "action": "scale_up"
                })
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
        # Good: Quick check
        @cloaca.trigger(workflow="processor", poll_interval="5s")
        def good_trigger():
            if file_exists("/inbox/trigger.flag"):
                return cloaca.TriggerResult.fire()
            return cloaca.TriggerResult.skip()
        # Bad: Heavy processing in poll
        @cloaca.trigger(workflow="processor", poll_interval="5s")
        def bad_trigger():
            data = download_large_file() # Don't do this!
            process_data(data)
            return cloaca.TriggerResult.fire()
        @cloaca.trigger(workflow="data_sync", poll_interval="1m")
        def resilient_trigger():
            \"\"\"Trigger with error handling.\"\"\"
            try:
                if check_for_updates():
                    return cloaca.TriggerResult.fire()
            except Exception as e:
                logging.warning(f"Trigger check failed: {e}")
            return cloaca.TriggerResult.skip()
    """)
    expected = {
        "file_watcher": ("file_processor", 10_000, False),
        "order_trigger": ("order_processor", 5_000, False),
        "queue_trigger": ("queue_worker", 1_000, True),
        "health_check": ("service_recovery", 30_000, False),
        "queue_depth_trigger": ("scale_up", 10_000, True),
        "good_trigger": ("processor", 5_000, False),
        "bad_trigger": ("processor", 5_000, False),
        "resilient_trigger": ("data_sync", 60_000, False),
    }
    for name, (workflow, interval_ms, concurrent) in expected.items():
        definition = _trigger(name)
        assert (definition.workflow, definition.poll_interval_ms, definition.allow_concurrent) == (
            workflow,
            interval_ms,
            concurrent,
        ), name


RUNNER_MANAGEMENT = """
    import cloacina as cloaca
    runner = cloaca.DefaultRunner("sqlite://{db}")
    # List all triggers
    schedules = runner.list_trigger_schedules()
    for schedule in schedules:
        print(f"{{schedule['trigger_name']}}: {{schedule['enabled']}}")
    # Enable/disable triggers
    runner.set_trigger_enabled("file_watcher", False)
    # View execution history
    history = runner.get_trigger_execution_history("file_watcher")
    for execution in history:
        print(f"Started: {{execution['started_at']}}")
"""


@pytest.mark.timeout(60)
def test_seed001_runner_management_sample(tmp_path, monkeypatch, capsys) -> None:
    # Seed 001, "Query and control triggers programmatically", after the sample declaring "file_watcher".
    # The sample never shuts its runner down, so the test does.
    monkeypatch.chdir(tmp_path)
    ns = run_snippet(SEED001_FILE_WATCHER)
    try:
        run_snippet(RUNNER_MANAGEMENT.format(db="workflows.db"), ns)
        assert capsys.readouterr().out.splitlines() == ["file_watcher: True"]
        assert ns["runner"].get_trigger_schedule("file_watcher")["enabled"] is False
    finally:
        if "runner" in ns:
            ns["runner"].shutdown()
    assert (tmp_path / "workflows.db").is_file()  # "sqlite://workflows.db" is relative to the working directory


# -- seed 002: tutorial 09, the Python part ------------------------------------------------------------------------
SEED002_DATA_PROCESSOR = """
    import cloacina as cloaca
    import random
    # Create a workflow for the trigger to activate
    with cloaca.WorkflowBuilder("data_processor") as builder:
        builder.description("Process incoming data")
        @cloaca.task(id="process_data")
        def process_data(context):
            filename = context.get("filename", "unknown")
            print(f"Processing: {filename}")
            context.set("processed", True)
            return context
    # Define a trigger using the @trigger decorator
    @cloaca.trigger(
        workflow="data_processor",
        name="file_watcher",
        poll_interval="5s",
        allow_concurrent=False
    )
    def file_watcher():
        # Check for new files (simulated)
        if random.randint(1, 10) == 5:
            ctx = cloaca.Context({"filename": "data_123.csv"})
            return cloaca.TriggerResult.fire(ctx)
        return cloaca.TriggerResult.skip()
"""


def test_seed002_data_processor_sample(capsys) -> None:
    ns = run_snippet(SEED002_DATA_PROCESSOR)
    assert _trigger("file_watcher").workflow == "data_processor"
    random.seed(3)
    fired = next(r for r in (ns["file_watcher"]() for _ in range(500)) if r.is_fire_result())
    with cloaca.DefaultRunner(":memory:", NO_SCHEDULERS) as runner:
        result = runner.execute("data_processor", fired.context)
    assert result.status == "Completed"
    assert result.final_context.to_dict() == {"filename": "data_123.csv", "processed": True}
    assert "Processing: data_123.csv" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_seed002_runner_management_sample(tmp_path, monkeypatch, capsys) -> None:
    # Seed 002, "You can also manage triggers programmatically" ("sqlite://triggers.db"), after the sample above.
    monkeypatch.chdir(tmp_path)
    ns = run_snippet(SEED002_DATA_PROCESSOR)
    try:
        run_snippet(RUNNER_MANAGEMENT.format(db="triggers.db"), ns)
        # The runner's own polls may fire data_processor meanwhile, printing from a worker thread.
        out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("Processing: ")]
        assert out[0] == "file_watcher: True"
        assert all(line.startswith("Started: ") for line in out[1:])
        schedule = ns["runner"].get_trigger_schedule("file_watcher")
        assert (schedule["workflow_name"], schedule["poll_interval_ms"], schedule["enabled"]) == (
            "data_processor",
            5000,
            False,
        )
    finally:
        if "runner" in ns:
            ns["runner"].shutdown()
    assert (tmp_path / "triggers.db").is_file()
