"""The trusted DP-SGD harness's entry point: ``python -m privacy.training.entry --input DIR --output DIR``.

It reads only what the broker staged for this one run — ``input.json`` (the validated spec, the dataset
version's policy and the reserved budget) and ``bounded.parquet`` (the bounded version of the dataset) — and
writes only what may leave: ``weights.safetensors`` and ``result.json`` (ε spent and DP-noised metrics). It
never loads the broker's composition root, settings or object store: on the embedded default it runs in the
broker's sandbox with ``DIR`` bound read-only; remote backends stage the same two files first
(``broker.training_job``). Its output and error text never carry data values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from datasets.policy import ColumnKind, DatasetPolicy

INPUT_FILE = "input.json"
DATA_FILE = "bounded.parquet"
RESULT_FILE = "result.json"
WEIGHTS_FILE = "weights.safetensors"


def feature_bounds(policy: DatasetPolicy, features: list[str]) -> dict[str, tuple[float, float]]:
    """Public bounds of the numeric features (from the policy, never from the data)."""
    bounds: dict[str, tuple[float, float]] = {}
    for column in policy.columns_of(ColumnKind.NUMERIC):
        if column.name in features and column.lo is not None and column.hi is not None:
            bounds[column.name] = (float(column.lo), float(column.hi))
    return bounds


def run(input_dir: Path, output_dir: Path) -> int:
    """Train one staged run; returns the process exit code (0 trained, 1 refused or failed)."""
    from datasets.prepare import natural_units, read_bounded
    from privacy.training import validate_spec
    from privacy.training.harness import train_dp

    job_input: dict[str, Any] = json.loads((input_dir / INPUT_FILE).read_bytes())
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
        frame = natural_units(read_bounded((input_dir / DATA_FILE).read_bytes(), policy), policy)
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
        _write(output_dir / RESULT_FILE, json.dumps({"ok": False, "error": detail}).encode())
        print(f"training refused or failed: {detail}", flush=True)
        return 1
    _write(output_dir / WEIGHTS_FILE, result.weights)
    summary = {"ok": True, **result.to_dict()}
    _write(output_dir / RESULT_FILE, json.dumps(summary, sort_keys=True).encode())
    print(
        f"training finished: {result.steps} DP-SGD steps, epsilon spent {result.epsilon_spent_micro / 1e6:.4f}",
        flush=True,
    )
    return 0


def _write(path: Path, data: bytes) -> None:
    """Write atomically, so a reader never sees half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Parse ``--input`` and ``--output`` and run."""
    parser = argparse.ArgumentParser(prog="python -m privacy.training.entry", description=__doc__)
    parser.add_argument("--input", type=Path, required=True, help="the staged, read-only input directory")
    parser.add_argument("--output", type=Path, required=True, help="where the weights and summary go")
    args = parser.parse_args(argv)
    return run(args.input, args.output)


if __name__ == "__main__":
    sys.exit(main())
