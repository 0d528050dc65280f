"""Request bodies. Unknown fields are refused (no mass assignment of owners, balances or statuses)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from common.errors import InvalidInput
from common.numbers import INT64_MAX, DuplicateValue, check_json_text, check_text


class Strict(BaseModel):
    """Base for request bodies: extra fields are an error, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


PRINTABLE_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"
"""What the OpenAPI says of every stored string: no control characters (lone surrogates are refused too)."""


def _reraise(exc: InvalidInput) -> PydanticCustomError:
    """Our stable code (``control_character``, ``duplicate_value``...) as a pydantic error type, so the
    validation handler answers with it (see ``broker.app``)."""
    return PydanticCustomError(exc.code, "{detail}", {"detail": exc.detail})


def _printable(value: str) -> str:
    try:
        return check_text(value, "value")
    except InvalidInput as exc:
        raise _reraise(exc) from None


def _printable_json(value: Any) -> Any:
    try:
        return check_json_text(value, "value")
    except InvalidInput as exc:
        raise _reraise(exc) from None


def _distinct(values: list[Any]) -> list[Any]:
    try:
        if len(set(values)) != len(values):
            raise DuplicateValue("value: the same item is listed twice")
    except InvalidInput as exc:
        raise _reraise(exc) from None
    return values


Text = Annotated[str, AfterValidator(_printable), Field(json_schema_extra={"pattern": PRINTABLE_PATTERN})]
"""A string that reaches storage or a query: NUL and other control characters are refused (422
``control_character``) — PostgreSQL cannot store NUL, SQLite would."""
JsonObject = Annotated[dict[str, Any], AfterValidator(_printable_json)]
"""A free-form JSON object (policy, spec, query) whose keys and strings obey :data:`Text`'s rule."""

ResourceClass = Literal["cpu", "gpu", "memory"]


def _cpu_and_memory() -> list[ResourceClass]:
    return ["cpu", "memory"]


def _cpu() -> list[ResourceClass]:
    return ["cpu"]


class OrgCreate(Strict):
    """Create an organisation."""

    name: Text = Field(min_length=1, max_length=200)
    role: Literal["operator", "issuer", "custodian", "sme"]
    year_budget: int | None = Field(default=None, ge=0, le=2**62)
    sme_cap: int | None = Field(default=None, ge=0, le=2**62)
    copay_limit: int = Field(default=0, ge=0, le=2**62)
    uscc: Text | None = Field(
        default=None, max_length=40, description="GB 32100-2015 unified social credit code"
    )
    name_zh: Text | None = Field(default=None, max_length=200, description="registered Chinese name")
    name_en: Text | None = Field(default=None, max_length=200)
    locale: Literal["zh_CN", "en"] | None = None
    currency: Text | None = Field(default="CNY", max_length=3, description="issuer: ISO 4217; null: credits")
    time_zone: Text | None = Field(
        default=None, max_length=64, description="issuer: IANA zone (CNY: Asia/Shanghai)"
    )


class LocaleSet(Strict):
    """An organisation's language (``null``: follow the browser, then the programme)."""

    locale: Literal["zh_CN", "en"] | None


class TokenCreate(Strict):
    """Create a bearer token."""

    label: Text = Field(default="", max_length=200)
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

    sme_org: Text = Field(min_length=1, max_length=40)
    credits: int = Field(gt=0, le=2**53 - 1)
    coverage_bps: int = Field(ge=1, le=10_000)
    resources: Annotated[list[ResourceClass], AfterValidator(_distinct)] = Field(
        default_factory=_cpu_and_memory, min_length=1
    )
    valid_from_s: int | None = Field(default=None, ge=0, le=2**53 - 1)
    valid_until_s: int = Field(gt=0, le=2**53 - 1)
    credit_expires_s: int = Field(gt=0, le=2**53 - 1)


class KeyRegister(Strict):
    """Register the issuer's own Ed25519 public key (a JWK: kty OKP, crv Ed25519, x; never d)."""

    public_jwk: dict[str, Any] = Field(max_length=16)


class VoucherRegister(Strict):
    """Register a voucher the issuer signed offline with its registered key."""

    token: str = Field(min_length=1, max_length=65536)


class VoucherRedeem(Strict):
    """Redeem a voucher token."""

    token: Text = Field(min_length=1, max_length=65536)


class HoldPlace(Strict):
    """Place a hold."""

    amount: int = Field(gt=0, le=2**62)
    resources: list[ResourceClass] = Field(default_factory=_cpu, min_length=1)
    org_id: Text | None = Field(default=None, max_length=40)
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

    entrypoint: Text = Field(min_length=1, max_length=4096)
    priority: int = Field(default=0, ge=-100, le=100)
    requirements: list[Annotated[Text, Field(max_length=1000)]] = Field(default_factory=list, max_length=200)
    working_dir_zip_b64: str | None = Field(default=None, max_length=48 * 1024 * 1024)


class TrainingSubmit(Strict):
    """Train a model from the allow-list on a protected dataset (a declarative spec, never code)."""

    dataset_id: Text = Field(min_length=1, max_length=40)
    version: int | None = Field(default=None, ge=1, le=INT64_MAX)
    spec: JsonObject = Field(
        description="Training spec: task, features, label, model, epochs, ... (docs/training.md)"
    )
    milli_cpu: int = Field(default=1000, ge=100, le=64_000)
    memory_mib: int = Field(default=2048, ge=256, le=262_144)
    max_runtime_s: int = Field(default=1800, ge=10, le=24 * 3600)


class ErrorBody(BaseModel):
    """Every error the API answers: a stable code and a human explanation."""

    error: str = Field(description="Stable machine-readable code, e.g. `insufficient_credit`.")
    detail: str = Field(description="What was asked, what is available, and what to do.")
