import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import DomainError, InvalidInput
from common.resources import Resources
from quotas.quota import DEFAULT_QUOTA, Quota, QuotaExceeded

quota_st = st.builds(
    Quota,
    st.builds(Resources, st.integers(0, 10**6), st.integers(0, 64), st.integers(0, 10**7)),
    st.integers(0, 1_000),
    st.integers(0, 10_000),
    st.integers(0, 10**12),
)


@given(quota_st)
def test_quota_dict_round_trip(quota: Quota) -> None:
    assert Quota.from_dict(quota.to_dict()) == quota


def test_default_quota_is_usable() -> None:
    assert DEFAULT_QUOTA.max_running_jobs > 0 and DEFAULT_QUOTA.max_queued_jobs > 0
    assert not DEFAULT_QUOTA.max_resources.is_zero
    assert DEFAULT_QUOTA.to_dict() == {
        "milli_cpu": 8_000,
        "gpus": 1,
        "memory_mib": 32_768,
        "max_running_jobs": 4,
        "max_queued_jobs": 100,
        "copay_limit": 100_000,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_running_jobs": -1},
        {"max_queued_jobs": 1.5},
        {"copay_limit": True},
        {"max_resources": (1, 2, 3)},
    ],
)
def test_quota_refuses_bad_limits(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "max_resources": Resources(1_000, 0, 1_024),
        "max_running_jobs": 1,
        "max_queued_jobs": 1,
        "copay_limit": 0,
    }
    with pytest.raises(InvalidInput):
        Quota(**(fields | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        {"milli_cpu": 1, "gpus": 0, "memory_mib": 1, "max_running_jobs": 1, "max_queued_jobs": 1},
        {
            "milli_cpu": -1,
            "gpus": 0,
            "memory_mib": 1,
            "max_running_jobs": 1,
            "max_queued_jobs": 1,
            "copay_limit": 0,
        },
    ],
)
def test_quota_from_dict_refuses_incomplete_or_negative_data(data: dict[str, int]) -> None:
    with pytest.raises(InvalidInput):
        Quota.from_dict(data)


def test_quota_exceeded_is_a_domain_error_with_a_stable_code() -> None:
    error = QuotaExceeded("too big")
    assert isinstance(error, DomainError)
    assert error.code == "quota_exceeded" and error.detail == "too big"
