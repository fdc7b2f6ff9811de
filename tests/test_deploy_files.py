"""Static checks of the deployment files: Dockerfile, entry points, docker-compose.yml, .env.example, Helm chart.

Docker cannot run here and there is no ``helm`` binary, so nothing is built, started or rendered. These tests read
the files and hold them to the contracts they depend on:

- the command line: every ``cloacina ...`` invocation in the files is one of the fixed contract's commands, and
  each of those commands is registered in the real click group :data:`cloacina.cli.main.main` with the options used;
- the settings: every ``CLOACINA_*`` name is a :class:`cloacina.deployment.settings.CloacinaSettings` field (or
  ``CLOACINA_APP``, read by ``cloacina.services.celery_worker_app``), every other env name is on a documented list;
- the compose stack's shape (health checks, replicas, the migrate gate, credentials only from ``.env``);
- the chart: Chart.yaml and values.yaml parse, every ``.Values`` path a template uses exists, every values key
  has a comment, template blocks are balanced. Templates are read as text: they are never rendered.

Not checked (see helm/cloacina/README.md): ``docker build``/``docker compose config``, ``helm lint``/``template``,
schema validation of rendered manifests, and anything that needs a running container or cluster.
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

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
WORKER_ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
POLLER_ENTRYPOINT = ROOT / "beat" / "entrypoint.sh"
EXAMPLE_APP = ROOT / "examples" / "deploy" / "example_app.py"
CHART = ROOT / "helm" / "cloacina"
TEMPLATES = CHART / "templates"

# The fixed command-line contract (other tools depend on it): command path -> options the deployment files use.
CLI_CONTRACT: dict[tuple[str, ...], set[str]] = {
    ("db", "upgrade"): set(),
    ("db", "current"): {"--check"},
    ("worker",): {"--app", "--concurrency", "--queues"},
    ("poller",): {"--app"},
    ("flower",): set(),  # flower's own options are passed through (--port, --basic-auth, --url_prefix)
    ("health",): {"--component", "--poller-url"},
}
HEALTH_COMPONENTS = {"poller", "worker", "all"}

SETTINGS_ENV = {f"CLOACINA_{name.upper()}" for name in CloacinaSettings.model_fields}
# CLOACINA_* names that are not settings fields, and why they are legitimate.
EXTRA_CLOACINA_ENV = {
    "CLOACINA_APP": "the app to import; read by the entry-point scripts and by cloacina.services.celery_worker_app",
}
# Non-cloacina environment variables the files may use, and why.
DOCUMENTED_ENV = {
    "POSTGRES_USER": "official postgres image / .env credentials",
    "POSTGRES_PASSWORD": "official postgres image / .env credentials",
    "POSTGRES_DB": "official postgres image / .env credentials",
    "REDIS_PASSWORD": ".env credential, passed to redis-server --requirepass",
    "REDISCLI_AUTH": "redis-cli reads the password from it (health check without the password in argv)",
    "FLOWER_USER": ".env credential for Flower's --basic-auth",
    "FLOWER_PASSWORD": ".env credential for Flower's --basic-auth",
    "FLOWER_BASIC_AUTH": "Flower's own option variable (chart: expanded into --basic-auth)",
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
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


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


# -- command-line invocations found in the files ----------------------------------------------------------------
def _cut_shell(argv: list[str]) -> list[str]:
    """The first simple command of a shell line (stop at ||, &&, |, ;)."""
    out = []
    for token in argv:
        if token in ("||", "&&", "|", ";"):
            break
        out.append(token)
    return out


def _from_cloacina(argv: list[str]) -> list[str] | None:
    argv = _cut_shell(argv)
    if "exec" in argv[:1]:
        argv = argv[1:]
    return argv if argv[:1] == ["cloacina"] else None


TEMPLATE_ACTION = re.compile(r"\{\{.*?\}\}")


def _template_command_lists(text: str) -> list[list[str]]:
    """``command:`` lists of a template, block or flow style; template actions become ``<value>``."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?command:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2).strip()
        if rest.startswith("["):
            inner = TEMPLATE_ACTION.sub("<value>", rest.strip("[]"))
            found.append([item.strip().strip("\"'") for item in inner.split(",")])
            continue
        items = []
        for follow in lines[i + 1 :]:
            stripped = follow.strip()
            if stripped.startswith("{{"):  # a control line ({{- if }}, {{- end }}) inside the list
                continue
            if not stripped.startswith("- ") or len(follow) - len(follow.lstrip()) < indent:
                break
            items.append(TEMPLATE_ACTION.sub("<value>", stripped[2:]).strip().strip("\"'"))
        found.append(items)
    return found


