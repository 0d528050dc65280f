"""DP-SGD training on protected datasets: a declarative spec in, DP weights and DP metrics out.

Submit validates the spec against the dataset's public policy and the SME's grant (nothing touches data),
then in ONE transaction reserves the run's whole privacy cost (dataset budget, SME cap, grant), records the
charge and queues a ``training`` job. The job is billed like any other (hold, admission, metering,
settlement); it runs the broker's trusted harness (:mod:`privacy.training.entry`). On the embedded default
the run's input (its spec and the bounded version) is staged into the job's directory and the harness runs in
the broker's sandbox with that directory read-only and no credentials at all; on remote backends
:mod:`broker.training_job` stages the same files from the object store with credentials passed as Secret
references. The privacy cost is never refunded: it was reserved before the data could be read.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from broker.compute import JobLaunch
from broker.compute.ray_local import harness_entrypoint
from broker.container import Container
from broker.db import datasets as repo
from broker.db import jobs as jobs_db
from broker.db.jobs import Job
from broker.db.orgs import Principal
from broker.services.access import read_scope, require_role
from broker.services.datasets import DatasetService
from broker.services.idem import replayed, write_idempotent
from broker.services.jobs import JobRequest, JobService
from broker.training_job import OUTPUTS, input_key, result_key, weights_key
from common.canonical import floats_as_text
from common.errors import Conflict, NotFound
from common.ids import new_id
from common.resources import Resources
from datasets import ReleaseKind, check_use
from datasets.policy import ColumnKind
from datasets.storage import StorageNotFound
from privacy.budget import PrivacyCost
from privacy.training import planned_cost, validate_spec
from privacy.training.entry import DATA_FILE, INPUT_FILE
from quotas.jobs import JobState

KIND = "training"
OPERATION = "training.submit"
DEFAULT_RESOURCES = Resources(milli_cpu=1000, gpus=0, memory_mib=2048)
#: The harness as it runs in the embedded sandbox: its staged input read-only at /input, results in /output.
SANDBOXED_ENTRYPOINT = harness_entrypoint(
    "privacy.training.entry", "--input", "/input", "--output", "/output"
)


class TrainingService:
    """SMEs submit training specs, follow runs, download weights; the audit log records each run."""

    def __init__(self, c: Container, jobs: JobService, datasets: DatasetService) -> None:
        self.c = c
        self.jobs = jobs
        self.datasets = datasets
        datasets.on_revoked.append(self._cancel_queued)

    # -- the training job kind (broker.services.jobkinds.JobKind) -------------------------------------
    def launch(self, job: Job, base: JobLaunch, *, stage_locally: bool) -> JobLaunch:
        """The harness's launch: staged input and no credentials locally; Secret-backed fetch remotely."""
        if stage_locally:
            assert base.job_dir is not None
            self._stage(job, base.job_dir / "input")
            return replace(base, entrypoint=SANDBOXED_ENTRYPOINT)
        return replace(base, env=self._env(job), secret_env=self._secret_env(job))

    def settled(self, job: Job) -> None:
        """Keep a sandboxed run's outputs in the object store, then close its charge and audit it."""
        self._collect(job)
        self._record(job)

    def _stage(self, job: Job, input_dir: Path) -> None:
        """Write the run's input and its dataset version's bounded file for the sandbox (read-only there)."""
        raw_input = self.c.storage.get_bytes(input_key(job.id))
        input_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        (input_dir / INPUT_FILE).write_bytes(raw_input)
        (input_dir / DATA_FILE).write_bytes(self.c.storage.get_bytes(json.loads(raw_input)["object_key"]))

    def _collect(self, job: Job) -> None:
        """Copy what a locally sandboxed run wrote into the object store, where status and download read it."""
        output = self.c.job_files.output_dir(job.id)
        for name, key in OUTPUTS:
            path = output / name
            if path.is_file() and not path.is_symlink():
                self.c.storage.put_bytes(key(job.id), path.read_bytes())

    def submit(
        self,
        principal: Principal,
        *,
        dataset_id: str,
        spec: dict[str, Any],
        version: int | None = None,
        resources: Resources = DEFAULT_RESOURCES,
        max_runtime_s: int = 1800,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Validate, reserve the privacy cost and queue the run, atomically (refusals charge nothing)."""
        require_role(principal, "sme")
        body = {
            "dataset": dataset_id,
            "version": version,
            "spec": spec,
            "resources": [resources.milli_cpu, resources.gpus, resources.memory_mib],
            "runtime": max_runtime_s,
        }
        earlier = replayed(
            self.c.db, org_id=principal.org_id, key=idempotency_key, operation=OPERATION, body=body
        )
        if earlier is not None:
            return earlier
        grant, ver = self.c.db.read(lambda conn: self._grant(conn, principal, dataset_id, version))
        assert grant.request.grant is not None
        cap = PrivacyCost(grant.request.grant.epsilon_cap_micro, grant.request.grant.delta_cap_e12)
        remaining = PrivacyCost(
            max(0, cap.epsilon_micro - grant.spent.epsilon_micro),
            max(0, cap.delta_e12 - grant.spent.delta_e12),
        )
        policy = ver.policy
        columns = {c.name: c.kind.value for c in policy.columns}
        label = spec.get("label")
        label_column = next((c for c in policy.columns if c.name == label), None)
        categories = (
            list(label_column.categories)
            if label_column is not None and label_column.kind is ColumnKind.CATEGORICAL
            else None
        )
        parsed = validate_spec(
            spec,
            dataset_columns=columns,
            label_categories=categories,
            grant_epsilon_micro=remaining.epsilon_micro,
            policy_delta_e12=remaining.delta_e12,
            privacy_unit=policy.privacy_unit,
        )
        eps, delta = planned_cost(parsed)
        cost = PrivacyCost(eps, delta)
        job_id = new_id("job")
        self.c.storage.put_bytes(
            input_key(job_id),
            json.dumps(
                {
                    "spec": spec,
                    "columns": columns,
                    "label_categories": categories,
                    "reserved_epsilon_micro": eps,
                    "policy_delta_e12": remaining.delta_e12,
                    "policy": policy.to_dict(),
                    "object_key": ver.object_key,
                    "secure_mode": self.c.settings.training_secure_mode,
                    "seed": self.c.settings.training_seed,
                },
                sort_keys=True,
            ).encode(),
        )
        request = JobRequest(
            entrypoint=f"python -m broker.training_job {job_id}",
            resources=resources,
            max_runtime_s=max_runtime_s,
            kind=KIND,
            spec={
                "dataset_id": ver.dataset_id,
                "version": ver.version,
                "request_id": grant.request.request_id,
                "training_spec": spec,
                "reserved": cost.to_dict(),
            },
        )
        cluster_total = self.jobs.cluster_total()
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            current = repo.get_request(conn, grant.request.request_id)
            check_use(
                current.request,
                dataset_hash=ver.content_hash,
                sme_org=principal.org_id,
                kind=ReleaseKind.TRAINING,
                clock=self.c.clock,
            )
            repo.reserve(
                conn,
                dataset_id=ver.dataset_id,
                sme_org=principal.org_id,
                request_id=grant.request.request_id,
                cost=cost,
            )
            repo.insert_charge(
                conn,
                charge_id=job_id,
                dataset_id=ver.dataset_id,
                dataset_version=ver.version,
                request_id=grant.request.request_id,
                sme_org=principal.org_id,
                kind=KIND,
                cost=cost,
                spec=[spec],
                hold_id=None,
                rate_card_version=jobs_db.current_rate_card(conn).version,
                now_ms=now,
            )
            job = self.jobs.queue_in(
                conn, principal, request, job_id=job_id, workdir=None, cluster_total=cluster_total
            )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="training.reserve",
                object_type="job",
                object_id=job_id,
                org_id=principal.org_id,
                dataset_id=ver.dataset_id,
                details=floats_as_text(
                    {
                        "version": ver.version,
                        "reserved": cost.to_dict(),
                        "model": spec.get("model"),
                        "request_id": grant.request.request_id,
                    }
                ),
            )
            return {
                **job,
                "dataset_id": ver.dataset_id,
                "dataset_version": ver.version,
                "reserved": cost.to_dict(),
            }

        result, _fresh = write_idempotent(
            self.c.db,
            org_id=principal.org_id,
            key=idempotency_key,
            operation="training.submit",
            body={
                "dataset": dataset_id,
                "version": version,
                "spec": spec,
                "resources": [resources.milli_cpu, resources.gpus, resources.memory_mib],
                "runtime": max_runtime_s,
            },
            now_ms=now,
            fn=tx,
        )
        return result

    def status(self, principal: Principal, *, job_id: str) -> dict[str, Any]:
        """A run: its job (state, bill) and, once finished, its DP summary (ε spent, DP metrics)."""
        job = self._own(principal, job_id)
        out = {**job.public(), **_spec_summary(job)}
        out["result"] = self._result(job) if job.state.is_terminal() else None
        return out

    def list_runs(self, principal: Principal) -> list[dict[str, Any]]:
        """The caller's training runs, newest first."""
        require_role(principal, "sme", "operator")
        scope = read_scope(principal)
        rows = self.c.db.read(lambda conn: jobs_db.list_jobs(conn, org_id=scope))
        return [{**j.public(), **_spec_summary(j)} for j in rows if j.kind == KIND]

    def weights(self, principal: Principal, *, job_id: str) -> bytes:
        """The trained weights (safetensors: tensors only), once the run succeeded."""
        job = self._own(principal, job_id)
        result = self._result(job)
        if job.state is not JobState.SUCCEEDED or not result or not result.get("ok"):
            raise Conflict(f"run {job_id} has no weights (it is {job.state.value})", code="no_weights")
        return self.c.storage.get_bytes(weights_key(job_id))

    # -- internals ---------------------------------------------------------------------------------
    def _grant(
        self, conn: Connection, principal: Principal, dataset_id: str, version: int | None
    ) -> tuple[repo.RequestRow, repo.VersionRow]:
        return self.datasets.grant_for(conn, principal, dataset_id, version, ReleaseKind.TRAINING)

    def _cancel_queued(self, conn: Connection, request: repo.RequestRow) -> None:
        """Stop the queued runs of a revoked approval (inside the revocation's transaction)."""
        now = self.c.clock.now_ms()
        for job in jobs_db.jobs_in(conn, (JobState.QUEUED.value,)):
            if job.kind != KIND or (job.spec or {}).get("request_id") != request.request.request_id:
                continue
            jobs_db.move(
                conn,
                job,
                JobState.STOPPED,
                message="the custodian revoked the approval before the run started",
                cost=0,
                voucher_paid=0,
                copaid=0,
                settled_ms=now,
            )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=None,
                action="training.cancel",
                object_type="job",
                object_id=job.id,
                org_id=job.org_id,
                dataset_id=request.dataset_id,
                details={"request_id": request.request.request_id},
            )

    def _own(self, principal: Principal, job_id: str) -> Job:
        scope = read_scope(principal)
        job = self.c.db.read(lambda conn: jobs_db.get_job(conn, job_id, org_id=scope))
        if job.kind != KIND:
            raise NotFound(f"no training run {job_id}")
        return job

    def _result(self, job: Job) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.c.storage.get_bytes(result_key(job.id)))
        except StorageNotFound:
            return None
        return data

    def _env(self, job: Job) -> dict[str, str]:
        """The harness job's environment: the broker's storage settings (never given to SME code)."""
        s = self.c.settings
        env = {"SBX_STATE_DIR": str(s.state_dir.resolve()), "SBX_STORAGE": s.storage}
        if s.storage == "s3":
            env.update(
                {
                    "SBX_S3_ENDPOINT": s.s3_endpoint or "",
                    "SBX_S3_BUCKET": s.s3_bucket,
                    "SBX_S3_SECURE": str(s.s3_secure).lower(),
                }
            )
        return env

    def _secret_env(self, job: Job) -> dict[str, str]:
        """The harness job's storage credentials (a backend passes them without exposing them: on KubeRay
        as references to the Secret keys ``SBX_KUBE_SECRET_ENV`` names)."""
        s = self.c.settings
        if s.storage != "s3":
            return {}
        return {"SBX_S3_ACCESS_KEY": s.s3_access_key or "", "SBX_S3_SECRET_KEY": s.s3_secret_key or ""}

    def _record(self, job: Job) -> None:
        """After settlement: close the privacy charge and audit the run's outcome against its dataset."""
        settled = self.c.db.read(lambda conn: jobs_db.get_job(conn, job.id))
        result = self._result(settled) or {"ok": False, "error": "the run ended without a result"}
        summary = _spec_summary(settled)
        now = self.c.clock.now_ms()
        details = {
            "ok": bool(result.get("ok")),
            "epsilon_spent_micro": result.get("epsilon_spent_micro"),
            "dp_metrics": result.get("dp_metrics"),
            "weights": result.get("weights"),
            "error": result.get("error"),
        }
        elapsed = max(0, (settled.ended_ms or now) - (settled.started_ms or settled.ended_ms or now))

        def tx(conn: Connection) -> None:
            with contextlib.suppress(Conflict):  # already recorded (a retried round or another replica)
                repo.finish_charge(
                    conn,
                    charge_id=settled.id,
                    status="answered" if details["ok"] else "failed",
                    credits=settled.cost or 0,
                    elapsed_ms=elapsed,
                    now_ms=now,
                )
                self.c.audit.append(
                    conn,
                    ts_ms=now,
                    actor=None,
                    action="training.finish",
                    object_type="job",
                    object_id=settled.id,
                    org_id=settled.org_id,
                    dataset_id=summary["dataset_id"],
                    details=floats_as_text(details),
                )

        self.c.db.write(tx)


def _spec_summary(job: Job) -> dict[str, Any]:
    spec = job.spec or {}
    return {
        "dataset_id": spec.get("dataset_id"),
        "dataset_version": spec.get("version"),
        "reserved": spec.get("reserved"),
        "training_spec": spec.get("training_spec"),
    }
