"""Jobs as KubeRay ``RayJob`` custom resources (``ray.io/v1``) through the official ``kubernetes`` client.

Lifecycle: :meth:`KubeRayBackend.create` creates the RayJob with ``spec.suspend: true`` (KubeRay makes no
cluster for a suspended job); :meth:`~KubeRayBackend.start` patches ``suspend`` to ``false`` when the broker
admits it; :meth:`~KubeRayBackend.stop` sets ``suspend`` back to ``true`` (KubeRay deletes the RayCluster and
the submitter) and records ``sandbox-broker.io/stopped-at-ms`` so the job reads as STOPPED and is never
resumed. The object itself stays (``shutdownAfterJobFinishes`` only removes the cluster) so status and times
remain readable for metering.

Decisions recorded here:

* Names are the launch names (DNS-1123), labels carry ``app.kubernetes.io/managed-by: sandbox-broker`` plus
  the org and job ids (sanitised to label values; the raw ids are annotations).
* ``activeDeadlineSeconds`` = max runtime: Kubernetes enforces it even if the broker is down.
* The head pod carries the job's resources (the entrypoint runs there: ``entrypointNumCpus/Gpus``); a worker
  group with the same pod shape exists with ``worker_replicas`` replicas (0 by default) for jobs that scale.
* Token auth: ``rayClusterSpec.authOptions.mode: token`` — the operator generates the Secret; the broker
  never handles it and jobs receive only what KubeRay injects into Ray's own containers.
* A local ``working_dir`` cannot be uploaded by a submitter pod: the backend's ``upload_working_dir``
  callable turns it into a URI Ray can fetch (``s3://``, ``https://…zip``); without one such launches are
  refused.
* Writes that depend on what was read carry ``metadata.resourceVersion``; a 409 triggers a re-read and a
  retry. A 404 reads as ``NOT_FOUND``.
* Times for metering are ``status.rayJobInfo.startTime/endTime`` (Ray's own), falling back to
  ``status.startTime/endTime``. Kubernetes times have second precision.
* Capacity is configured (the namespace's share of the cluster, e.g. its ResourceQuota): a Kubernetes
  cluster's free capacity is not a property of one namespace.
* Logs come from the submitter pod (``ray job submit`` follows the job's output) through ``CoreV1Api`` when
  one is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from common.clock import Clock, SystemClock
from common.errors import InvalidInput
from common.resources import Resources

from .base import (
    DEFAULT_LOG_BYTES,
    NOT_FOUND_STATUS,
    BackendError,
    BackendState,
    BackendStatus,
    JobLaunch,
    tail_bytes,
)
from .ray_jobs import build_runtime_env

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayjobs"
MANAGED_BY = "sandbox-broker"
STOPPED_AT = "sandbox-broker.io/stopped-at-ms"
LABEL_ORG = "sandbox-broker.io/org-id"
LABEL_JOB = "sandbox-broker.io/job-id"
LABEL_KIND = "sandbox-broker.io/job-kind"
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_RETRIES = 5
_LOG_TAIL_LINES = 5_000  # limitBytes would cut the head of the log; we want its tail

WorkingDirUploader = Callable[[Path], str]


def label_value(text: str) -> str:
    """Return ``text`` as a valid Kubernetes label value (≤ 63 chars, alphanumeric at both ends)."""
    return _LABEL_UNSAFE.sub("-", text)[:63].strip("-_.")


def _quantities(resources: Resources) -> dict[str, str]:
    """Kubernetes resource quantities for one pod (CPU in millicores, memory in Mi, GPUs as whole)."""
    out = {"cpu": f"{max(resources.milli_cpu, 100)}m", "memory": f"{max(resources.memory_mib, 512)}Mi"}
    if resources.gpus:
        out["nvidia.com/gpu"] = str(resources.gpus)
    return out


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A key of a Kubernetes Secret in the jobs' namespace (where a harness credential comes from)."""

    secret: str
    key: str