def invocations() -> list[tuple[str, list[str]]]:
    """Every ``cloacina ...`` argv in the deployment files, with where it was found."""
    found: list[tuple[str, list[str]]] = []
    for name, service in load_yaml(COMPOSE)["services"].items():
        for what in ("command", "entrypoint"):
            argv = _from_cloacina(as_argv(service.get(what)))
            if argv:
                found.append((f"docker-compose.yml {name}.{what}", argv))
        argv = _from_cloacina(as_argv((service.get("healthcheck") or {}).get("test")))
        if argv:
            found.append((f"docker-compose.yml {name}.healthcheck", argv))
    services = load_yaml(COMPOSE)["services"]
    for script, service in ((WORKER_ENTRYPOINT, "worker"), (POLLER_ENTRYPOINT, "poller")):
        for line in script.read_text().splitlines():
            if line.strip().startswith("exec "):
                argv = _from_cloacina(shlex.split(line))
                if argv:
                    found.append((str(script.relative_to(ROOT)), argv))
                    # The compose service's `command` is appended to the image's entry point ("$@").
                    extra = as_argv(services[service].get("command"))
                    combined = [a for a in argv if a != "$@"] + extra
                    found.append((f"docker-compose.yml {service} (entry point + command)", combined))
    for line in dockerfile_instructions():
        if line.startswith("HEALTHCHECK ") and " CMD " in line:
            argv = _from_cloacina(shlex.split(line.split(" CMD ", 1)[1]))
            if argv:
                found.append(("Dockerfile HEALTHCHECK", argv))
        if line.startswith("RUN ") and "cloacina --version" in line:
            found.append(("Dockerfile RUN", ["cloacina", "--version"]))
    for template in sorted(TEMPLATES.glob("*.yaml")):
        for argv in _template_command_lists(template.read_text()):
            if argv[:1] == ["cloacina"]:
                found.append((f"templates/{template.name}", argv))
    return found


