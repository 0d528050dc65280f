"""The KubeRay adapter's pure parts: the RayJob manifest (checked against KubeRay's real CRD schema) and
the status mapping."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.compute import BackendState, JobLaunch, launch_name, rayjob_manifest
from broker.compute.kube_fake import Validator, crd_validator
from broker.compute.kuberay import (
    STOPPED_AT,
    KubeRayBackend,
    PodHardening,
    job_network_policy,
    label_value,
    map_rayjob_status,
    parse_k8s_time,
    parse_secret_env,
)
from common.errors import InvalidInput
from common.resources import Resources
from tests.pss_restricted import restricted_violations

REPO_ROOT = Path(__file__).resolve().parents[2]
RAYJOB_CRD = REPO_ROOT.parent / "shared/kuberay/ray.io_rayjobs.yaml"


@pytest.fixture(scope="module")
def validate() -> Validator:
    if not RAYJOB_CRD.exists():
        pytest.skip(f"KubeRay CRD not found at {RAYJOB_CRD}: cannot validate RayJob manifests")
    return crd_validator(RAYJOB_CRD)


def _launch(**overrides: object) -> JobLaunch:
    fields: dict[str, object] = {
        "name": launch_name("01J-ABC"),
        "job_id": "01J-ABC",
        "org_id": "Acme GmbH",
        "entrypoint": "python train.py --epochs 3",
        "working_dir": None,
        "requirements": ("torch==2.13.0",),
        "resources": Resources(milli_cpu=2500, gpus=1, memory_mib=4096),
        "max_runtime_s": 3600,
        "env": {"SEED": "7"},
        "labels": {"programme": "city/2026"},
    }
    fields.update(overrides)
    return JobLaunch(**fields)  # type: ignore[arg-type]


def _manifest(launch: JobLaunch | None = None, **kwargs: Any) -> dict[str, Any]:
    return rayjob_manifest(launch or _launch(), image="rayproject/ray:2.60.0", namespace="sbx", **kwargs)


def test_the_manifest_is_a_suspended_rayjob_named_after_the_launch() -> None:
    m = _manifest()
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayJob")
    assert m["metadata"]["name"] == "sbx-01j-abc"
    assert m["metadata"]["namespace"] == "sbx"
    assert m["spec"]["suspend"] is True
    assert m["spec"]["entrypoint"] == "python train.py --epochs 3"


def test_the_manifest_is_deterministic() -> None:
    assert _manifest() == _manifest()


def test_labels_name_the_manager_org_and_job_and_stay_valid_label_values() -> None:
    labels = _manifest()["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "sandbox-broker"
    assert labels["sandbox-broker.io/org-id"] == "Acme-GmbH"
    assert labels["sandbox-broker.io/job-id"] == "01J-ABC"
    assert labels["programme"] == "city-2026"
    annotations = _manifest()["metadata"]["annotations"]
    assert annotations["sandbox-broker.io/org-id"] == "Acme GmbH"


def test_runtime_limits_and_cleanup() -> None:
    spec = _manifest(ttl_seconds_after_finished=120)["spec"]
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 120
    assert spec["backoffLimit"] == 0


def test_resources_reach_the_entrypoint_and_the_pods() -> None:
    m = _manifest(worker_replicas=2)
    spec = m["spec"]
    assert (spec["entrypointNumCpus"], spec["entrypointNumGpus"]) == (2.5, 1)
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    want = {"cpu": "2500m", "memory": "4096Mi", "nvidia.com/gpu": "1"}
    assert head["resources"] == {"requests": want, "limits": want}
    assert head["image"] == "rayproject/ray:2.60.0"
    assert head["env"] == [{"name": "SEED", "value": "7"}]
    workers = cluster["workerGroupSpecs"][0]
    assert (workers["replicas"], workers["maxReplicas"]) == (2, 2)
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"] == want
    assert cluster["authOptions"] == {"mode": "token"}


def test_runtime_env_yaml_carries_requirements_env_and_the_uploaded_working_dir() -> None:
    m = _manifest(_launch(working_dir=Path("/srv/job")), working_dir_uri="s3://jobs/sbx-01j-abc.zip")
    env = yaml.safe_load(m["spec"]["runtimeEnvYAML"])
    assert env == {
        "working_dir": "s3://jobs/sbx-01j-abc.zip",
        "pip": ["torch==2.13.0"],
        "env_vars": {"SEED": "7"},
    }


def test_a_local_working_dir_without_an_upload_is_refused() -> None:
    with pytest.raises(InvalidInput, match="working dir"):
        _manifest(_launch(working_dir=Path("/srv/job")))


def test_no_token_or_secret_reaches_the_manifest() -> None:
    text = yaml.safe_dump(_manifest())
    assert "RAY_AUTH_TOKEN" not in text
    assert "secretKeyRef" not in text


HARNESS_SECRETS = {"SBX_S3_ACCESS_KEY": "AKIA-harness-7f3e", "SBX_S3_SECRET_KEY": "s3cr3t-9c1d-harness"}
HARNESS_REFS = parse_secret_env("SBX_S3_ACCESS_KEY=sbx-s3:accessKey, SBX_S3_SECRET_KEY=sbx-s3:secretKey")


def test_harness_credentials_are_secret_references_never_values() -> None:
    """The training harness's S3 credentials reach its pods as secretKeyRefs: the RayJob object (readable by
    whoever can read RayJobs) holds neither value, not in the pod env nor in the runtime env."""
    launch = _launch(secret_env=HARNESS_SECRETS, labels={"kind": "training"})
    manifest = _manifest(launch, secret_refs=HARNESS_REFS)
    text = yaml.safe_dump(manifest)
    assert not any(value in text for value in HARNESS_SECRETS.values())
    head = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["env"] == [
        {"name": "SEED", "value": "7"},
        {"name": "SBX_S3_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "sbx-s3", "key": "accessKey"}}},
        {"name": "SBX_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "sbx-s3", "key": "secretKey"}}},
    ]
    assert "SBX_S3" not in manifest["spec"]["runtimeEnvYAML"]
    assert "SBX_S3_SECRET_KEY" not in repr(launch)


def test_harness_credentials_without_a_secret_reference_are_refused() -> None:
    launch = _launch(secret_env=HARNESS_SECRETS)
    with pytest.raises(InvalidInput, match="SBX_KUBE_SECRET_ENV"):
        _manifest(launch)
    with pytest.raises(InvalidInput, match="SBX_S3_SECRET_KEY"):
        _manifest(launch, secret_refs={"SBX_S3_ACCESS_KEY": HARNESS_REFS["SBX_S3_ACCESS_KEY"]})
    for bad in ("SBX_S3_ACCESS_KEY", "X=secret", "X=:key", "=s:k"):
        with pytest.raises(InvalidInput, match="NAME=secret:key"):
            parse_secret_env(bad)


@pytest.mark.parametrize(
    "launch",
    [
        _launch(),
        _launch(resources=Resources(milli_cpu=100), requirements=(), env={}, labels={}),
        _launch(resources=Resources(), requirements=(), env={}),
        _launch(working_dir=Path("/w")),
        _launch(secret_env=HARNESS_SECRETS, labels={"kind": "training"}),
    ],
    ids=["full", "small", "no-resources", "working-dir", "harness-secrets"],
)
def test_manifests_validate_against_kuberays_crd(validate: Validator, launch: JobLaunch) -> None:
    uri = "https://example.org/job.zip" if launch.working_dir else None
    validate(
        _manifest(
            launch, working_dir_uri=uri, ray_version="2.60.0", worker_replicas=1, secret_refs=HARNESS_REFS
        )
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "suspend"), "yes"),
        (("spec", "activeDeadlineSeconds"), "1h"),
        (("spec", "entrypointNumCpus"), "two"),
        (("spec", "suspnd"), True),
        (("spec", "rayClusterSpec", "headGroupSpec", "template"), None),
    ],
)
def test_the_crd_validator_rejects_broken_manifests(
    validate: Validator, path: tuple[str, ...], value: object
) -> None:
    m = copy.deepcopy(_manifest())
    parent = m
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(Exception, match=r"."):
        validate(m)


def test_label_value() -> None:
    assert label_value("a b/c") == "a-b-c"
    assert label_value("-x-") == "x"
    assert len(label_value("y" * 100)) == 63


def test_k8s_times_parse_to_epoch_ms() -> None:
    assert parse_k8s_time("1970-01-01T00:00:10Z") == 10_000
    assert parse_k8s_time("") is None
    assert parse_k8s_time(None) is None
    assert parse_k8s_time("yesterday") is None


def _obj(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "sbx-x", "annotations": annotations or {}}, "status": status or {}}


T0, T1, T2 = "2026-11-25T06:00:00Z", "2026-11-25T06:00:05Z", "2026-11-25T06:01:00Z"
MS0, MS1, MS2 = (parse_k8s_time(t) for t in (T0, T1, T2))


@pytest.mark.parametrize(
    ("status", "annotations", "state", "start", "end"),
    [
        ({}, None, BackendState.PENDING, None, None),
        ({"jobDeploymentStatus": "Suspended"}, None, BackendState.PENDING, None, None),
        ({"jobDeploymentStatus": "Initializing", "startTime": T0}, None, BackendState.PENDING, None, None),
        (
            {"jobDeploymentStatus": "Running", "jobStatus": "PENDING", "startTime": T0},
            None,
            BackendState.PENDING,
            None,
            None,
        ),
        (
            {
                "jobDeploymentStatus": "Running",
                "jobStatus": "RUNNING",
                "startTime": T0,
                "rayJobInfo": {"startTime": T1},
            },
            None,
            BackendState.RUNNING,
            MS1,
            None,
        ),
        (
            {
                "jobDeploymentStatus": "Complete",
                "jobStatus": "SUCCEEDED",
                "startTime": T0,
                "endTime": T2,
                "rayJobInfo": {"startTime": T1, "endTime": T2},
            },
            None,
            BackendState.SUCCEEDED,
            MS1,
            MS2,
        ),
        (
            {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "startTime": T0, "endTime": T2},
            None,
            BackendState.FAILED,
            MS0,
            MS2,
        ),
        (
            {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "startTime": T0, "endTime": T2},
            None,
            BackendState.FAILED,
            MS0,
            MS2,
        ),
        ({"jobDeploymentStatus": "ValidationFailed"}, None, BackendState.FAILED, None, None),
        (
            {"jobDeploymentStatus": "Running", "jobStatus": "SUCCEEDED"},
            None,
            BackendState.SUCCEEDED,
            None,
            None,
        ),
        ({"jobDeploymentStatus": "Suspended"}, {STOPPED_AT: "5"}, BackendState.STOPPED, None, None),
        (
            {"jobDeploymentStatus": "Suspended", "jobStatus": "STOPPED", "startTime": T0},
            {STOPPED_AT: str(MS2)},
            BackendState.STOPPED,
            MS0,
            MS2,
        ),
        (
            {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": T2},
            {STOPPED_AT: "5"},
            BackendState.SUCCEEDED,
            None,
            MS2,
        ),
    ],
)
def test_status_mapping(
    status: dict[str, Any],
    annotations: dict[str, str] | None,
    state: BackendState,
    start: int | None,
    end: int | None,
) -> None:
    got = map_rayjob_status(_obj(status, annotations))
    assert (got.state, got.start_ms, got.end_ms) == (state, start, end)


def test_deadline_failures_say_why() -> None:
    got = map_rayjob_status(_obj({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}))
    assert "DeadlineExceeded" in got.message


# --- Pod Security Standard "restricted", field by field, for every pod of every generated RayJob ----------
def _pods(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod template of a RayJob: the head, each worker group and the submitter."""
    spec = manifest["spec"]
    cluster = spec["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"]["template"])]
    pods += [(f"workers/{g['groupName']}", g["template"]) for g in cluster["workerGroupSpecs"]]
    pods.append(("submitter", spec["submitterPodTemplate"]))
    return pods


