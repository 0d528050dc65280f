"""The Helm chart, checked without a cluster: linted and rendered by Helm's own Go SDK (``helm-python-sdk``)
for several value sets, every built-in object validated against Kubernetes' OpenAPI schemas
(``kubernetes-validate``, strict: unknown fields fail), and the RayJobs the broker makes for the chart's
settings validated against KubeRay's CRD. Plus what the chart promises: hardened pods, a migrations hook,
a minimal Role, kept secrets, alerts on real metric names, and a values table that is up to date."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.compute import JobLaunch, launch_name, rayjob_manifest
from broker.compute.kube_fake import crd_validator
from broker.metrics import Metrics
from common.resources import Resources
from vouchers import public_jwk

try:
    import helm_python
except Exception as exc:  # the bundled Go library may not load on this platform
    pytest.skip(f"helm-python-sdk cannot load Helm's engine: {exc}", allow_module_level=True)
import kubernetes_validate

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "sandbox-broker"
RAYJOB_CRD = REPO.parent / "shared" / "kuberay" / "ray.io_rayjobs.yaml"
RELEASE, NAMESPACE = "sbx", "sandbox"
FULLNAME = "sbx-sandbox-broker"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Custom resources of the Prometheus Operator: no built-in schema; checked structurally below.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

EXTERNAL_PG = {
    "database": {
        "existingSecret": "",
        "url": "postgresql://sbx:s3cr3t-pw@pg.db.svc:5432/sbx?sslmode=require",
    },
    "s3": {"existingSecret": "", "accessKey": "sbx-broker", "secretKey": "a-long-random-secret"},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-postgresql": EXTERNAL_PG,
    "metrics-on": {"metrics": {"serviceMonitor": True, "prometheusRule": True, "labels": {"release": "kps"}}},
    "metrics-off": {"metrics": {"serviceMonitor": False, "prometheusRule": False}},
    "ingress-on": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "broker.city.example",
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        }
    },
    "jobs-sandboxed": {
        "kuberay": {"namespace": "sme-jobs"},
        "jobs": {
            "runtimeClassName": "gvisor",
            "serviceAccountName": "sme-runner",
            "archive": {"publicUrl": "http://broker.sbx.svc:8750", "maxFetches": 8, "graceSeconds": 60},
        },
        "jobNetworkPolicy": {
            "allowInternet": True,
            "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}],
        },
    },
    "ray-cluster-and-persistence": {
        "config": {"compute": "ray"},
        "ray": {"address": "http://raycluster-head-svc.ray.svc:8265"},
        "auditCheckpoints": {"persistence": True, "storageClass": "nfs"},
        "kuberay": {"namespace": "sme-jobs"},
        "replicaCount": 3,
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values`` (NOTES.txt excluded)."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` (and ``name``)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of ``kind`` (and ``name``)."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def broker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The broker container of the Deployment."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = pod["containers"]
    return next(c for c in containers if c["name"] == "broker")


# -- lint, render, validate ------------------------------------------------------------------------
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_chart_lints_clean(value_set: str) -> None:
    report = helm_python.lint(CHART_DIR, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_builtin_object_validates_strictly(chart: Any, value_set: str) -> None:
    objects = render(chart, VALUE_SETS[value_set])
    builtin = [o for o in objects if (o["apiVersion"], o["kind"]) not in CUSTOM_KINDS]
    assert builtin
    for obj in builtin:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} invalid on {version}: {where}: {exc.message}"
                )
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "two objects share a kind and name"


@pytest.mark.parametrize("value_set", ["metrics-on"])
def test_monitoring_objects_are_well_formed(chart: Any, value_set: str) -> None:
    objects = render(chart, VALUE_SETS[value_set])
    monitor = one(objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    service = one(objects, "Service")
    assert selector == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_the_alerts_exist_and_use_only_metrics_the_broker_exports(chart: Any) -> None:
    objects = render(chart, VALUE_SETS["metrics-on"])
    rules = {r["alert"]: r["expr"] for r in one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    for alert in (
        "SbxCreditsRunningOut",
        "SbxQueueStuck",
        "SbxPrivacyBudgetNearlySpent",
        "SbxAuditVerificationFailing",
        "SbxAuditCheckpointStale",
        "SbxLedgerInconsistent",
    ):
        assert alert in rules
    used = {name for expr in rules.values() for name in _metric_names(expr)}
    exported = _exported_metric_names()
    assert used <= exported, f"alerts use unknown metrics: {used - exported}"
    assert "sbx_admission_latency_seconds_count" in used  # admissions counted by the existing histogram


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bsbx_[a-z0-9_]+", expr))


def _exported_metric_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    # A counter with no sample yet still exposes `<name>_total`; histograms `_count`, `_sum`, `_bucket`.
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_count", "_sum", "_bucket")}.get(family.type, ())
        names.update(family.name + s for s in suffixes)
    # The scrape-time database collector's families are declared in the module (read without a database).
    import broker.metrics

    names.update(re.findall(r'"(sbx_[a-z0-9_]+)"', Path(broker.metrics.__file__).read_text()))
    return names


def test_metrics_off_renders_no_monitoring_objects(chart: Any) -> None:
    objects = render(chart, VALUE_SETS["metrics-off"])
    assert not find(objects, "ServiceMonitor") and not find(objects, "PrometheusRule")


# -- what the Deployment promises ------------------------------------------------------------------
def test_the_deployment_runs_two_hardened_replicas_with_probes(chart: Any) -> None:
    objects = render(chart, {})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = broker_container(objects)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/var/lib/sbx"]]
    assert volumes[mounts["/var/lib/sbx/keys"]]["secret"]["items"][0]["path"] == "broker.pem"
    assert pod["affinity"]["podAntiAffinity"], "replicas should prefer different nodes"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_settings_come_from_the_configmap_and_secrets_only(chart: Any) -> None:
    objects = render(chart, {})
    config = one(objects, "ConfigMap", FULLNAME)["data"]
    assert config["SBX_ENVIRONMENT"] == "production" and config["SBX_HOST"] == "0.0.0.0"
    assert config["SBX_STATE_DIR"] == "/var/lib/sbx" and config["SBX_COMPUTE"] == "kuberay"
    assert all(key.startswith("SBX_") for key in config)
    secret_words = ("URL", "KEY", "TOKEN", "PASSWORD")
    not_secret = {"SBX_MAX_TOKEN_BYTES", "SBX_PUBLIC_URL"}  # a size limit; the broker Service's URL
    leaked = [k for k in config if any(w in k for w in secret_words) and k not in not_secret]
    assert leaked == [], "secrets belong in Secrets"
    container = broker_container(objects)
    env = {e["name"]: e for e in container["env"]}
    for name in ("SBX_DATABASE_URL", "SBX_S3_ACCESS_KEY", "SBX_S3_SECRET_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert env["SBX_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "sandbox-broker-database"
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"], "a config change must roll the pods"


def test_every_setting_the_chart_sets_is_a_broker_setting(chart: Any) -> None:
    from broker.settings import Settings

    known = {f"SBX_{name.upper()}" for name in Settings.model_fields}
    for values in VALUE_SETS.values():
        objects = render(chart, values)
        names = set(one(objects, "ConfigMap", FULLNAME)["data"])
        names |= {e["name"] for e in broker_container(objects)["env"] if e["name"].startswith("SBX_")}
        assert names - known == set(), f"the broker does not read {sorted(names - known)}"


def test_migrations_run_as_a_hook_before_install_and_upgrade_with_the_same_database(chart: Any) -> None:
    objects = render(chart, EXTERNAL_PG)
    job = one(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    job_db = next(e for e in container["env"] if e["name"] == "SBX_DATABASE_URL")
    app_db = next(e for e in broker_container(objects)["env"] if e["name"] == "SBX_DATABASE_URL")
    assert job_db == app_db
    # The Secret the hook reads is itself a hook created first (lower weight), and it holds the URL.
    secret = one(objects, "Secret", f"{FULLNAME}-database")
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"]
    )
    url = base64.b64decode(secret["data"]["url"]).decode()
    assert url == EXTERNAL_PG["database"]["url"]


def test_existing_secrets_are_referenced_not_created(chart: Any) -> None:
    objects = render(
        chart,
        {
            "signingKey": {"existingSecret": "my-key", "existingSecretKey": "pem"},
            "kek": {"existingSecret": "my-kek", "existingSecretKey": "k"},
        },
    )
    assert [s["metadata"]["name"] for s in find(objects, "Secret")] == []
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    key = next(v for v in volumes if v["name"] == "signing-key")["secret"]
    assert key["secretName"] == "my-key" and key["items"] == [{"key": "pem", "path": "broker.pem"}]
    kek = next(v for v in volumes if v["name"] == "kek")["secret"]
    assert kek["secretName"] == "my-kek" and kek["items"] == [{"key": "k", "path": "kek"}]


def test_the_generated_kek_is_one_the_broker_reads_and_mounted_for_broker_and_migrations(
    chart: Any, tmp_path: Path
) -> None:
    from broker.keys import read_kek_file

    objects = render(chart, {})
    secret = one(objects, "Secret", f"{FULLNAME}-kek")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (tmp_path / "kek").write_bytes(base64.b64decode(secret["data"]["kek"]))
    assert len(read_kek_file(tmp_path / "kek")[0]) == 32
    config = one(objects, "ConfigMap", FULLNAME)["data"]
    for pod in (one(objects, "Deployment"), one(objects, "Job")):
        spec = pod["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert config["SBX_KEK_FILE"] == f"{mounts['kek']}/kek"


def test_the_generated_signing_key_is_an_ed25519_key_the_broker_loads_and_is_kept(chart: Any) -> None:
    objects = render(chart, {})
    secret = one(objects, "Secret", f"{FULLNAME}-signing-key")
    pem = base64.b64decode(secret["data"]["broker.pem"])
    assert public_jwk(pem)["crv"] == "Ed25519"
    annotations = secret["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    template = next(t for t in chart.templates if t["name"].endswith("secrets.yaml"))
    assert 'lookup "v1" "Secret"' in template["data"]


def test_the_role_allows_only_what_the_kuberay_backend_calls(chart: Any) -> None:
    for values in (VALUE_SETS["defaults"], {"kuberay": {"namespace": "sme-jobs"}}):
        objects = render(chart, values)
        assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
        role = one(objects, "Role")
        rules = sorted(
            (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]
        )
        assert rules == [
            (("",), ("pods",), ("list",)),
            (("",), ("pods/log",), ("get",)),
            (("networking.k8s.io",), ("networkpolicies",), ("create",)),
            (("ray.io",), ("rayjobs",), ("get", "create", "patch", "delete")),
        ]
        binding = one(objects, "RoleBinding")
        expected_ns = values.get("kuberay", {}).get("namespace") or NAMESPACE
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == expected_ns
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_ingress_terminates_tls_for_its_host(chart: Any) -> None:
    objects = render(chart, VALUE_SETS["ingress-on"])
    ingress = one(objects, "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["broker.city.example"], "secretName": "sandbox-broker-tls"}]
    assert ingress["spec"]["rules"][0]["host"] == "broker.city.example"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}
    assert not find(render(chart, {}), "Ingress")


def test_sme_job_pods_reach_only_dns_and_the_brokers_archive_endpoint(chart: Any) -> None:
    """Egress: kube-dns on port 53 and the broker's pods on the port the archive route listens on (the
    container port: policies see traffic after the Service translated it); ingress: the KubeRay operator
    only (traffic within one job comes from the per-job policy the broker creates)."""
    objects = render(chart, {"kuberay": {"namespace": "sme-jobs"}})
    policy = one(objects, "NetworkPolicy", f"{FULLNAME}-sme-jobs")
    assert policy["metadata"]["namespace"] == "sme-jobs"
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "sandbox-broker"}
    }
    assert policy["spec"]["ingress"] == [
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}}]}
    ]
    dns, archive = policy["spec"]["egress"]
    assert dns == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    deployment = one(objects, "Deployment")
    broker_labels = deployment["spec"]["selector"]["matchLabels"]
    port = next(p for p in broker_container(objects)["ports"] if p["name"] == "http")["containerPort"]
    assert archive == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                "podSelector": {"matchLabels": broker_labels},
            }
        ],
        "ports": [{"protocol": "TCP", "port": port}],
    }
    open_ = render(chart, {"jobNetworkPolicy": {"allowInternet": True}})
    egress = one(open_, "NetworkPolicy", f"{FULLNAME}-sme-jobs")["spec"]["egress"]
    blocks = [p["ipBlock"] for rule in egress for p in rule.get("to", []) if "ipBlock" in p]
    assert blocks == [
        {
            "cidr": "0.0.0.0/0",
            "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"],
        }
    ]


def test_the_job_pods_labels_are_what_the_job_policy_selects(chart: Any) -> None:
    """Every pod template of a RayJob (head, workers, submitter) carries the selected labels; the broker's
    own pods (labelled by Helm) do not."""
    selector = one(render(chart, {}), "NetworkPolicy", f"{FULLNAME}-sme-jobs")["spec"]["podSelector"]
    manifest = rayjob_manifest(_launch("01JOBPOD", Resources(500, 0, 512), ()), image="img", namespace="n")
    spec = manifest["spec"]
    templates = [spec["rayClusterSpec"]["headGroupSpec"]["template"], spec["submitterPodTemplate"]]
    templates += [g["template"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    for template in templates:
        assert selector["matchLabels"].items() <= template["metadata"]["labels"].items()
    broker_pod = one(render(chart, {}), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selector["matchLabels"].items() <= broker_pod.items()


def test_job_pods_get_a_service_account_without_rights_or_token(chart: Any) -> None:
    objects = render(chart, {"kuberay": {"namespace": "sme-jobs"}})
    account = one(objects, "ServiceAccount", "sbx-job-runner")
    assert account["metadata"]["namespace"] == "sme-jobs"
    assert account["automountServiceAccountToken"] is False
    for binding in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding"):
        assert all(s["name"] != "sbx-job-runner" for s in binding["subjects"])
    config = one(objects, "ConfigMap", FULLNAME)["data"]
    assert config["SBX_KUBE_SERVICE_ACCOUNT"] == "sbx-job-runner"
    assert "SBX_KUBE_RUNTIME_CLASS" not in config
    renamed = render(chart, {"jobs": {"serviceAccountName": "runner", "createServiceAccount": False}})
    assert not find(renamed, "ServiceAccount", "runner")
    assert one(renamed, "ConfigMap", FULLNAME)["data"]["SBX_KUBE_SERVICE_ACCOUNT"] == "runner"
    assert not find(
        render(chart, VALUE_SETS["ray-cluster-and-persistence"]), "ServiceAccount", "sbx-job-runner"
    )


def test_archive_urls_point_at_the_broker_service(chart: Any) -> None:
    objects = render(chart, {})
    config = one(objects, "ConfigMap", FULLNAME)["data"]
    service = one(objects, "Service", FULLNAME)
    port = service["spec"]["ports"][0]["port"]
    assert config["SBX_PUBLIC_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc.cluster.local:{port}"
    assert (config["SBX_ARCHIVE_MAX_FETCHES"], config["SBX_ARCHIVE_GRACE_S"]) == ("16", "300")
    custom = render(
        chart, {"jobs": {"archive": {"publicUrl": "http://broker.internal:8080", "maxFetches": 4}}}
    )
    data = one(custom, "ConfigMap", FULLNAME)["data"]
    assert (data["SBX_PUBLIC_URL"], data["SBX_ARCHIVE_MAX_FETCHES"]) == ("http://broker.internal:8080", "4")


@pytest.mark.parametrize("runtime_class", ["", "gvisor"])
def test_rayjobs_from_the_charts_settings_are_restricted_and_use_the_runtime_class(
    chart: Any, runtime_class: str
) -> None:
    from broker.compute.kuberay import PodHardening
    from tests.pss_restricted import restricted_violations

    config = one(render(chart, {"jobs": {"runtimeClassName": runtime_class}}), "ConfigMap", FULLNAME)["data"]
    assert config.get("SBX_KUBE_RUNTIME_CLASS", "") == runtime_class
    hardening = PodHardening(
        service_account=config["SBX_KUBE_SERVICE_ACCOUNT"],
        runtime_class=config.get("SBX_KUBE_RUNTIME_CLASS"),
        run_as_user=int(config["SBX_KUBE_RUN_AS_USER"]),
        run_as_group=int(config["SBX_KUBE_RUN_AS_GROUP"]),
        scratch_size_limit=config["SBX_KUBE_SCRATCH_SIZE_LIMIT"] or None,
    )
    launch = _launch("01JOBRTC", Resources(500, 0, 512), ())
    spec = rayjob_manifest(launch, image="img", namespace="n", hardening=hardening, worker_replicas=1)["spec"]
    templates = [spec["rayClusterSpec"]["headGroupSpec"]["template"], spec["submitterPodTemplate"]]
    templates += [g["template"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    for template in templates:
        assert restricted_violations(template["spec"]) == []
        assert template["spec"].get("runtimeClassName", "") == runtime_class
        assert template["spec"]["serviceAccountName"] == "sbx-job-runner"
        assert all(v["emptyDir"] == {"sizeLimit": "8Gi"} for v in template["spec"]["volumes"])


def test_only_the_brokers_training_harness_pods_may_reach_the_object_store(chart: Any) -> None:
    """The harness policy selects the pods of training RayJobs (labelled by the broker) and no SME job's,
    and opens egress to the object store's S3 port only; without peers it is not rendered at all."""
    from broker.services.training import KIND as TRAINING

    objects = render(chart, {"kuberay": {"namespace": "sme-jobs"}})
    policy = one(objects, "NetworkPolicy", f"{FULLNAME}-training-harness")
    assert policy["metadata"]["namespace"] == "sme-jobs"
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"] == [
        {
            "to": [
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "minio"}}}
            ],
            "ports": [{"protocol": "TCP", "port": 9000}],
        }
    ]
    selector = policy["spec"]["podSelector"]["matchLabels"]

    def pod_labels(kind: str) -> list[dict[str, str]]:
        launch = dataclasses.replace(_launch("01JOBTRN", Resources(500, 0, 512), ()), labels={"kind": kind})
        spec = rayjob_manifest(launch, image="img", namespace="sme-jobs")["spec"]["rayClusterSpec"]
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [group["template"]["metadata"]["labels"] for group in groups]

    assert all(selector.items() <= labels.items() for labels in pod_labels(TRAINING))
    assert not any(selector.items() <= labels.items() for labels in pod_labels("command"))
    closed = render(chart, {"jobNetworkPolicy": {"trainingHarness": {"to": []}}})
    assert [p["metadata"]["name"] for p in find(closed, "NetworkPolicy")] == [f"{FULLNAME}-sme-jobs"]


