"""Static checks of the deployment files against the code they run: the command line, the settings, the chart's
values, and the example app.

- every ``cloacina ...`` invocation in docker-compose.yml is a command of the real click group
  :data:`cloacina.cli.main.main`, with options it has (the chart's rendered commands: ``tests/test_deploy_helm.py``);
- every ``CLOACINA_*`` name is a :class:`cloacina.deployment.settings.CloacinaSettings` field (or another documented
  name), every other variable is on a documented list;
- the chart: Chart.yaml and values.yaml parse, every ``.Values`` path a template uses exists, every values key has a
  comment, every ``config`` key is a setting and its defaults are valid settings;
- the example app mounted by compose and baked into the image declares its pipeline and processes a file.

The real tools (helm, kubernetes-validate, hadolint, docker compose) run in ``tests/test_deploy_helm.py``,
``tests/test_deploy_image.py`` and ``tests/test_deploy_compose.py``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

import cloacina as cloaca
from cloacina.cli.main import main as cli_main
from cloacina.definitions import registry
from cloacina.deployment.settings import CloacinaSettings
from cloacina.web.settings import WebSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_APP = ROOT / "examples" / "deploy" / "example_app.py"
CHART = ROOT / "helm" / "cloacina"
TEMPLATES = CHART / "templates"

SETTINGS_ENV = {f"CLOACINA_{name.upper()}" for name in CloacinaSettings.model_fields}
WEB_ENV = {f"CLOACINA_WEB_{name.upper()}" for name in WebSettings.model_fields}
# CLOACINA_* names that are not CloacinaSettings fields, and why they are legitimate.
EXTRA_CLOACINA_ENV = {
    "CLOACINA_APP": "the app to import: the --app option's environment variable (cloacina worker/poller)",
}
# Non-cloacina environment variables the files may use, and why.
DOCUMENTED_ENV = {
    "POSTGRES_USER": "official postgres image / .env credentials",
    "POSTGRES_PASSWORD": "official postgres image / .env credentials",
    "POSTGRES_DB": "official postgres image / .env credentials",
    "REDIS_PASSWORD": ".env credential; redis-server reads it from a config file written at start",
    "REDISCLI_AUTH": "redis-cli reads the password from it (health check without the password in argv)",
    "WEB_USER": ".env credential of the web console (CLOACINA_WEB_AUTH)",
    "WEB_PASSWORD": ".env credential of the web console (CLOACINA_WEB_AUTH)",
    "FLOWER_USER": ".env credential of Flower (FLOWER_BASIC_AUTH)",
    "FLOWER_PASSWORD": ".env credential of Flower (FLOWER_BASIC_AUTH)",
    "FLOWER_BASIC_AUTH": "Flower's own option variable: its basic auth, kept out of its arguments",
    "INBOX_PATH": "the example app's watched directory",
    "PYTHONDONTWRITEBYTECODE": "Python",
    "PYTHONUNBUFFERED": "Python",
    "PIP_NO_CACHE_DIR": "pip",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip",
}
ENV_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?+])[^}]*)?\}")
CLOACINA_NAME = re.compile(r"\bCLOACINA_[A-Z0-9_]*[A-Z0-9]\b")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE)["services"]


def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split("=", 1)[0].strip())
    return names


def as_argv(value: Any) -> list[str]:
    """A compose command / healthcheck test as an argv list."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    argv = [str(v) for v in value]
    if argv and argv[0] == "CMD-SHELL":
        return shlex.split(" ".join(argv[1:]))
    if argv and argv[0] == "CMD":
        return argv[1:]
    return argv


def compose_invocations() -> list[tuple[str, list[str]]]:
    """Every ``cloacina ...`` argv of docker-compose.yml (commands and health checks), with where it was found."""
    found = []
    for name, service in load_yaml(COMPOSE)["services"].items():
        for what, value in (("command", service.get("command")), ("healthcheck", service.get("healthcheck", {}))):
            argv = as_argv(value.get("test") if isinstance(value, dict) else value)
            if argv[:1] == ["cloacina"]:
                found.append((f"docker-compose.yml {name}.{what}", argv))
    return found


def resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = cli_main
    rest = argv[1:]
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, [a.split("=", 1)[0] for a in rest if a.startswith("--")]


