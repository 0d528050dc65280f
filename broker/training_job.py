"""The trusted DP-SGD harness as a Ray job: ``python -m broker.training_job <job id>``.

The broker, not the SME, writes this job's input (the validated spec, the dataset version's object key and
policy) to the object store and starts this module with its own storage settings in the environment; SME
code never runs here. The job loads the bounded version, trains with :func:`privacy.training.harness.train_dp`,
and writes back only what may leave: the weights (safetensors) and a JSON summary of DP outputs. Its output
and error text never carry data values.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from datasets.policy import ColumnKind, DatasetPolicy

PREFIX = "training"


def input_key(job_id: str) -> str:
    """Where the broker puts a training job's input."""
    return f"{PREFIX}/{job_id}/input.json"


def result_key(job_id: str) -> str:
    """Where the job puts its DP summary."""
    return f"{PREFIX}/{job_id}/result.json"


def weights_key(job_id: str) -> str:
    """Where the job puts its weights."""
    return f"{PREFIX}/{job_id}/weights.safetensors"


def feature_bounds(policy: DatasetPolicy, features: list[str]) -> dict[str, tuple[float, float]]:
    """Public bounds of the numeric features (from the policy, never from the data)."""
    bounds: dict[str, tuple[float, float]] = {}
    for column in policy.columns_of(ColumnKind.NUMERIC):
        if column.name in features and column.lo is not None and column.hi is not None:
            bounds[column.name] = (float(column.lo), float(column.hi))
    return bounds


def run(job_id: str) -> int:
    """Train one job; returns the process exit code (0 trained, 1 refused or failed)."""
    from broker.container import build_storage
    from broker.settings import Settings
    from datasets.prepare import natural_units, read_bounded
    from privacy.training import validate_spec
    from privacy.training.harness import train_dp

    store = build_storage(Settings())
    job_input: dict[str, Any] = json.loads(store.get_bytes(input_key(job_id)))
    policy = DatasetPolicy.from_dict(job_input["policy"])
    try:
        spec = validate_spec(
            job_input["spec"],
            dataset_columns=job_input["columns"],
            label_categories=job_input["label_categories"],
            grant_epsilon_micro=job_input["reserved_epsilon_micro"],
            policy_delta_e12=job_input["policy_delta_e12"],
            privacy_unit=policy.privacy_unit,
        )
        frame = natural_units(read_bounded(store.get_bytes(job_input["object_key"]), policy), policy)
        result = train_dp(
            spec,
            frame,
            privacy_unit=policy.privacy_unit,
            secure_mode=bool(job_input["secure_mode"]),
            seed=job_input.get("seed"),
            feature_bounds=feature_bounds(policy, list(spec.features)),
        )
    except Exception as exc:  # the harness's errors are data-independent; anything else says only its type
        detail = getattr(exc, "detail", None) or f"training failed ({type(exc).__name__})"
        store.put_bytes(result_key(job_id), json.dumps({"ok": False, "error": detail}).encode())
        print(f"training refused or failed: {detail}", flush=True)
        return 1
    store.put_bytes(weights_key(job_id), result.weights)
    summary = {"ok": True, **result.to_dict()}
    store.put_bytes(result_key(job_id), json.dumps(summary, sort_keys=True).encode())
    print(
        f"training finished: {result.steps} DP-SGD steps, epsilon spent {result.epsilon_spent_micro / 1e6:.4f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
