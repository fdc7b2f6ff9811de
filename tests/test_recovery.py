"""Embedded recovery: a runner process killed mid-task leaves its run behind; the next runner on the same
database adopts it, runs the lost task again and finishes the run. Completed tasks never run twice."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cloacina as cloaca
from cloacina.store.database import Database
from cloacina.store.runs import RunStore
from tests.conftest import Backend
from tests.support import wait_until

APP = Path(__file__).parent / "apps" / "recovery_app.py"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_runner_is_recovered_by_the_next_one(
    durable_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if durable_backend.schema is not None:
        url = f"{durable_backend.url}?options=-csearch_path%3D{durable_backend.schema}"
        cloaca.DefaultRunner.with_schema(durable_backend.url, durable_backend.schema).shutdown()
    else:
        url = durable_backend.url
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("RECOVERY_MARKERS", str(markers))
    proc = subprocess.Popen(
        [sys.executable, str(APP), url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RECOVERY_MARKERS": str(markers)},
    )
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert wait_until(lambda: (markers / "slow").exists(), 30, message="the first attempt to start")
        # On PostgreSQL an attempt records its start after a moment (its finish would, were it short): kill the
        # runner once the attempt is Running in SQL, so the loss is counted (tests/test_deferred_start.py kills
        # one before that).
        db = Database(durable_backend.url, schema=durable_backend.schema)
        try:
            wait_until(lambda: str(RunStore(db).get_tasks(run_id)["slow"].status) == "Running", 30, message="Running")
        finally:
            db.dispose()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    runpy.run_path(str(APP), run_name="recovery_app")  # the same workflow definitions in this process
    config = cloaca.DefaultRunnerConfig(recovery_stale_after_seconds=2, enable_trigger_scheduling=False)
    with cloaca.DefaultRunner(url, config) as runner:
        result = runner.wait_for_run(run_id, timeout=60)
        attempts = runner.runs.get_attempts(run_id, "slow")
    assert result.status == "Completed", result.error_message
    assert result.final_context.to_dict()["after"] == "done"
    assert [a.status for a in attempts] == ["Lost", "Completed"]
    assert len((markers / "slow").read_text().split()) == 2  # the killed attempt and its re-run
    assert len((markers / "after").read_text().split()) == 1  # never ran twice