@pytest.mark.parametrize(
    ("values", "secret"),
    [
        ({}, "sandbox-broker-s3"),
        (EXTERNAL_PG, f"{FULLNAME}-s3"),
        ({"kuberay": {"namespace": "sme-jobs", "harnessS3Secret": "harness-s3"}}, "harness-s3"),
    ],
    ids=["existing-secret", "chart-secret", "jobs-namespace-copy"],
)
def test_the_harness_gets_its_s3_credentials_as_secret_references(
    chart: Any, values: dict[str, Any], secret: str
) -> None:
    from broker.compute.kuberay import SecretRef, parse_secret_env

    config = one(render(chart, values), "ConfigMap", FULLNAME)["data"]
    assert parse_secret_env(config["SBX_KUBE_SECRET_ENV"]) == {
        "SBX_S3_ACCESS_KEY": SecretRef(secret, "accessKey"),
        "SBX_S3_SECRET_KEY": SecretRef(secret, "secretKey"),
    }


def test_audit_checkpoints_persist_per_pod_on_a_kept_volume(chart: Any) -> None:
    objects = render(chart, VALUE_SETS["ray-cluster-and-persistence"])
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    mount = next(m for m in broker_container(objects)["volumeMounts"] if m["name"] == "audit")
    assert mount["mountPath"] == "/var/lib/sbx/audit" and mount["subPathExpr"] == "$(POD_NAME)"
    env = {e["name"] for e in broker_container(objects)["env"]}
    assert {"POD_NAME", "SBX_RAY_TOKEN"} <= env
    assert not find(objects, "Role"), "no Kubernetes API rights when jobs go to an existing Ray cluster"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"database": {"existingSecret": ""}}, "database.existingSecret"),
        ({"database": {"existingSecret": "", "url": "sqlite:////tmp/x.db"}}, "/database/url"),
        ({"s3": {"existingSecret": "", "accessKey": "minioadmin", "secretKey": "minioadmin"}}, "default"),
        ({"config": {"compute": "ray-local"}}, "'kuberay', 'ray'"),
        ({"replicaCont": 3}, "replicaCont"),  # a misspelt value is refused, not ignored
        ({"replicaCount": 0}, "/replicaCount"),
        ({"jobNetworkPolicy": {"deniedCidrs": ["10.0.0.0"]}}, "deniedCidrs"),
        ({"config": {"compute": "ray"}}, "ray.address"),
        ({"jobs": {"runAsUser": 0}}, "/jobs/runAsUser"),
        ({"jobs": {"archive": {"maxFetches": 0}}}, "/jobs/archive/maxFetches"),
        ({"jobs": {"runtimeClassName": "Not A Name"}}, "/jobs/runtimeClassName"),
        ({"jobs": {"scratchSizeLimit": "lots"}}, "/jobs/scratchSizeLimit"),
    ],
)
def test_values_that_would_break_production_are_refused(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render(chart, values)


# -- the dashboard ConfigMap -----------------------------------------------------------------------
def test_dashboards_ship_as_a_configmap_and_their_absence_is_tolerated(tmp_path: Path) -> None:
    copy_dir = tmp_path / "sandbox-broker"
    shutil.copytree(CHART_DIR, copy_dir, ignore=shutil.ignore_patterns("dashboards"))
    with helm_python.Chart.load(copy_dir) as bare:
        assert not find(render(bare, {}), "ConfigMap", f"{FULLNAME}-dashboards")
    (copy_dir / "dashboards").mkdir()
    board = {"title": "sandbox-broker", "panels": [{"type": "stat", "title": "Queue | length"}]}
    (copy_dir / "dashboards" / "broker.json").write_text(json.dumps(board))
    with helm_python.Chart.load(copy_dir) as shipped:
        cm = one(render(shipped, {}), "ConfigMap", f"{FULLNAME}-dashboards")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["broker.json"]) == board
        kubernetes_validate.validate(cm, KUBE_VERSIONS[-1], strict=True)
        off = render(shipped, {"grafanaDashboard": {"enabled": False}})
        assert not find(off, "ConfigMap", f"{FULLNAME}-dashboards")


