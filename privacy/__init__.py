"""Differential privacy: exact budgets (here), DP queries (``queries``) and DP-SGD (``training``).

Only the budget values are re-exported here so that importing them stays cheap; import the query engine
from ``privacy.queries`` (it loads OpenDP and Polars).
"""

from privacy.budget import (
    BudgetExceeded,
    PrivacyCost,
    check_all_fit,
    check_fits,
    compose,
    dataset_sme_cap,
    dataset_total_budget,
    format_insufficient_budget,
    grant_cap,
)

__all__ = [
    "BudgetExceeded",
    "PrivacyCost",
    "check_all_fit",
    "check_fits",
    "compose",
    "dataset_sme_cap",
    "dataset_total_budget",
    "format_insufficient_budget",
    "grant_cap",
]
