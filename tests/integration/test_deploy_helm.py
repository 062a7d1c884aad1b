"""The Helm chart, as an operator installs it.

Rendered and linted with Helm's own engine (helm-python-sdk binds Helm v4's Go code, no helm binary),
every rendered object checked against the Kubernetes API schemas that kubernetes-validate ships, then
the promises the chart makes read off the objects: one pod, Recreate, probes on /healthz and /readyz and
the worker's own (`registry-janitor worker-health`); with PostgreSQL, web and worker Deployments of any size
with their PodDisruptionBudgets, and several replicas on SQLite refused;
a non-root read-only container with only /data and /tmp writable, and a config that holds no secret.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

try:
    import helm_python
except ImportError:  # reported by the `helm` fixture, so the failure names the fix
    helm_python = None  # type: ignore[assignment]

try:
    import kubernetes_validate
except ImportError:
    kubernetes_validate = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "registry-janitor"
EXAMPLE_CONFIG = ROOT / "config" / "janitor.example.yaml"
RELEASE = "janitor"
NAMESPACE = "ops"
FULLNAME = "janitor-registry-janitor"
CONFIG_PATH = "/etc/registry-janitor/janitor.yaml"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest one shipped.
OLDEST_KUBE = "1.27"

PVC = "PersistentVolumeClaim"
SECRET_REF = r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"

FULL_VALUES: dict[str, Any] = {
    "splitProcesses": True,
    "existingSecret": "janitor-credentials",
    "persistence": {"existingClaim": "janitor-ledger"},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "25m"},
        "hosts": [{"host": "janitor.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "janitor-tls", "hosts": ["janitor.example.org"]}],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}],
    },
    "web": {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}},
    "worker": {"resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}},
    "config": {
        "gitlab": {"url": "https://gitlab.example.org", "api_token": "${GITLAB_API_TOKEN}"},
        "registry": {"url": "https://registry.example.org", "hostnames": ["registry.example.org"]},
        "server": {"metrics_require_token": True},
        "projects": [
            {
                "path": "group/app",
                "webhook_secret": "${APP_WEBHOOK_SECRET}",
                "registry_token": "${APP_REGISTRY_TOKEN}",
                "images": ["", "builder"],
                "dry_run": False,
                "tags": [
                    {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
                    {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
                    {"pattern": "cache-$CI_PIPELINE_ID", "lifetime": "pipeline"},
                    {"pattern": "preview-$CI_COMMIT_SHORT_SHA", "ttl": "7d"},
                ],
            }
        ],
    },
}

# Values a chart-created Secret carries in the secret-values case: none may reach the ConfigMap.
SECRET_VALUES = {
    "APP_WEBHOOK_SECRET": "webhook-secret-4a7f19",
    "APP_REGISTRY_TOKEN": "glpat-registry-9c2e5b",
    "JANITOR_ADMIN_TOKEN": "admin-token-3d81aa",
}
WITH_SECRETS: dict[str, Any] = {
    "secrets": SECRET_VALUES,
    "config": {
        "projects": [
            {
                "path": "group/app",
                "webhook_secret": "${APP_WEBHOOK_SECRET}",
                "registry_token": "${APP_REGISTRY_TOKEN}",
                "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}],
            }
        ]
    },
}

# ServiceMonitor is a CRD, absent from the Kubernetes schemas: checked against the fields of
# monitoring.coreos.com/v1 the chart uses (prometheus-operator's API reference), nothing more.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["key"],
                                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


# The optional monitoring: prometheus-operator's PrometheusRule and Grafana's sidecar dashboard.
MONITORING: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "alertLabels": {"team": "platform"}, "queueGrowing": {"threshold": 250}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Registry"}},
}
DASHBOARD = CHART / "dashboards" / "registry-janitor.json"
ALERTS = {"RegistryJanitorQueueGrowing", "RegistryJanitorWorkerHeartbeatStale", "RegistryJanitorUntagFailures",
          "RegistryJanitorWebhooksQuiet"}
DURATION = "^([0-9]+(ms|s|m|h|d|w|y))+$"

# PrometheusRule (monitoring.coreos.com/v1, prometheus-operator's API reference): the fields the chart uses.
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],  # type: ignore[index]
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": DURATION},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["alert", "expr"],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": DURATION},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    }},
                },
            }}},
        },
    },
}


def _missing(package: str, module: str) -> str:
    return (
        f"{package} is not installed (import {module} failed). The deployment tests need it: run `.ci/run`, "
        "which installs the test extra, or `pip install -e '.[test]'`."
    )


@pytest.fixture(scope="module")
def helm() -> Any:
    if helm_python is None:
        pytest.fail(_missing("helm-python-sdk", "helm_python"), pytrace=False)
    return helm_python


@pytest.fixture(scope="module")
def kube_versions() -> tuple[str, ...]:
    if kubernetes_validate is None:
        pytest.fail(_missing("kubernetes-validate", "kubernetes_validate"), pytrace=False)
    from kubernetes_validate.utils import all_versions

    shipped = {".".join(v.split(".")[:2]) for v in all_versions()}
    if OLDEST_KUBE not in shipped:
        pytest.fail(
            f"kubernetes-validate {kubernetes_validate.__version__} ships no schemas for Kubernetes "
            f"{OLDEST_KUBE}, the oldest the chart supports; install the version range `.ci/run` installs.",
            pytrace=False,
        )
    return (OLDEST_KUBE, kubernetes_validate.latest_version())


@cache
def _render_cached(helm: Any, chart_dir: str, values_yaml: str) -> dict[str, str]:
    with helm.Chart.load(chart_dir) as chart:
        result: dict[str, str] = chart.render(yaml.safe_load(values_yaml), name=RELEASE, namespace=NAMESPACE)
        return result


def render_files(helm: Any, values: dict[str, Any] | None = None, chart_dir: Path = CHART) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included."""
    return _render_cached(helm, str(chart_dir), yaml.safe_dump(values or {}, sort_keys=True))


