"""The KubeRay adapter's pure parts: the RayJob manifest (checked against KubeRay's real CRD schema) and
the status mapping."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.compute import BackendState, JobLaunch, launch_name, rayjob_manifest
from broker.compute.kube_fake import Validator, crd_validator
from broker.compute.kuberay import (
    STOPPED_AT,
    label_value,
    map_rayjob_status,
    parse_k8s_time,
    parse_secret_env,
)
from common.errors import InvalidInput
from common.resources import Resources

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
