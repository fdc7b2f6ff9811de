"""The app the docker-compose stack and the Helm chart run by default: an inbox of files, one run per file.

The poller replicas poll the trigger ``inbox_items`` every second; each run of ``inbox_pipeline`` goes through
the Celery workers: ``fetch`` -> ``transform`` -> ``store``. The inbox (``$INBOX_PATH``, default ``/tmp/inbox``)
must be shared by the pollers and the workers; in docker-compose it is the named volume ``inbox``::

    docker compose exec poller sh -c 'echo "hello world" > /data/inbox/greeting.txt'
    docker compose exec poller ls /data/inbox/done          # greeting.txt.json once the run completed

Run it without containers on the embedded runner (SQLite, a thread pool)::

    INBOX_PATH=/tmp/inbox cloacina run examples/deploy/example_app.py

How a file moves: the trigger fires ``{"filename", "path"}`` for the oldest file in the inbox (names starting with
``.`` are ignored, so write ``.name.tmp`` and rename it when complete). Because ``allow_concurrent`` is False, the
polls that still see the file before a worker picks the run up are deduplicated on that context's hash instead of
starting more runs. ``fetch`` moves the file to ``processing/`` (which stops the trigger seeing it), ``store``
writes ``done/<name>.json`` and deletes the claimed file. A run that fails leaves its file in ``processing/`` to be
looked at. Tasks are at-least-once, so each step tolerates being run again after a worker died mid-task.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import cloacina as cloaca

MAX_BYTES = 1_000_000  # the file's text travels in the run's context (JSON in the Celery messages): keep it small


def inbox_dir() -> Path:
    """The watched directory, read from ``$INBOX_PATH`` on every call (default ``/tmp/inbox``)."""
    return Path(os.environ.get("INBOX_PATH", "/tmp/inbox"))


def _checked_name(context: cloaca.Context) -> str:
    name = context.get("filename")
    if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
        raise cloaca.PermanentError(f"expected a plain file name in the inbox, got {name!r}")
    return name


with cloaca.WorkflowBuilder("inbox_pipeline") as builder:
    builder.description("Claim a file from the inbox, summarise it and store the summary in done/")
    builder.tag("example", "deploy")

    @cloaca.task(id="fetch", retry_attempts=3, retry_condition="transient")
    def fetch(context: cloaca.Context) -> cloaca.Context:
        """Claim the file (move it to processing/) and put its text in the context."""
        name = _checked_name(context)
        inbox = inbox_dir()
        claimed = inbox / "processing" / name
        source = inbox / name
        if source.is_file():
            claimed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, claimed)  # atomic on one file system: the trigger stops seeing the file
        elif not claimed.is_file():  # neither waiting nor claimed: nothing to process (and retrying cannot help)
            raise cloaca.PermanentError(f"{name} is neither in {inbox} nor in {claimed.parent}")
        data = claimed.read_bytes()
        context.set("text", data[:MAX_BYTES].decode("utf-8", errors="replace"))
        context.set("truncated", len(data) > MAX_BYTES)
        context.set("sha256", hashlib.sha256(data).hexdigest())
        return context

    @cloaca.task(id="transform", dependencies=["fetch"])
    def transform(context: cloaca.Context) -> cloaca.Context:
        """Count lines and words; the text itself is dropped so it does not travel any further."""
        text = context.get("text") or ""
        context.set("lines", len(text.splitlines()))
        context.set("words", len(text.split()))
        context.set("text", None)
        return context

    @cloaca.task(id="store", dependencies=["transform"], retry_attempts=3, retry_condition="transient")
    def store(context: cloaca.Context) -> cloaca.Context:
        """Write ``done/<name>.json`` (atomically) and delete the claimed file."""
        name = _checked_name(context)
        inbox = inbox_dir()
        summary = {
            "filename": name,
            "sha256": context.get("sha256"),
            "lines": context.get("lines"),
            "words": context.get("words"),
            "truncated": context.get("truncated"),
            "stored_at": datetime.now(UTC).isoformat(),
        }
        done = inbox / "done"
        done.mkdir(parents=True, exist_ok=True)
        partial = done / f".{name}.json.tmp"
        partial.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(partial, done / f"{name}.json")
        (inbox / "processing" / name).unlink(missing_ok=True)  # already gone if this task runs a second time
        context.set("stored", str(done / f"{name}.json"))
        return context


@cloaca.trigger(workflow="inbox_pipeline", name="inbox_items", poll_interval="1s", allow_concurrent=False)
def inbox_items() -> cloaca.TriggerResult:
    """Fire for the oldest complete file waiting in the inbox (one per poll)."""
    inbox = inbox_dir()
    if not inbox.is_dir():
        return cloaca.TriggerResult.skip()
    waiting = []
    for path in inbox.iterdir():
        if path.name.startswith("."):
            continue
        try:  # a worker may claim the file between listing and stat
            if path.is_file():
                waiting.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:
            continue
    if not waiting:
        return cloaca.TriggerResult.skip()
    oldest = min(waiting)[2]
    # Only stable facts go into the context: its hash is the dedup key while a run for this file is active.
    return cloaca.TriggerResult.fire(cloaca.Context({"filename": oldest.name, "path": str(oldest)}))