# -- the command line ---------------------------------------------------------------------------------------------
def test_compose_runs_only_real_commands_with_real_options() -> None:
    found = compose_invocations()
    names = set()
    for where, argv in found:
        command, options = resolve(argv)
        assert not isinstance(command, click.Group), f"{where}: `{' '.join(argv)}` names no command"
        names.add(command.name)
        if command.name == "flower":
            continue  # Flower's own options pass through
        declared = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert set(options) <= declared, f"{where}: {sorted(set(options) - declared)} are not options of {argv}"
    assert {"upgrade", "current", "poller", "worker", "web", "flower"} <= names


def test_app_option_reads_cloacina_app() -> None:
    """compose and the image set CLOACINA_APP instead of passing --app: the option must read it."""
    for name in ("worker", "poller"):
        app = next(p for p in cli_main.commands[name].params if "--app" in getattr(p, "opts", []))
        assert isinstance(app, click.Option) and app.envvar == "CLOACINA_APP", name


# -- environment names --------------------------------------------------------------------------------------------
def assert_env_name_known(name: str, where: str) -> None:
    if name.startswith("CLOACINA_"):
        assert name in SETTINGS_ENV | WEB_ENV or name in EXTRA_CLOACINA_ENV, (
            f"{where}: {name} is not a CloacinaSettings or WebSettings field (CLOACINA_<field>)"
        )
    else:
        assert name in DOCUMENTED_ENV, f"{where}: {name} is neither a cloacina setting nor a documented variable"


def test_compose_env_names_are_settings_or_documented(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        env = service.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [item.split("=", 1)[0] for item in env]
        for key in keys:
            assert_env_name_known(key, f"docker-compose.yml {name}")
    for ref in ENV_REF.findall(COMPOSE.read_text()):
        assert_env_name_known(ref, "docker-compose.yml ${...}")
    for ref in env_example_names():
        assert_env_name_known(ref, ".env.example")


def test_dockerfile_env_names_are_settings_or_documented() -> None:
    instructions = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text()).splitlines()  # continuation lines joined
    env = [line for line in instructions if line.startswith("ENV ")]
    assert env
    for line in env:
        for key in re.findall(r"\b([A-Z][A-Z0-9_]*)=", line):
            assert_env_name_known(key, "Dockerfile ENV")
    for name in CLOACINA_NAME.findall(DOCKERFILE.read_text()):
        assert_env_name_known(name, "Dockerfile")


def test_chart_env_names_are_settings() -> None:
    for template in TEMPLATES.iterdir():
        for name in CLOACINA_NAME.findall(template.read_text()):
            assert_env_name_known(name, f"templates/{template.name}")
    for key in load_yaml(CHART / "values.yaml")["config"]:
        assert f"CLOACINA_{key.upper()}" in SETTINGS_ENV, f"values.yaml config.{key} is not a CloacinaSettings field"


def test_chart_config_defaults_are_valid_settings() -> None:
    config = {k: v for k, v in load_yaml(CHART / "values.yaml")["config"].items() if v is not None}
    settings = CloacinaSettings(**config)  # pydantic validates types and bounds
    assert settings.queue == config["queue"] and settings.metrics_port == 9100