# -- RayJobs for the chart's settings --------------------------------------------------------------
@pytest.mark.parametrize("value_set", ["defaults", "ray-cluster-and-persistence"])
def test_rayjobs_made_with_the_charts_settings_validate_against_the_kuberay_crd(
    chart: Any, value_set: str
) -> None:
    if not RAYJOB_CRD.exists():
        pytest.skip(f"KubeRay CRD not found at {RAYJOB_CRD}: cannot validate RayJob manifests")
    validate = crd_validator(RAYJOB_CRD, strict=True)
    config = one(render(chart, VALUE_SETS[value_set]), "ConfigMap", FULLNAME)["data"]
    launches = [
        _launch("01JOBCPU", Resources(500, 0, 512), ()),
        _launch("01JOBGPU", Resources(4000, 2, 16384), ("torch==2.13.0", "opacus==1.6.0")),
    ]
    for launch in launches:
        for uri in (None, "s3://sbx-code/job.zip"):
            manifest = rayjob_manifest(
                dataclasses.replace(launch, working_dir=Path("/w") if uri else None),
                image=config["SBX_KUBE_IMAGE"],
                namespace=config["SBX_KUBE_NAMESPACE"],
                working_dir_uri=uri,
            )
            validate(manifest)
            assert manifest["metadata"]["namespace"] == config["SBX_KUBE_NAMESPACE"]


