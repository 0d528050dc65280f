"""Over HTTP: `/readyz` and `sbx_sandbox_available` say whether SME code can run; a shared Ray cluster's
refusal is a clear 409 with the error body, and the job output download is a zip for its own SME only."""

from __future__ import annotations

import base64
import io
import zipfile

from broker.compute.ray_jobs import RayJobsBackend
from common.resources import Resources
from tests.api.conftest import Live


def _code() -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("main.py", "print('hi')\n")
    return base64.b64encode(buffer.getvalue()).decode()


JOB = {"entrypoint": "python main.py", "milli_cpu": 500, "memory_mib": 256, "max_runtime_s": 60}


def test_readyz_and_the_metric_report_whether_sme_code_runs(live: Live) -> None:
    with live.client(None) as anon, live.client("op2") as op:
        assert anon.get("/readyz").json() == {"status": "ready", "sme_code": "available"}  # fake backend
        assert "sbx_sandbox_available 1.0" in op.get("/metrics").text
        live.world.services.container.use_compute(
            RayJobsBackend("http://127.0.0.1:9", None, capacity_override=Resources(8000, 0, 32_768))
        )
        assert anon.get("/readyz").json() == {"status": "ready", "sme_code": "refused"}
        assert "sbx_sandbox_available 0.0" in op.get("/metrics").text


def test_a_refused_code_job_is_a_409_with_the_error_body(live: Live) -> None:
    live.world.credit(1_000_000)
    live.world.services.container.use_compute(
        RayJobsBackend("http://127.0.0.1:9", None, capacity_override=Resources(8000, 0, 32_768))
    )
    with live.client("sme-a") as sme:
        response = sme.post("/api/v1/jobs", json={**JOB, "working_dir_zip_b64": _code()})
        assert response.status_code == 409
        body = response.json()
        assert body["error"] == "sandbox_unavailable" and "KubeRay" in body["detail"]
        assert sme.get("/api/v1/jobs").json() == []


def test_job_output_is_a_zip_for_its_own_sme_and_a_404_for_others(live: Live) -> None:
    live.world.credit(1_000_000)
    with live.client("sme-a") as sme, live.client("sme-b") as other:
        job = sme.post("/api/v1/jobs", json={**JOB, "working_dir_zip_b64": _code()}).json()
        early = sme.get(f"/api/v1/jobs/{job['id']}/output")
        assert early.status_code == 409 and early.json()["error"] == "not_finished"
        sme.post(f"/api/v1/jobs/{job['id']}/stop")  # a queued job stops at once
        output = sme.get(f"/api/v1/jobs/{job['id']}/output")
        assert output.status_code == 200 and output.headers["content-type"] == "application/zip"
        zipfile.ZipFile(io.BytesIO(output.content)).testzip()
        assert other.get(f"/api/v1/jobs/{job['id']}/output").status_code == 404
