"""API views: the response models routes declare, so OpenAPI describes every body a client receives.

The services still hand back plain JSON-safe values for most routes; each model here names and types those
values (states as their enum, amounts as exact integers, rates as exact ``"n/d"`` strings) and routes
declare them as ``response_model``. New routes add their view here, next to the others.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from quotas.jobs import JobState


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobView(_View):
    """A job as its SME (or an operator) sees it: state, resources, bill."""

    id: str
    org_id: str
    kind: str = Field(
        description="`job` (SME code, run in the sandbox) or a harness kind such as `training`."
    )
    state: JobState
    entrypoint: str
    requirements: list[str]
    milli_cpu: int
    gpus: int
    memory_mib: int
    max_runtime_s: int
    priority: int
    rate_card_version: int
    max_cost: int = Field(description="What the hold reserves: the most this job can cost, in credits.")
    hold_id: str | None
    cost: int | None = Field(description="The settled cost in credits (None until settled).")
    voucher_paid: int | None
    copaid: int | None
    message: str
    submitted_ms: int
    admitted_ms: int | None
    started_ms: int | None
    ended_ms: int | None
    settled_ms: int | None
    stop_requested: bool
    reason: str | None = Field(
        description="Why the sandbox ended the job: `out_of_memory`, `disk_quota`, `too_many_processes`."
    )
    pending_reason: str | None = Field(
        default=None,
        description="Queued: the limit that stops it now (`running_jobs`, `quota`, `credit`, `capacity`, "
        "`fair_share`), recorded by the last admission pass; rejected: the refusal's code.",
    )
    pending_detail: str | None = Field(
        default=None, description="That reason with its amounts (which resource, by how much, behind whom)."
    )
    queue_position: int | None = Field(
        default=None,
        description="Queued: its 1-based place among all waiting jobs in the last pass's fair order.",
    )


class JobLogsView(_View):
    """The tail of a job's output."""

    job_id: str
    logs: str


class QuoteView(_View):
    """What a job would cost at most, and how the SME's credit would pay it."""

    rate_card_version: int
    max_cost: int
    affordable: bool
    reason: str
    voucher_share: int | None
    copay_share: int | None


class RateCardView(_View):
    """A rate-card version: exact rates as ``"numerator/denominator"`` strings."""

    version: int
    credits_per_cpu_second: str
    credits_per_gpu_second: str
    credits_per_gib_second: str


class QuotaView(_View):
    """An SME's quota as admission sees it (its co-payment limit comes from the ledger)."""

    milli_cpu: int
    gpus: int
    memory_mib: int
    max_running_jobs: int
    max_queued_jobs: int
    copay_limit: int