def _launch(job_id: str, resources: Resources, requirements: tuple[str, ...]) -> JobLaunch:
    return JobLaunch(
        name=launch_name(job_id),
        job_id=job_id,
        org_id="org-acme",
        entrypoint="python train.py",
        working_dir=None,
        requirements=requirements,
        resources=resources,
        max_runtime_s=1800,
        env={"SEED": "1"},
        labels={"kind": "command"},
    )


# -- the values table --------------------------------------------------------------------------------
def test_every_value_is_documented_and_the_readme_table_is_up_to_date() -> None:
    script = REPO / "scripts" / "helm_values_table.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("value_set", ["defaults", "ray-cluster-and-persistence"])
def test_the_broker_accepts_the_charts_settings_for_production(
    chart: Any, value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.settings import Settings

    if not hasattr(Settings, "production_problems"):
        pytest.skip("this broker version has no production checks (Settings.production_problems)")
    objects = render(chart, VALUE_SETS[value_set])
    for name, value in one(objects, "ConfigMap", FULLNAME)["data"].items():
        monkeypatch.setenv(name, value)
    secret_values = {
        "SBX_DATABASE_URL": "postgresql://sbx:pw@pg:5432/sbx",
        "SBX_S3_ACCESS_KEY": "sbx-broker",
        "SBX_S3_SECRET_KEY": "a-long-random-secret",
        "SBX_RAY_TOKEN": "a-long-random-token",
    }
    for env in broker_container(objects)["env"]:
        if "secretKeyRef" in env.get("valueFrom", {}):
            monkeypatch.setenv(env["name"], secret_values[env["name"]])
    settings = Settings()
    assert settings.environment == "production"
    assert settings.production_problems() == []


def test_the_dockerfile_builds_what_the_chart_runs(chart: Any) -> None:
    """No Docker engine here: check the Dockerfile's contract with the chart and the project statically."""
    import tomllib

    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    pod = one(render(chart, {}), "Deployment")["spec"]["template"]["spec"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert f"USER {user}" in lines, "the image's user must be the chart's runAsUser:runAsGroup"
    assert 'ENTRYPOINT ["sbx"]' in lines, "the chart passes `serve` / `migrate` as arguments to sbx"
    copied = {line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"the image misses packages: {sorted(packages - copied)}"
    assert all((REPO / p).is_dir() for p in packages)
