"""The DP-SGD harness on a remote backend (KubeRay, a shared Ray cluster): ``python -m broker.training_job ID``.

On those backends the harness pod cannot see the broker's disk, so this wrapper stages the run's input from
the object store into a private temp directory (the broker wrote ``input.json`` there at submission; the
bounded dataset version is the object it names), runs the one harness entry
(:func:`privacy.training.entry.run`) on it, and uploads only what may leave — the weights and the DP
summary. Its storage credentials come from Secret references, never from values in the job object. On the
embedded default this wrapper is not used: the broker stages the same files into the job's directory and
runs the entry inside its sandbox with no credentials at all.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from privacy.training.entry import DATA_FILE, INPUT_FILE, RESULT_FILE, WEIGHTS_FILE
from privacy.training.entry import run as run_entry

PREFIX = "training"


def input_key(job_id: str) -> str:
    """Where the broker puts a training job's input."""
    return f"{PREFIX}/{job_id}/input.json"


def result_key(job_id: str) -> str:
    """Where the job's DP summary is kept."""
    return f"{PREFIX}/{job_id}/result.json"


def weights_key(job_id: str) -> str:
    """Where the job's weights are kept."""
    return f"{PREFIX}/{job_id}/weights.safetensors"


#: Output file of the harness → the object-store key it is kept under.
OUTPUTS = ((RESULT_FILE, result_key), (WEIGHTS_FILE, weights_key))


def run(job_id: str) -> int:
    """Stage, train and upload one job; returns the harness's exit code."""
    from broker.container import build_storage
    from broker.settings import Settings

    store = build_storage(Settings())
    raw_input = store.get_bytes(input_key(job_id))
    with tempfile.TemporaryDirectory(prefix="sbx-harness-") as tmp:
        input_dir, output_dir = Path(tmp, "input"), Path(tmp, "output")
        input_dir.mkdir()
        (input_dir / INPUT_FILE).write_bytes(raw_input)
        (input_dir / DATA_FILE).write_bytes(store.get_bytes(json.loads(raw_input)["object_key"]))
        code = run_entry(input_dir, output_dir)
        for name, key in OUTPUTS:
            if (output_dir / name).exists():
                store.put_bytes(key(job_id), (output_dir / name).read_bytes())
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