HARDENED = PodHardening(service_account="sbx-job-runner", runtime_class="gvisor", run_as_user=1000)
VARIANTS: dict[str, dict[str, Any]] = {
    "sme": {"launch": _launch()},
    "sme-working-dir": {
        "launch": _launch(working_dir=Path("/w")),
        "working_dir_uri": "http://sbx.sandbox-broker.svc:80/api/v1/archives/tok.zip",
    },
    "training": {
        "launch": _launch(secret_env=HARNESS_SECRETS, labels={"kind": "training"}),
        "secret_refs": HARNESS_REFS,
    },
    "gvisor": {"launch": _launch(), "hardening": HARDENED},
}


def _variant(name: str) -> dict[str, Any]:
    kwargs = dict(VARIANTS[name])
    return _manifest(kwargs.pop("launch"), worker_replicas=2, **kwargs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_meets_the_restricted_profile(variant: str) -> None:
    for where, template in _pods(_variant(variant)):
        assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == [], where


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_is_hardened_field_by_field(variant: str) -> None:
    """The profile's fields, named one by one (the checker could be wrong; this spells out what we set)."""
    for where, template in _pods(_variant(variant)):
        spec = template["spec"]
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] > 0, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["serviceAccountName"] == "sbx-job-runner", where
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), (where, field)
        assert all(set(v) == {"name", "emptyDir"} for v in spec["volumes"]), where
        assert all(v["emptyDir"] == {"sizeLimit": "8Gi"} for v in spec["volumes"]), where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not any(port.get("hostPort") for port in container.get("ports", [])), where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert set(mounts) == {"/tmp", "/tmp/ray"}, where
            assert {v["name"] for v in spec["volumes"]} == set(mounts.values()), where


