"""The ``cloacina`` command line and the app loader.

- ``load_app``: module names, files and packages, and the error for each way an app can be broken.
- Database commands (``db``, ``triggers``, ``runs``, ``cron``) through click's CliRunner on a SQLite file that a
  real runner filled first.
- ``cloacina run`` as a real subprocess on ``tests/apps/ticker.py``: live events, summary, exit status, what it
  leaves in the database, and graceful stop on SIGINT/SIGTERM.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import cloacina as cloaca
from cloacina.cli.live_table import Event, LiveView, LogView, Totals
from cloacina.cli.main import main
from cloacina.context import context_hash
from cloacina.definitions import registry
from cloacina.definitions.app_loader import AppLoadError, load_app
from cloacina.store.runs import TriggerClaim
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
TICKER_APP = "tests/apps/ticker.py"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``cloacina -v`` configures the root logger; undo it after each test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(main, list(args), catch_exceptions=False)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# -- load_app --------------------------------------------------------------------------------------------
@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; modules imported from it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


APP_SOURCE = """
import cloacina as cloaca
with cloaca.WorkflowBuilder({wf!r}):
    @cloaca.task(id="only")
    def only(ctx):
        return ctx
"""


def test_load_app_by_module_name_from_the_current_directory(app_dir: Path) -> None:
    name, wf = unique("mod"), unique("wf")
    (app_dir / f"{name}.py").write_text(APP_SOURCE.format(wf=wf))
    module = load_app(name)
    assert module.__name__ == name
    assert wf in registry.workflow_names()
    assert load_app(name) is module  # imported once


def test_load_app_by_file_path_relative_and_absolute(app_dir: Path) -> None:
    sub = app_dir / "flows"
    sub.mkdir()
    name, wf = unique("file"), unique("wf")
    (sub / f"{name}.py").write_text(f"from helper_{name} import VALUE\n" + APP_SOURCE.format(wf=wf))
    (sub / f"helper_{name}.py").write_text("VALUE = 1\n")  # a neighbour, importable as with `python file.py`
    module = load_app(f"flows/{name}.py")
    assert wf in registry.workflow_names()
    assert load_app(str(sub / f"{name}.py")) is module


def test_load_app_package_directory_with_relative_imports(app_dir: Path) -> None:
    name, wf = unique("pkg"), unique("wf")
    pkg = app_dir / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .flows import *  # noqa\n")
    (pkg / "flows.py").write_text(APP_SOURCE.format(wf=wf))
    module = load_app(f"./{name}")
    assert module.__name__ == name
    assert wf in registry.workflow_names()


@pytest.mark.parametrize(
    ("files", "spec", "expected"),
    [
        ({}, "missing.py", r"app file 'missing.py' not found \(looked for .*missing\.py\)"),
        ({}, "no_such_module_xyz", r"no module named 'no_such_module_xyz' \(searched the current directory"),
        ({"notes.txt": "hi"}, "notes.txt", r"is not a Python file"),
        ({"plain/readme.txt": ""}, "plain/", r"is not a Python package \(it has no __init__.py\)"),
        ({"bad-name.py": ""}, "bad-name.py", r"'bad-name' is not a valid Python module name"),
        ({"json.py": ""}, "json.py", r"a module of that name is already loaded"),
        (
            {"boom_app.py": "x = 1\nraise RuntimeError('no config file')\n"},
            "boom_app.py",
            r"importing app 'boom_app.py' failed: RuntimeError: no config file \(at .*boom_app\.py:2\)",
        ),
        (
            {"needs_dep.py": "import not_installed_dep_xyz\n"},
            "needs_dep",
            r"failed: ModuleNotFoundError: No module named 'not_installed_dep_xyz'",
        ),
        ({"syntax_app.py": "def broken(:\n"}, "syntax_app.py", r"failed: SyntaxError: .*syntax_app\.py, line 1"),
        ({"exits_app.py": "import sys\nsys.exit(3)\n"}, "exits_app.py", r"called sys\.exit\(3\)"),
    ],
)
def test_load_app_errors_say_what_went_wrong(app_dir: Path, files: dict[str, str], spec: str, expected: str) -> None:
    for rel, text in files.items():
        (app_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / rel).write_text(text)
    with pytest.raises(AppLoadError, match=expected) as info:
        load_app(spec)
    assert isinstance(info.value, ValueError)
    assert info.value.spec == spec
    assert Path(spec).stem not in sys.modules or Path(spec).stem == "json"  # no half-imported module left


# -- database commands -----------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file with two triggers, three completed runs fired by one of them, and one failed run."""
    url = f"sqlite:///{tmp_path}/cli.db"
    for definition in registry.triggers():  # only this fixture's triggers (the registry is restored afterwards)
        registry.unregister_trigger(definition.name)
    with cloaca.WorkflowBuilder("cli_ok"):

        @cloaca.task(id="first")
        def first(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("n", 1)
            return ctx

        @cloaca.task(id="second", dependencies=["first"])
        def second(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("n", ctx.get("n") + 1)
            return ctx

    with cloaca.WorkflowBuilder("cli_bad"):

        @cloaca.task(id="flaky", retry_attempts=2, retry_delay_ms=10, retry_jitter=False, retry_condition="all")
        def flaky(ctx: cloaca.Context) -> cloaca.Context:
            raise RuntimeError("disk [full]")

        @cloaca.task(id="after", dependencies=["flaky"], trigger_rules=cloaca.task_success("flaky"))
        def after(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    @cloaca.trigger(workflow="cli_ok", name="cli_watch", poll_interval="5s")
    def cli_watch() -> bool:
        return False

    @cloaca.trigger(workflow="cli_bad", name="cli_other", poll_interval="1m")
    def cli_other() -> bool:
        return False

    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with cloaca.DefaultRunner(url, config) as runner:  # writes the schedule rows of both triggers
        workflow = registry.get_workflow("cli_ok")
        for i in range(3):
            claim = TriggerClaim("cli_watch", context_hash({"i": i}), dedup=True)
            run_id = runner.coordinator.create_run(workflow, {"i": i}, trigger=claim)
            assert run_id is not None
            assert runner.wait_for_run(run_id, timeout=30).status == "Completed"
        assert runner.execute("cli_bad", timeout=30).status == "Failed"
    return url


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    first = cli("db", "upgrade", "--db", url)
    assert first.exit_code == 0, first.output
    assert re.search(r"Upgraded sqlite:////.*fresh\.db from none to \S+ \(head\)", first.stdout)
    assert "already at" in cli("db", "upgrade", "--db", url).stdout
    current = cli("db", "current", "--db", url, "--check")
    assert current.exit_code == 0 and "(head)" in current.stdout


def test_db_current_does_not_create_a_missing_database(tmp_path: Path) -> None:
    result = cli("db", "current", "--db", f"sqlite:///{tmp_path}/absent.db")
    assert result.exit_code == 1
    assert "does not exist" in result.stderr
    assert not (tmp_path / "absent.db").exists()


def test_database_url_from_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("db", "upgrade", env={"CLOACINA_DATABASE_URL": "sqlite://from_env.db"}).exit_code == 0
    assert (tmp_path / "from_env.db").exists()
    assert cli("db", "upgrade", env={"CLOACINA_DATABASE_URL": ""}).exit_code == 0
    assert (tmp_path / "cloacina.db").exists()  # the documented default, ./cloacina.db


def test_verbose_logs_info_on_stderr(tmp_path: Path) -> None:
    result = cli("-v", "db", "upgrade", "--db", f"sqlite:///{tmp_path}/v.db")
    assert result.exit_code == 0
    assert "INFO" in result.stderr and "migrated" in result.stderr
    assert "INFO" not in result.stdout


def test_triggers_list_table_and_json(db: str) -> None:
    table = cli("triggers", "list", "--db", db)
    assert table.exit_code == 0, table.output
    assert "cli_watch" in table.stdout and "cli_other" in table.stdout and "5s" in table.stdout
    rows = json.loads(cli("triggers", "list", "--db", db, "--json").stdout)
    by_name = {r["trigger_name"]: r for r in rows}
    assert set(by_name) == {"cli_watch", "cli_other"}
    assert by_name["cli_watch"]["workflow_name"] == "cli_ok"
    assert by_name["cli_watch"]["poll_interval_ms"] == 5000
    assert by_name["cli_watch"]["enabled"] is True


def test_triggers_disable_enable_round_trip(db: str) -> None:
    result = cli("triggers", "disable", "cli_other", "--db", db)
    assert result.exit_code == 0 and "disabled" in result.stdout
    assert "already disabled" in cli("triggers", "disable", "cli_other", "--db", db).stdout
    enabled = json.loads(cli("triggers", "list", "--db", db, "--json", "--enabled-only").stdout)
    assert [r["trigger_name"] for r in enabled] == ["cli_watch"]
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with cloaca.DefaultRunner(db, config) as runner:  # the flag is in the database, for every process
        schedule = runner.get_trigger_schedule("cli_other")
        assert schedule is not None and schedule["enabled"] is False
    assert cli("triggers", "enable", "cli_other", "--db", db).exit_code == 0
    assert len(json.loads(cli("triggers", "list", "--db", db, "--json", "--enabled-only").stdout)) == 2


@pytest.mark.parametrize("command", ["enable", "disable", "history"])
def test_unknown_trigger_exits_1_with_message_on_stderr(db: str, command: str) -> None:
    result = cli("triggers", command, "no_such_trigger", "--db", db)
    assert result.exit_code == 1
    assert "unknown trigger 'no_such_trigger'" in result.stderr
    assert "cli_watch" in result.stderr  # the known names are suggested
    assert result.stdout == ""


def test_triggers_history(db: str) -> None:
    history = json.loads(cli("triggers", "history", "cli_watch", "--db", db, "--json").stdout)
    assert len(history) == 3
    assert {h["status"] for h in history} == {"Completed"}
    assert all(datetime.fromisoformat(h["started_at"]) <= datetime.now(UTC) for h in history)
    limited = json.loads(cli("triggers", "history", "cli_watch", "--db", db, "--json", "--limit", "2").stdout)
    assert [h["run_id"] for h in limited] == [h["run_id"] for h in history[:2]]
    table = cli("triggers", "history", "cli_watch", "--db", db)
    assert table.exit_code == 0 and history[0]["run_id"] in table.stdout and "Completed" in table.stdout
    empty = cli("triggers", "history", "cli_other", "--db", db)
    assert empty.exit_code == 0 and "has not started any run" in empty.stdout


def test_runs_list_filters_and_json(db: str) -> None:
    runs = json.loads(cli("runs", "list", "--db", db, "--json").stdout)
    assert sorted(r["status"] for r in runs) == ["Completed"] * 3 + ["Failed"]
    assert all(datetime.fromisoformat(r["created_at"]) for r in runs)
    failed = json.loads(cli("runs", "list", "--db", db, "--json", "--status", "failed").stdout)
    assert [r["workflow_name"] for r in failed] == ["cli_bad"]
    assert "disk [full]" in failed[0]["error_message"]
    by_wf = json.loads(cli("runs", "list", "--db", db, "--json", "--workflow", "cli_ok", "--limit", "2").stdout)
    assert len(by_wf) == 2 and {r["trigger_name"] for r in by_wf} == {"cli_watch"}
    table = cli("runs", "list", "--db", db)
    assert table.exit_code == 0 and "cli_bad" in table.stdout and "Failed" in table.stdout
    assert cli("runs", "list", "--db", db, "--status", "Bogus").exit_code == 2


def test_runs_show_tasks_attempts_and_errors(db: str) -> None:
    failed = json.loads(cli("runs", "list", "--db", db, "--json", "--status", "Failed").stdout)[0]
    shown = json.loads(cli("runs", "show", failed["run_id"], "--db", db, "--json").stdout)
    assert shown["status"] == "Failed" and shown["input_context"] == {}
    tasks = {t["task_id"]: t for t in shown["tasks"]}
    assert tasks["flaky"]["status"] == "Failed"
    assert [a["attempt"] for a in tasks["flaky"]["attempts"]] == [1, 2]
    assert all("disk [full]" in a["error_message"] for a in tasks["flaky"]["attempts"])
    assert tasks["after"]["status"] == "Skipped" and tasks["after"]["attempts"] == []
    table = cli("runs", "show", failed["run_id"], "--db", db)
    assert table.exit_code == 0
    attempt_2 = "#2: Python task execution failed: RuntimeError: disk [full]"
    for text in (failed["run_id"], "flaky", "after", "2/2", attempt_2, "skipped:"):
        assert text in table.stdout, text
    ok = json.loads(cli("runs", "list", "--db", db, "--json", "--workflow", "cli_ok").stdout)[0]
    done = json.loads(cli("runs", "show", ok["run_id"], "--db", db, "--json").stdout)
    assert done["final_context"]["n"] == 2 and [t["status"] for t in done["tasks"]] == ["Completed"] * 2
    assert all(t["duration_ms"] is not None for t in done["tasks"])


def test_runs_show_unknown_id_exits_1(db: str) -> None:
    result = cli("runs", "show", "00000000-0000-0000-0000-000000000000", "--db", db)
    assert result.exit_code == 1 and "unknown run" in result.stderr


def test_cron_list(db: str) -> None:
    assert json.loads(cli("cron", "list", "--db", db, "--json").stdout) == []
    assert "No cron schedules yet." in cli("cron", "list", "--db", db).stdout
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False)  # the cron API needs cron scheduling
    with cloaca.DefaultRunner(db, config) as runner:
        schedule_id = runner.register_cron_workflow("cli_ok", "0 2 * * *", "Europe/Berlin")
    assert str(uuid.UUID(schedule_id)) == schedule_id  # ids are UUID strings, as in cloaca
    listed = json.loads(cli("cron", "list", "--db", db, "--json").stdout)
    assert [(s["id"], s["workflow_name"], s["cron_expression"], s["timezone"]) for s in listed] == [
        (schedule_id, "cli_ok", "0 2 * * *", "Europe/Berlin")
    ]
    assert datetime.fromisoformat(listed[0]["next_run_at"]) > datetime.now(UTC)
    table = cli("cron", "list", "--db", db)
    assert table.exit_code == 0 and "0 2 * * *" in table.stdout and "Europe/Berlin" in table.stdout
    assert schedule_id in table.stdout


def test_management_commands_do_not_create_a_missing_database(tmp_path: Path) -> None:
    result = cli("runs", "list", "--db", f"sqlite:///{tmp_path}/typo.db")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_passwords_are_never_printed() -> None:
    url = "postgresql://app:hunter2secret@127.0.0.1:1/nowhere"
    for args in (["runs", "list"], ["db", "current"], ["triggers", "list", "--json"]):
        result = cli(*args, "--db", url)
        assert result.exit_code == 1
        assert "hunter2secret" not in result.output
        assert "***" in result.stderr


def test_bad_database_url_is_a_clean_error() -> None:
    result = cli("runs", "list", "--db", "mysql://x/y")
    assert result.exit_code == 1 and "unsupported database URL scheme" in result.stderr


# -- cloacina run: argument errors (in-process) ----------------------------------------------------------
def test_run_with_missing_app_exits_nonzero_with_message(tmp_path: Path) -> None:
    result = cli("run", str(tmp_path / "nope.py"), "--db", f"sqlite:///{tmp_path}/r.db", "--for", "1s")
    assert result.exit_code == 1
    assert "not found" in result.stderr and "nope.py" in result.stderr
    assert not (tmp_path / "r.db").exists()  # nothing was started


def test_run_with_broken_app_shows_original_exception(tmp_path: Path) -> None:
    app = tmp_path / f"{unique('broken')}.py"
    app.write_text("raise KeyError('API_TOKEN')\n")
    result = cli("run", str(app), "--db", f"sqlite:///{tmp_path}/r.db", "--for", "1s")
    assert result.exit_code == 1
    assert "KeyError: 'API_TOKEN'" in result.stderr


def test_run_with_failing_setup_exits_1(tmp_path: Path) -> None:
    app = tmp_path / f"{unique('setup_fails')}.py"
    app.write_text("def setup(runner):\n    raise ValueError('bad cron expression')\n")
    result = cli("run", str(app), "--db", f"sqlite:///{tmp_path}/r.db", "--for", "1s")
    assert result.exit_code == 1
    assert "setup(runner)" in result.stderr and "ValueError: bad cron expression" in result.stderr


@pytest.mark.parametrize("value", ["3x", "0s", "abc", "-1s"])
def test_run_with_bad_duration_is_a_usage_error(value: str) -> None:
    result = cli("run", TICKER_APP, f"--for={value}")
    assert result.exit_code == 2
    assert "Invalid value for '--for'" in result.stderr


# -- views -----------------------------------------------------------------------------------------------
def _sample_events() -> list[Event]:
    now = datetime.now(UTC)
    return [
        Event(now, "fire", "t1", run_id="r1", context_hash="ab" * 32),
        Event(now, "dedup_skip", "t1", context_hash="ab" * 32, message="(a run is still active)"),
        Event(now, "poll_error", "t2", message="poll raised RuntimeError: [offline]"),
        Event(now, "completed", "t1", run_id="r1", workflow="wf", took_ms=350),
    ]


def test_log_view_prints_one_line_per_event_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    view, totals = LogView(), Totals()
    view.start("banner")
    for event in _sample_events():
        totals.add(event)
        view.show(event, totals)
    view.finish(totals, 1.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "banner"
    assert [line.split()[1] for line in lines[1:5]] == ["fire", "dedup_skip", "poll_error", "completed"]
    assert "run=r1 workflow=wf took=350ms" in lines[4]
    assert lines[5].startswith("summary fires=1 dedup_skips=1 poll_errors=1 runs_completed=1 runs_failed=0")
    assert "runs_unfinished=0" in lines[5]
    assert "summary trigger=t2 fires=0 dedup_skips=0 poll_errors=1" in lines


def test_live_view_renders_a_table_and_summary() -> None:
    out = io.StringIO()
    view, totals = LiveView(Console(file=out, force_terminal=True, width=140)), Totals()
    view.start("cloacina run app.py")
    for event in _sample_events():
        totals.add(event)
        view.show(event, totals)
    view.finish(totals, 2.0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    for expected in ("cloacina run app.py", "poll raised RuntimeError: [offline]", "Summary (2.0s)", "t2"):
        assert expected in text, expected


# -- cloacina run: real subprocesses ---------------------------------------------------------------------
def _summary(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("summary fires="))
    return {k: int(float(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def _cloacina(*args: str) -> list[str]:
    return [sys.executable, "-m", "cloacina.cli.main", *args]


@pytest.mark.slow
def test_run_for_duration_shows_events_and_records_runs(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/run.db"
    proc = subprocess.run(
        _cloacina("run", TICKER_APP, "--db", db, "--for", "3s"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "setup called" in out  # the app's setup(runner) hook
    assert "triggers: broken_sensor, ticker" in out
    fired = re.findall(r" fire +ticker +run=(\S+)", out)
    completed = re.findall(r" completed +ticker +run=(\S+) workflow=tick_flow", out)
    assert fired and completed
    assert re.search(r" poll_error +broken_sensor +poll raised RuntimeError: sensor offline", out)
    assert re.search(r" dedup_skip +ticker ", out)  # runs (2 x 150 ms) outlast the 200 ms poll interval
    cron_runs = re.findall(r" completed +cron#[0-9a-f-]{36} +run=(\S+) workflow=cron_flow", out)
    assert cron_runs  # the schedule setup(runner) registered fires every second
    summary = _summary(out)
    assert summary["fires"] == len(fired) and summary["runs_completed"] == len(completed) + len(cron_runs)
    assert summary["poll_errors"] >= 1 and summary["dedup_skips"] >= 1 and summary["runs_failed"] == 0
    assert len(completed) + summary["runs_unfinished"] == summary["fires"]
    assert "sensor offline" in proc.stderr  # the poller's own warning, on stderr

    runs = json.loads(cli("runs", "list", "--db", db, "--json", "--limit", "1000").stdout)
    completed_in_db = {r["run_id"] for r in runs if r["status"] == "Completed"}
    assert set(completed) <= completed_in_db
    assert {r["workflow_name"] for r in runs} == {"tick_flow", "cron_flow"}
    assert set(cron_runs) <= completed_in_db
    history = json.loads(cli("triggers", "history", "ticker", "--db", db, "--json", "--limit", "1000").stdout)
    assert {h["run_id"] for h in history} == set(fired)
    assert set(completed) <= {h["run_id"] for h in history if h["status"] == "Completed"}
    schedules = {s["trigger_name"]: s for s in json.loads(cli("triggers", "list", "--db", db, "--json").stdout)}
    assert schedules["broken_sensor"]["error_count"] >= 1
    assert "sensor offline" in schedules["broken_sensor"]["last_error"]
    assert schedules["ticker"]["fire_count"] == len(fired)
    cron = json.loads(cli("cron", "list", "--db", db, "--json").stdout)
    assert [s["workflow_name"] for s in cron] == ["cron_flow"] and cron[0]["last_run_at"] is not None


class _LineReader:
    """Collects a subprocess's stdout lines on a thread, so the test can wait for one with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float) -> bool:
        """Whether a line matching ``pattern`` arrived within ``timeout_s``."""
        try:
            wait_until(lambda: any(re.search(pattern, line) for line in list(self.lines)), timeout_s)
        except AssertionError:
            return False
        return True

    def text(self) -> str:
        self._thread.join(30)
        return "\n".join(self.lines)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_gracefully_with_summary(tmp_path: Path, signum: int) -> None:
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(
            _cloacina("run", TICKER_APP, "--db", f"sqlite:///{tmp_path}/sig.db"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        reader = _LineReader(proc)
        try:
            assert reader.wait_for(r" completed +ticker ", timeout_s=60), reader.lines
            proc.send_signal(signum)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    out = reader.text()
    summary = _summary(out)
    assert summary["fires"] >= 1 and summary["runs_completed"] >= 1
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


def test_python_dash_m_entry_points() -> None:
    for module in ("cloacina", "cloacina.cli.main"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        for command in ("db", "run", "triggers", "runs", "cron", "package"):
            assert re.search(rf"^\s+{command}\s", proc.stdout, re.MULTILINE), command
