"""Settings from the environment (``SBX_`` prefix), validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ComputeKind = Literal["ray-local", "ray", "kuberay", "fake"]
StorageKind = Literal["local", "s3"]


class Settings(BaseSettings):
    """Everything the composition root needs to build the broker's adapters.

    The embedded default needs no setting at all: SQLite, a local Ray and a directory object store, all
    inside ``state_dir``. Production sets ``database_url``, ``compute`` and the S3 fields.
    """

    model_config = SettingsConfigDict(env_prefix="SBX_", extra="ignore")

    state_dir: Path = Field(default=Path(".sbx"), description="Keys, SQLite file, local object store.")
    database_url: str | None = Field(default=None, description="Defaults to SQLite in the state dir.")
    host: str = "127.0.0.1"
    port: int = 8750
    compute: ComputeKind = "ray-local"
    ray_address: str | None = None
    ray_token: str | None = None
    ray_num_cpus: int | None = None
    kube_namespace: str = "sandbox-broker"
    kube_image: str = "rayproject/ray:2.60.0-py311"
    storage: StorageKind = "local"
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "sbx-data"
    s3_secure: bool = False
    hold_ttl_s: int = Field(
        default=7 * 24 * 3600, description="A hold with no settlement expires after this."
    )
    background_loops: bool = Field(
        default=True, description="Run admission, reaper and reconciliation loops."
    )
    loop_interval_ms: int = 500
    max_token_bytes: int = 8192
    max_body_bytes: int = 64 * 1024 * 1024

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
