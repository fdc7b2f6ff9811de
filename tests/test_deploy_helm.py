"""The Helm chart, checked with the real tools (issue 13): ``helm lint --strict``, ``helm template`` for every value
set the chart offers, ``kubernetes-validate --strict`` of the output for two Kubernetes versions, KEDA's and the
Prometheus Operator's objects against their own CRD schemas (kept in ``tests/data``), and what the rendered
manifests must say: probes that follow the health model, grace periods that cover the task timeout, KEDA counting
waiting and in-flight work with its Redis address taken from the broker URL, disruption budgets that never block a
drain, network policies, no secret in any process's arguments, Flower with the broker only; worker pools (issue 19):
one Deployment, budget and autoscaler per pool, each on its own queues, and the single-pool values rendering the
objects they always did.

No cluster runs here: nothing is installed or scheduled (README's Deploy section says what that leaves unverified).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from cloacina.cli.main import main as cli_main
from tests.deploy_tools import CHART, require_tool, run

KEDA_APIS = ("keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication")
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor",)
# Every value set the chart offers: ci/*-values.yaml (chart-testing installs these on a bare cluster) and
# ci/crds/*-values.yaml (features that need CRDs, rendered with --api-versions).
VALUE_SETS: dict[str, tuple[Path, tuple[str, ...]]] = {
    "default": (CHART / "ci" / "default-values.yaml", ()),
    "existing-secrets": (CHART / "ci" / "existing-secrets-values.yaml", ()),
    "ingress": (CHART / "ci" / "ingress-values.yaml", ()),
    "keda": (CHART / "ci" / "crds" / "keda-values.yaml", KEDA_APIS + MONITORING_APIS),
    "two-pools": (CHART / "ci" / "crds" / "two-pools-values.yaml", KEDA_APIS),
}
KUBE_VERSIONS = ("1.27.0", "1.35.0")  # the oldest the chart supports (Chart.yaml kubeVersion) and a current one
CRD_FILES = {
    "ScaledObject": Path(__file__).parent / "data" / "keda" / "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": Path(__file__).parent / "data" / "keda" / "keda.sh_triggerauthentications.yaml",
    "ServiceMonitor": Path(__file__).parent
    / "data"
    / "prometheus-operator"
    / "monitoring.coreos.com_servicemonitors.yaml",
}
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
PLACEHOLDER = "placeholder"  # every password in the ci values


# -- rendering --------------------------------------------------------------------------------------------------
def helm(*args: str) -> Any:
    return run([require_tool("helm"), *args], cwd=CHART)


@cache
def _render(values: Path | None, apis: tuple[str, ...], kube: str, sets: tuple[str, ...]) -> tuple[int, str, str]:
    argv = ["template", "t", ".", "--namespace", "apps", "--kube-version", kube]
    if values is not None:
        argv += ["-f", str(values)]
    for api in apis:
        argv += ["--api-versions", api]
    for item in sets:
        argv += ["--set", item]
    result = helm(*argv)
    return result.returncode, result.stdout, result.stderr


def render(
    name: str = "default", *sets: str, kube: str = KUBE_VERSIONS[-1], apis: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    values, needed = VALUE_SETS[name]
    code, out, err = _render(values, needed if apis is None else apis, kube, sets)
    assert code == 0, err
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_values(
    values: dict[str, Any], directory: Path, *, kube: str = KUBE_VERSIONS[-1], apis: tuple[str, ...] = KEDA_APIS
) -> tuple[int, list[dict[str, Any]], str]:
    """Render the chart with ``values`` (written to a file in ``directory``): exit status, objects, stderr."""
    path = directory / f"values-{len(list(directory.glob('values-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    code, out, err = _render(path, apis, kube, ())
    return code, [doc for doc in yaml.safe_load_all(out) if doc] if code == 0 else [], err


def ci_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(VALUE_SETS[name][0].read_text())


def render_error(name: str | None, *sets: str, apis: tuple[str, ...] = ()) -> str:
    values = VALUE_SETS[name][0] if name else None
    code, _, err = _render(values, apis, KUBE_VERSIONS[-1], sets)
    assert code != 0, "the chart rendered, but should have refused"
    return err


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for name, d in of_kind(docs, kind).items() if name.endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {sorted(of_kind(docs, kind))}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{where}/{c['name']}": c for where, spec in pod_specs(docs).items() for c in spec["containers"]}


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def workers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The worker Deployments, by name."""
    return {
        name: d
        for name, d in of_kind(docs, "Deployment").items()
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    }


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def worker_argv(deployment: dict[str, Any]) -> list[str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container.get("args", [])]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- the tools ----------------------------------------------------------------------------------------------
def test_every_value_set_is_tested() -> None:
    files = set((CHART / "ci").glob("*-values.yaml")) | set((CHART / "ci" / "crds").glob("*-values.yaml"))
    assert files == {path for path, _ in VALUE_SETS.values()}
    for path in (CHART / "ci").glob("*-values.yaml"):  # chart-testing installs these: no CRD-only feature in them
        values = yaml.safe_load(path.read_text())
        worker = values.get("worker", {})
        for pool in [worker, *worker.get("pools", [])]:
            assert not pool.get("keda", {}).get("enabled"), f"{path.name} enables KEDA"
        assert not values.get("metrics", {}).get("serviceMonitor", {}).get("enabled"), path.name


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict(name: str, tmp_path: Path) -> None:
    path, apis = VALUE_SETS[name]
    if apis:  # helm lint offers no --api-versions: lint the set with its CRD-only features (KEDA, ServiceMonitor) off
        values = ci_values(name)
        worker = values.setdefault("worker", {})
        for pool in [worker, *worker.get("pools", [])]:
            pool.get("keda", {})["enabled"] = False
        values.get("metrics", {}).get("serviceMonitor", {})["enabled"] = False
        path = tmp_path / f"{name}-without-crds.yaml"
        path.write_text(yaml.safe_dump(values))
    result = helm("lint", "--strict", ".", "-f", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_manifests_are_valid_kubernetes(name: str, kube: str) -> None:
    docs = render(name, kube=kube)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue  # custom resources: checked against their CRDs below
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} is not valid for Kubernetes {kube}: {exc.message}")
        checked += 1
    assert checked >= 12