def command_path(argv: list[str]) -> tuple[str, ...]:
    """The subcommand path of ``cloacina ...`` by the contract: ``db upgrade`` has two words, the others one."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    if not words:
        return ()
    return tuple(words[:2]) if words[0] == "db" else (words[0],)


def registered(path: tuple[str, ...]) -> click.Command | None:
    command: click.Command = cli_main
    for word in path:
        if not isinstance(command, click.Group) or word not in command.commands:
            return None
        command = command.commands[word]
    return command


def options_of(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")]


def test_the_files_only_use_contract_commands() -> None:
    found = invocations()
    paths = {command_path(argv) for _, argv in found}
    for where, argv in found:
        if argv == ["cloacina", "--version"]:
            continue
        path = command_path(argv)
        assert path in CLI_CONTRACT, f"{where}: `{' '.join(argv)}` is not in the command-line contract"
        unknown = set(options_of(argv)) - CLI_CONTRACT[path]
        if path != ("flower",):
            assert not unknown, f"{where}: options {sorted(unknown)} are not in the contract for {path}"
    # Every piece of the stack is started somewhere.
    assert {("db", "upgrade"), ("worker",), ("poller",), ("flower",), ("health",)} <= paths


def test_health_components_are_the_contracts() -> None:
    for where, argv in invocations():
        if command_path(argv) == ("health",):
            component = argv[argv.index("--component") + 1]
            assert component in HEALTH_COMPONENTS, f"{where}: --component {component}"


@pytest.mark.parametrize("path", [pytest.param(p, id="-".join(p)) for p in CLI_CONTRACT])
def test_contract_command_is_registered_with_the_options_used(path: tuple[str, ...]) -> None:
    command = registered(path)
    assert command is not None, f"`cloacina {' '.join(path)}` is not a command of cloacina.cli.main.main"
    if path == ("flower",):
        return  # options go to Flower itself
    declared = {opt for param in command.params for opt in getattr(param, "opts", [])}
    used = set().union(*(set(options_of(argv)) for _, argv in invocations() if command_path(argv) == path))
    assert used <= declared, f"`cloacina {' '.join(path)}` has no option(s) {sorted(used - declared)}"
    if path == ("health",):
        component = next(p for p in command.params if "--component" in getattr(p, "opts", []))
        if isinstance(component.type, click.Choice):
            assert set(component.type.choices) >= HEALTH_COMPONENTS


# -- environment names --------------------------------------------------------------------------------------------
def assert_env_name_known(name: str, where: str) -> None:
    if name.startswith("CLOACINA_"):
        assert name in SETTINGS_ENV or name in EXTRA_CLOACINA_ENV, (
            f"{where}: {name} is not a CloacinaSettings field (CLOACINA_<field>); fields: {sorted(SETTINGS_ENV)}"
        )
    else:
        assert name in DOCUMENTED_ENV, f"{where}: {name} is neither a cloacina setting nor a documented variable"


def test_cloacina_app_is_really_read_by_the_code() -> None:
    assert "CLOACINA_APP" in (ROOT / "cloacina" / "services" / "celery_worker_app.py").read_text()


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


def test_dockerfile_and_scripts_env_names_are_settings_or_documented() -> None:
    for line in dockerfile_instructions():
        if line.startswith("ENV "):
            for key in re.findall(r"([A-Z][A-Z0-9_]*)=", line):
                assert_env_name_known(key, "Dockerfile ENV")
    for path in (DOCKERFILE, WORKER_ENTRYPOINT, POLLER_ENTRYPOINT):
        for name in CLOACINA_NAME.findall(path.read_text()):
            assert_env_name_known(name, str(path.relative_to(ROOT)))


def test_chart_env_names_are_settings() -> None:
    for template in TEMPLATES.iterdir():
        for name in CLOACINA_NAME.findall(template.read_text()):
            assert_env_name_known(name, f"templates/{template.name}")
    for key in load_yaml(CHART / "values.yaml")["config"]:
        assert f"CLOACINA_{key.upper()}" in SETTINGS_ENV, f"values.yaml config.{key} is not a CloacinaSettings field"


def test_chart_config_defaults_are_valid_settings() -> None:
    config = {k: v for k, v in load_yaml(CHART / "values.yaml")["config"].items() if v is not None}
    settings = CloacinaSettings(**config)  # pydantic validates types and bounds
    assert settings.queue == config["queue"]


# -- docker-compose.yml -------------------------------------------------------------------------------------------
def test_compose_has_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {"redis", "postgres", "migrate", "poller", "worker", "flower"}


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"


def test_redis_is_persistent_and_password_protected(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    argv = as_argv(redis["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert ENV_REF.fullmatch(argv[argv.index("--requirepass") + 1]).group(1) == "REDIS_PASSWORD"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"]) and "ping" in " ".join(redis["healthcheck"]["test"])


def test_postgres_has_a_volume_and_pg_isready(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_migrate_is_one_shot_and_gates_the_services(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert as_argv(migrate["command"]) == ["cloacina", "db", "upgrade"]
    assert migrate.get("restart", "no") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("poller", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_poller_runs_two_replicas(services: dict[str, dict[str, Any]]) -> None:
    assert services["poller"]["deploy"]["replicas"] == 2
    assert "container_name" not in services["poller"]


def test_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    for port in worker.get("ports") or []:  # a published port must not be fixed on the host
        assert ":" not in str(port), f"worker publishes a fixed host port: {port}"


def test_flower_basic_auth_comes_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    argv = as_argv(services["flower"]["command"])
    assert argv[:2] == ["cloacina", "flower"]
    auth = next(a for a in argv if a.startswith("--basic-auth="))
    refs = ENV_REF.findall(auth)
    assert refs == ["FLOWER_USER", "FLOWER_PASSWORD"], auth
    assert any(str(p).endswith(":5555") for p in services["flower"]["ports"])


def test_services_use_the_image_targets(services: dict[str, dict[str, Any]]) -> None:
    stages = dockerfile_stages()
    expected = {"migrate": "runtime", "poller": "poller", "worker": "worker", "flower": "runtime"}
    for name, target in expected.items():
        build = services[name]["build"]
        assert build["target"] == target and target in stages, name
        assert (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file()


def test_example_app_is_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    for name in ("poller", "worker"):
        service = services[name]
        assert "./examples/deploy:/app/workflows:ro" in service["volumes"], name
        app = service["environment"]["CLOACINA_APP"]
        assert app.startswith("/app/workflows/")
        assert (ROOT / "examples" / "deploy" / app.removeprefix("/app/workflows/")).is_file()


def test_credentials_only_come_from_env_file(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE.read_text()
    defined = env_example_names()
    used = set(ENV_REF.findall(text))
    assert used, "no ${VAR} found"
    assert used <= defined, f"used in docker-compose.yml but not in .env.example: {sorted(used - defined)}"
    for name in used:  # required, never silently empty
        assert re.search(r"\$\{" + name + r":\?", text), f"${{{name}}} should fail when unset (${{{name}:?...}})"
    # No literal credential in the file: every password-ish value is a ${VAR} reference.
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|AUTH|_URL$", key):
                assert "${" in str(value), f"{name}.{key} holds a literal value"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


# -- Dockerfile, entry points, .dockerignore ------------------------------------------------------------------------
def dockerfile_instructions() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        out.append((current + line).strip())
        current = ""
    return out


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    name = None
    for line in dockerfile_instructions():
        if line.upper().startswith("FROM "):
            parts = line.split()
            name = parts[3] if len(parts) >= 4 and parts[2].upper() == "AS" else f"stage{len(stages)}"
            stages[name] = [line]
        elif name is not None:
            stages[name].append(line)
    return stages


def test_base_images_are_pinned_slim_python() -> None:
    stages = dockerfile_stages()
    for name, lines in stages.items():
        base = lines[0].split()[1]
        if base in stages:
            continue  # FROM an earlier stage
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", base), f"stage {name}: unpinned base {base}"


def _final_stages() -> dict[str, list[str]]:
    return {name: lines for name, lines in dockerfile_stages().items() if name != "builder"}


def test_final_stages_have_no_build_tools() -> None:
    for name, lines in _final_stages().items():
        for line in lines:
            if line.startswith("RUN "):
                assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bmake\b|-dev\b", line), f"{name}: {line}"


def test_runtime_installs_the_wheel_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    assert "builder" in stages and any(ln.startswith("RUN pip wheel") for ln in stages["builder"])
    runtime = stages["runtime"]
    install = next(ln for ln in runtime if "pip install" in ln)
    assert "--no-index" in install and '"cloacina[distributed]"' in install and "from=builder" in install
    env = " ".join(ln for ln in runtime if ln.startswith("ENV "))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    users = [ln.split()[1] for ln in runtime if ln.startswith("USER ")]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001"
    assert any("--uid 10001" in ln for ln in runtime)


def test_role_stages_have_entry_points_and_health_checks() -> None:
    stages = dockerfile_stages()
    for stage, script in (("worker", "cloacina-worker-entrypoint"), ("poller", "cloacina-poller-entrypoint")):
        lines = stages[stage]
        assert lines[0].split()[1] == "runtime"
        assert any(ln.startswith("ENTRYPOINT") and script in ln for ln in lines), stage
        assert "CMD []" in lines, f"{stage}: reset runtime's CMD, or it is passed to the entry point as arguments"
        checks = [ln for ln in lines if ln.startswith("HEALTHCHECK ")]
        assert checks and f"cloacina health --component {stage}" in checks[0], stage
    copies = " ".join(ln for ln in stages["runtime"] if ln.startswith("COPY "))
    assert "workers/entrypoint.sh /usr/local/bin/cloacina-worker-entrypoint" in copies
    assert "beat/entrypoint.sh /usr/local/bin/cloacina-poller-entrypoint" in copies
    assert list(stages)[-1] == "worker", "the default target (last stage) is the worker"


@pytest.mark.parametrize(
    ("script", "command"), [(WORKER_ENTRYPOINT, "worker"), (POLLER_ENTRYPOINT, "poller")], ids=["worker", "poller"]
)
def test_entry_points_exec_the_cli(script: Path, command: str) -> None:
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    execs = [line for line in text.splitlines() if line.startswith("exec ")]
    assert len(execs) == 1
    assert execs[0] == f'exec cloacina {command} --app "${{CLOACINA_APP:-/app/workflows/example_app.py}}" "$@"'
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_dockerignore_lets_the_copied_files_in() -> None:
    allowed = [ln[1:] for ln in DOCKERIGNORE.read_text().splitlines() if ln.startswith("!")]
    assert "*" in DOCKERIGNORE.read_text().splitlines(), ".dockerignore should be an allow-list"
    for line in dockerfile_instructions():
        if line.startswith("COPY ") and "--from" not in line:
            sources = [t for t in line.split()[1:-1] if not t.startswith("--")]
            for src in sources:
                src = src.rstrip("/")
                if src == ".":
                    continue
                assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is excluded"
                assert (ROOT / src).exists(), src
    assert ".env" not in allowed


# -- the example app ----------------------------------------------------------------------------------------------
def load_example(monkeypatch: pytest.MonkeyPatch, inbox: Path) -> Any:
    monkeypatch.setenv("INBOX_PATH", str(inbox))
    name = f"deploy_example_app_{id(inbox)}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE_APP)
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


# -- Helm chart -----------------------------------------------------------------------------------------------------
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
    assert isinstance(load_yaml(CHART / "ci" / "test-values.yaml"), dict)


def test_chart_has_the_templates() -> None:
    names = {p.name for p in TEMPLATES.iterdir()}
    assert names >= {
        "_helpers.tpl",
        "NOTES.txt",
        "configmap.yaml",
        "secret.yaml",
        "serviceaccount.yaml",
        "poller-deployment.yaml",
        "poller-pdb.yaml",
        "worker-deployment.yaml",
        "worker-hpa.yaml",
        "worker-keda-scaledobject.yaml",
        "flower-deployment.yaml",
        "flower-service.yaml",
        "flower-ingress.yaml",
        "flower-secret.yaml",
        "migrate-job.yaml",
    }
    assert (CHART / "README.md").is_file()


# `.Values.a.b`, `$.Values.a.b` and `$root.Values.a.b` (a variable holding the root context).
VALUES_PATH = re.compile(r"(?<![\w.$])(?:\$\w*)?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def values_paths() -> list[tuple[str, str]]:
    found = []
    for template in sorted(TEMPLATES.iterdir()):
        for match in VALUES_PATH.finditer(template.read_text()):
            found.append((template.name, match.group(1).lstrip(".")))
    return found


def test_every_values_path_used_in_templates_exists(values: dict[str, Any]) -> None:
    paths = values_paths()
    assert len(paths) > 50
    for template, path in paths:
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


BLOCK_OPEN = re.compile(r"\{\{-?\s*(if|with|range|define|block)\b")
BLOCK_END = re.compile(r"\{\{-?\s*end\s*-?\}\}")


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.iterdir()))
def test_template_blocks_are_balanced(template: str) -> None:
    text = (TEMPLATES / template).read_text()
    assert len(BLOCK_OPEN.findall(text)) == len(BLOCK_END.findall(text)), f"{template}: unbalanced {{{{ end }}}}"
    assert text.count("{{") == text.count("}}"), f"{template}: unbalanced braces"


def test_chart_commands_follow_the_cli_contract() -> None:
    commands = {}
    for template in TEMPLATES.glob("*.yaml"):
        for argv in _template_command_lists(template.read_text()):
            commands.setdefault(template.name, []).append(argv)
    assert commands["poller-deployment.yaml"][0][:4] == ["cloacina", "poller", "--app", "<value>"]
    worker = commands["worker-deployment.yaml"]
    assert worker[0][:2] == ["cloacina", "worker"] and {"--app", "--concurrency", "--queues"} <= set(worker[0])
    assert ["cloacina", "health", "--component", "worker"] in worker  # liveness and readiness probes
    assert commands["migrate-job.yaml"] == [["cloacina", "db", "upgrade"]]
    flower = commands["flower-deployment.yaml"][0]
    assert flower[:2] == ["cloacina", "flower"] and "--basic-auth=$(FLOWER_BASIC_AUTH)" in flower


def test_chart_workload_details() -> None:
    text = {p.name: p.read_text() for p in TEMPLATES.iterdir()}
    job = text["migrate-job.yaml"]
    assert '"helm.sh/hook": pre-install,pre-upgrade' in job and '"helm.sh/hook-delete-policy"' in job
    assert "kind: Job" in job and "restartPolicy: Never" in job
    assert '"helm.sh/hook": pre-install,pre-upgrade' in text["migrate-secret.yaml"]
    assert "apiVersion: policy/v1" in text["poller-pdb.yaml"] and "kind: PodDisruptionBudget" in text["poller-pdb.yaml"]
    assert "apiVersion: autoscaling/v2" in text["worker-hpa.yaml"]
    keda = text["worker-keda-scaledobject.yaml"]
    assert "apiVersion: keda.sh/v1alpha1" in keda and "kind: ScaledObject" in keda and "type: redis" in keda
    assert "listName: {{ .Values.config.queue" in keda and "{{- if .Values.worker.keda.enabled }}" in keda
    assert text["secret.yaml"].startswith("{{- if not .Values.secrets.existingSecret }}")
    assert "path: /healthz" in text["poller-deployment.yaml"] and "port: metrics" in text["poller-deployment.yaml"]
    assert "networking.k8s.io/v1" in text["flower-ingress.yaml"]
    for workload in ("poller-deployment.yaml", "worker-deployment.yaml", "flower-deployment.yaml", "migrate-job.yaml"):
        assert ".Values.securityContext" in text[workload] and ".Values.podSecurityContext" in text[workload]
        assert "resources:" in text[workload]
    for workload in ("poller-deployment.yaml", "worker-deployment.yaml", "flower-deployment.yaml"):
        assert "livenessProbe:" in text[workload] and "readinessProbe:" in text[workload], workload


def test_chart_defaults(values: dict[str, Any]) -> None:
    assert values["poller"]["replicaCount"] == 2 and values["poller"]["podDisruptionBudget"]["enabled"]
    assert values["secrets"]["existingSecret"] == "" and values["secrets"]["databaseUrl"] == ""
    security = values["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"] and not security["allowPrivilegeEscalation"]
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert values["metrics"]["podAnnotations"] is True
    assert values["app"]["spec"] == "/app/workflows/example_app.py"
    assert values["flower"]["basicAuth"]["password"] == "", "no default password in values.yaml"
