"""The attack suite (issue 11): hostile SME jobs on a real local Ray, through the job service, in the real sandbox.

Each attack tries one thing a malicious tenant would: read the broker's state dir, keys, token file, SQLite
file and object store, another job's files, every process's environment, the Ray token; write the database;
reach the broker's port, Ray's dashboard and GCS ports, or any route out; and a fork bomb, a memory bomb, a
disk fill. The test plants canaries where each secret lives and checks that no job's log or output carries
one, that the bombs end with their reason and a bill, that a concurrent victim job and the broker are
unaffected, and that the ledger invariants hold afterwards.

The negative control runs the same read and reach probes with the sandbox switched off (the test-only
setting): they then find the canaries, so this suite can fail. The bombs never run without the sandbox.
No probe sends a packet off this machine: the route-out check is a UDP ``connect`` (a route lookup only).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.cli.jobs import zip_dir
from broker.compute.ray_local import LocalRayBackend, SandboxDefaults
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from common.clock import SystemClock
from common.resources import Resources
from tests.conftest import World

pytestmark = pytest.mark.ray
CANARY = "sbx-canary-7f3e9a1c"
JOB = Resources(milli_cpu=500, gpus=0, memory_mib=256)
LIMITS = SandboxDefaults(disk_mib=64, tmp_mib=32, max_pids=64, log_bytes=256 * 1024, default_memory_mib=256)

PROBE = r"""
import glob, json, os, socket, sys
targets = json.loads(open("targets.json").read())
found = {}

def attempt(name, fn):
    try:
        found[name] = fn()
    except Exception as exc:
        found[name] = "blocked: " + type(exc).__name__

def read(path):
    with open(path, "rb") as f:
        return f.read(4096).decode("utf-8", "replace")

for name, path in targets["files"].items():
    attempt("read " + name, lambda p=path: read(p))
attempt("list state dir", lambda: sorted(os.listdir(targets["state_dir"])))
attempt("list jobs", lambda: sorted(os.listdir(os.path.join(targets["state_dir"], "jobs"))))

def environs():
    out = []
    for env in glob.glob("/proc/[0-9]*/environ"):
        try:
            out.append(read(env))
        except OSError:
            pass
    return "\n".join(out)
attempt("read /proc/*/environ", environs)
attempt("own environment", lambda: json.dumps(dict(os.environ)))

def write_db():
    with open(targets["files"]["sqlite"], "r+b") as f:
        f.write(b"x")
    return "wrote the database " + targets["canary"]
attempt("write database", write_db)

def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.close()
    return "connected to " + str(port) + " " + targets["canary"]
for name, port in targets["ports"].items():
    attempt("connect " + name, lambda p=port: connect(p))

def route_out():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # connect() on UDP sends nothing: a route lookup
    s.connect(("192.0.2.1", 9))
    s.close()
    return "a route out exists " + targets["canary"]
