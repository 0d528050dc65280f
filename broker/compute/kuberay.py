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
* A local ``working_dir`` cannot be uploaded by a submitter pod: the backend's ``archive_uploader`` (given the
  launch: the broker's job-bound capability URL, see ``broker/db/archives.py``) or ``upload_working_dir``
  (given the directory) turns it into a URI Ray can fetch (``http(s)://…zip``, ``s3://``); without one such
  launches are refused.
* Every pod (head, workers, submitter) meets the Pod Security Standard *restricted* profile
  (:class:`PodHardening`): non-root uid, no privilege escalation, all capabilities dropped, seccomp
  ``RuntimeDefault``, a read-only root filesystem with ``emptyDir`` volumes at ``/tmp`` and ``/tmp/ray`` (Ray's
  session files), a dedicated service account whose token is not mounted, and an optional sandboxed
  ``runtimeClassName`` (gVisor, Kata). SME code is not trusted with anything of the cluster.
* Pod labels (``managed-by``, ``job-id``, ``job-kind``) are what the chart's NetworkPolicies select; a
  per-job NetworkPolicy (owned by the RayJob, so Kubernetes deletes it with the RayJob) lets the pods of one
  job talk to each other and to no other job's pods.
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

import contextlib
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
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MAX_RETRIES = 5
_LOG_TAIL_LINES = 5_000  # limitBytes would cut the head of the log; we want its tail

#: Turns a local working dir into a URI Ray can fetch (content-addressed stores, tests).
WorkingDirUploader = Callable[[Path], str]
#: Publishes a launch's working dir at a URI bound to that job (the broker's capability URL).
ArchiveUploader = Callable[[JobLaunch], str]
#: Writable scratch of every container (the root filesystem is read-only): name → mount path.
SCRATCH_VOLUMES = {"tmp": "/tmp", "ray-tmp": "/tmp/ray"}  # noqa: S108 - emptyDirs, private to the pod
#: The submitter pod's resources: KubeRay's own defaults for the pod it would otherwise create.
_SUBMITTER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "200Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


@dataclass(frozen=True, slots=True)
class PodHardening:
    """How every pod of a job is locked down (the Pod Security Standard *restricted* profile and more).

    ``run_as_user``/``run_as_group`` are the image's non-root user (1000/100 in ``rayproject/ray``);
    ``service_account`` is a dedicated account with no RBAC whose token is never mounted; ``runtime_class``
    names a sandboxed runtime (``gvisor``, ``kata``) when the cluster has one; ``scratch_size_limit`` caps
    each scratch ``emptyDir`` (a Kubernetes quantity; the kubelet evicts a pod that writes more, so one job
    cannot fill its node's disk), ``None`` for no cap.
    """

    service_account: str = "sbx-job-runner"
    runtime_class: str | None = None
    run_as_user: int = 1000
    run_as_group: int = 100
    scratch_size_limit: str | None = "8Gi"

    def __post_init__(self) -> None:
        if self.run_as_user <= 0 or self.run_as_group < 0:
            raise InvalidInput("job pods run as a non-root user: run_as_user must be a positive uid")
        if not self.service_account:
            raise InvalidInput("job pods need a dedicated service account name")
        if self.scratch_size_limit is not None and not _QUANTITY.match(self.scratch_size_limit):
            raise InvalidInput(f"scratch size limit {self.scratch_size_limit!r} is not a quantity like 8Gi")

    def pod_security(self) -> dict[str, Any]:
        """The pod-level ``securityContext``."""
        return {
            "runAsNonRoot": True,
            "runAsUser": self.run_as_user,
            "runAsGroup": self.run_as_group,
            "fsGroup": self.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def container_security(self) -> dict[str, Any]:
        """The container-level ``securityContext`` (repeats the pod's: each container must pass alone)."""
        return {
            "runAsNonRoot": True,
            "runAsUser": self.run_as_user,
            "runAsGroup": self.run_as_group,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def pod_spec(self, containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A pod spec around ``containers`` with the account, runtime class and scratch volumes."""
        for container in containers:
            container["securityContext"] = self.container_security()
            container["volumeMounts"] = [{"name": n, "mountPath": p} for n, p in SCRATCH_VOLUMES.items()]
        spec: dict[str, Any] = {
            "serviceAccountName": self.service_account,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": self.pod_security(),
            "containers": containers,
            "volumes": [{"name": n, "emptyDir": self._empty_dir()} for n in SCRATCH_VOLUMES],
            **extra,
        }
        if self.runtime_class:
            spec["runtimeClassName"] = self.runtime_class
        return spec

    def _empty_dir(self) -> dict[str, Any]:
        return {"sizeLimit": self.scratch_size_limit} if self.scratch_size_limit else {}


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
    hardening: PodHardening,
) -> dict[str, Any]:
    quantities = _quantities(resources)
    container: dict[str, Any] = {
        "name": f"ray-{role}",
        "image": image,
        "resources": {"requests": dict(quantities), "limits": dict(quantities)},
    }
    entries: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    entries += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for k, ref in sorted(secret_refs.items())
    ]
    if entries:
        container["env"] = entries
    return {"metadata": {"labels": dict(labels)}, "spec": hardening.pod_spec([container])}


def _submitter_template(image: str, labels: Mapping[str, str], hardening: PodHardening) -> dict[str, Any]:
    """The pod running ``ray job submit`` (KubeRay fills in its command): hardened like the Ray pods."""
    container = {
        "name": "ray-job-submitter",
        "image": image,
        "resources": {kind: dict(amounts) for kind, amounts in _SUBMITTER_RESOURCES.items()},
    }
    spec = hardening.pod_spec([container], restartPolicy="Never")
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


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
    hardening: PodHardening | None = None,
) -> dict[str, Any]:
    """Return the ``RayJob`` object for ``launch`` (pure; validated against KubeRay's CRD in tests).

    ``working_dir_uri`` replaces ``launch.working_dir`` in the runtime env (a submitter pod cannot read the
    broker's disk); a launch with a working dir but no URI is refused. Each ``launch.secret_env`` variable
    becomes a ``secretKeyRef`` to the Secret key ``secret_refs`` names for it, never its value; a secret
    variable without a reference is refused. Every pod, the submitter's included, is locked down by
    ``hardening`` (the defaults of :class:`PodHardening` unless given).
    """
    harden = hardening or PodHardening()
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
    pod_labels = job_pod_labels(launch)
    cluster: dict[str, Any] = {
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {},
            "template": _pod_template(
                "head", image, launch.resources, launch.env, env_refs, pod_labels, harden
            ),
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": worker_replicas,
                "minReplicas": 0,
                "maxReplicas": worker_replicas,
                "rayStartParams": {},
                "template": _pod_template(
                    "worker", image, launch.resources, launch.env, env_refs, pod_labels, harden
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
        "submitterPodTemplate": _submitter_template(image, pod_labels, harden),
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


def job_pod_labels(launch: JobLaunch) -> dict[str, str]:
    """Labels of every pod of ``launch``: NetworkPolicies select them (the harness by ``kind=training``, one
    job's pods by its ``job-id``); only the broker sets them, SME code cannot change a pod's labels."""
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_KIND: label_value(launch.labels.get("kind", "job")),
        LABEL_JOB: label_value(launch.job_id),
    }


def job_network_policy(launch: JobLaunch, *, namespace: str, owner_uid: str) -> dict[str, Any]:
    """The NetworkPolicy letting the pods of ``launch`` (head, workers, submitter) reach each other only.

    NetworkPolicies add up: the chart's policy for all job pods allows DNS and the broker's archive endpoint
    and denies the rest; this one adds traffic within one job (Ray needs head <-> worker and submitter ->
    head), never between two jobs. Owned by the RayJob, so it is garbage-collected with it.
    """
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, LABEL_JOB: label_value(launch.job_id)}

    def selector() -> dict[str, Any]:
        return {"matchLabels": dict(labels)}

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": launch.name,
            "namespace": namespace,
            "labels": dict(labels),
            "ownerReferences": [
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob", "name": launch.name, "uid": owner_uid}
            ],
        },
        "spec": {
            "podSelector": selector(),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": selector()}]}],
            "egress": [{"to": [{"podSelector": selector()}]}],
        },
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
        archive_uploader: ArchiveUploader | None = None,
        networking_api: Any | None = None,
        hardening: PodHardening | None = None,
    ) -> None:
        """Use ``api`` (a ``kubernetes.client.CustomObjectsApi``) in ``namespace``; pods run ``image``.

        ``archive_uploader`` (preferred) or ``upload_working_dir`` publish a launch's working dir; with a
        ``networking_api`` (``NetworkingV1Api``) each job gets its own NetworkPolicy (:func:`job_network_policy`).
        """
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
        self._archive = archive_uploader
        self._net = networking_api
        self._hardening = hardening or PodHardening()

    def manifest(self, launch: JobLaunch) -> dict[str, Any]:
        """Return the RayJob this backend creates for ``launch`` (uploads the working dir if any)."""
        uri = None
        if launch.working_dir is not None and self._archive is not None:
            uri = self._archive(launch)
        elif launch.working_dir is not None and self._upload is not None:
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
            hardening=self._hardening,
        )

    # --- ComputeBackend ----------------------------------------------------------------------------
    def create(self, launch: JobLaunch) -> None:
        """Create the suspended RayJob and its NetworkPolicy; existing ones are kept (idempotent).

        A RayJob whose policy cannot be created is deleted again (it never ran: it is suspended), so a
        refused job leaves nothing behind and a retry starts from scratch.
        """
        obj = self._read(launch.name)
        if obj is None:
            obj = self._create_rayjob(launch)
        if obj is None or self._net is None:
            return
        try:
            self._ensure_network_policy(launch, str(obj["metadata"].get("uid", "")))
        except BackendError:
            self._delete_quietly(launch.name)
            raise

    def _delete_quietly(self, name: str) -> None:
        with contextlib.suppress(Exception):  # best effort: the error being raised says what went wrong
            self._api.delete_namespaced_custom_object(GROUP, VERSION, self._namespace, PLURAL, name)

    def _create_rayjob(self, launch: JobLaunch) -> dict[str, Any] | None:
        body = self.manifest(launch)
        try:
            created = self._api.create_namespaced_custom_object(GROUP, VERSION, self._namespace, PLURAL, body)
        except Exception as exc:
            if _status_of(exc) == 409:  # AlreadyExists: a concurrent create won
                return self._read(launch.name)
            raise BackendError(f"cannot create RayJob {launch.name}: {_reason(exc)}") from exc
        return dict(created)

    def _ensure_network_policy(self, launch: JobLaunch, owner_uid: str) -> None:
        """Create the job's NetworkPolicy (before ``start`` unsuspends it: pods never run without it)."""
        body = job_network_policy(launch, namespace=self._namespace, owner_uid=owner_uid)
        net: Any = self._net
        try:
            net.create_namespaced_network_policy(self._namespace, body)
        except Exception as exc:
            if _status_of(exc) == 409:  # it exists already (retry, or another replica)
                return
            raise BackendError(f"cannot create the NetworkPolicy of {launch.name}: {_reason(exc)}") from exc

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
        for api in (self._api, self._core, self._net):
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