def parse_secret_env(text: str) -> dict[str, SecretRef]:
    """Parse ``NAME=secret:key,NAME2=secret:key`` (``SBX_KUBE_SECRET_ENV``) into references."""
    refs: dict[str, SecretRef] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, target = item.partition("=")
        secret, _, key = target.partition(":")
        if not (name.strip() and secret.strip() and key.strip()):
            raise InvalidInput(f"SBX_KUBE_SECRET_ENV entry {item!r} is not NAME=secret:key")
        refs[name.strip()] = SecretRef(secret.strip(), key.strip())
    return refs


def _pod_template(
    role: str,
    image: str,
    resources: Resources,
    env: Mapping[str, str],
    secret_refs: Mapping[str, SecretRef],
    labels: Mapping[str, str],
) -> dict[str, Any]:
    quantities = _quantities(resources)
    container: dict[str, Any] = {
        "name": f"ray-{role}",
        "image": image,
        "resources": {"requests": dict(quantities), "limits": dict(quantities)},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    entries: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    entries += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for k, ref in sorted(secret_refs.items())
    ]
    if entries:
        container["env"] = entries
    return {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}}


def rayjob_manifest(
    launch: JobLaunch,
    *,
    image: str,
    namespace: str,
    working_dir_uri: str | None = None,
    ttl_seconds_after_finished: int = 3600,
    worker_replicas: int = 0,
    ray_version: str | None = None,
    secret_refs: Mapping[str, SecretRef] | None = None,
) -> dict[str, Any]:
    """Return the ``RayJob`` object for ``launch`` (pure; validated against KubeRay's CRD in tests).

    ``working_dir_uri`` replaces ``launch.working_dir`` in the runtime env (a submitter pod cannot read the
    broker's disk); a launch with a working dir but no URI is refused. Each ``launch.secret_env`` variable
    becomes a ``secretKeyRef`` to the Secret key ``secret_refs`` names for it, never its value; a secret
    variable without a reference is refused.
    """
    if launch.working_dir is not None and working_dir_uri is None:
        raise InvalidInput(f"job {launch.job_id}: KubeRay needs the working dir uploaded to a URI first")
    refs = secret_refs or {}
    missing = sorted(set(launch.secret_env) - set(refs))
    if missing:
        raise InvalidInput(
            f"job {launch.job_id} needs the credentials {', '.join(missing)}, and KubeRay jobs get credentials "
            "only as Secret references: set SBX_KUBE_SECRET_ENV (NAME=secret:key,...) for them"
        )
    env_refs = {name: refs[name] for name in launch.secret_env}
    runtime_env = build_runtime_env(launch, with_secrets=False)
    if working_dir_uri is not None:
        runtime_env["working_dir"] = working_dir_uri
    labels = {
        **{label_value(k): label_value(v) for k, v in launch.labels.items()},
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_ORG: label_value(launch.org_id),
        LABEL_JOB: label_value(launch.job_id),
    }
    # Pod labels let a NetworkPolicy tell the broker's trusted harness (kind=training) from SME code.
    pod_labels = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_KIND: label_value(launch.labels.get("kind", "job")),
        LABEL_JOB: label_value(launch.job_id),
    }
    cluster: dict[str, Any] = {
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {},
            "template": _pod_template("head", image, launch.resources, launch.env, env_refs, pod_labels),
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": worker_replicas,
                "minReplicas": 0,
                "maxReplicas": worker_replicas,
                "rayStartParams": {},
                "template": _pod_template(
                    "worker", image, launch.resources, launch.env, env_refs, pod_labels
                ),
            }
        ],
    }
    if ray_version:
        cluster["rayVersion"] = ray_version
    spec: dict[str, Any] = {
        "suspend": True,
        "entrypoint": launch.entrypoint,
        "submissionMode": "K8sJobMode",
        "activeDeadlineSeconds": launch.max_runtime_s,
        "backoffLimit": 0,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": ttl_seconds_after_finished,
        "rayClusterSpec": cluster,
    }
    if runtime_env:
        spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
    if launch.resources.milli_cpu:
        spec["entrypointNumCpus"] = launch.resources.milli_cpu / 1000
    if launch.resources.gpus:
        spec["entrypointNumGpus"] = launch.resources.gpus
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": launch.name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {LABEL_JOB: launch.job_id, LABEL_ORG: launch.org_id},
        },
        "spec": spec,
    }