def test_credentials_only_come_from_the_env_file(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE.read_text()
    defined = env_example_names()
    used = set(ENV_REF.findall(text))
    assert used, "no ${VAR} found"
    assert used <= defined, f"used in docker-compose.yml but not in .env.example: {sorted(used - defined)}"
    for name in used:  # required, never silently empty
        assert re.search(r"\$\{" + name + r":\?", text), f"${{{name}}} should fail when unset (${{{name}:?...}})"
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|AUTH|_URL$", key):
                assert "${" in str(value), f"{name}.{key} holds a literal value"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


# -- the chart's values ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load_yaml(CHART / "values.yaml")


def test_chart_yaml(values: dict[str, Any]) -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2" and chart["name"] == "cloacina" and chart["type"] == "application"
    assert str(chart["appVersion"]) == project["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(chart["version"]))
    assert isinstance(values, dict) and values


# `.Values.a.b`, `$.Values.a.b` and `$root.Values.a.b` (a variable holding the root context).
VALUES_PATH = re.compile(r"(?<![\w.$])(?:\$\w*)?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def test_every_values_path_used_in_templates_exists(values: dict[str, Any]) -> None:
    templates = sorted(TEMPLATES.iterdir())
    found = [(t.name, m.group(1).lstrip(".")) for t in templates for m in VALUES_PATH.finditer(t.read_text())]
    assert len(found) > 80
    for template, path in found:
        node: Any = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"templates/{template}: .Values.{path} not in values.yaml"
            node = node[part]


KEY_LINE = re.compile(r"^(\s*)(?:- )?([A-Za-z_][A-Za-z0-9_.-]*|\"[^\"]+\"):(\s|$)")


def test_every_values_key_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#") or not KEY_LINE.match(line):
            continue
        previous = lines[i - 1].strip() if i else ""
        if not (previous.startswith("#") or re.search(r"\s#\s", line)):
            missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, "values.yaml keys without a comment:\n" + "\n".join(missing)


def test_every_values_key_is_in_the_chart_readme(values: dict[str, Any]) -> None:
    readme = (CHART / "README.md").read_text()
    for key in values:
        assert f"`{key}" in readme, f"helm/cloacina/README.md does not document {key}"
    assert "`worker.pools`" in readme and "## Worker pools" in readme


def test_chart_defaults(values: dict[str, Any]) -> None:
    assert values["image"]["repository"] == "", "no default image: nobody publishes one"
    assert values["poller"]["replicaCount"] == 2 and values["poller"]["podDisruptionBudget"]["maxUnavailable"] == 1
    assert values["secrets"]["existingSecret"] == "" and values["secrets"]["databaseUrl"] == ""
    security = values["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"] and not security["allowPrivilegeEscalation"]
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert values["worker"]["terminationGracePeriodSeconds"] >= values["config"]["task_timeout_s"]
    assert values["worker"]["keda"]["enabled"] is False and values["networkPolicy"]["enabled"] is True
    assert values["worker"]["pools"] == [], "no pools: the single worker Deployment of the chart before pools"
    for component in ("web", "flower"):
        assert values[component]["ingress"]["tls"]["enabled"] is True, component
    assert values["flower"]["basicAuth"]["password"] == "" and values["web"]["auth"]["password"] == ""


# -- the example app ----------------------------------------------------------------------------------------------
def load_example(monkeypatch: pytest.MonkeyPatch, inbox: Path) -> Any:
    monkeypatch.setenv("INBOX_PATH", str(inbox))
    name = f"deploy_example_app_{id(inbox)}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_example_app_declares_the_pipeline_and_trigger(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    load_example(monkeypatch, tmp_path)
    workflow = registry.get_workflow("inbox_pipeline")
    assert workflow.topological_order == ("fetch", "transform", "store")
    assert workflow.get_task("transform").dependencies == ("fetch",)
    assert workflow.get_task("store").dependencies == ("transform",)
    trigger = registry.get_trigger("inbox_items")
    assert trigger.workflow == "inbox_pipeline" and trigger.poll_interval_ms == 1000 and not trigger.allow_concurrent
    assert "import cloacina as cloaca" in EXAMPLE_APP.read_text()


def test_example_app_processes_a_file_end_to_end(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = load_example(monkeypatch, tmp_path)
    assert app.inbox_items().is_skip_result()
    (tmp_path / ".partial.tmp").write_text("ignored until renamed")
    (tmp_path / "a.txt").write_text("hello world\nsecond line\n")
    result = app.inbox_items()
    assert result.is_fire_result()
    fired = result.context.to_dict()
    assert fired == {"filename": "a.txt", "path": str(tmp_path / "a.txt")}
    assert app.inbox_items().context.to_dict() == fired  # same file, same context: one dedup key

    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with cloaca.DefaultRunner.with_config(":memory:", config) as runner:
        outcome = runner.execute("inbox_pipeline", cloaca.Context(fired))
    assert outcome.status == "Completed", outcome.error_message
    summary = json.loads((tmp_path / "done" / "a.txt.json").read_text())
    assert (summary["lines"], summary["words"], summary["filename"]) == (2, 4, "a.txt")
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "processing" / "a.txt").exists()
    assert app.inbox_items().is_skip_result()
