"""The Helm chart, checked with the real tools (issue 13): ``helm lint --strict``, ``helm template`` for every value
set the chart offers, ``kubernetes-validate --strict`` of the output for two Kubernetes versions, KEDA's and the
Prometheus Operator's objects against their own CRD schemas (kept in ``tests/data``), and what the rendered
manifests must say: probes that follow the health model, grace periods that cover the task timeout, KEDA counting
waiting and in-flight work with its Redis address taken from the broker URL, disruption budgets that never block a
drain, network policies, no secret in any process's arguments, Flower with the broker only.

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


# -- the tools ----------------------------------------------------------------------------------------------
def test_every_value_set_is_tested() -> None:
    files = set((CHART / "ci").glob("*-values.yaml")) | set((CHART / "ci" / "crds").glob("*-values.yaml"))
    assert files == {path for path, _ in VALUE_SETS.values()}
    for path in (CHART / "ci").glob("*-values.yaml"):  # chart-testing installs these: no CRD-only feature in them
        values = yaml.safe_load(path.read_text())
        assert not values.get("worker", {}).get("keda", {}).get("enabled"), f"{path.name} enables KEDA"
        assert not values.get("metrics", {}).get("serviceMonitor", {}).get("enabled"), path.name


@pytest.mark.parametrize("name", [n for n, (_, apis) in VALUE_SETS.items() if not apis])
def test_helm_lint_strict(name: str) -> None:
    result = helm("lint", "--strict", ".", "-f", str(VALUE_SETS[name][0]))
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
    for suffix, port in (("-poller", "metrics"), ("-worker", "metrics"), ("-web", "http")):
        deployments = [d for n, d in of_kind(docs, "Deployment").items() if n.endswith(suffix)]
        for deployment in deployments:
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": port}, suffix
            assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}, suffix
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}, suffix
            assert "exec" not in json.dumps(container), f"{suffix}: a probe must not start a process"
    worker = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    startup = worker["startupProbe"]
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
