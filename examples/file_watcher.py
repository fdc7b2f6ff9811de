"""File-watcher trigger (seed 003's pattern) on the embedded default: each new file in an inbox runs a workflow.

Run the demo (creates ./demo-inbox, drops a few files into it, processes them, prints the history)::

    python examples/file_watcher.py

Or serve it like any app, watching a directory of your own::

    INBOX_PATH=/path/to/inbox cloacina run examples/file_watcher.py

The trigger fires one context per file, ``{"filepath", "filename", "size"}``. Because ``allow_concurrent`` is
False, a file whose run is still going is never processed twice at the same time, even though the trigger keeps
seeing it until the workflow moves it to ``done/``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import cloacina as cloaca

INBOX = Path(os.environ.get("INBOX_PATH", "demo-inbox")).resolve()
DONE = INBOX / "done"


def on_task_success(task_id: str, context: cloaca.Context) -> None:
    print(f"    [SUCCESS] {task_id} ({context.get('filename')})")


def on_task_failure(task_id: str, error: str, context: cloaca.Context) -> None:
    print(f"    [FAILURE] {task_id} ({context.get('filename')}): {error}")


with cloaca.WorkflowBuilder("file_processor") as builder:
    builder.description("Validate, process and archive a file found in the inbox")

    @cloaca.task(id="validate_file", on_success=on_task_success, on_failure=on_task_failure)
    def validate_file(context: cloaca.Context) -> cloaca.Context:
        path = Path(context.get("filepath"))
        context.set("lines", len(path.read_text().splitlines()))
        context.set("validated", True)
        return context

    @cloaca.task(
        id="process_file",
        dependencies=["validate_file"],
        on_success=on_task_success,
        on_failure=on_task_failure,
    )
    def process_file(context: cloaca.Context) -> cloaca.Context:
        time.sleep(0.3)  # pretend to work
        DONE.mkdir(parents=True, exist_ok=True)
        shutil.move(context.get("filepath"), DONE / context.get("filename"))
        context.set("processed_at", datetime.now().isoformat())
        return context


@cloaca.trigger(workflow="file_processor", name="file_watcher", poll_interval="200ms", allow_concurrent=False)
def file_watcher() -> cloaca.TriggerResult:
    """Fire for the oldest file waiting in the inbox."""
    if not INBOX.is_dir():
        return cloaca.TriggerResult.skip()
    files = sorted((p for p in INBOX.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not files:
        return cloaca.TriggerResult.skip()
    path = files[0]
    return cloaca.TriggerResult.fire(
        cloaca.Context({"filepath": str(path), "filename": path.name, "size": path.stat().st_size})
    )


def _drop_files(count: int, every_s: float) -> None:
    for i in range(count):
        name = f"data_{i + 1:02d}.csv"
        (INBOX / name).write_text("id,value\n" + "".join(f"{n},{n * i}\n" for n in range(10)))
        print(f"  [INBOX] dropped {name}")
        time.sleep(every_s)


def main(files: int = 3) -> int:
    INBOX.mkdir(parents=True, exist_ok=True)
    db_url = os.environ.get("CLOACINA_DATABASE_URL", "sqlite://cloacina-demo.db")
    print(f"File watcher demo: inbox {INBOX}, database {db_url}")
    with cloaca.DefaultRunner(db_url) as runner:
        dropper = threading.Thread(target=_drop_files, args=(files, 0.5))
        dropper.start()
        dropper.join()
        deadline = time.monotonic() + 30
        while any(p.is_file() for p in INBOX.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        history = runner.get_trigger_execution_history("file_watcher", limit=files)
        schedule = runner.get_trigger_schedule("file_watcher")
    print("\nRecent runs fired by file_watcher:")
    for run in reversed(history):
        print(f"  {run['started_at']}  {run['status']:<9}  hash {run['context_hash'][:12]}  run {run['run_id']}")
    print(
        f"\npolls: {schedule['poll_count']}, fires: {schedule['fire_count']}, "
        f"duplicate fires skipped while a run was active: {schedule['dedup_skip_count']}"
    )
    leftover = [p.name for p in INBOX.iterdir() if p.is_file()]
    ok = not leftover and len(history) == files and all(h["status"] == "Completed" for h in history)
    print("Demo complete!" if ok else f"Demo FAILED: left in inbox {leftover}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
