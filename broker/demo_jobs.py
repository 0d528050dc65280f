"""The compute demo step: a real small PyTorch training job paid by the voucher, from queue to bill."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from broker.cli.jobs import zip_dir

TRAIN_PY = '''"""Train a small classifier on generated data (the SME's own code, run on Ray)."""
import torch

torch.manual_seed(7)
n, d = 4000, 16
x = torch.randn(n, d)
true_w = torch.randn(d)
y = (x @ true_w + 0.3 * torch.randn(n) > 0).float()
model = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
for epoch in range(30):
    opt.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
    loss.backward()
    opt.step()
accuracy = ((model(x).squeeze(1) > 0).float() == y).float().mean().item()
print(f"epochs=30 loss={loss.item():.3f} train_accuracy={accuracy:.3f}")
'''


def step_training_job(state: Any) -> str:
    """Submit the job as the SME, follow it through queue and run, and print the settled bill."""
    sme = state.as_role("Acme Mobility GmbH")
    with tempfile.TemporaryDirectory(prefix="sbx-demo-code-") as tmp:
        (Path(tmp) / "train.py").write_text(TRAIN_PY)
        code = zip_dir(Path(tmp))
    body = {"milli_cpu": 1000, "memory_mib": 1024, "max_runtime_s": 300}
    quote = sme.call("POST", "/api/v1/jobs/quote", body=body)
    print(
        f"[demo]   quote: at most {quote['max_cost']} credits "
        f"(vouchers {quote['voucher_share']}, co-payment {quote['copay_share']})",
        flush=True,
    )
    job = sme.call(
        "POST",
        "/api/v1/jobs",
        body={**body, "entrypoint": "python train.py", "working_dir_zip_b64": code},
        idempotency_key="demo-train-1",
    )
    last = ""
    deadline = time.monotonic() + 600
    while True:
        job = sme.call("GET", f"/api/v1/jobs/{job['id']}")
        if job["state"] != last:
            print(f"[demo]   job {job['id']}: {job['state']}", flush=True)
            last = job["state"]
        if job["settled_ms"]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the demo job is still {job['state']} after 10 minutes")
        time.sleep(0.5)
    logs = sme.call("GET", f"/api/v1/jobs/{job['id']}/logs")["logs"].strip().splitlines()
    result = next((line for line in reversed(logs) if "accuracy" in line), "(no output)")
    balance = sme.call("GET", "/api/v1/balance")
    state.ids["job"] = job["id"]
    return (
        f"{job['state']}: {result}; ran {(job['ended_ms'] - job['started_ms']) / 1000:.1f} s, billed "
        f"{job['cost']} credits (vouchers paid {job['voucher_paid']}, co-payment {job['copaid']}); "
        f"credit left {balance['available']}"
    )
