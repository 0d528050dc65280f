"""The composition root: every adapter is built here, from settings, and nowhere else.

The embedded default and production differ only in what this builds (SQLite or PostgreSQL, local Ray,
an existing Ray or KubeRay, a directory store or S3). Tests build their own containers with a fake clock
or a fake compute backend.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from broker.compute import ComputeBackend
from broker.compute.factory import build_backend
from broker.compute.jobfiles import ArchiveLimits, JobFiles
from broker.compute.kuberay import ArchiveUploader, PodHardening
from broker.compute.ray_local import SandboxDefaults
from broker.db.audit import AuditRepo
from broker.db.database import Database
from broker.db.engine import make_engine
from broker.db.ledger import LedgerRepo
from broker.keys import BrokerKeys, Kek, load_broker_keys, load_kek
from broker.metrics import Metrics, attach_database
from broker.services.archives import CodeArchives
from broker.settings import Settings
from common.clock import Clock, SystemClock
from common.resources import Resources
from datasets.storage import LocalDirStore, ObjectStore, S3Store
from quotas.ratelimit import Rate, RateLimiter
from vouchers import key_id, public_jwk


@dataclass
class Container:
    """The built adapters a running broker (or a CLI command, or a test) works with."""

    settings: Settings
    db: Database
    clock: Clock
    ledger: LedgerRepo
    audit: AuditRepo
    metrics: Metrics
    broker_key_pem: bytes
    broker_kid: str
    broker_public_jwk: dict[str, Any]
    broker_keys: BrokerKeys  # current + retired signing keys (rotation)
    kek: Kek  # unwraps the keys the broker holds (broker/keys.py)
    storage: ObjectStore
    limiter: RateLimiter
    job_files: JobFiles
    closers: list[Any] = field(default_factory=list)
    _compute: ComputeBackend | None = None
    _compute_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def compute(self) -> ComputeBackend:
        """The compute backend, built on first use (a local Ray head takes seconds to start)."""
        with self._compute_lock:
            if self._compute is None:
                self._compute = build_compute(self.settings, self.clock, archives=self.archives.publish)
                self.closers.append(self._compute.close)
            return self._compute

    @property
    def archives(self) -> CodeArchives:
        """KubeRay code archives at capability URLs, over this container's database and object store."""
        return CodeArchives(self.db, self.storage, self.clock, self.settings)

    def use_compute(self, backend: ComputeBackend) -> None:
        """Use an already-built backend (tests share one local Ray across containers)."""
        with self._compute_lock:
            self._compute = backend

    def close(self) -> None:
        """Release everything this container started (writer thread, engine, backends)."""
        for closer in reversed(self.closers):
            closer()
        self.closers.clear()
        self.db.close()


def build_compute(
    settings: Settings, clock: Clock, *, archives: ArchiveUploader | None = None
) -> ComputeBackend:
    """The compute backend the settings ask for: a local Ray head by default, an existing Ray cluster as soon
    as ``SBX_RAY_ADDRESS`` is set, KubeRay or the fake when chosen explicitly. ``archives`` publishes KubeRay
    jobs' code at capability URLs (other backends read the broker's disk)."""
    kind = "ray" if settings.compute == "ray-local" and settings.ray_address else settings.compute
    return build_backend(
        kind,
        state_dir=settings.state_dir,
        ray_address=settings.ray_address,
        ray_token=settings.ray_token,
        kube_namespace=settings.kube_namespace,
        kube_image=settings.kube_image,
        kube_capacity=(
            Resources(
                settings.kube_capacity_milli_cpu,
                settings.kube_capacity_gpus,
                settings.kube_capacity_memory_mib,
            )
            if settings.kube_capacity_milli_cpu or settings.kube_capacity_gpus
            else None  # kuberay then refuses to start with a message naming SBX_KUBE_CAPACITY_*
        ),
        kube_secret_env=settings.kube_secret_env,
        kube_archive_uploader=archives,
        kube_hardening=PodHardening(
            service_account=settings.kube_service_account,
            runtime_class=settings.kube_runtime_class or None,
            run_as_user=settings.kube_run_as_user,
            run_as_group=settings.kube_run_as_group,
            scratch_size_limit=settings.kube_scratch_size_limit or None,
        ),
        local_num_cpus=settings.ray_num_cpus,
        local_sandbox=SandboxDefaults(
            disk_mib=settings.sandbox_disk_mib,
            tmp_mib=settings.sandbox_tmp_mib,
            max_pids=settings.sandbox_max_pids,
            log_bytes=settings.sandbox_log_bytes,
            default_memory_mib=settings.sandbox_default_memory_mib,
            unsafe_no_sandbox=settings.test_unsafe_no_sandbox,
        ),
        clock=clock,
    )


def build_limiter(settings: Settings, clock: Clock) -> RateLimiter:
    """Per-tenant rate limits (per replica: with N replicas a tenant may reach N times the rate)."""
    burst = settings.rate_burst
    return RateLimiter(
        clock,
        {
            "redeem": Rate(settings.rate_redeem_per_s, burst),
            "submit": Rate(settings.rate_submit_per_s, burst),
            "query": Rate(settings.rate_query_per_s, burst),
        },
    )


def build_storage(settings: Settings) -> ObjectStore:
    """The object store the settings ask for: a directory in the state dir, or an S3 bucket."""
    if settings.storage == "s3":
        if not (settings.s3_endpoint and settings.s3_access_key and settings.s3_secret_key):
            raise ValueError("SBX_STORAGE=s3 needs SBX_S3_ENDPOINT, SBX_S3_ACCESS_KEY and SBX_S3_SECRET_KEY")
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
        )
    return LocalDirStore(settings.state_dir / "objects")


def build_container(
    settings: Settings, *, clock: Clock | None = None, group_commit: bool = True
) -> Container:
    """Build every adapter from ``settings``; the state directory must have been initialised."""
    kek = load_kek(
        settings.kek_file, production=settings.environment == "production", state_dir=settings.state_dir
    )
    broker_keys = load_broker_keys(settings.keys_dir, kek)
    key_pem = broker_keys.current_pem
    jwk = public_jwk(key_pem)
    db = Database(make_engine(settings.resolved_database_url), group_commit=group_commit)
    the_clock = clock or SystemClock()
    metrics = Metrics()
    attach_database(metrics, db)  # scrape-time gauges read from the database (right across replicas)
    return Container(
        settings=settings,
        db=db,
        clock=the_clock,
        ledger=LedgerRepo(metrics),  # counts credits held and settled after their commits
        audit=AuditRepo(key_pem, checkpoint_dir=settings.state_dir / "audit"),
        metrics=metrics,
        broker_key_pem=key_pem,
        broker_kid=key_id(key_pem),
        broker_public_jwk=jwk,
        broker_keys=broker_keys,
        kek=kek,
        storage=build_storage(settings),
        limiter=build_limiter(settings, the_clock),
        job_files=build_job_files(settings),
    )


def build_job_files(settings: Settings) -> JobFiles:
    """Where jobs' code, output and staged input live on the broker's disk, and the archive caps."""
    return JobFiles(
        settings.state_dir / "jobs",
        ArchiveLimits(
            max_bytes=settings.job_archive_max_bytes,
            max_unpacked_bytes=settings.job_archive_max_unpacked_bytes,
            max_entries=settings.job_archive_max_entries,
            max_depth=settings.job_archive_max_depth,
        ),
    )
