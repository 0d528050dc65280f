"""Settings from the environment (``SBX_`` prefix), validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ComputeKind = Literal["ray-local", "ray", "kuberay", "fake"]
Environment = Literal["embedded", "production"]
DEFAULT_SECRETS = frozenset({"", "minioadmin", "changeme", "change-me", "password", "secret", "admin"})
StorageKind = Literal["local", "s3"]


class Settings(BaseSettings):
    """Everything the composition root needs to build the broker's adapters.

    The embedded default needs no setting at all: SQLite, a local Ray and a directory object store, all
    inside ``state_dir``. Production sets ``database_url``, ``compute`` and the S3 fields.
    """

    model_config = SettingsConfigDict(env_prefix="SBX_", extra="ignore")

    environment: Environment = Field(
        default="embedded", description="`production` enforces the checks below."
    )
    log_format: Literal["text", "json"] = "text"
    state_dir: Path = Field(default=Path(".sbx"), description="Keys, SQLite file, local object store.")
    kek_file: Path | None = Field(
        default=None,
        description="The key-encryption key that wraps the keys the broker holds; kept outside the state dir "
        "and the database. Embedded default ~/.config/sandbox-broker/kek (written by `sbx init`); production: "
        "a file mounted from a Secret (required).",
    )
    database_url: str | None = Field(default=None, description="Defaults to SQLite in the state dir.")
    host: str = "127.0.0.1"
    port: int = 8750
    compute: ComputeKind = "ray-local"
    ray_address: str | None = None
    ray_token: str | None = None
    ray_num_cpus: int | None = None
    kube_namespace: str = "sandbox-broker"
    kube_image: str = "rayproject/ray:2.60.0-py311"
    kube_capacity_milli_cpu: int = Field(
        default=0, description="KubeRay: CPU the broker may schedule (milli)."
    )
    kube_capacity_gpus: int = 0
    kube_capacity_memory_mib: int = 0
    kube_secret_env: str = Field(
        default="",
        description=(
            "KubeRay: where the training harness's credentials come from, NAME=secret:key,... (Secrets in the "
            "jobs' namespace); a RayJob then refers to them instead of carrying them."
        ),
    )
    kube_service_account: str = Field(
        default="sbx-job-runner",
        description="KubeRay: the job pods' service account (no RBAC; its token is never mounted).",
    )
    kube_runtime_class: str | None = Field(
        default=None, description="KubeRay: runtimeClassName of job pods (a sandboxed runtime: gvisor, kata)."
    )
    kube_run_as_user: int = Field(default=1000, ge=1, description="KubeRay: the job image's non-root uid.")
    kube_run_as_group: int = Field(default=100, ge=0, description="KubeRay: the job image's gid.")
    kube_scratch_size_limit: str = Field(
        default="8Gi", description="KubeRay: size cap of each scratch emptyDir of job pods (empty: none)."
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "The broker's URL as job pods reach it (in-cluster Service URL); KubeRay jobs fetch their code "
            "archive from it at a capability URL."
        ),
    )
    archive_max_fetches: int = Field(
        default=16, ge=1, description="KubeRay: fetches of one job's code archive (each node, and retries)."
    )
    archive_grace_s: int = Field(
        default=300,
        ge=0,
        description="KubeRay: a code archive stays valid this long after the job's deadline.",
    )
    storage: StorageKind = "local"
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "sbx-data"
    s3_secure: bool = False
    training_secure_mode: bool = Field(
        default=True,
        description="DP-SGD draws its Gaussian noise and Poisson sampling masks from the broker's CSPRNG (AES-128-CTR"
        " via randomgen, keyed from the OS; not torchcsprng). Production refuses to start without it; false is"
        " for seeded tests only (torch's default generator).",
    )
    training_seed: int | None = Field(default=None, description="Tests only: a fixed seed for training runs.")
    hold_ttl_s: int = Field(
        default=7 * 24 * 3600, description="A hold with no settlement expires after this."
    )
    background_loops: bool = Field(
        default=True, description="Run admission, reaper and reconciliation loops."
    )
    loop_interval_ms: int = 500
    # --- faults (issue 14) -----------------------------------------------------------------------------
    idempotency_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=7 * 24 * 3600,
        description="How long an Idempotency-Key answers its retries (at least 7 days); older keys are purged.",
    )
    query_deadline_s: int = Field(
        default=180,
        ge=1,
        description="A DP query still reserved this long after its reservation was cut off by a crash: "
        "reconciliation marks it interrupted (its ε stays spent, its credit hold is released).",
    )
    min_free_bytes: int = Field(
        default=1 << 30, ge=0, description="Free space the state dir needs (with min_free_percent: the less)."
    )
    min_free_percent: float = Field(
        default=5.0, ge=0, le=100, description="Free space the state dir needs, in % of its file system."
    )
    integrity_check_interval_s: int = Field(
        default=3600, ge=1, description="How often the database's integrity is checked (sbx_db_integrity_ok)."
    )
    audit_checkpoint_interval_s: int = Field(
        default=30, ge=1, description="How often the background loop signs an audit checkpoint."
    )
    audit_checkpoint_window_s: int = Field(
        default=300,
        ge=1,
        description="`audit verify` fails when the latest signed checkpoint is older than this.",
    )
    audit_log_origin: str = Field(
        default="sandbox-broker.local/audit",
        pattern=r"^[^\s+]+$",
        description="The audit log's name: the origin line of its C2SP checkpoints and the broker key's name.",
    )
    audit_witnesses: list[str] = Field(
        default_factory=list,
        description="Witness verifier keys (`name+keyid+base64`, from `sbx audit witness --init`), a JSON list.",
    )
    audit_witnesses_required: int = Field(
        default=0,
        ge=0,
        description="Witness cosignatures a checkpoint needs before `audit verify` accepts it.",
    )
    audit_verify_interval_s: int = Field(
        default=600,
        ge=1,
        description="How often the background loop verifies the whole audit log (sets sbx_audit_chain_valid).",
    )
    rate_redeem_per_s: int = Field(default=20, description="Redemptions per second per organisation.")
    rate_submit_per_s: int = Field(default=20, description="Job and training submissions per second per SME.")
    rate_query_per_s: int = Field(default=20, description="DP query batches per second per SME.")
    rate_burst: int = Field(default=40, description="Requests a tenant may burst above its rate.")
    max_open_holds: int = Field(default=1000, description="Open (HELD) holds per SME.")
    max_token_bytes: int = 8192
    # --- HTTP connection limits of `sbx serve` (issue 13; broker.http_limits, docs/deploy.md) -----------
    http_max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1 << 20,
        description="Largest request head (line + headers); over: 431.",
    )
    http_header_timeout_s: float = Field(
        default=10.0, ge=0, le=600, description="Deadline to receive a request head (0: none); over: 408."
    )
    http_keep_alive_s: int = Field(default=5, ge=1, le=600, description="Idle keep-alive connections close.")
    http_max_concurrency: int = Field(
        default=1000,
        ge=0,
        description="Open connections and tasks before uvicorn answers 503 (0: unlimited).",
    )
    http_max_connections_per_client: int = Field(
        default=64, ge=0, description="Open connections per client address (0: off, e.g. behind an ingress)."
    )
    token_default_ttl_s: int | None = Field(
        default=None,
        gt=0,
        le=10 * 365 * 24 * 3600,
        description="Lifetime of a token created without a ttl (unset: none); never beyond its creator's.",
    )
    max_body_bytes: int = 64 * 1024 * 1024

    # --- isolation of SME code (issue 11) and job files -----------------------------------------------
    sandbox_disk_mib: int = Field(
        default=1024, ge=1, le=1 << 20, description="Sandbox: cap on a job's writable dirs (/job, /output)."
    )
    sandbox_tmp_mib: int = Field(
        default=256,
        ge=1,
        le=1 << 20,
        description="Sandbox: size of the job's /tmp (tmpfs, counted as memory).",
    )
    sandbox_max_pids: int = Field(default=256, ge=8, le=1 << 20, description="Sandbox: processes per job.")
    sandbox_log_bytes: int = Field(
        default=1 << 20, ge=1024, le=1 << 30, description="Sandbox: bytes of a job's output kept as its log."
    )
    sandbox_default_memory_mib: int = Field(
        default=2048,
        ge=64,
        description="Sandbox: the memory limit of a job that asked for no memory (the cgroup needs one).",
    )
    test_unsafe_no_sandbox: bool = Field(
        default=False,
        description="TESTS ONLY: run SME code without the sandbox (the attack suite's negative control);"
        " refused in production.",
    )
    job_archive_max_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1, le=1 << 31, description="A job's code archive, compressed."
    )
    job_archive_max_unpacked_bytes: int = Field(
        default=128 * 1024 * 1024, ge=1, le=1 << 34, description="A job's code archive, unpacked."
    )
    job_archive_max_entries: int = Field(default=10_000, ge=1, le=1_000_000, description="Files per archive.")
    job_archive_max_depth: int = Field(default=32, ge=1, le=256, description="Directory depth in an archive.")
    job_disk_quota_mib: int = Field(
        default=4096, ge=1, description="Per SME: unpacked code of its jobs whose files are still kept."
    )
    job_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="A finished job's code dir is removed this long after it ended; its log and output stay.",
    )

    def production_problems(self) -> list[str]:
        """What stops this configuration from running in production (empty when it may start)."""
        if self.environment != "production":
            return []
        problems = []
        if self.kek_file is None:  # the mounted file itself is checked when the keys are loaded
            problems.append("SBX_KEK_FILE must name the key-encryption key, mounted from a Secret")
        if not (self.database_url or "").startswith("postgresql"):
            problems.append("SBX_DATABASE_URL must point at PostgreSQL (several replicas share it)")
        if self.storage != "s3":
            problems.append("SBX_STORAGE must be s3 (replicas share the object store)")
        elif (self.s3_access_key or "") in DEFAULT_SECRETS or (self.s3_secret_key or "") in DEFAULT_SECRETS:
            problems.append("SBX_S3_ACCESS_KEY / SBX_S3_SECRET_KEY are missing or a well-known default")
        if self.compute in ("ray-local", "fake"):
            problems.append("SBX_COMPUTE must be kuberay or ray in production")
        if self.compute == "ray" and (self.ray_token or "") in DEFAULT_SECRETS:
            problems.append("SBX_RAY_TOKEN is missing or a well-known default")
        if not self.training_secure_mode:
            problems.append(
                "SBX_TRAINING_SECURE_MODE must be true (DP-SGD noise and sampling from the CSPRNG)"
            )
        if self.training_seed is not None:
            problems.append("SBX_TRAINING_SEED is for tests only")
        if self.test_unsafe_no_sandbox:
            problems.append("SBX_TEST_UNSAFE_NO_SANDBOX is for tests only")
        if self.host == "127.0.0.1":
            problems.append(
                "SBX_HOST is 127.0.0.1: behind a TLS-terminating ingress bind 0.0.0.0 (see docs/deploy.md)"
            )
        return problems

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``broker.db`` inside the state directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'broker.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        """Where the broker's own Ed25519 key lives (mode 0600)."""
        return self.state_dir / "keys"
