"""The console in a real browser: Debian's headless ``chromium`` driven by Selenium through ``/usr/bin/chromedriver``
(no downloaded browser build), against a real ``cloacina web`` process.

- Embedded (SQLite file and PostgreSQL): log in; a trigger of an embedded runner on the same database fires while
  the runs page is open and its run appears without a reload; its page draws the DAG coloured by status (the
  screenshot of the README comes from here); a trigger is switched off from the triggers page; a running run is
  cancelled from its page.
- Distributed (PostgreSQL + Redis): a run is started by name from the console of a web process that never
  imported the workflow's module, and a ``cloacina worker --app ...`` executes it while the page follows it live.

``CLOACINA_UPDATE_SCREENSHOT=1`` also writes the run page's screenshot to ``docs/console.png`` (the README's);
otherwise it goes to the test's temporary directory, so running the tests never changes the work tree.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

import cloacina as cloaca
from tests.conftest import IN_CI, Backend
from tests.distributed_harness import REPO_ROOT, ServiceProcess, Services, service_db_url, wait_for_worker_ready
from tests.support import free_port, wait_until

pytestmark = pytest.mark.timeout(300)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
USER, PASSWORD = "admin", "console-test-pw"
SCREENSHOT = REPO_ROOT / "docs" / "console.png"
CATALOG_APP = "tests.dist_apps.catalog_app"
WAIT_S = 60
INBOX_SWITCH = 'input[aria-label="Trigger inbox enabled"]'
QUICK_RETRY = cloaca.RetryPolicy.builder().max_attempts(2).initial_delay(0.05).with_jitter(False).build()


# -- browser and server ----------------------------------------------------------------------------------------
@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Debian chromium with a fresh profile."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are required in CI (apt-get install chromium chromium-driver)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = ChromeService(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Console:
    """A running ``cloacina web`` and the browser pointed at it."""

    base: str
    service: ServiceProcess
    driver: WebDriver

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def wait(self, condition: Callable[[WebDriver], Any], what: str, timeout_s: float = WAIT_S) -> Any:
        log = self.service.log_text()[-2000:]
        # Live regions are swapped every couple of seconds: an element found a moment ago may be gone already.
        return WebDriverWait(
            self.driver, timeout_s, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition, f"timed out waiting for {what}; web log tail:\n{log}")

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def click(self, by: str, selector: str) -> None:
        """Click an element of a live region (found again if a refresh replaced it meanwhile)."""

        def clicked(d: WebDriver) -> bool:
            d.find_element(by, selector).click()
            return True

        self.wait(clicked, f"{selector} to be clicked")

    def log_in(self) -> None:
        """Without credentials the console shows nothing; with them (typed into the URL, as into the browser's
        login prompt) it does, and the browser keeps sending them for the rest of the session."""
        self.open("/runs")
        assert "Runs · cloacina" not in self.driver.page_source
        assert httpx.get(self.base + "/runs").status_code == 401
        self.driver.get(self.base.replace("http://", f"http://{USER}:{PASSWORD}@") + "/runs")
        self.wait(lambda d: d.title == "Runs · cloacina", "the console after logging in")
        self.open("/runs")  # a plain URL from now on: the browser remembers the login
        assert self.driver.title == "Runs · cloacina"
        assert self.find("header .who").text == USER


def start_console(services: Services, driver: WebDriver, env: dict[str, str | None]) -> Console:
    port = free_port()
    web_env: dict[str, str | None] = {
        "CLOACINA_WEB_AUTH": f"{USER}:{PASSWORD}",
        "CLOACINA_WEB_TOKEN": None,
        "CLOACINA_WEB_READONLY_AUTH": None,
        "CLOACINA_APP": None,
        **env,
    }
    service = services.cloacina("web", "web", "--host", "127.0.0.1", "--port", str(port), env=web_env)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert service.alive, f"cloacina web exited:\n{service.log_text()[-3000:]}"
        try:
            return httpx.get(base + "/livez", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 90, message="cloacina web to answer /livez")
    return Console(base, service, driver)


def save_screenshot(driver: WebDriver, tmp_path: Path) -> Path:
    driver.execute_script("window.scrollTo(0, 0)")
    png = base64.b64decode(driver.get_screenshot_as_base64())
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    path = tmp_path / "console.png"
    path.write_bytes(png)
    if os.environ.get("CLOACINA_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, SCREENSHOT)
    return path


def node_statuses(console: Console) -> dict[str, str]:
    return {
        a.get_attribute("data-task"): a.get_attribute("data-status")
        for a in console.driver.find_elements(By.CSS_SELECTOR, ".dag svg a.node")
    }


# -- embedded: live runs, DAG, trigger switch, cancel --------------------------------------------------------------
def declare_ingest(batches: list[dict[str, Any]], release: threading.Event) -> None:
    """``ingest``: five tasks ending Completed, Failed (after two attempts) and Skipped; ``inbox`` fires it once
    per batch the test queues; ``held`` runs until ``release`` is set."""
    with cloaca.WorkflowBuilder("ingest") as builder:
        builder.description("Fetch a batch, validate and publish it")

        @cloaca.task(id="fetch")
        def fetch(ctx: Any) -> Any:
            ctx.set("rows", 120)
            return ctx

        @cloaca.task(id="validate", dependencies=["fetch"], retry=QUICK_RETRY)
        def validate(ctx: Any) -> Any:
            raise ValueError("row 17: amount is not a number")

        @cloaca.task(id="transform", dependencies=["fetch"])
        def transform(ctx: Any) -> Any:
            return ctx

        @cloaca.task(
            id="publish", dependencies=["validate", "transform"], trigger_rules=cloaca.task_success("validate")
        )
        def publish(ctx: Any) -> Any:
            return ctx

        @cloaca.task(id="alert_team", dependencies=["validate"], trigger_rules=cloaca.task_failed("validate"))
        def alert_team(ctx: Any) -> Any:
            return ctx

    with cloaca.WorkflowBuilder("held"):

        @cloaca.task(id="wait_for_release")
        def wait_for_release(ctx: Any) -> Any:
            release.wait(120)
            return ctx

    @cloaca.trigger(workflow="ingest", poll_interval="100ms", name="inbox")
    def inbox() -> Any:
        if batches:
            return cloaca.TriggerResult.fire(cloaca.Context(batches.pop(0)))
        return cloaca.TriggerResult.skip()


def test_console_embedded(durable_backend: Backend, browser: WebDriver, tmp_path: Path) -> None:
    batches: list[dict[str, Any]] = []
    release = threading.Event()
    declare_ingest(batches, release)
    runner = cloaca.DefaultRunner(durable_backend.url, schema=durable_backend.schema)  # migrates the database
    services = Services(tmp_path)
    db_url = durable_backend.url
    if durable_backend.schema is not None:
        db_url = service_db_url(durable_backend.url, durable_backend.schema)
    try:
        wait_until(lambda: runner.get_trigger_schedule("inbox"), 30, message="the trigger's schedule")
        console = start_console(services, browser, {"CLOACINA_DATABASE_URL": db_url, "CLOACINA_BROKER_URL": None})
        console.log_in()

        # A fired run appears on the open runs page, without a reload.
        assert console.driver.find_elements(By.CSS_SELECTOR, "#runs-live tr[data-row-key]") == []
        console.driver.execute_script("window.stillTheSamePage = true")
        batches.append({"batch": 1})
        run_id = console.wait(
            lambda d: [
                r.get_attribute("data-row-key") for r in d.find_elements(By.CSS_SELECTOR, "#runs-live tr[data-row-key]")
            ],
            "the fired run to appear",
        )[0]
        assert console.driver.execute_script("return window.stillTheSamePage") is True
        fired = runner.runs.get_run(run_id)
        assert fired is not None and fired.trigger_name == "inbox"
        console.wait(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, f'tr[data-row-key="{run_id}"]').get_attribute("data-status") == "Failed"
            ),
            "the run to end Failed on the runs page",
        )

        # Its DAG: every task coloured by its status.
        console.click(By.CSS_SELECTOR, f'tr[data-row-key="{run_id}"] a')
        console.wait(lambda d: d.current_url.endswith(f"/runs/{run_id}"), "the run page")
        assert node_statuses(console) == {
            "fetch": "Completed",
            "validate": "Failed",
            "transform": "Completed",
            "publish": "Skipped",
            "alert_team": "Completed",
        }
        assert "Failed · 2 attempts" in console.find(".dag svg").get_attribute("textContent")
        attempts = console.find("#task-validate").text
        assert "row 17: amount is not a number" in attempts and "#2" in attempts
        save_screenshot(console.driver, tmp_path)

        # Disable the trigger from the triggers page.
        console.open("/triggers")
        console.wait(lambda d: d.find_element(By.CSS_SELECTOR, INBOX_SWITCH).is_selected(), "the switch on")
        console.click(By.CSS_SELECTOR, INBOX_SWITCH)
        wait_until(lambda: runner.get_trigger_schedule("inbox")["enabled"] is False, 30, message="the trigger off")
        console.wait(lambda d: "Trigger inbox disabled." in d.find_element(By.ID, "notice").text, "the notice")
        console.open("/triggers")
        console.wait(lambda d: not d.find_element(By.CSS_SELECTOR, INBOX_SWITCH).is_selected(), "the switch off")

        # Cancel a running run from its page.
        held = runner.start_run("held", {})
        wait_until(lambda: runner.runs.get_run(held).status.value == "Running", 30, message="the held run")
        console.open(f"/runs/{held}")
        assert console.find("#run-status").get_attribute("data-status") == "Running"
        console.click(By.XPATH, "//button[normalize-space()='Cancel run']")
        console.wait(expected_conditions.alert_is_present(), "the confirmation").accept()
        console.wait(
            lambda d: d.find_element(By.ID, "run-status").get_attribute("data-status") == "Cancelled",
            "the page to show the run Cancelled",
        )
        assert runner.runs.get_run(held).status.value == "Cancelled"
    finally:
        release.set()
        services.stop_all()
        runner.shutdown()
        services.dump_logs()


# -- distributed: start a run by name ------------------------------------------------------------------------------
def test_console_starts_a_run_by_name_on_a_worker(cluster: Any, browser: WebDriver) -> None:
    services: Services = cluster.services
    worker = services.worker("worker", CATALOG_APP)
    wait_for_worker_ready(worker)
    wait_until(
        lambda: cluster.sql("SELECT count(*) FROM workflow_catalog WHERE name = 'catalog_flow'")[0][0],
        60,
        message="the worker to record catalog_flow",
    )
    console = start_console(services, browser, {})  # no --app: this process never imports the workflow's module
    assert CATALOG_APP not in " ".join(console.service.proc.args)
    console.log_in()

    Select(console.find("form[data-start-run] select[name=workflow]")).select_by_value("catalog_flow")
    context = console.find("form[data-start-run] textarea[name=context]")
    context.clear()
    context.send_keys('{"n": 21}')
    console.find("form[data-start-run] button[type=submit]").click()
    console.wait(lambda d: "/runs/" in d.current_url, "the new run's page")
    run_id = console.driver.current_url.rsplit("/", 1)[1]
    console.wait(
        lambda d: d.find_element(By.ID, "run-status").get_attribute("data-status") == "Completed",
        "the run to complete on the worker, shown live",
    )
    assert node_statuses(console) == {"double": "Completed", "report": "Completed"}
    final = console.driver.find_element(By.XPATH, "//h2[@id='final-heading']/following::pre[1]")
    result = json.loads(final.get_attribute("textContent"))
    assert result["n"] == 42 and result["report"] == "n is 42"
    assert result["double_pid"] != console.service.pid
    assert cluster.sql("SELECT status FROM workflow_runs WHERE id = :id", id=run_id)[0][0] == "Completed"

    # A run that fails on the worker is retried from its page; the new run's page links back to it.
    console.open("/runs")
    context = console.find("form[data-start-run] textarea[name=context]")
    context.clear()
    context.send_keys('{"n": 1, "fail": true}')
    console.find("form[data-start-run] button[type=submit]").click()
    console.wait(lambda d: "/runs/" in d.current_url and d.current_url.rsplit("/", 1)[1] != run_id, "the page")
    failed_id = console.driver.current_url.rsplit("/", 1)[1]
    console.wait(
        lambda d: d.find_element(By.ID, "run-status").get_attribute("data-status") == "Failed", "the run to fail"
    )
    console.click(By.XPATH, "//button[normalize-space()='Retry from failure']")
    console.wait(lambda d: d.current_url.rsplit("/", 1)[1] not in (run_id, failed_id), "the retry's page")
    retry_id = console.driver.current_url.rsplit("/", 1)[1]
    assert console.find(f'a[href="/runs/{failed_id}"]').text == failed_id
    assert cluster.sql("SELECT retry_of FROM workflow_runs WHERE id = :id", id=retry_id)[0][0] == failed_id
