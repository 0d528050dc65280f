"""Request bodies. Unknown fields are refused (no mass assignment of owners, balances or statuses)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for request bodies: extra fields are an error, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


ResourceClass = Literal["cpu", "gpu", "memory"]


def _cpu_and_memory() -> list[ResourceClass]:
    return ["cpu", "memory"]


def _cpu() -> list[ResourceClass]:
    return ["cpu"]


class OrgCreate(Strict):
    """Create an organisation."""

    name: str = Field(min_length=1, max_length=200)
    role: Literal["operator", "issuer", "custodian", "sme"]
    year_budget: int | None = Field(default=None, ge=0, le=2**62)
    sme_cap: int | None = Field(default=None, ge=0, le=2**62)
    copay_limit: int = Field(default=0, ge=0, le=2**62)


class TokenCreate(Strict):
    """Create a bearer token."""

    label: str = Field(default="", max_length=200)
    ttl_s: int | None = Field(default=None, gt=0, le=10 * 365 * 24 * 3600)


class ProgrammeSet(Strict):
    """Set an issuer's programme limits."""

    year_budget: int = Field(ge=0, le=2**62)
    sme_cap: int = Field(ge=0, le=2**62)


class KeyStatusSet(Strict):
    """Retire or revoke a key."""

    status: Literal["retired", "revoked"]


class VoucherIssue(Strict):
    """Issue a voucher to an SME."""

    sme_org: str = Field(min_length=1, max_length=40)
    credits: int = Field(gt=0, le=2**53 - 1)
    coverage_bps: int = Field(ge=1, le=10_000)
    resources: list[ResourceClass] = Field(default_factory=_cpu_and_memory, min_length=1)
    valid_from_s: int | None = Field(default=None, ge=0, le=2**53 - 1)
    valid_until_s: int = Field(gt=0, le=2**53 - 1)
    credit_expires_s: int = Field(gt=0, le=2**53 - 1)


class VoucherRedeem(Strict):
    """Redeem a voucher token."""

    token: str = Field(min_length=1, max_length=65536)


class HoldPlace(Strict):
    """Place a hold."""

    amount: int = Field(gt=0, le=2**62)
    resources: list[ResourceClass] = Field(default_factory=_cpu, min_length=1)
    org_id: str | None = Field(default=None, max_length=40)
    ttl_s: int | None = Field(default=None, gt=0, le=365 * 24 * 3600)


class HoldSettle(Strict):
    """Settle a hold for its metered cost."""

    cost: int = Field(ge=0, le=2**62)


class CopayLimitSet(Strict):
    """Change an SME's co-payment limit."""

    copay_limit: int = Field(ge=0, le=2**62)


RATE_PATTERN = r"^\d{1,9}(/[1-9]\d{0,8})?$"  # at most 999,999,999 credits per unit-second, exact fractions


class RateCardSet(Strict):
    """A new rate card: credits per CPU-, GPU- and GiB-second (integers or exact fractions like "3/2")."""

    credits_per_cpu_second: str = Field(pattern=RATE_PATTERN, max_length=19)
    credits_per_gpu_second: str = Field(pattern=RATE_PATTERN, max_length=19)
    credits_per_gib_second: str = Field(pattern=RATE_PATTERN, max_length=19)


class QuotaSet(Strict):
    """An SME's quota."""

    max_milli_cpu: int = Field(ge=0, le=10**9)
    max_gpus: int = Field(ge=0, le=10**6)
    max_memory_mib: int = Field(ge=0, le=10**12)
    max_running_jobs: int = Field(ge=0, le=10**6)
    max_queued_jobs: int = Field(ge=0, le=10**6)


class JobResources(Strict):
    """What a job asks for."""

    milli_cpu: int = Field(default=1000, ge=0, le=10**9)
    gpus: int = Field(default=0, ge=0, le=1024)
    memory_mib: int = Field(default=1024, ge=0, le=10**9)
    max_runtime_s: int = Field(ge=1, le=7 * 24 * 3600)


class JobSubmit(JobResources):
    """Submit a job: an entrypoint run in the uploaded working directory."""

    entrypoint: str = Field(min_length=1, max_length=4096)
    priority: int = Field(default=0, ge=-100, le=100)
    requirements: list[str] = Field(default_factory=list, max_length=200)
    working_dir_zip_b64: str | None = Field(default=None, max_length=48 * 1024 * 1024)


class TrainingSubmit(Strict):
    """Train a model from the allow-list on a protected dataset (a declarative spec, never code)."""

    dataset_id: str = Field(min_length=1, max_length=40)
    version: int | None = Field(default=None, ge=1)
    spec: dict[str, Any] = Field(
        description="Training spec: task, features, label, model, epochs, ... (docs/training.md)"
    )
    milli_cpu: int = Field(default=1000, ge=100, le=64_000)
    memory_mib: int = Field(default=2048, ge=256, le=262_144)
    max_runtime_s: int = Field(default=1800, ge=10, le=24 * 3600)


class ErrorBody(BaseModel):
    """Every error the API answers: a stable code and a human explanation."""

    error: str = Field(description="Stable machine-readable code, e.g. `insufficient_credit`.")
    detail: str = Field(description="What was asked, what is available, and what to do.")