def test_the_runtime_class_is_set_only_when_configured() -> None:
    for where, template in _pods(_variant("gvisor")):
        assert template["spec"]["runtimeClassName"] == "gvisor", where
    for where, template in _pods(_variant("sme")):
        assert "runtimeClassName" not in template["spec"], where


def test_pods_carry_the_labels_the_network_policies_select() -> None:
    for variant, kind in (("sme", "job"), ("training", "training")):
        for where, template in _pods(_variant(variant)):
            assert template["metadata"]["labels"] == {
                "app.kubernetes.io/managed-by": "sandbox-broker",
                "sandbox-broker.io/job-kind": kind,
                "sandbox-broker.io/job-id": "01J-ABC",
            }, where


def test_the_training_harness_keeps_its_secret_references_and_no_sme_pod_gets_one() -> None:
    training = yaml.safe_dump(_variant("training"))
    assert training.count("secretKeyRef") == 2 * 2  # head + worker group, two keys each
    assert "secretKeyRef" not in yaml.safe_dump(_variant("sme"))


def _relax(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """Set (or with ``None`` delete) one dotted field of the head pod template's spec."""

    def change(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        index: Any = int(last) if isinstance(node, list) else last
        if value is None:
            del node[index]
        else:
            node[index] = value

    return change


RELAXED = {
    "privilege escalation": (
        _relax("containers.0.securityContext.allowPrivilegeEscalation", True),
        "allowPrivilegeEscalation",
    ),
    "escalation unset": (
        _relax("containers.0.securityContext.allowPrivilegeEscalation", None),
        "allowPrivilegeEscalation",
    ),
    "root user": (_relax("containers.0.securityContext.runAsUser", 0), "runAsUser"),
    "root allowed": (_relax("containers.0.securityContext.runAsNonRoot", False), "runAsNonRoot"),
    "capabilities kept": (
        _relax("containers.0.securityContext.capabilities.drop", []),
        "drop must contain ALL",
    ),
    "capability added": (
        _relax("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
        "capabilities.add",
    ),
    "seccomp unconfined": (
        _relax("containers.0.securityContext.seccompProfile.type", "Unconfined"),
        "seccomp",
    ),
    "privileged": (_relax("containers.0.securityContext.privileged", True), "privileged"),
    "host network": (_relax("hostNetwork", True), "hostNetwork"),
    "host pid": (_relax("hostPID", True), "hostPID"),
    "host ipc": (_relax("hostIPC", True), "hostIPC"),
    "host port": (_relax("containers.0.ports", [{"containerPort": 8265, "hostPort": 8265}]), "hostPort"),
    "host path": (_relax("volumes.0", {"name": "tmp", "hostPath": {"path": "/"}}), "hostPath"),
    "proc mount": (_relax("containers.0.securityContext.procMount", "Unmasked"), "procMount"),
    "selinux": (_relax("securityContext.seLinuxOptions", {"type": "spc_t"}), "seLinuxOptions"),
    "sysctl": (_relax("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "sysctl"),
}


@pytest.mark.parametrize("case", sorted(RELAXED))
def test_the_checker_fails_a_pod_with_one_field_relaxed(case: str) -> None:
    """Negative control: the same manifest with one field relaxed is refused, naming that field."""
    change, expected = RELAXED[case]
    spec = copy.deepcopy(_pods(_variant("sme"))[0][1]["spec"])
    change(spec)
    problems = restricted_violations(spec)
    assert problems, case
    assert any(expected in p for p in problems), problems


def test_the_checker_needs_seccomp_and_non_root_somewhere() -> None:
    spec = copy.deepcopy(_pods(_variant("sme"))[0][1]["spec"])
    del spec["securityContext"]["seccompProfile"]
    assert restricted_violations(spec) == []  # the container still sets it
    del spec["containers"][0]["securityContext"]["seccompProfile"]
    assert any("seccompProfile" in p for p in restricted_violations(spec))
    spec = copy.deepcopy(_pods(_variant("sme"))[0][1]["spec"])
    del spec["securityContext"]["runAsNonRoot"]
    del spec["containers"][0]["securityContext"]["runAsNonRoot"]
    assert any("runAsNonRoot" in p for p in restricted_violations(spec))


def test_hardening_refuses_root_and_an_empty_service_account() -> None:
    with pytest.raises(InvalidInput, match="non-root"):
        PodHardening(run_as_user=0)
    with pytest.raises(InvalidInput, match="service account"):
        PodHardening(service_account="")
    with pytest.raises(InvalidInput, match="quantity"):
        PodHardening(scratch_size_limit="lots")
    unbounded = PodHardening(scratch_size_limit=None).pod_spec([{"name": "c"}])
    assert [v["emptyDir"] for v in unbounded["volumes"]] == [{}, {}]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hardened_manifests_validate_against_kuberays_crd(validate: Validator, variant: str) -> None:
    validate(_variant(variant))


# --- one NetworkPolicy per job ----------------------------------------------------------------------------
def test_the_job_network_policy_opens_traffic_within_one_job_only() -> None:
    policy = job_network_policy(_launch(), namespace="sbx", owner_uid="uid-1")
    mine = {"app.kubernetes.io/managed-by": "sandbox-broker", "sandbox-broker.io/job-id": "01J-ABC"}
    assert policy["metadata"]["ownerReferences"] == [
        {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "sbx-01j-abc", "uid": "uid-1"}
    ]
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": mine}
    assert spec["ingress"] == [{"from": [{"podSelector": {"matchLabels": mine}}]}]
    assert spec["egress"] == [{"to": [{"podSelector": {"matchLabels": mine}}]}]
    pod_labels = _pods(_manifest())[0][1]["metadata"]["labels"]
    assert mine.items() <= pod_labels.items()  # it selects exactly this job's pods


class _Api:
    """Records calls of the Kubernetes client methods the backend uses (CustomObjects and Networking)."""

    def __init__(self, conflict: bool = False) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.policies: list[dict[str, Any]] = []
        self.conflict = conflict
        self.refuse_policies = False

    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        name = args[-1]
        if name not in self.objects:
            raise _Status(404)
        return self.objects[name]

    def create_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        body: dict[str, Any] = copy.deepcopy(args[-1])
        body["metadata"]["uid"] = "uid-" + body["metadata"]["name"]
        self.objects[body["metadata"]["name"]] = body
        return body

    def create_namespaced_network_policy(self, namespace: str, body: dict[str, Any]) -> None:
        if self.refuse_policies:
            raise _Status(403)
        if self.conflict or any(p["metadata"]["name"] == body["metadata"]["name"] for p in self.policies):
            raise _Status(409)
        self.policies.append(body)

    def delete_namespaced_custom_object(self, *args: Any) -> None:
        self.objects.pop(args[-1], None)


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def test_create_makes_the_rayjob_then_its_policy_and_stays_idempotent() -> None:
    api = _Api()
    seen: list[JobLaunch] = []

    def uploader(launch: JobLaunch) -> str:
        seen.append(launch)
        return "http://broker/api/v1/archives/t.zip"

    backend = KubeRayBackend(
        api, "sbx", "img", capacity=Resources(1000), networking_api=api, archive_uploader=uploader
    )
    launch = _launch(working_dir=Path("/w"))
    backend.create(launch)
    backend.create(launch)
    assert seen == [launch]  # uploaded once: the second create found the RayJob
    assert [p["metadata"]["ownerReferences"][0]["uid"] for p in api.policies] == ["uid-sbx-01j-abc"]
    job = api.objects["sbx-01j-abc"]
    assert (
        yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"] == "http://broker/api/v1/archives/t.zip"
    )


def test_a_rayjob_whose_policy_is_refused_is_deleted_and_the_refusal_raised() -> None:
    from broker.compute import BackendError

    api = _Api()
    api.refuse_policies = True
    backend = KubeRayBackend(api, "sbx", "img", capacity=Resources(1000), networking_api=api)
    with pytest.raises(BackendError, match="NetworkPolicy"):
        backend.create(_launch())
    assert api.objects == {}  # nothing left behind: the job never runs without its policy
    api.refuse_policies = False
    backend.create(_launch())
    assert list(api.objects) == ["sbx-01j-abc"] and len(api.policies) == 1


def _as_kuberay_builds_the_worker(template: dict[str, Any]) -> dict[str, Any]:
    """The worker pod KubeRay makes from our template (ray-operator ``DefaultWorkerPodTemplate``/``BuildPod``):
    a ``wait-gcs-ready`` init container copying the Ray container's image, securityContext, env and mounts,
    a memory-backed ``emptyDir`` at ``/dev/shm`` for the object store, probes and a metrics port."""
    pod: dict[str, Any] = copy.deepcopy(template["spec"])
    ray = pod["containers"][0]
    init = {
        "name": "wait-gcs-ready",
        "image": ray["image"],
        "command": ["/bin/bash", "-lc", "--"],
        "args": ["until ray health-check --address head:6379; do sleep 5; done"],
        "securityContext": copy.deepcopy(ray["securityContext"]),
        "volumeMounts": copy.deepcopy(ray["volumeMounts"]),
        "resources": {
            "limits": {"cpu": "200m", "memory": "256Mi"},
            "requests": {"cpu": "200m", "memory": "256Mi"},
        },
    }
    pod.setdefault("initContainers", []).append(init)
    pod["volumes"].append({"name": "shared-mem", "emptyDir": {"medium": "Memory"}})
    ray["volumeMounts"].append({"name": "shared-mem", "mountPath": "/dev/shm"})
    ray["ports"] = [{"name": "metrics", "containerPort": 8080}]
    ray["readinessProbe"] = {"httpGet": {"path": "/api/healthz", "port": 52365}}
    return pod


def test_the_pods_kuberay_builds_from_the_templates_stay_restricted() -> None:
    """What the operator adds (init container, /dev/shm, probes, ports) keeps the pod at the restricted level,
    because the init container inherits the Ray container's securityContext."""
    worker = _pods(_variant("sme"))[1][1]
    built = _as_kuberay_builds_the_worker(worker)
    assert restricted_violations(built) == []
    built["initContainers"][0]["securityContext"] = {}  # had KubeRay not copied it, the checker would say so
    assert any("initContainers[0]" in p for p in restricted_violations(built))