def render(helm: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders with these values."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(helm, values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def notes(helm: Any, values: dict[str, Any] | None = None) -> str:
    files = render_files(helm, values)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def janitor_config(objects: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    text = one(objects, "ConfigMap")["data"]["janitor.yaml"]
    parsed = yaml.safe_load(text)
    assert isinstance(parsed, dict), "janitor.yaml must be a YAML mapping"
    return text, parsed


def secret_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Every config key that holds a credential, by key path."""
    fields = {
        "gitlab.api_token": config.get("gitlab", {}).get("api_token"),
        "gitlab.system_hook_secret": config.get("gitlab", {}).get("system_hook_secret"),
        "server.admin_token": config.get("server", {}).get("admin_token"),
        "server.registry_notification_token": config.get("server", {}).get("registry_notification_token"),
    }
    for i, project in enumerate(config.get("projects") or []):
        fields[f"projects[{i}].webhook_secret"] = project.get("webhook_secret")
        fields[f"projects[{i}].registry_token"] = project.get("registry_token")
    return {k: v for k, v in fields.items() if v is not None}


def assert_valid(objects: list[dict[str, Any]], versions: tuple[str, ...]) -> None:
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        if obj["kind"] == "PrometheusRule":
            jsonschema.validate(obj, PROMETHEUS_RULE_SCHEMA)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name} is invalid for Kubernetes {version} at {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{name}: {exc.message}")


def assert_lint_clean(helm: Any, values: dict[str, Any] | None = None) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [
        {"error": e} for e in report.get("errors") or []
    ]
    assert report["total_charts_linted"] == 1
    assert not problems, f"helm lint --strict: {problems}"


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def volumes(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def env_names(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def assert_hardened(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == 10001
    assert ctx["fsGroup"] == 10001
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for name, container in containers(deployment).items():
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in sc["capabilities"], name


def assert_writable_paths(deployment: dict[str, Any], claim: str) -> None:
    vols = volumes(deployment)
    for name, container in containers(deployment).items():
        by_path = mounts(container)
        assert set(by_path) >= {"/data", "/tmp", "/etc/registry-janitor"}, name
        data, tmp = vols[by_path["/data"]["name"]], vols[by_path["/tmp"]["name"]]
        assert data["persistentVolumeClaim"]["claimName"] == claim, name
        assert "emptyDir" in tmp, name
        assert not by_path["/data"].get("readOnly"), name
        assert by_path["/etc/registry-janitor"]["readOnly"] is True, name
        config_volume = vols[by_path["/etc/registry-janitor"]["name"]]
        assert config_volume["configMap"]["name"] == FULLNAME, name
        assert env_names(container)["JANITOR_CONFIG"]["value"] == CONFIG_PATH, name


def assert_http_probes(container: dict[str, Any], *, runs_worker: bool) -> None:
    """Readiness on /readyz (the web can store events); liveness on /healthz, or the worker's own probe
    when the container runs the worker too."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    if runs_worker:
        assert_worker_probe(container)
    else:
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def assert_worker_probe(container: dict[str, Any]) -> None:
    """The worker's liveness is its heartbeat (``registry-janitor worker-health``), with time for a start and
    for the command itself, restarting the worker only after several stale answers in a row."""
    probe = container["livenessProbe"]
    assert probe["exec"] == {"command": ["registry-janitor", "worker-health"]}
    assert "httpGet" not in probe
    assert probe["initialDelaySeconds"] >= 30
    assert probe["timeoutSeconds"] >= 5, "the command starts a Python process"
    assert probe["failureThreshold"] >= 2 and probe["periodSeconds"] * probe["failureThreshold"] >= 60


def assert_one_pod(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 1, "SQLite on a PVC: exactly one replica"
    assert spec["strategy"] == {"type": "Recreate"}, "the old pod must stop before the new one opens SQLite"


def assert_service_reaches_pod(objects: list[dict[str, Any]]) -> None:
    service, deployment = one(objects, "Service"), one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, "http")


# ---------------------------------------------------------------------------------------------------------


def test_chart_metadata(helm: Any) -> None:
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
        assert meta["apiVersion"] == "v2"
        assert meta["name"] == "registry-janitor"
        assert meta["appVersion"] == "0.1.0"
        assert chart.schema is not None, "values.schema.json is part of the chart"
        chart.validate_schema(chart.values)


@pytest.mark.parametrize("case", ["default", "full", "monitoring"])
def test_lints_clean_in_strict_mode(helm: Any, case: str) -> None:
    assert_lint_clean(helm, {"default": None, "full": FULL_VALUES, "monitoring": MONITORING}[case])


@pytest.mark.parametrize("case", ["default", "full", "secrets", "monitoring"])
def test_every_rendered_object_is_valid_kubernetes(
    helm: Any, kube_versions: tuple[str, ...], case: str
) -> None:
    values = {"default": None, "full": FULL_VALUES, "secrets": WITH_SECRETS, "monitoring": MONITORING}[case]
    objects = render(helm, values)
    assert_valid(objects, kube_versions)
    for obj in objects:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, obj["kind"]


def test_default_install(helm: Any) -> None:
    objects = render(helm)
    assert kinds(objects) == {
        "ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Service", "ServiceAccount",
    }
    deployment = one(objects, "Deployment")
    assert_one_pod(deployment)
    assert_hardened(deployment)
    assert_writable_paths(deployment, claim=f"{FULLNAME}-data")
    assert_service_reaches_pod(objects)

    [container] = containers(deployment).values()
    assert container["command"] + container["args"] == ["registry-janitor", "run"]
    assert_http_probes(container, runs_worker=True)
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == f"{FULLNAME}-data"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in pvc["spec"], "empty storageClass means the cluster default"

    _, config = janitor_config(objects)
    assert config["server"]["bind"] == "0.0.0.0:8080"
    assert config["storage"]["url"] == "sqlite:////data/janitor.db"
    assert config["defaults"]["dry_run"] is True, "a new install must not untag before someone looks"
    assert set(config) <= {"gitlab", "registry", "storage", "server", "worker", "defaults", "projects"}


def test_default_tokens_are_generated_into_the_secret_not_the_config(helm: Any) -> None:
    objects = render(helm)
    text, config = janitor_config(objects)
    secret = one(objects, "Secret")
    assert secret["metadata"]["name"] == FULLNAME
    assert set(secret["data"]) == {"JANITOR_ADMIN_TOKEN", "JANITOR_REGISTRY_TOKEN"}
    for key, encoded in secret["data"].items():
        value = base64.b64decode(encoded).decode()
        assert len(value) >= 32, key
        assert value not in text, f"{key}'s value leaked into the ConfigMap"
    assert secret_fields(config) == {
        "server.admin_token": "${JANITOR_ADMIN_TOKEN}",
        "server.registry_notification_token": "${JANITOR_REGISTRY_TOKEN}",
    }
    env = env_names(containers(one(objects, "Deployment"))["janitor"])
    for var in ("JANITOR_ADMIN_TOKEN", "JANITOR_REGISTRY_TOKEN"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": var}


def test_config_holds_references_and_secret_holds_values(helm: Any) -> None:
    objects = render(helm, WITH_SECRETS)
    text, config = janitor_config(objects)
    fields = secret_fields(config)
    assert set(fields) >= {"server.admin_token", "projects[0].webhook_secret", "projects[0].registry_token"}
    for where, value in fields.items():
        assert isinstance(value, str) and re.fullmatch(SECRET_REF, value), (
            f"config.{where} must be a ${{VAR}} reference, got {value!r}"
        )
    for var, value in SECRET_VALUES.items():
        assert value not in text, f"the value of {var} leaked into the ConfigMap"

    secret = one(objects, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded.items() >= SECRET_VALUES.items()
    assert "JANITOR_REGISTRY_TOKEN" in decoded, "the token not given is generated"

    deployment = one(objects, "Deployment")
    env = env_names(containers(deployment)["janitor"])
    for var in (*SECRET_VALUES, "JANITOR_REGISTRY_TOKEN"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": var}
    assert "checksum/secret" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_full_values(helm: Any) -> None:
    objects = render(helm, FULL_VALUES)
    assert kinds(objects) == {
        "ConfigMap", "Deployment", "Ingress", "NetworkPolicy", "Service", "ServiceAccount", "ServiceMonitor",
    }, "existingSecret and existingClaim: the chart creates neither a Secret nor a PVC"
    deployment = one(objects, "Deployment")
    assert_one_pod(deployment)
    assert_hardened(deployment)
    assert_writable_paths(deployment, claim="janitor-ledger")
    assert_service_reaches_pod(objects)

    both = containers(deployment)
    assert list(both) == ["web", "worker"], "split processes stay in one pod, next to the one SQLite file"
    web, worker = both["web"], both["worker"]
    assert web["command"] + web["args"] == ["registry-janitor", "web"]
    assert worker["command"] + worker["args"] == ["registry-janitor", "worker"]
    assert_http_probes(web, runs_worker=False)
    assert "ports" not in worker and "readinessProbe" not in worker and "startupProbe" not in worker
    assert_worker_probe(worker)
    assert web["resources"]["limits"]["memory"] == "1Gi"
    assert worker["resources"]["limits"]["memory"] == "512Mi"
    [data_volume] = [v for v in volumes(deployment).values() if "persistentVolumeClaim" in v]
    assert mounts(web)["/data"]["name"] == mounts(worker)["/data"]["name"] == data_volume["name"]

    needed = {"GITLAB_API_TOKEN", "JANITOR_ADMIN_TOKEN", "JANITOR_REGISTRY_TOKEN", "APP_WEBHOOK_SECRET",
              "APP_REGISTRY_TOKEN"}
    for container in (web, worker):
        env = env_names(container)
        for var in needed:
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "janitor-credentials", "key": var}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations and "checksum/secret" not in annotations

    ingress = one(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["janitor.example.org"], "secretName": "janitor-tls"}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "janitor.example.org"
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}

    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # metrics_require_token: Prometheus authenticates with the admin token from the operator's Secret.
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "janitor-credentials", "key": "JANITOR_ADMIN_TOKEN"},
    }

    policy = one(objects, "NetworkPolicy")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [ingress_rule] = policy["spec"]["ingress"]
    assert ingress_rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert ingress_rule["from"] == FULL_VALUES["networkPolicy"]["ingressFrom"]
    dns, https = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert https == FULL_VALUES["networkPolicy"]["egress"][0]

    _, config = janitor_config(objects)
    assert config["projects"][0]["tags"][3] == {"pattern": "preview-$CI_COMMIT_SHORT_SHA", "ttl": "7d"}
    assert config["server"]["bind"] == "0.0.0.0:8080"


def test_config_change_rolls_the_pod(helm: Any) -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        deployment = one(render(helm, values), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum(None)
    assert base == checksum(None)
    assert checksum({"config": {"worker": {"poll_interval": "10s"}}}) != base


def test_secret_change_rolls_the_pod(helm: Any) -> None:
    def checksum(token: str) -> str:
        deployment = one(render(helm, {"secrets": {"JANITOR_ADMIN_TOKEN": token}}), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])

    assert checksum("first-token-value") != checksum("second-token-value")


@pytest.mark.parametrize(
    ("where", "values"),
    [
        ("/config/server/admin_token", {"config": {"server": {"admin_token": "hunter2-inline"}}}),
        ("/config/gitlab/api_token", {"config": {"gitlab": {"api_token": "glpat-inline"}}}),
        ("/config/gitlab/system_hook_secret", {"config": {"gitlab": {"system_hook_secret": "inline-hook-secret"}}}),
        (
            "/config/projects/0/registry_token",
            {"config": {"projects": [{"path": "group/app", "registry_token": "glpat-inline"}]}},
        ),
    ],
)
def test_inline_secret_is_refused_by_the_schema(helm: Any, where: str, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        render_files(helm, values)


def test_inline_secret_is_refused_even_without_the_schema(helm: Any, tmp_path: Path) -> None:
    # `helm install --skip-schema-validation` must not let a secret into the ConfigMap either.
    chart = tmp_path / "registry-janitor"
    shutil.copytree(CHART, chart)
    (chart / "values.schema.json").unlink()
    values = {"config": {"projects": [{"path": "group/app", "webhook_secret": "inline-webhook-secret"}]}}
    with pytest.raises(helm.HelmRenderError, match=r"projects\[0\]\.webhook_secret holds an inline secret"):
        render_files(helm, values, chart_dir=chart)


def test_referenced_secret_without_a_value_is_refused(helm: Any) -> None:
    values = {"config": {"projects": [{"path": "group/app", "webhook_secret": "${APP_WEBHOOK_SECRET}"}]}}
    with pytest.raises(helm.HelmRenderError, match=r"references \$\{APP_WEBHOOK_SECRET\}"):
        render_files(helm, values)
    # Given by the operator's own Secret, or through extraEnv, it renders.
    render_files(helm, {**values, "existingSecret": "janitor-credentials"})
    extra = [{"name": "APP_WEBHOOK_SECRET", "valueFrom": {"secretKeyRef": {"name": "app", "key": "hook"}}}]
    env = env_names(containers(one(render(helm, {**values, "extraEnv": extra}), "Deployment"))["janitor"])
    assert env["APP_WEBHOOK_SECRET"] == extra[0]


def test_both_secret_sources_is_refused(helm: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="not both"):
        render_files(helm, {"existingSecret": "janitor-credentials", "secrets": {"X": "y"}})


def test_loopback_bind_is_refused(helm: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="all interfaces"):
        render_files(helm, {"config": {"server": {"bind": "127.0.0.1:8080"}}})


def test_container_port_follows_the_bind_address(helm: Any) -> None:
    deployment = one(render(helm, {"config": {"server": {"bind": "0.0.0.0:9090"}}}), "Deployment")
    [container] = containers(deployment).values()
    assert container["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]


def test_persistence_options(helm: Any) -> None:
    pvc = one(render(helm, {"persistence": {"storageClass": "fast-ssd", "size": "5Gi"}}), PVC)
    assert pvc["spec"]["storageClassName"] == "fast-ssd"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    pvc = one(render(helm, {"persistence": {"storageClass": "-", "keepOnUninstall": True}}), PVC)
    assert pvc["spec"]["storageClassName"] == ""
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    objects = render(helm, {"persistence": {"enabled": False}})
    assert PVC not in kinds(objects)
    data = volumes(one(objects, "Deployment"))["data"]
    assert data == {"name": "data", "emptyDir": {}}
    assert "persistence.enabled is false" in notes(helm, {"persistence": {"enabled": False}})


def test_notes_tell_how_to_point_gitlab_and_the_registry_at_the_service(helm: Any) -> None:
    text = notes(helm, FULL_VALUES)
    assert "registry-janitor hooks install --all --url https://janitor.example.org/webhooks/gitlab" in text
    assert "Settings > Webhooks" in text
    for event in ("Push events", "Pipeline events", "Merge request events"):
        assert event in text
    assert "Secret token:  the project's webhook_secret" in text

    snippet = text[text.index("notifications:"):text.index("(GitLab Omnibus")]
    endpoint = yaml.safe_load(snippet)["notifications"]["endpoints"][0]
    assert endpoint["url"] == "https://janitor.example.org/webhooks/registry"
    assert endpoint["headers"]["Authorization"] == ["Bearer <registry_notification_token>"]
    assert "JANITOR_REGISTRY_TOKEN in Secret janitor-credentials" in text

    default = notes(helm)
    assert "-c janitor --" in default and "-c web --" in text


def test_notes_warn_instead_of_giving_gitlab_an_in_cluster_address(helm: Any) -> None:
    in_cluster = f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    default = notes(helm)
    assert "WARNING: publicUrl is empty and the Ingress is disabled" in default
    assert "--set publicUrl=https://janitor.example.com" in default
    assert f"{in_cluster}/webhooks" not in default, "an in-cluster address is no webhook URL for GitLab"
    assert "--url <publicUrl>/webhooks/gitlab" in default and "URL:           <publicUrl>/webhooks/gitlab" in default

    given = notes(helm, {"publicUrl": "https://janitor.example.net/"})
    assert "WARNING: publicUrl" not in given
    assert "--url https://janitor.example.net/webhooks/gitlab" in given
    # GitLab in the same cluster: the operator says so by giving the in-cluster address.
    assert f"--url {in_cluster}/webhooks/gitlab" in notes(helm, {"publicUrl": in_cluster})
    assert "WARNING: publicUrl" not in notes(helm, FULL_VALUES), "the Ingress host is a public address"


def test_schema_rejects_typos_and_bad_rules(helm: Any) -> None:
    bad_cases = [
        {"persistance": {"enabled": True}},
        {"config": {"registry": {"untag_method": "delete-everything"}}},
        {"config": {"projects": [{"path": "group/app", "tags": [{"pattern": "mr-x"}]}]}},
        {"config": {"projects": [{"path": "group/app", "tags": [{"pattern": "x", "lifetime": "forever"}]}]}},
        {"config": {"worker": {"poll_interval": "5 seconds"}}},
        {"secrets": {"not a variable": "x"}},
    ]
    with helm.Chart.load(CHART) as chart:
        for values in bad_cases:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(chart.merge_values(values))


@pytest.mark.parametrize("case", ["default", "full", "secrets"])
def test_rendered_config_is_one_the_janitor_accepts(helm: Any, case: str) -> None:
    from daemon.config import settings_from_dict

    values = {"default": None, "full": FULL_VALUES, "secrets": WITH_SECRETS}[case]
    _, config = janitor_config(render(helm, values))
    # What the pod's environment holds: one value per ${VAR} the config references.
    environ = {value[2:-1]: f"value-of-{value[2:-1]}" for value in secret_fields(config).values()}
    settings = settings_from_dict(config, environ=environ)
    assert settings.server.bind == "0.0.0.0:8080"
    assert settings.storage.sqlite_path == "/data/janitor.db", "the ledger must live on the /data volume"
    if case == "full":
        [project] = settings.projects
        assert project.webhook_secret.get_secret_value() == "value-of-APP_WEBHOOK_SECRET"


def test_schema_accepts_every_key_of_the_example_config(helm: Any) -> None:
    # config/janitor.example.yaml lists every key the janitor knows: the chart must not refuse one.
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values({"config": example}))


# --- monitoring: PrometheusRule, Grafana dashboard, icon -------------------------------------------------

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "deriv", "delta", "absent",
                    "histogram_quantile"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, function names) an expression uses: label matchers, ranges, ``by (...)`` and strings
    taken out first, then every identifier called is a function and every other one a metric name."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)
    assert text.count("(") == text.count(")"), f"unbalanced parentheses in {expr!r}"
    functions = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\(", text))
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r"\b\d+(?:\.\d+)?\b", "", text)))
    return words - functions - PROMQL_KEYWORDS, functions