def parse_k8s_time(value: object) -> int | None:
    """Parse an RFC 3339 Kubernetes timestamp into epoch milliseconds (``None`` when absent)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def map_rayjob_status(obj: Mapping[str, Any]) -> BackendStatus:
    """Translate a RayJob object (its ``status`` and our stop annotation) into a :class:`BackendStatus`.

    Pure. A Ray job status that is terminal wins; then ``jobDeploymentStatus`` Complete/Failed/
    ValidationFailed; then the stop annotation; RUNNING needs both the deployment and the Ray job running;
    everything else (New, Initializing, Waiting, Retrying, Suspending, Suspended) is PENDING.
    """
    status: Mapping[str, Any] = obj.get("status") or {}
    annotations: Mapping[str, str] = (obj.get("metadata") or {}).get("annotations") or {}
    deployment = str(status.get("jobDeploymentStatus") or "")
    job = str(status.get("jobStatus") or "").upper()
    info: Mapping[str, Any] = status.get("rayJobInfo") or {}
    start = parse_k8s_time(info.get("startTime")) or parse_k8s_time(status.get("startTime"))
    end = parse_k8s_time(info.get("endTime")) or parse_k8s_time(status.get("endTime"))
    message = " ".join(str(p) for p in (status.get("reason"), status.get("message")) if p)
    terminal = {"SUCCEEDED": BackendState.SUCCEEDED, "FAILED": BackendState.FAILED}
    if job in terminal:
        return BackendStatus(terminal[job], start, end, message)
    if job == "STOPPED" and (deployment in ("Complete", "Failed") or STOPPED_AT in annotations):
        return BackendStatus(BackendState.STOPPED, start, end or _stopped_at(annotations), message)
    if deployment == "Complete":
        return BackendStatus(BackendState.SUCCEEDED, start, end, message)
    if deployment in ("Failed", "ValidationFailed"):
        return BackendStatus(BackendState.FAILED, start, end, message or deployment)
    if STOPPED_AT in annotations:
        stopped_end = (end or _stopped_at(annotations)) if start is not None else None
        return BackendStatus(BackendState.STOPPED, start, stopped_end, message or "stopped")
    if deployment == "Running" and job == "RUNNING":
        return BackendStatus(BackendState.RUNNING, start, None, message)
    return BackendStatus(BackendState.PENDING, None, None, message or deployment or "created")


def _stopped_at(annotations: Mapping[str, str]) -> int | None:
    raw = annotations.get(STOPPED_AT, "")
    return int(raw) if raw.isdigit() else None


class KubeRayBackend:
    """A :class:`~broker.compute.base.ComputeBackend` creating RayJobs in one namespace."""

    kind = "kuberay"

    def __init__(
        self,
        api: Any,
        namespace: str,
        image: str,
        *,
        capacity: Resources,
        core_api: Any | None = None,
        upload_working_dir: WorkingDirUploader | None = None,
        ttl_seconds_after_finished: int = 3600,
        worker_replicas: int = 0,
        ray_version: str | None = None,
        clock: Clock | None = None,
        secret_refs: Mapping[str, SecretRef] | None = None,
    ) -> None:
        """Use ``api`` (a ``kubernetes.client.CustomObjectsApi``) in ``namespace``; pods run ``image``."""
        self._api = api
        self._core = core_api
        self._namespace = namespace
        self._image = image
        self._capacity = capacity
        self._upload = upload_working_dir
        self._ttl = ttl_seconds_after_finished
        self._workers = worker_replicas
        self._ray_version = ray_version
        self._clock = clock or SystemClock()
        self._secret_refs = dict(secret_refs or {})

    def manifest(self, launch: JobLaunch) -> dict[str, Any]:
        """Return the RayJob this backend creates for ``launch`` (uploads the working dir if any)."""
        uri = None
        if launch.working_dir is not None and self._upload is not None:
            uri = self._upload(launch.working_dir)
        return rayjob_manifest(
            launch,
            image=self._image,
            namespace=self._namespace,
            working_dir_uri=uri,
            ttl_seconds_after_finished=self._ttl,
            worker_replicas=self._workers,
            ray_version=self._ray_version,
            secret_refs=self._secret_refs,
        )

    # --- ComputeBackend ----------------------------------------------------------------------------
    def create(self, launch: JobLaunch) -> None:
        """Create the suspended RayJob; an existing one with the same name is kept (idempotent)."""
        if self._read(launch.name) is not None:
            return
        body = self.manifest(launch)
        try:
            self._api.create_namespaced_custom_object(GROUP, VERSION, self._namespace, PLURAL, body)
        except Exception as exc:
            if _status_of(exc) == 409:  # AlreadyExists: a concurrent create won
                return
            raise BackendError(f"cannot create RayJob {launch.name}: {_reason(exc)}") from exc

    def start(self, launch: JobLaunch) -> None:
        """Unsuspend the RayJob (creating it first if needed); a stopped job is never resumed."""
        self.create(launch)
        self._update(launch.name, _unsuspend)

    def status(self, name: str) -> BackendStatus:
        """Return the RayJob's state (``NOT_FOUND`` when it does not exist)."""
        obj = self._read(name)
        return NOT_FOUND_STATUS if obj is None else map_rayjob_status(obj)

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_BYTES) -> str:
        """Return the tail of the submitter pod's log (empty without a CoreV1Api or a pod)."""
        if self._core is None:
            return ""
        try:
            pods = self._core.list_namespaced_pod(
                self._namespace, label_selector=f"batch.kubernetes.io/job-name={name}"
            )
            items = sorted(pods.items or [], key=lambda p: str(p.metadata.creation_timestamp or ""))
            if not items:
                return ""
            text = self._core.read_namespaced_pod_log(
                items[-1].metadata.name, self._namespace, tail_lines=_LOG_TAIL_LINES
            )
        except Exception as exc:
            if _status_of(exc) == 404:
                return ""
            raise BackendError(f"cannot read logs of RayJob {name}: {_reason(exc)}") from exc
        return tail_bytes(str(text), max_bytes)

    def stop(self, name: str) -> None:
        """Suspend the RayJob and mark it stopped (idempotent; finished or unknown jobs are untouched)."""
        now = self._clock.now_ms()
        self._update(name, lambda obj: _stop_patch(obj, now))

    def capacity(self) -> Resources:
        """Return the configured capacity of the namespace."""
        return self._capacity

    def close(self) -> None:
        """Close the HTTP connection pools of the Kubernetes clients."""
        for api in (self._api, self._core):
            client = getattr(api, "api_client", None)
            if client is not None:
                client.close()

    # --- internals ---------------------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self._api.get_namespaced_custom_object(GROUP, VERSION, self._namespace, PLURAL, name)
        except Exception as exc:
            if _status_of(exc) == 404:
                return None
            raise BackendError(f"cannot read RayJob {name}: {_reason(exc)}") from exc
        return dict(obj)

    def _update(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Read, compute a merge patch pinned to the read's resourceVersion, retry on 409 conflicts."""
        for _ in range(_MAX_RETRIES):
            obj = self._read(name)
            if obj is None:
                return
            patch = change(obj)
            if patch is None:
                return
            patch.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
            try:
                self._api.patch_namespaced_custom_object(GROUP, VERSION, self._namespace, PLURAL, name, patch)
                return
            except Exception as exc:
                code = _status_of(exc)
                if code == 409:
                    continue
                if code == 404:
                    return
                raise BackendError(f"cannot update RayJob {name}: {_reason(exc)}") from exc
        raise BackendError(f"RayJob {name} kept changing under {_MAX_RETRIES} updates; try again")


def _unsuspend(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if STOPPED_AT in annotations or not (obj.get("spec") or {}).get("suspend", False):
        return None
    return {"spec": {"suspend": False}}


def _stop_patch(obj: Mapping[str, Any], now_ms: int) -> dict[str, Any] | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if STOPPED_AT in annotations or map_rayjob_status(obj).state.is_terminal:
        return None
    return {"metadata": {"annotations": {STOPPED_AT: str(now_ms)}}, "spec": {"suspend": True}}


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _reason(exc: BaseException) -> str:
    status = _status_of(exc)
    reason = getattr(exc, "reason", None) or exc.__class__.__name__
    return f"HTTP {status} {reason}" if status else f"{reason}: {exc}"