def test_kubernetes_validate_catches_a_bad_field() -> None:
    """The validation above can fail: a misspelt field is refused in strict mode."""
    pod_spec = one(render(), "Deployment", "-poller")
    broken = json.loads(json.dumps(pod_spec))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[-1], strict=True)


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema with unknown fields refused where the CRD does not allow them (the API server would
    silently prune them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(kind: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILES[kind].read_text())
    served = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
    schema = _strict(served[version])
    schema["properties"]["metadata"] = {"type": "object"}  # the API server checks metadata itself
    return schema


def validate_custom(doc: dict[str, Any]) -> None:
    version = doc["apiVersion"].split("/")[1]
    jsonschema.validate(doc, crd_schema(doc["kind"], version))


def test_keda_and_servicemonitor_objects_match_their_crds() -> None:
    docs = render("keda")
    custom = [d for d in docs if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert sorted(d["kind"] for d in custom) == ["ScaledObject", "ServiceMonitor", "TriggerAuthentication"]
    for doc in custom:
        validate_custom(doc)
    scaled = one(docs, "ScaledObject", "-worker")
    scaled["spec"]["advanced"]["scalingModifier"] = {}  # a typo KEDA's API server would drop without a word
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(scaled)


# -- what the manifests say -------------------------------------------------------------------------------------
def test_default_values_install_no_unpublished_image() -> None:
    assert yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"] == ""
    sets = ("secrets.databaseUrl=postgresql://u:p@db/x", "secrets.brokerUrl=redis://r:6379/0")
    sets += ("web.auth.password=x", "flower.basicAuth.password=x")
    assert "no public cloacina image is published" in render_error(None, *sets)
    lint = helm("lint", "--strict", ".")  # helm lint reports `required` values as warnings, and passes
    assert "no public cloacina image is published" in lint.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_probes_follow_the_health_model(name: str) -> None:
    docs = render(name)
    pools = list(workers(docs).values())  # every worker pool's Deployment
    for suffix, port in (("-poller", "metrics"), ("-worker", "metrics"), ("-web", "http")):
        deployments = (
            pools if suffix == "-worker" else [d for n, d in of_kind(docs, "Deployment").items() if n.endswith(suffix)]
        )
        for deployment in deployments:
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": port}, suffix
            assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}, suffix
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}, suffix
            assert "exec" not in json.dumps(container), f"{suffix}: a probe must not start a process"
    assert workers(docs)
    for deployment in workers(docs).values():
        startup = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # a slow start is not killed


def test_worker_grace_period_covers_the_task_timeout() -> None:
    docs = render()
    config = one(docs, "ConfigMap", "t-cloacina")["data"]
    timeout = float(config["CLOACINA_TASK_TIMEOUT_S"])
    spec = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= timeout
    err = render_error("default", "worker.terminationGracePeriodSeconds=120")
    assert "must be at least config.task_timeout_s (300)" in err
    assert "must be at least" in render_error("default", "config.task_timeout_s=900")


