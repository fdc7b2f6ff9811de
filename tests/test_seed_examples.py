"""The tutorial-07 example (seed 003) and its other Python samples, run with ``import cloacina as cloaca``.

``examples/event_triggers_demo.py`` is the tutorial's full example (only the import changed, then formatted by
ruff); it runs as a subprocess and its stdout must match the tutorial's expected output. The seed text lost its
leading whitespace and blank lines when it was extracted from the web page, so lines are compared stripped and
blank lines are ignored; the ``data_HHMMSS.csv`` name depends on the clock and is matched with a regex.

Samples of seeds 000-002 are in ``test_seed_snippets.py``. Samples that call functions the reader is meant to
write (``some_condition()``, ``get_queue_depth()``, ...) are only defined here, never called.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cloacina as cloaca
from cloacina.definitions import registry

DEMO = Path(__file__).resolve().parents[1] / "examples" / "event_triggers_demo.py"
NO_SCHEDULERS = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)

# Seed 003 (tutorial 07), "Expected output" of the complete example, as printed in the seed.
EXPECTED_DEMO_OUTPUT = """\
Event Triggers and Task Callbacks Demo
==================================================
Manual execution with callbacks:
----------------------------------------
Validating file: report_2024.csv
[SUCCESS] Task 'validate_file' completed
Processing file: report_2024.csv
[SUCCESS] Task 'process_file' completed
----------------------------------------
Workflow status: Completed
Simulating trigger polls:
----------------------------------------
Poll 1: SKIP - waiting...
Poll 2: SKIP - waiting...
Poll 3: SKIP - waiting...
Poll 4: SKIP - waiting...
[TRIGGER] Found new file: data_143052.csv
Poll 5: FIRE - workflow will execute
Poll 6: SKIP - waiting...
Poll 7: SKIP - waiting...
Demo complete!
"""
DATA_FILE_LINE = re.compile(r"\[TRIGGER\] Found new file: data_\d{6}\.csv")


def run_snippet(source: str, namespace: dict | None = None, *, name: str = "<seed snippet>") -> dict:
    """Execute a documentation sample in ``namespace`` (a fresh module namespace by default)."""
    ns = namespace if namespace is not None else {"__name__": "seed_snippet"}
    exec(compile(textwrap.dedent(source), name, "exec"), ns)
    return ns


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(90)
def test_event_triggers_demo_prints_the_documented_output(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(DEMO)], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    actual, expected = _lines(proc.stdout), _lines(EXPECTED_DEMO_OUTPUT)
    assert len(actual) == len(expected), proc.stdout
    for got, want in zip(actual, expected, strict=True):
        if DATA_FILE_LINE.fullmatch(want):
            assert DATA_FILE_LINE.fullmatch(got), (got, proc.stdout)
        else:
            assert got == want, proc.stdout
    assert list(tmp_path.iterdir()) == []  # ":memory:" leaves no database file behind


# -- seed 003, tutorial 07: the other samples -------------------------------------------------------------------
def test_seed003_basic_trigger_sample_defines() -> None:
    # Seed 003, "Define custom triggers": some_condition() is the reader's function, so it is not called.
    ns = run_snippet("""
        import cloacina as cloaca
        @cloaca.trigger(
            workflow="my_workflow", # Workflow to trigger
            name="my_trigger", # Optional: defaults to function name
            poll_interval="5s", # How often to poll
            allow_concurrent=False # Prevent duplicate executions
        )
        def my_trigger():
            \"\"\"Poll for a condition and fire when met.\"\"\"
            if some_condition():
                ctx = cloaca.Context({"key": "value"})
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
    """)
    definition = registry.get_trigger("my_trigger")
    assert definition is not None and definition.function is ns["my_trigger"]
    assert (definition.workflow, definition.poll_interval_ms, definition.allow_concurrent) == (
        "my_workflow",
        5000,
        False,
    )


SEED003_FILE_WATCHER = """
    import cloacina as cloaca
    import os
    from datetime import datetime
    # Track processed files to avoid duplicates
    processed_files = set()
    @cloaca.trigger(
        workflow="file_processor",
        name="file_watcher",
        poll_interval="2s",
        allow_concurrent=False
    )
    def file_watcher():
        \"\"\"Watch for new files in inbox directory.\"\"\"
        inbox_dir = "/path/to/inbox"
        for filename in os.listdir(inbox_dir):
            filepath = os.path.join(inbox_dir, filename)
            # Skip already processed files
            if filepath in processed_files:
                continue
            # Skip non-files
            if not os.path.isfile(filepath):
                continue
            # Found a new file - fire the workflow
            processed_files.add(filepath)
            ctx = cloaca.Context({
                "filepath": filepath,
                "filename": filename,
                "detected_at": datetime.now().isoformat()
            })
            return cloaca.TriggerResult.fire(ctx)
        # No new files found
        return cloaca.TriggerResult.skip()
    # Define the workflow to process files
    with cloaca.WorkflowBuilder("file_processor") as builder:
        builder.description("Process incoming files")
        @cloaca.task(id="process_file")
        def process_file(context):
            filepath = context.get("filepath")
            filename = context.get("filename")
            print(f"Processing file: {filename}")
            # Process the file...
            context.set("processed", True)
            return context