def exported_metric_names(client: Any) -> set[str]:
    """Every series name ``/metrics`` can carry, read from the families it declares (so a histogram or
    counter with no sample yet counts too)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("", "_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def rules(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    [group] = one(objects, "PrometheusRule")["spec"]["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # Grafana's label_values(<series selector>, <label>)
            match = re.fullmatch(r"label_values\((.+),\s*[A-Za-z_][A-Za-z0-9_]*\)", variable["query"]["query"])
            assert match, variable["query"]
            exprs.append(match.group(1))
    return exprs


def test_monitoring_is_optional_and_renders_when_asked(helm: Any) -> None:
    assert not {"PrometheusRule"} & kinds(render(helm)), "off by default: the CRD may not be installed"
    objects = render(helm, MONITORING)
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    by_name = rules(objects)
    assert set(by_name) == ALERTS
    for alert in by_name.values():
        assert alert["labels"]["team"] == "platform" and alert["labels"]["severity"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        # this release's series only: the labels the ServiceMonitor's scrape sets
        assert f'namespace="{NAMESPACE}",job="{FULLNAME}"' in alert["expr"]
    assert by_name["RegistryJanitorQueueGrowing"]["expr"].endswith("> 250")
    assert "absent(janitor_worker_heartbeat_age_seconds" in by_name["RegistryJanitorWorkerHeartbeatStale"]["expr"]
    assert 'outcome="failed"' in by_name["RegistryJanitorUntagFailures"]["expr"]
    off = render(helm, {"prometheusRule": {"enabled": True, "untagFailures": {"enabled": False},
                                           "selector": 'cluster="eu", job="janitor"'}})
    assert set(rules(off)) == ALERTS - {"RegistryJanitorUntagFailures"}
    assert all('{cluster="eu", job="janitor"}' in r["expr"] for r in rules(off).values())

    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    dashboard_map = maps[f"{FULLNAME}-dashboard"]
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard_map["metadata"]["annotations"] == {"grafana_folder": "Registry"}
    assert json.loads(dashboard_map["data"]["registry-janitor.json"]) == json.loads(DASHBOARD.read_text())
    # another sidecar label: Helm merges maps, so the default one is dropped with null
    relabelled = render(helm, {"grafanaDashboard": {"enabled": True,
                                                    "labels": {"grafana_dashboard": None, "dashboards": "janitor"},
                                                    "namespace": "monitoring"}})
    [moved] = [o for o in relabelled if o["metadata"]["name"] == f"{FULLNAME}-dashboard"]
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["labels"]["dashboards"] == "janitor"
    assert "grafana_dashboard" not in moved["metadata"]["labels"]


def test_schema_refuses_bad_monitoring_values(helm: Any) -> None:
    bad_cases = [
        {"prometheusRule": {"enabled": True, "selector": "{job=\"x\"}"}},
        {"prometheusRule": {"heartbeatStale": {"for": "five minutes"}}},
        {"prometheusRule": {"queueGrowing": {"threshold": "many"}}},
        {"prometheusRule": {"alertLables": {}}},
        {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
    ]
    with helm.Chart.load(CHART) as chart:
        for values in bad_cases:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(chart.merge_values(values))


def test_alerts_and_dashboard_read_only_metrics_the_janitor_exports(helm: Any, seeded_janitor: Any) -> None:
    seeded_janitor.tick()  # the worker beats: the heartbeat gauge is there
    exported = exported_metric_names(seeded_janitor.client)
    assert "janitor_worker_heartbeat_age_seconds" in exported and "janitor_gitlab_request_seconds_bucket" in exported

    used: dict[str, set[str]] = {}
    for name, rule in rules(render(helm, MONITORING)).items():
        metrics, functions = promql_names(rule["expr"])
        assert functions <= PROMQL_FUNCTIONS, (name, functions)
        used[name] = metrics
    dashboard = json.loads(DASHBOARD.read_text())
    for expr in dashboard_exprs(dashboard):
        metrics, functions = promql_names(expr)
        assert functions <= PROMQL_FUNCTIONS, (expr, functions)
        used[expr] = metrics
    unknown = {where: names - exported for where, names in used.items() if names - exported}
    assert not unknown, f"not exported by /metrics (renamed?): {unknown}"

    on_dashboard = set().union(*(promql_names(e)[0] for e in dashboard_exprs(dashboard)))
    assert on_dashboard >= {
        "janitor_events_total", "janitor_untags_total", "janitor_queue_depth", "janitor_worker_heartbeat_age_seconds",
        "janitor_registry_requests_total", "janitor_registry_request_seconds_bucket", "janitor_gitlab_requests_total",
        "janitor_gitlab_request_seconds_bucket",
    }
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in dashboard["panels"])


def test_promql_names_finds_a_renamed_metric() -> None:
    metrics, functions = promql_names(
        'sum by (project) (increase(janitor_untag_total{job="j",outcome="failed"}[15m])) > 0 or absent(up{a="b"})')
    assert metrics == {"janitor_untag_total", "up"}
    assert functions == {"sum", "increase", "absent"}


def test_chart_has_an_icon(helm: Any) -> None:
    with helm.Chart.load(CHART) as chart:
        icon = chart.metadata["icon"]
    assert icon.startswith("https://") and icon.endswith("/helm/registry-janitor/icon.svg")
    assert (CHART / "icon.svg").read_text().lstrip().startswith("<svg")
    report = helm.lint(CHART, None, strict=True, namespace=NAMESPACE)
    assert not [m for m in report["messages"] if "icon" in m["error"]], report["messages"]


# --- several nodes: PostgreSQL, web and worker Deployments, PodDisruptionBudgets ---------------------------

PG_URL = "postgresql://janitor@db.example.org:5432/janitor?sslmode=verify-full"
SQLITE_REFUSAL = "SQLite is one file on one volume: several replicas need storage.url: postgresql://"
PASSWORD_FILE = "/run/secrets/registry-janitor/postgresql-password"
SCALED: dict[str, Any] = {
    "config": {"storage": {"url": PG_URL}},
    "web": {"replicaCount": 3},
    "worker": {"replicaCount": 2},
    "storage": {"existingSecret": "janitor-db", "passwordKey": "pgpass"},
}


def by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def chart_without_schema(tmp_path: Path) -> Path:
    """The chart as `helm install --skip-schema-validation` sees it."""
    chart = tmp_path / "registry-janitor"
    shutil.copytree(CHART, chart)
    (chart / "values.schema.json").unlink()
    return chart


@pytest.mark.parametrize("values", [{"replicaCount": 2}, {"web": {"replicaCount": 2}}, {"worker": {"replicaCount": 3}}])
def test_sqlite_refuses_several_replicas_and_says_why(helm: Any, tmp_path: Path, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(SQLITE_REFUSAL)):
        render_files(helm, values)
    with pytest.raises(helm.HelmRenderError, match=re.escape(SQLITE_REFUSAL)):
        render_files(helm, values, chart_dir=chart_without_schema(tmp_path))
    # the same count with PostgreSQL renders
    render_files(helm, {**values, "config": {"storage": {"url": PG_URL}}})


def test_sqlite_refuses_a_postgresql_password_secret(helm: Any, tmp_path: Path) -> None:
    values = {"storage": {"existingSecret": "janitor-db"}}
    with pytest.raises(helm.HelmValuesError, match="SQLite, which has none"):
        render_files(helm, values)
    with pytest.raises(helm.HelmRenderError, match="SQLite, which has none"):
        render_files(helm, values, chart_dir=chart_without_schema(tmp_path))


def test_postgresql_runs_web_and_workers_as_deployments_of_their_own(helm: Any, tmp_path: Path) -> None:
    objects = render(helm, SCALED)
    assert kinds(objects) == {"ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"}
    assert PVC not in kinds(objects), "PostgreSQL holds the state: no volume to share"
    deployments = by_name(objects, "Deployment")
    assert set(deployments) == {f"{FULLNAME}-web", f"{FULLNAME}-worker"}
    web_deploy, worker_deploy = deployments[f"{FULLNAME}-web"], deployments[f"{FULLNAME}-worker"]

    for deployment, replicas in ((web_deploy, 3), (worker_deploy, 2)):
        spec = deployment["spec"]
        assert spec["replicas"] == replicas
        assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        assert selects(spec["selector"]["matchLabels"], pod_labels(deployment))
        assert_hardened(deployment)
        vols = volumes(deployment)
        assert "data" not in vols and not any("persistentVolumeClaim" in v for v in vols.values())
        [container] = containers(deployment).values()
        assert "/data" not in mounts(container)
        assert mounts(container)["/run/secrets/registry-janitor"]["readOnly"] is True
        assert vols["storage-password"]["secret"]["secretName"] == "janitor-db"
        assert vols["storage-password"]["secret"]["items"] == [{"key": "pgpass", "path": "postgresql-password"}]
        assert env_names(container)["JANITOR_CONFIG"]["value"] == CONFIG_PATH
    # each Deployment owns its pods only
    assert not selects(web_deploy["spec"]["selector"]["matchLabels"], pod_labels(worker_deploy))
    assert not selects(worker_deploy["spec"]["selector"]["matchLabels"], pod_labels(web_deploy))

    [web] = containers(web_deploy).values()
    assert web["command"] + web["args"] == ["registry-janitor", "web"]
    assert_http_probes(web, runs_worker=False)
    [worker] = containers(worker_deploy).values()
    assert worker["command"] + worker["args"] == ["registry-janitor", "worker"]
    assert "ports" not in worker and "readinessProbe" not in worker and "startupProbe" not in worker
    assert_worker_probe(worker)

    service = one(objects, "Service")
    assert selects(service["spec"]["selector"], pod_labels(web_deploy))
    assert not selects(service["spec"]["selector"], pod_labels(worker_deploy)), "workers serve no HTTP"

    budgets = by_name(objects, "PodDisruptionBudget")
    assert set(budgets) == set(deployments)
    for name, budget in budgets.items():
        assert budget["spec"]["minAvailable"] == 1 and "maxUnavailable" not in budget["spec"]
        assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(deployments[name]))
        other = next(d for n, d in deployments.items() if n != name)
        assert not selects(budget["spec"]["selector"]["matchLabels"], pod_labels(other))

    # The password: a file from the operator's Secret, never in the ConfigMap; the janitor reads it.
    text, config = janitor_config(objects)
    assert config["storage"] == {"url": PG_URL, "password_file": PASSWORD_FILE}
    from daemon.config import settings_from_dict

    secret_file = tmp_path / "postgresql-password"
    secret_file.write_text("s3cret-db-password\n")
    config["storage"]["password_file"] = str(secret_file)
    environ = {value[2:-1]: "x" for value in secret_fields(config).values()}
    settings = settings_from_dict(config, environ=environ)
    assert settings.storage.is_postgres and settings.storage.password_value == "s3cret-db-password"

    text = notes(helm, SCALED)
    assert f"exec deploy/{FULLNAME}-web -c web --" in text
    assert f"Deployment {FULLNAME}-worker with 2 worker pods" in text
    assert "key pgpass of Secret janitor-db" in text


def test_postgresql_objects_are_valid_kubernetes_and_lint_clean(helm: Any, kube_versions: tuple[str, ...]) -> None:
    assert_valid(render(helm, SCALED), kube_versions)
    assert_lint_clean(helm, SCALED)
    single = {"config": {"storage": {"url": PG_URL}}}
    assert_valid(render(helm, single), kube_versions)
    assert_lint_clean(helm, single)


def test_postgresql_budgets_only_for_several_replicas(helm: Any) -> None:
    single = render(helm, {"config": {"storage": {"url": PG_URL}}})
    assert len(by_name(single, "Deployment")) == 2
    assert "PodDisruptionBudget" not in kinds(single), "a budget on one pod would only block node drains"

    # the usual chart key: replicaCount is the web's
    objects = render(helm, {"config": {"storage": {"url": PG_URL}}, "replicaCount": 4})
    deployments = by_name(objects, "Deployment")
    assert deployments[f"{FULLNAME}-web"]["spec"]["replicas"] == 4
    assert deployments[f"{FULLNAME}-worker"]["spec"]["replicas"] == 1
    [budget] = by_name(objects, "PodDisruptionBudget").values()
    assert budget["metadata"]["name"] == f"{FULLNAME}-web"

    loose = render(helm, {**SCALED, "podDisruptionBudget": {"maxUnavailable": "50%"}})
    for budget in by_name(loose, "PodDisruptionBudget").values():
        assert budget["spec"]["maxUnavailable"] == "50%" and "minAvailable" not in budget["spec"]
    assert "PodDisruptionBudget" not in kinds(render(helm, {**SCALED, "podDisruptionBudget": {"enabled": False}}))


def test_postgresql_password_as_a_variable_in_the_url(helm: Any, tmp_path: Path) -> None:
    url = "postgresql://janitor:${JANITOR_DB_PASSWORD}@db.example.org:5432/janitor?sslmode=require"
    values = {"config": {"storage": {"url": url}}, "secrets": {"JANITOR_DB_PASSWORD": "db-password-71c2"}}
    objects = render(helm, values)
    text, config = janitor_config(objects)
    assert config["storage"] == {"url": url} and "db-password-71c2" not in text
    for deployment in by_name(objects, "Deployment").values():
        [container] = containers(deployment).values()
        ref = env_names(container)["JANITOR_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": FULLNAME, "key": "JANITOR_DB_PASSWORD"}
    with pytest.raises(helm.HelmRenderError, match=r"references \$\{JANITOR_DB_PASSWORD\}"):
        render_files(helm, {"config": {"storage": {"url": url}}})
    # and not twice
    with pytest.raises(helm.HelmRenderError, match="given twice"):
        render_files(helm, {**values, "storage": {"existingSecret": "janitor-db"}})


@pytest.mark.parametrize("url", [
    "postgresql://janitor:hunter2@db.example.org:5432/janitor",
    "postgresql://janitor@db.example.org:5432/janitor?sslmode=require&password=hunter2",
])
def test_inline_postgresql_password_is_refused(helm: Any, tmp_path: Path, url: str) -> None:
    values = {"config": {"storage": {"url": url}}}
    with pytest.raises(helm.HelmValuesError, match="/config/storage/url"):
        render_files(helm, values)
    with pytest.raises(helm.HelmRenderError, match="inline password"):
        render_files(helm, values, chart_dir=chart_without_schema(tmp_path))


def test_schema_refuses_bad_scaling_values(helm: Any) -> None:
    postgres = {"storage": {"url": PG_URL}}
    bad_cases = [
        {"config": postgres, "worker": {"replicaCount": 0}},
        {"config": postgres, "web": {"replicaCount": "3"}},
        {"config": postgres, "podDisruptionBudget": {"minAvailable": "half"}},
        {"config": postgres, "podDisruptionBudget": {"maxUnavailable": -1}},
        {"config": postgres, "storage": {"existingSecret": "Not_A_Secret_Name"}},
        {"config": postgres, "storage": {"passwrodKey": "x"}},
        {"config": {"storage": {"url": PG_URL, "password": "inline-password"}}},
        {"replicaCount": 2},
    ]
    with helm.Chart.load(CHART) as chart:
        for values in bad_cases:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(chart.merge_values(values))
        chart.validate_schema(chart.merge_values({"config": postgres, **{k: v for k, v in SCALED.items()
                                                                         if k != "config"}}))