def test_keda_counts_waiting_and_in_flight_work() -> None:
    scaled = one(render("keda"), "ScaledObject", "-worker")["spec"]
    triggers = {t["name"]: t for t in scaled["triggers"]}
    assert set(triggers) == {"waiting", "inflight"} and all(t["type"] == "redis" for t in triggers.values())
    assert triggers["waiting"]["metadata"]["listName"] == "cloacina"  # the queue's list
    assert triggers["inflight"]["metadata"]["listName"] == "unacked"  # kombu's hash of delivered, unacked messages
    modifiers = scaled["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == "waiting + inflight" and modifiers["activationTarget"] == "0"
    # Scaling to zero is allowed only because in-flight work keeps the workers active.
    assert scaled["minReplicaCount"] == 0
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"][0]["value"] == 1
    assert not of_kind(render("keda"), "HorizontalPodAutoscaler")  # one autoscaler only


def test_keda_redis_address_comes_from_the_broker_url() -> None:
    docs = render("ingress", "worker.keda.enabled=true", apis=KEDA_APIS)  # broker rediss://default:...@...:6380/2
    for trigger in one(docs, "ScaledObject", "-worker")["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert (meta["address"], meta["databaseIndex"], meta["enableTLS"]) == (
            "cloacina-redis-master:6380",
            "2",
            "true",
        )
        assert trigger["authenticationRef"]["name"] == "t-cloacina-worker-redis"
    auth = one(docs, "TriggerAuthentication", "-worker-redis")["spec"]["secretTargetRef"]
    assert {a["parameter"] for a in auth} == {"username", "password"}
    secret = one(docs, "Secret", "-keda-redis")["data"]
    import base64

    assert base64.b64decode(secret["password"]).decode() == PLACEHOLDER
    assert base64.b64decode(secret["username"]).decode() == "default"
    # No second Redis address to keep in step with the broker URL.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "redis" not in values["worker"]["keda"] and "address" not in json.dumps(values["worker"]["keda"])


def test_keda_needs_its_crds_and_the_broker_url() -> None:
    assert "needs KEDA's CRDs" in render_error("keda", apis=MONITORING_APIS)
    err = render_error("existing-secrets", "worker.keda.enabled=true", apis=KEDA_APIS)
    assert 'reads key "broker-url" of Secret "cloacina-urls" at install time' in err
    assert "percent-encoding" in render_error("keda", "secrets.brokerUrl=redis://:p%40ss@r:6379/0", apis=KEDA_APIS)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_flower_gets_the_broker_and_its_auth_only(name: str) -> None:
    docs = render(name, "extraEnv[0].name=APP_ONLY", "extraEnv[0].value=x")
    flowers = [c for where, c in containers(docs).items() if where.endswith("/flower")]
    for flower in flowers:
        assert env_names(flower) == {"CLOACINA_BROKER_URL", "CLOACINA_QUEUE", "FLOWER_BASIC_AUTH"}
        assert "envFrom" not in flower
        assert not [a for a in flower["command"] if "basic" in a or "auth" in a]
    for where, spec in pod_specs(docs).items():
        assert spec["enableServiceLinks"] is False, where  # no FLOWER_PORT=tcp://... from a Service named flower
    poller = one(docs, "Deployment", "-poller")["spec"]["template"]["spec"]["containers"][0]
    assert "APP_ONLY" in env_names(poller)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_secret_in_any_process_argument(name: str) -> None:
    for where, container in containers(render(name)).items():
        argv = [*container.get("command", []), *container.get("args", [])]
        assert not [a for a in argv if PLACEHOLDER in a or "requirepass" in a or "basic-auth" in a], where


def test_disruption_budgets_never_block_a_drain_and_pollers_spread() -> None:
    docs = render()
    for suffix in ("-poller", "-worker"):
        pdb = one(docs, "PodDisruptionBudget", suffix)["spec"]
        assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
        assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    affinity = one(docs, "Deployment", "-poller")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "poller"
    hard = one(render("existing-secrets"), "Deployment", "-poller")["spec"]["template"]["spec"]["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard["podAntiAffinity"]
    assert "antiAffinity must be soft, hard or none" in render_error("default", "poller.antiAffinity=maybe")


def test_network_policies() -> None:
    policies = of_kind(render(), "NetworkPolicy")
    assert set(policies) == {"t-cloacina-default-deny", "t-cloacina-web", "t-cloacina-flower"}
    assert policies["t-cloacina-default-deny"]["spec"] == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "cloacina", "app.kubernetes.io/instance": "t"}},
        "policyTypes": ["Ingress"],
    }
    web = policies["t-cloacina-web"]["spec"]["ingress"]
    assert web == [{"ports": [{"port": "http", "protocol": "TCP"}]}]  # behind auth: any peer may reach it
    scoped = of_kind(render("existing-secrets"), "NetworkPolicy")
    metrics = scoped["t-cloacina-metrics"]["spec"]
    assert metrics["podSelector"]["matchLabels"]["cloacina.io/metrics"] == "true"
    assert metrics["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert "t-cloacina-flower" not in scoped  # Flower is off there
    ingress_only = of_kind(render("ingress"), "NetworkPolicy")["t-cloacina-web"]["spec"]["ingress"][0]
    assert ingress_only["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "ingress-nginx"


def test_metrics_service_and_servicemonitor() -> None:
    docs = render("keda")
    service = one(docs, "Service", "-metrics")["spec"]
    assert service["clusterIP"] == "None" and service["selector"]["cloacina.io/metrics"] == "true"
    for suffix in ("-poller", "-worker"):
        labels = one(docs, "Deployment", suffix)["spec"]["template"]["metadata"]["labels"]
        assert labels["cloacina.io/metrics"] == "true"
    monitor = one(docs, "ServiceMonitor", "t-cloacina")["spec"]
    assert monitor["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["selector"]["matchLabels"]["app.kubernetes.io/component"] == "metrics"
    assert "Prometheus Operator's CRDs" in render_error("default", "metrics.serviceMonitor.enabled=true")


def test_ingresses_use_tls_unless_told_not_to() -> None:
    docs = render("default", "web.ingress.enabled=true", "flower.ingress.enabled=true")
    for suffix, host in (("-web", "cloacina.example.local"), ("-flower", "flower.example.local")):
        ingress = one(docs, "Ingress", suffix)["spec"]
        assert ingress["tls"] == [{"hosts": [host], "secretName": f"t-cloacina{suffix}-tls"}]
    plain = render("default", "web.ingress.enabled=true", "web.ingress.tls.enabled=false")
    assert "tls" not in one(plain, "Ingress", "-web")["spec"]
    flower = one(render("ingress"), "Ingress", "-flower")["spec"]
    assert flower["rules"][0]["http"]["paths"][0]["path"] == "/flower"
    assert flower["tls"][0]["secretName"] == "cloacina-example-com-tls"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_tmp_is_a_sized_emptydir_in_every_pod(name: str) -> None:
    for where, spec in pod_specs(render(name)).items():
        tmp = {v["name"]: v for v in spec["volumes"]}["tmp"]
        assert tmp["emptyDir"]["sizeLimit"] == "512Mi", where
        for container in spec["containers"]:
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_schema_hooks_match_the_compatibility_window() -> None:
    docs = render()
    jobs = of_kind(docs, "Job")
    migrate, rollback = jobs["t-cloacina-migrate"], jobs["t-cloacina-db-rollback-check"]
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == ["cloacina", "db", "upgrade"]
    assert rollback["metadata"]["annotations"]["helm.sh/hook"] == "pre-rollback"
    assert rollback["spec"]["template"]["spec"]["containers"][0]["command"] == ["cloacina", "db", "downgrade"]
    hook_secret = one(docs, "Secret", "-migrate")["metadata"]["annotations"]
    assert hook_secret["helm.sh/hook"] == "pre-install,pre-upgrade,pre-rollback"
    assert int(hook_secret["helm.sh/hook-weight"]) < int(migrate["metadata"]["annotations"]["helm.sh/hook-weight"])


def test_web_is_deployed_behind_auth() -> None:
    docs = render()
    web = one(docs, "Deployment", "-web")["spec"]["template"]["spec"]["containers"][0]
    assert web["command"] == ["cloacina", "web", "--host", "0.0.0.0", "--port", "8080"]
    auth = next(e for e in web["env"] if e["name"] == "CLOACINA_WEB_AUTH")
    assert auth["valueFrom"]["secretKeyRef"] == {"name": "t-cloacina-web", "key": "web-auth"}
    assert one(docs, "Service", "-web")["spec"]["ports"][0]["targetPort"] == "http"
    assert "set web.auth.password" in render_error("default", "web.auth.password=")
    existing = one(render("existing-secrets"), "Deployment", "-web")["spec"]["template"]["spec"]["containers"][0]
    auth = next(e for e in existing["env"] if e["name"] == "CLOACINA_WEB_AUTH")
    assert auth["valueFrom"]["secretKeyRef"]["name"] == "cloacina-web"


def _resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command ``cloacina ...`` runs, and the option names it is given."""
    command: click.Command = cli_main
    rest = argv[1:]
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, [a.split("=", 1)[0] for a in rest if a.startswith("--")]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_command_is_a_real_cloacina_command(name: str) -> None:
    for where, container in containers(render(name)).items():
        argv = [*container["command"], *container.get("args", [])]
        assert argv[0] == "cloacina", where
        command, options = _resolve(argv)
        assert not isinstance(command, click.Group), f"{where}: {argv} names no command"
        if command.name == "flower":
            continue  # Flower's own options
        declared = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert set(options) <= declared, f"{where}: {sorted(set(options) - declared)} are not options of {argv[:3]}"


# -- worker pools (issue 19) -------------------------------------------------------------------------------------
POOL_LABEL = "cloacina.io/worker-pool"
SINGLE_POOL_SELECTOR = {
    "app.kubernetes.io/name": "cloacina",
    "app.kubernetes.io/instance": "t",
    "app.kubernetes.io/component": "worker",
}
# What each single-pool value set rendered before worker pools existed (chart 0.2.0 at commit 31c6fc4), as kind/name:
# the same objects, so an upgrade replaces nothing.
SINGLE_POOL_OBJECTS: dict[str, list[str]] = {
    "default": [
        "ConfigMap/t-cloacina",
        "Deployment/t-cloacina-flower",
        "Deployment/t-cloacina-poller",
        "Deployment/t-cloacina-web",
        "Deployment/t-cloacina-worker",
        "HorizontalPodAutoscaler/t-cloacina-worker",
        "Job/t-cloacina-db-rollback-check",
        "Job/t-cloacina-migrate",
        "NetworkPolicy/t-cloacina-default-deny",
        "NetworkPolicy/t-cloacina-flower",
        "NetworkPolicy/t-cloacina-web",
        "PodDisruptionBudget/t-cloacina-poller",
        "PodDisruptionBudget/t-cloacina-worker",
        "Secret/t-cloacina",
        "Secret/t-cloacina-flower",
        "Secret/t-cloacina-migrate",
        "Secret/t-cloacina-web",
        "Service/t-cloacina-flower",
        "Service/t-cloacina-metrics",
        "Service/t-cloacina-web",
        "ServiceAccount/t-cloacina",
    ],
    "existing-secrets": [
        "ConfigMap/t-cloacina",
        "Deployment/t-cloacina-poller",
        "Deployment/t-cloacina-web",
        "Deployment/t-cloacina-worker",
        "Job/t-cloacina-db-rollback-check",
        "Job/t-cloacina-migrate",
        "NetworkPolicy/t-cloacina-default-deny",
        "NetworkPolicy/t-cloacina-metrics",
        "NetworkPolicy/t-cloacina-web",
        "PodDisruptionBudget/t-cloacina-poller",
        "PodDisruptionBudget/t-cloacina-worker",
        "Service/t-cloacina-metrics",
        "Service/t-cloacina-web",
        "ServiceAccount/t-cloacina",
    ],
    "ingress": [
        "ConfigMap/t-cloacina",
        "Deployment/t-cloacina-flower",
        "Deployment/t-cloacina-poller",
        "Deployment/t-cloacina-web",
        "Deployment/t-cloacina-worker",
        "HorizontalPodAutoscaler/t-cloacina-worker",
        "Ingress/t-cloacina-flower",
        "Ingress/t-cloacina-web",
        "Job/t-cloacina-db-rollback-check",
        "Job/t-cloacina-migrate",
        "NetworkPolicy/t-cloacina-default-deny",
        "NetworkPolicy/t-cloacina-flower",
        "NetworkPolicy/t-cloacina-web",
        "PodDisruptionBudget/t-cloacina-poller",
        "PodDisruptionBudget/t-cloacina-worker",
        "Secret/t-cloacina",
        "Secret/t-cloacina-flower",
        "Secret/t-cloacina-migrate",
        "Secret/t-cloacina-web",
        "Service/t-cloacina-flower",
        "Service/t-cloacina-metrics",
        "Service/t-cloacina-web",
        "ServiceAccount/t-cloacina",
    ],
    "keda": [
        "ConfigMap/t-cloacina",
        "Deployment/t-cloacina-flower",
        "Deployment/t-cloacina-poller",
        "Deployment/t-cloacina-web",
        "Deployment/t-cloacina-worker",
        "Job/t-cloacina-db-rollback-check",
        "Job/t-cloacina-migrate",
        "NetworkPolicy/t-cloacina-default-deny",
        "NetworkPolicy/t-cloacina-flower",
        "NetworkPolicy/t-cloacina-web",
        "PodDisruptionBudget/t-cloacina-poller",
        "PodDisruptionBudget/t-cloacina-worker",
        "ScaledObject/t-cloacina-worker",
        "Secret/t-cloacina",
        "Secret/t-cloacina-flower",
        "Secret/t-cloacina-keda-redis",
        "Secret/t-cloacina-migrate",
        "Secret/t-cloacina-web",
        "Service/t-cloacina-flower",
        "Service/t-cloacina-metrics",
        "Service/t-cloacina-web",
        "ServiceAccount/t-cloacina",
        "ServiceMonitor/t-cloacina",
        "TriggerAuthentication/t-cloacina-worker-redis",
    ],
}


@pytest.mark.parametrize("name", [n for n in VALUE_SETS if n != "two-pools"])
def test_single_pool_values_render_the_objects_they_always_did(name: str) -> None:
    docs = render(name)
    assert sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs) == SINGLE_POOL_OBJECTS[name]
    (worker,) = workers(docs).values()
    assert worker["metadata"]["name"] == "t-cloacina-worker"
    # A Deployment's selector cannot change on upgrade: it is the single-pool chart's, the pool label is on the pods.
    assert worker["spec"]["selector"] == {"matchLabels": SINGLE_POOL_SELECTOR}
    assert pod_labels(worker)[POOL_LABEL] == worker["metadata"]["labels"][POOL_LABEL] == "default"
    for pdb in [d for n, d in of_kind(docs, "PodDisruptionBudget").items() if n == "t-cloacina-worker"]:
        assert pdb["spec"]["selector"] == {"matchLabels": SINGLE_POOL_SELECTOR}
    argv = worker_argv(worker)
    assert (option(argv, "--queues"), option(argv, "--concurrency")) == ("cloacina", "4")


def test_two_pools_one_deployment_each_on_its_own_queues() -> None:
    docs = render("two-pools")
    pools = workers(docs)
    assert set(pools) == {"t-cloacina-worker-default", "t-cloacina-worker-heavy"}
    default, heavy = pools["t-cloacina-worker-default"], pools["t-cloacina-worker-heavy"]
    for pool, deployment in (("default", default), ("heavy", heavy)):
        assert deployment["metadata"]["labels"][POOL_LABEL] == pool
        assert deployment["spec"]["selector"]["matchLabels"] == {**SINGLE_POOL_SELECTOR, POOL_LABEL: pool}
        assert pod_labels(deployment)[POOL_LABEL] == pool
        assert "replicas" not in deployment["spec"]  # autoscaled: an HPA, or KEDA
    assert not selects(default["spec"]["selector"]["matchLabels"], pod_labels(heavy))
    assert not selects(heavy["spec"]["selector"]["matchLabels"], pod_labels(default))

    assert option(worker_argv(default), "--queues") == "cloacina"  # config.queue
    assert option(worker_argv(default), "--concurrency") == "4"  # worker.concurrency
    assert option(worker_argv(heavy), "--queues") == "heavy"
    assert option(worker_argv(heavy), "--concurrency") == "1"

    chart = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    (heavy_values,) = [p for p in ci_values("two-pools")["worker"]["pools"] if p["name"] == "heavy"]
    default_spec, heavy_spec = default["spec"]["template"]["spec"], heavy["spec"]["template"]["spec"]
    assert default_spec["containers"][0]["resources"] == chart["resources"]
    assert "nodeSelector" not in default_spec and "tolerations" not in default_spec
    assert default_spec["terminationGracePeriodSeconds"] == chart["terminationGracePeriodSeconds"]
    assert heavy_spec["containers"][0]["resources"] == heavy_values["resources"]
    assert heavy_spec["nodeSelector"] == {"cloacina.io/node-pool": "heavy"}
    assert heavy_spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "heavy", "effect": "NoSchedule"}
    ]
    assert heavy_spec["terminationGracePeriodSeconds"] == 900
    # What a pool does not set it inherits from worker.*: probes, for one.
    assert heavy_spec["containers"][0]["startupProbe"] == default_spec["containers"][0]["startupProbe"]


def test_each_pool_has_its_own_autoscaler_on_its_own_queues() -> None:
    docs = render("two-pools")
    hpas, scaled = of_kind(docs, "HorizontalPodAutoscaler"), of_kind(docs, "ScaledObject")
    assert set(hpas) == {"t-cloacina-worker-default"} and set(scaled) == {"t-cloacina-worker-heavy"}
    assert hpas["t-cloacina-worker-default"]["spec"]["scaleTargetRef"]["name"] == "t-cloacina-worker-default"
    heavy = scaled["t-cloacina-worker-heavy"]["spec"]
    assert heavy["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "t-cloacina-worker-heavy"}
    assert (heavy["minReplicaCount"], heavy["maxReplicaCount"]) == (0, 8)
    # Its own queue's list only: not config.queue, and not the in-flight hash every pool shares (unackedKey "").
    assert [(t["name"], t["metadata"]["listName"], t["metadata"]["listLength"]) for t in heavy["triggers"]] == [
        ("waiting", "heavy", "1")
    ]
    assert "scalingModifiers" not in heavy["advanced"]  # one trigger: its listLength is the per-pod target
    assert heavy["triggers"][0]["authenticationRef"]["name"] == "t-cloacina-worker-redis"
    assert set(of_kind(docs, "TriggerAuthentication")) == {"t-cloacina-worker-redis"}
    custom = [d for d in docs if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert sorted(d["kind"] for d in custom) == ["ScaledObject", "TriggerAuthentication"]
    for doc in custom:
        validate_custom(doc)


def test_a_pool_on_several_queues_scales_on_all_of_them(tmp_path: Path) -> None:
    values = ci_values("two-pools")
    values["worker"] = {
        "keda": {"enabled": True, "tasksPerPod": 2},
        "pools": [
            {"name": "default", "queues": ["cloacina", "reports"]},
            {"name": "heavy", "queues": ["heavy", "gpu"], "keda": {"maxReplicaCount": 3}},
            {"name": "fixed", "queues": ["slow"], "keda": {"enabled": False}, "autoscaling": {"enabled": False}},
        ],
    }
    code, docs, err = render_values(values, tmp_path)
    assert code == 0, err
    pools = workers(docs)
    assert option(worker_argv(pools["t-cloacina-worker-heavy"]), "--queues") == "heavy,gpu"
    scaled = {name: d["spec"] for name, d in of_kind(docs, "ScaledObject").items()}
    assert set(scaled) == {"t-cloacina-worker-default", "t-cloacina-worker-heavy"}
    heavy = scaled["t-cloacina-worker-heavy"]
    lists = {t["name"]: t["metadata"]["listName"] for t in heavy["triggers"]}
    assert lists == {"waiting_0": "heavy", "waiting_1": "gpu", "inflight": "unacked"}
    modifiers = heavy["advanced"]["scalingModifiers"]
    assert (modifiers["formula"], modifiers["target"]) == ("waiting_0 + waiting_1 + inflight", "2")
    # keda key by key: maxReplicaCount from the pool, the rest from worker.keda and the chart's defaults.
    assert (heavy["minReplicaCount"], heavy["maxReplicaCount"], heavy["cooldownPeriod"]) == (1, 3, 300)
    default = {t["name"]: t["metadata"]["listName"] for t in scaled["t-cloacina-worker-default"]["triggers"]}
    assert default == {"waiting_0": "cloacina", "waiting_1": "reports", "inflight": "unacked"}
    # A pool may turn off what worker.* turns on (false is a value, not "unset").
    assert pools["t-cloacina-worker-fixed"]["spec"]["replicas"] == 2
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            validate_custom(doc)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


def test_one_declared_pool_is_named_like_any_pool(tmp_path: Path) -> None:
    values = ci_values("default")
    values["worker"] = {"pools": [{"name": "default", "concurrency": 8}]}
    code, docs, err = render_values(values, tmp_path, apis=())
    assert code == 0, err
    (worker,) = workers(docs).values()
    assert worker["metadata"]["name"] == "t-cloacina-worker-default"
    assert option(worker_argv(worker), "--queues") == "cloacina" and option(worker_argv(worker), "--concurrency") == "8"
    assert set(of_kind(docs, "HorizontalPodAutoscaler")) == {"t-cloacina-worker-default"}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_pod_is_under_two_disruption_budgets(name: str) -> None:
    """A pod selected by two PodDisruptionBudgets cannot be evicted at all (the eviction API refuses it)."""
    docs = render(name)
    budgets = {n: d["spec"]["selector"]["matchLabels"] for n, d in of_kind(docs, "PodDisruptionBudget").items()}
    for deployment_name, deployment in of_kind(docs, "Deployment").items():
        covering = [n for n, selector in budgets.items() if selects(selector, pod_labels(deployment))]
        assert len(covering) <= 1, f"{deployment_name}: {covering}"
        if deployment_name in workers(docs) or deployment_name.endswith("-poller"):
            assert covering == [deployment_name]
    for budget in of_kind(docs, "PodDisruptionBudget").values():
        assert budget["spec"]["maxUnavailable"] == 1 and budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_network_policies_and_metrics_select_every_pool() -> None:
    sets = ("networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",)
    docs = render("two-pools", *sets, "metrics.serviceMonitor.enabled=true", apis=KEDA_APIS + MONITORING_APIS)
    pools = workers(docs)
    assert len(pools) == 2
    policies = of_kind(docs, "NetworkPolicy")
    service = one(docs, "Service", "-metrics")
    monitor = one(docs, "ServiceMonitor", "t-cloacina")["spec"]["selector"]["matchLabels"]
    assert selects(monitor, service["metadata"]["labels"])
    for name, deployment in pools.items():
        labels = pod_labels(deployment)
        assert selects(policies["t-cloacina-default-deny"]["spec"]["podSelector"]["matchLabels"], labels), name
        assert selects(policies["t-cloacina-metrics"]["spec"]["podSelector"]["matchLabels"], labels), name
        assert selects(service["spec"]["selector"], labels), name
        assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] == "metrics"


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ([{"name": "default"}, {"name": "default", "queues": ["x"]}], 'worker.pools: the name "default" is used twice'),
        ([{"name": "default"}, {"name": "Heavy", "queues": ["heavy"]}], '.name "Heavy" must be a DNS label'),
        ([{"name": "default"}, {"queues": ["heavy"]}], "worker.pools[1] needs a name"),
        ([{"name": "default"}, {"name": "heavy", "queues": ["heavy"], "replicas": 3}], 'unknown key "replicas"'),
        ([{"name": "default"}, {"name": "heavy"}], "worker.pools[heavy] needs queues"),
        ([{"name": "default"}, {"name": "heavy", "queues": "heavy"}], "worker.pools[heavy].queues must be a list"),
        ([{"name": "default"}, {"name": "heavy", "queues": ["a b"]}], "is not a queue name"),
        ([{"name": "heavy", "queues": ["heavy"]}], 'no worker pool consumes config.queue ("cloacina")'),
        (
            [{"name": "default"}, {"name": "heavy", "queues": ["heavy"], "terminationGracePeriodSeconds": 120}],
            "worker.pools[heavy].terminationGracePeriodSeconds (120) must be at least config.task_timeout_s (300)",
        ),
        (
            [{"name": "default"}, {"name": "heavy", "queues": ["heavy"], "keda": {"enabled": True}}],
            "worker.pools[heavy].keda.enabled needs KEDA's CRDs",
        ),
    ],
)
def test_the_chart_refuses_bad_pools(pools: list[dict[str, Any]], message: str, tmp_path: Path) -> None:
    values = ci_values("default")
    values["worker"] = {"pools": pools}
    code, _, err = render_values(values, tmp_path, apis=())
    assert code != 0 and message in err, err


def test_notes_name_every_pool(tmp_path: Path) -> None:
    """NOTES.txt (what `helm install` prints; `helm template` leaves it out), rendered client-side. Offline there are
    no KEDA CRDs, so the heavy pool is on an HPA here."""
    values = ci_values("two-pools")
    values["worker"]["pools"][1]["keda"]["enabled"] = False
    path = tmp_path / "two-pools-hpa.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm("install", "t", ".", "--dry-run=client", "--namespace", "apps", "-f", str(path))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("\nNOTES:\n", 1)[1]
    app = "--app /app/workflows/example_app.py"
    assert f"Workers, pool default: `cloacina worker {app} --concurrency 4 --queues cloacina`" in notes
    assert f"Workers, pool heavy: `cloacina worker {app} --concurrency 1 --queues heavy`" in notes
    assert "deploy/t-cloacina-worker-default -- cloacina health" in notes
    single = helm("install", "t", ".", "--dry-run=client", "--namespace", "apps", "-f", str(VALUE_SETS["default"][0]))
    notes = single.stdout.split("\nNOTES:\n", 1)[1]
    assert f"Workers: `cloacina worker {app} --concurrency 4 --queues cloacina`" in notes and "pool" not in notes
    assert "deploy/t-cloacina-worker -- cloacina health" in notes