"""


def test_seed003_file_watcher_sample(capsys) -> None:
    # Seed 003, "watching for new files": the trigger reads /path/to/inbox, so only its workflow is run.
    run_snippet(SEED003_FILE_WATCHER)
    assert registry.get_trigger("file_watcher").poll_interval_ms == 2000  # type: ignore[union-attr]
    with cloaca.DefaultRunner(":memory:", NO_SCHEDULERS) as runner:
        result = runner.execute("file_processor", cloaca.Context({"filepath": "/in/a.csv", "filename": "a.csv"}))
    assert result.status == "Completed" and result.final_context.get("processed") is True
    assert "Processing file: a.csv" in capsys.readouterr().out


def test_seed003_queue_depth_sample() -> None:
    # Seed 003, "monitoring queue depths": get_queue_depth() is the reader's function; the workflow runs.
    run_snippet("""
        import cloacina as cloaca
        import random # Simulating queue depth check
        @cloaca.trigger(
            workflow="queue_handler",
            poll_interval="5s",
            allow_concurrent=True # Allow parallel processing
        )
        def queue_depth_trigger():
            \"\"\"Fire when queue depth exceeds threshold.\"\"\"
            # In real code, check actual queue (Redis, RabbitMQ, etc.)
            queue_depth = get_queue_depth() # Your queue check function
            threshold = 100
            if queue_depth > threshold:
                ctx = cloaca.Context({
                    "queue_depth": queue_depth,
                    "threshold": threshold
                })
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
        # Workflow for queue processing
        with cloaca.WorkflowBuilder("queue_handler") as builder:
            builder.description("Handle queue overflow")
            @cloaca.task(id="drain_queue")
            def drain_queue(context):
                depth = context.get("queue_depth", 0)
                print(f"Draining {depth} messages from queue")
                # Process queue messages...
                context.set("messages_processed", depth)
                return context
    """)
    assert registry.get_trigger("queue_depth_trigger").allow_concurrent is True  # type: ignore[union-attr]
    with cloaca.DefaultRunner(":memory:", NO_SCHEDULERS) as runner:
        result = runner.execute("queue_handler", {"queue_depth": 120})
    assert result.final_context.get("messages_processed") == 120


def test_seed003_order_trigger_sample_defines() -> None:
    # Seed 003, "deduplication": get_next_pending_order() is the reader's function.
    run_snippet("""
        import cloacina as cloaca
        @cloaca.trigger(
            workflow="order_processor",
            poll_interval="1s",
            allow_concurrent=False # Deduplicate by context
        )
        def order_trigger():
            order = get_next_pending_order()
            if order:
                # Context includes order_id, so same order won't be processed twice
                ctx = cloaca.Context({"order_id": order.id})
                return cloaca.TriggerResult.fire(ctx)
            return cloaca.TriggerResult.skip()
    """)
    definition = registry.get_trigger("order_trigger")
    assert definition is not None and (definition.poll_interval_ms, definition.allow_concurrent) == (1000, False)


def test_seed003_callback_samples(capsys, caplog, monkeypatch, tmp_path: Path) -> None:
    # Seed 003, "Task callbacks": the signatures, the print callbacks, the isolated buggy callback,
    # and the Slack / metrics / cleanup callbacks (without SLACK_WEBHOOK nothing is posted).
    import requests  # noqa: F401  (a dev dependency: the sample below posts to Slack with it)

    monkeypatch.delenv("SLACK_WEBHOOK", raising=False)
    ns = run_snippet("""
        import cloacina as cloaca
        def on_success_callback(task_id: str, context: cloaca.Context) -> None:
            \"\"\"Called when task completes successfully.\"\"\"
            pass
        def on_failure_callback(task_id: str, error: str, context: cloaca.Context) -> None:
            \"\"\"Called when task fails.\"\"\"
            pass
    """)
    run_snippet(
        """
        import cloacina as cloaca
        def log_success(task_id, context):
            \"\"\"Log successful task completion.\"\"\"
            print(f"Task '{task_id}' completed successfully")
        def alert_failure(task_id, error, context):
            \"\"\"Alert on task failure.\"\"\"
            print(f"ALERT: Task '{task_id}' failed: {error}")
            # Send to Slack, PagerDuty, etc.
        with cloaca.WorkflowBuilder("monitored_workflow") as builder:
            builder.description("Workflow with monitoring callbacks")
            @cloaca.task(
                id="critical_task",
                on_success=log_success,
                on_failure=alert_failure
            )
            def critical_task(context):
                # Task implementation
                result = perform_critical_operation()
                context.set("result", result)
                return context
        def buggy_callback(task_id, context):
            raise Exception("Callback error!") # Won't fail the task
        @cloaca.task(id="resilient_task", on_success=buggy_callback)
        def resilient_task(context):
            \"\"\"Task completes even if callback fails.\"\"\"
            context.set("result", "success")
            return context
        import requests
        import os
        def slack_alert(task_id, error, context):
            \"\"\"Send failure alerts to Slack.\"\"\"
            webhook_url = os.environ.get("SLACK_WEBHOOK")
            if webhook_url:
                requests.post(webhook_url, json={
                    "text": f"Task {task_id} failed: {error}"
                })
        def record_metrics(task_id, context):
            \"\"\"Record task metrics.\"\"\"
            duration = context.get("duration_ms", 0)
            # statsd.timing(f"task.{task_id}.duration", duration)
            print(f"Task {task_id} completed in {duration}ms")
        import shutil
        import os
        def cleanup_temp_files(task_id, error, context):
            \"\"\"Clean up temporary files on failure.\"\"\"
            temp_dir = context.get("temp_dir")
            if temp_dir and os.path.exists(temp_dir):
                shutil.rmtree(temp_dir)
                print(f"Cleaned up temp directory: {temp_dir}")
        """,
        ns,
    )
    ctx = cloaca.Context({"duration_ms": 12, "temp_dir": str(tmp_path / "scratch")})
    (tmp_path / "scratch").mkdir()
    ns["on_success_callback"]("t", ctx)
    ns["on_failure_callback"]("t", "boom", ctx)
    ns["log_success"]("t", ctx)
    ns["alert_failure"]("t", "boom", ctx)
    ns["slack_alert"]("t", "boom", ctx)
    ns["record_metrics"]("t", ctx)
    ns["cleanup_temp_files"]("t", "boom", ctx)
    assert not (tmp_path / "scratch").exists()
    out = _lines(capsys.readouterr().out)
    assert out == [
        "Task 't' completed successfully",
        "ALERT: Task 't' failed: boom",
        "Task t completed in 12ms",
        f"Cleaned up temp directory: {tmp_path / 'scratch'}",
    ]
    # "The task will complete successfully, and the callback error will be logged."
    builder = cloaca.WorkflowBuilder("resilient")
    builder.add_task("resilient_task")
    workflow = builder.build()
    with caplog.at_level(logging.WARNING, logger="cloacina"), cloaca.DefaultRunner(":memory:", NO_SCHEDULERS) as r:
        result = r.execute(workflow)
    assert result.status == "Completed" and result.final_context.get("result") == "success"
    assert any("Callback error!" in rec.getMessage() for rec in caplog.records)


@pytest.mark.timeout(60)
def test_seed003_runner_management_sample(capsys) -> None:
    # Seed 003, "Manage triggers through the runner API", run after the file watcher sample that declares
    # "file_watcher" (its polls fail: /path/to/inbox does not exist; failures are logged and polling goes on).
    ns = run_snippet(SEED003_FILE_WATCHER)
    run_snippet(
        """
        import cloacina as cloaca
        runner = cloaca.DefaultRunner(":memory:")
        # List all trigger schedules
        schedules = runner.list_trigger_schedules()
        for schedule in schedules:
            print(f"Trigger: {schedule['trigger_name']} -> {schedule['workflow_name']}")
        # Get specific trigger details
        schedule = runner.get_trigger_schedule("file_watcher")
        print(f"Poll interval: {schedule['poll_interval_ms']}ms")
        print(f"Enabled: {schedule['enabled']}")
        # Enable/disable a trigger
        runner.set_trigger_enabled("file_watcher", False) # Disable
        runner.set_trigger_enabled("file_watcher", True) # Re-enable
        # Get execution history
        history = runner.get_trigger_execution_history("file_watcher", limit=10)
        for execution in history:
            print(f"Executed at: {execution['started_at']}")
        runner.shutdown()
        """,
        ns,
    )
    out = _lines(capsys.readouterr().out)
    assert out == ["Trigger: file_watcher -> file_processor", "Poll interval: 2000ms", "Enabled: True"]
    with pytest.raises(RuntimeError):
        ns["runner"].execute("file_processor")  # the sample shut it down