attempt("route out", route_out)
attempt("interfaces", lambda: [n for _, n in socket.if_nameindex()])
attempt("uid", lambda: os.getuid())
attempt("pids", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print(json.dumps(found, sort_keys=True), flush=True)
with open(os.path.join(os.environ.get("SBX_OUTPUT", "."), "found.json"), "w") as f:
    json.dump(found, f)
"""

BOMBS = {
    "fork": "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n",
    "memory": "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n",
    "disk": (
        "import os\nblock = b'x' * (1 << 20)\nwith open(os.path.join(os.environ['SBX_OUTPUT'], 'fill'), 'wb') as f:\n"
        "    while True:\n        f.write(block)\n        f.flush()\n"
    ),
    "victim": "import time\ntime.sleep(6)\nprint('victim finished', flush=True)\n",
    "secret": f"print('{CANARY}-victim-log', flush=True)\nopen('secret.txt', 'w').write('{CANARY}-victim-file')\n",
}


@pytest.fixture
def clock() -> SystemClock:  # type: ignore[override]
    return SystemClock()


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 standing in for the broker's API port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


@pytest.fixture(scope="module")
def sandboxed_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayBackend]:
    """A local Ray head whose jobs run in the sandbox with small limits; the raylet's environment carries a
    canary, so a job that could read other processes' environments would find it."""
    os.environ["SBX_CANARY_ENV"] = CANARY + "-environ"
    backend = LocalRayBackend(tmp_path_factory.mktemp("ray-attacks"), num_cpus=2, sandbox=LIMITS)
    try:
        yield backend
    finally:
        backend.close()
        os.environ.pop("SBX_CANARY_ENV", None)


def _plant(world: World) -> dict[str, str]:
    """Put a canary wherever a secret of the broker lives; return the paths a probe should try."""
    state = world.services.container.settings.state_dir.resolve()
    (state / "operator.token").write_text(f"{CANARY}-token")
    (state / "canary.txt").write_text(f"{CANARY}-state")
    world.services.container.storage.put_bytes("datasets/canary/raw.csv", f"pid,x\n{CANARY}-row,1\n".encode())
    objects = state / "objects" / "datasets" / "canary" / "raw.csv"
    keys = sorted((state / "keys").glob("*"))
    return {
        "state": str(state / "canary.txt"),
        "token": str(state / "operator.token"),
        "sqlite": str(state / "broker.db"),
        "broker key": str(keys[0]) if keys else str(state / "keys"),
        "object store": str(objects),
    }


def _probe_code(tmp: Path, targets: dict[str, Any]) -> str:
    code = tmp / "probe"
    code.mkdir(exist_ok=True)
    (code / "probe.py").write_text(PROBE)
    (code / "targets.json").write_text(json.dumps(targets))
    return zip_dir(code)


def _script_code(tmp: Path, name: str) -> str:
    code = tmp / name
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(BOMBS[name])
    return zip_dir(code)


def _submit(services: Services, world: World, code: str, entrypoint: str, runtime_s: int = 90) -> str:
    request = JobRequest(entrypoint, JOB, runtime_s, working_dir_zip_b64=code)
    return str(services.jobs.submit(world.sme, request, idempotency_key=None)["id"])


def _run_until(services: Services, done: Callable[[], bool], timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the jobs"
        services.jobs.reconcile_pass()
        services.jobs.admission_pass()
        time.sleep(0.25)


def _job(services: Services, world: World, job_id: str) -> dict[str, Any]:
    return services.jobs.get(world.operator, job_id=job_id)


def _everything_returned(services: Services, world: World, job_id: str) -> str:
    """All a job hands back to its SME: its log and every file of its output."""
    logs = services.jobs.logs(world.sme, job_id=job_id, max_bytes=1 << 20)
    with zipfile.ZipFile(services.jobs.output(world.sme, job_id=job_id)) as zf:
        files = "\n".join(zf.read(n).decode("utf-8", "replace") for n in zf.namelist() if not n.endswith("/"))
    return logs + "\n" + files


def _targets(world: World, backend: LocalRayBackend, listener: int, victim_dir: Path) -> dict[str, Any]:
    files = _plant(world)
    files["ray token"] = str(backend.head.token_path)
    files["other job"] = str(victim_dir / "work" / "secret.txt")
    files["other job log"] = str(victim_dir / "result.json")
    ports = {"broker": listener, "ray dashboard": backend.head.dashboard_port}
    gcs = _gcs_port(backend)
    if gcs:
        ports["ray gcs"] = gcs
    state_dir = str(world.services.container.settings.state_dir.resolve())
    return {"files": files, "ports": ports, "state_dir": state_dir, "canary": CANARY}


def _gcs_port(backend: LocalRayBackend) -> int | None:
    try:
        return int(Path(backend.head.temp_dir, "ray_current_cluster").read_text().split(":")[-1])
    except (OSError, ValueError):
        return None


def _run_probe(
    services: Services, world: World, backend: LocalRayBackend, listener: int, tmp: Path
) -> tuple[str, dict[str, Any]]:
    """Run the victim, then the probe beside it; return everything the probe job handed back, and its
    findings (``found.json`` in its output)."""
    services.container.use_compute(backend)
    world.credit(50_000_000)
    victim = _submit(services, world, _script_code(tmp, "secret"), "python main.py")
    _run_until(services, lambda: _job(services, world, victim)["settled_ms"] is not None)
    victim_dir = services.container.job_files.job_dir(victim)
    assert CANARY in (victim_dir / "work" / "secret.txt").read_text()  # the victim really wrote its secret
    probe = _submit(
        services, world, _probe_code(tmp, _targets(world, backend, listener, victim_dir)), "python probe.py"
    )
    _run_until(services, lambda: _job(services, world, probe)["settled_ms"] is not None)
    assert _job(services, world, probe)["state"] == "succeeded", services.jobs.logs(world.sme, job_id=probe)
    with zipfile.ZipFile(services.jobs.output(world.sme, job_id=probe)) as zf:
        found = json.loads(zf.read(f"{probe}/found.json"))
    return _everything_returned(services, world, probe), found


def test_no_attack_reaches_a_secret(
    services: Services, world: World, sandboxed_ray: LocalRayBackend, listener: int, tmp_path: Path
) -> None:
    returned, found = _run_probe(services, world, sandboxed_ray, listener, tmp_path)
    assert CANARY not in returned, returned
    assert "PRIVATE KEY" not in returned
    for name, outcome in found.items():
        if name.startswith(("read ", "write ", "connect ", "route ", "list ")) and "/proc" not in name:
            assert str(outcome).startswith("blocked"), (name, outcome)
    assert "RAY_" not in found["read /proc/*/environ"]  # only the sandbox's own, explicit environments
    assert found["interfaces"] == ["lo"]
    assert found["uid"] != 0
    assert len(found["pids"]) <= 4  # its own PID namespace: the sandbox's init, the shell, python
    assert "RAY_" not in found["own environment"] and "SBX_CANARY" not in found["own environment"]
    assert services.ledger.invariants() == []


def test_negative_control_without_the_sandbox_the_probes_find_the_canaries(
    tmp_path_factory: pytest.TempPathFactory,
    services: Services,
    world: World,
    sandboxed_ray: LocalRayBackend,
    listener: int,
    tmp_path: Path,
) -> None:
    """The same probes, the sandbox switched off (test-only setting), find what the suite says is hidden."""
    unsafe = LocalRayBackend(
        sandboxed_ray.state_dir, num_cpus=2, sandbox=SandboxDefaults(unsafe_no_sandbox=True)
    )  # adopts the running head; only its launches differ
    returned, _ = _run_probe(services, world, unsafe, listener, tmp_path)
    assert f"{CANARY}-token" in returned and f"{CANARY}-state" in returned
    assert f"{CANARY}-victim-file" in returned  # another tenant's files
    assert f"connected to {listener} {CANARY}" in returned  # the broker's port


@pytest.mark.parametrize(
    ("bomb", "reason"),
    [("fork", "too_many_processes"), ("memory", "out_of_memory"), ("disk", "disk_quota")],
)
def test_bombs_end_with_their_reason_are_billed_and_harm_nobody(
    services: Services, world: World, sandboxed_ray: LocalRayBackend, tmp_path: Path, bomb: str, reason: str
) -> None:
    services.container.use_compute(sandboxed_ray)
    world.credit(50_000_000)
    victim = _submit(services, world, _script_code(tmp_path, "victim"), "python main.py")
    attack = _submit(services, world, _script_code(tmp_path, bomb), "python main.py", runtime_s=60)
    _run_until(services, lambda: all(_job(services, world, j)["settled_ms"] for j in (victim, attack)))
    done = _job(services, world, attack)
    assert done["state"] == "failed" and done["reason"] == reason, done
    assert done["cost"] is not None and done["cost"] > 0  # billed for what it ran
    assert _job(services, world, victim)["state"] == "succeeded"
    assert "victim finished" in services.jobs.logs(world.sme, job_id=victim)
    kills = services.container.metrics.sandbox_kills.labels(reason=reason)._value.get()
    assert kills >= 1
    if bomb == "disk":
        used = sum(
            f.stat().st_size for f in services.container.job_files.job_dir(attack).rglob("*") if f.is_file()
        )
        assert used <= (LIMITS.disk_mib + 16) * 1024 * 1024
    assert services.ledger.invariants() == []
