"""Two real broker processes (``sbx serve``) on one PostgreSQL, as the Helm chart runs them: concurrent
clients redeem the same vouchers, place, settle and release the same holds and submit jobs through both
replicas, with idempotency keys and retries on the other replica; one replica is SIGKILLed mid-run and the
survivor carries on. At the end every invariant holds: the ledger balances, each voucher was redeemed once,
each hold closed once, each job admitted and settled once, and the audit log is gapless and verifies.

Limitation (by construction, not a broker bug): ``SBX_COMPUTE=fake`` keeps jobs in the memory of each
process, so replica B does not see a job that replica A started. B's reconcile pass then either restarts
it in its own backend (admitted, within the never-started grace) or settles it as lost (running). What this
test can prove is therefore the coordination through the database — a job is admitted once, its hold is
settled once, by whichever replica gets there first — not that both replicas see one cluster (KubeRay or
a shared Ray cluster gives them that in production).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from broker.bootstrap import initialise, verify_local
from broker.container import build_container
from broker.server import free_port
from broker.services.registry import build_services
from broker.settings import Settings
from quotas.jobs import TERMINAL_STATES
from tests.conftest import psycopg_url
from tests.helpers import DAY_S, bootstrap_world
from vouchers import generate_private_pem

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]
VOUCHERS, HOLDS, JOBS, LATE_JOBS, EXPIRING = 12, 12, 10, 3, 6
TERMINAL = {
    state.value for state in TERMINAL_STATES
}  # `lost` too: a killed replica's fake backend loses its jobs


@pytest.fixture
def database_url(empty_pg_database: str) -> str:
    """A fresh, empty PostgreSQL database: the replicas' ``sbx init`` migrates it."""
    return empty_pg_database


@dataclass
class Replica:
    """One ``sbx serve`` process with its own state directory (like a pod with its emptyDir)."""

    name: str
    state_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no finished transactions."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def _env(state_dir: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBX_")}
    env.update(
        SBX_STATE_DIR=str(state_dir),
        SBX_DATABASE_URL=database_url,
        SBX_COMPUTE="fake",
        SBX_BACKGROUND_LOOPS="true",
        SBX_LOOP_INTERVAL_MS="100",
        # The clients below are one SME hammering on purpose: per-tenant rate limits must not interfere.
        SBX_RATE_REDEEM_PER_S="10000",
        SBX_RATE_SUBMIT_PER_S="10000",
        SBX_RATE_BURST="10000",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def _sbx(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _start(name: str, state_dir: Path, database_url: str, log: Path) -> Replica:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli.main", "serve", "--port", str(port)],
            env=_env(state_dir, database_url),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Replica(name, state_dir, port, proc)


def _wait_ready(replica: Replica, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if replica.proc.poll() is not None:
            pytest.fail(f"replica {replica.name} exited: {log.read_text()[-2000:]}")
        try:
            if replica.client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"replica {replica.name} not ready in 60 s: {log.read_text()[-2000:]}")


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[tuple[list[Replica], str]]:
    """Set up as docs/deploy.md does on Kubernetes, then start two replicas.

    The migrations hook runs ``sbx migrate``; one signing key (the chart's Secret) is mounted into both
    pods' state dirs; the first operator token comes from ``sbx init`` in a throw-away state dir.
    """
    state_a, state_b, scratch = tmp_path / "a", tmp_path / "b", tmp_path / "init"
    migrate = _sbx("migrate", env=_env(scratch, database_url))
    assert migrate.returncode == 0, migrate.stderr
    key = generate_private_pem()
    for state in (state_a, state_b):
        (state / "keys").mkdir(parents=True, mode=0o700)
        (state / "keys" / "broker.pem").write_bytes(key)
        (state / "keys" / "broker.pem").chmod(0o400)
    init = _sbx("init", "--state-dir", str(scratch), "--json", env=_env(scratch, database_url))
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["token"]
    shutil.rmtree(scratch)
    again = initialise(
        scratch, settings=Settings(state_dir=scratch, database_url=database_url, compute="fake")
    )
    assert again["token"] is None, "a second `sbx init` must not make a second operator"
    shutil.rmtree(scratch)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    started = [
        _start(n, d, database_url, lg) for n, d, lg in zip("ab", (state_a, state_b), logs, strict=True)
    ]
    try:
        for replica, log in zip(started, logs, strict=True):
            _wait_ready(replica, log)
        yield started, token
    finally:
        for replica in started:
            replica.client.close()
            if replica.proc.poll() is None:
                replica.proc.terminate()
                try:
                    replica.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    replica.kill()


class Router:
    """Sends a request to a preferred replica and retries on the other when the first cannot answer."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.retries = 0
        self._lock = threading.Lock()

    def call(
        self,
        token: str,
        method: str,
        path: str,
        *,
        prefer: int,
        body: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> httpx.Response:
        """The response of the first replica that answers (same idempotency key on every attempt)."""
        headers = {"Authorization": f"Bearer {token}"}
        if key:
            headers["Idempotency-Key"] = key
        order = [self.replicas[prefer % 2], self.replicas[(prefer + 1) % 2]]
        last: Exception | None = None
        for attempt, replica in enumerate(order):
            try:
                return replica.client.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:  # killed mid-request, or refused: retry elsewhere
                last = exc
                if attempt == 0:
                    with self._lock:
                        self.retries += 1
        raise AssertionError(f"no replica answered {method} {path}") from last


def _issue_vouchers(router: Router, world: dict[str, str]) -> list[dict[str, Any]]:
    now = int(time.time())
    body = {
        "sme_org": world["sme_id"],
        "credits": 5_000,
        "coverage_bps": 10_000,
        "resources": ["cpu", "memory"],
        "valid_until_s": now + DAY_S,
        "credit_expires_s": now + 30 * DAY_S,
    }
    out = []
    for i in range(VOUCHERS):
        response = router.call(world["issuer"], "POST", "/api/v1/vouchers", prefer=i, body=body)
        assert response.status_code == 201, response.text
        out.append(response.json())
    return out


@dataclass
class Outcomes:
    """What the clients saw, per object, for the checks at the end."""

    redemptions: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    holds: dict[int, list[str]] = field(default_factory=dict)
    closes: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    jobs: dict[int, list[str]] = field(default_factory=dict)
    expiring: dict[int, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, table: dict[Any, list[Any]], key: Any, value: Any) -> None:
        """Record one outcome."""
        with self.lock:
            table.setdefault(key, []).append(value)


def _redeem(router: Router, world: dict[str, str], out: Outcomes, voucher: dict[str, Any], how: int) -> None:
    key = f"redeem-{voucher['jti']}" if how < 2 else None
    response = router.call(
        world["sme"], "POST", "/api/v1/vouchers/redeem", prefer=how, body={"token": voucher["token"]}, key=key
    )
    out.add(out.redemptions, voucher["jti"], (response.status_code, response.json()))


def _hold_lifecycle(router: Router, world: dict[str, str], out: Outcomes, i: int) -> None:
    body = {"amount": 1_000 + i}
    placed = [
        router.call(world["sme"], "POST", "/api/v1/holds", prefer=p, body=body, key=f"hold-{i}")
        for p in (i, i + 1)
    ]
    for response in placed:
        assert response.status_code == 201, response.text
        out.add(out.holds, i, response.json()["id"])
    hold_id = placed[0].json()["id"]
    base = f"/api/v1/holds/{hold_id}"
    attempts: list[tuple[str, str, dict[str, Any] | None, str, int]] = [
        (world["operator"], f"{base}/settle", {"cost": 400 + i}, f"settle-{i}", i),
        (world["sme"], f"{base}/release", None, f"release-{i}", i + 1),
        (world["operator"], f"{base}/settle", {"cost": 400 + i}, f"settle-{i}", i + 1),  # a retried settle
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [
            pool.submit(router.call, tok, "POST", path, prefer=p, body=b, key=k)
            for tok, path, b, k, p in attempts
        ]
        for future in futures:
            response = future.result()
            out.add(out.closes, hold_id, (response.status_code, response.json()))


def _expiring_hold(router: Router, world: dict[str, str], out: Outcomes, i: int) -> None:
    """A hold nobody closes: the reapers of both replicas race to expire it after one second."""
    body = {"amount": 100 + i, "ttl_s": 1}
    for prefer in (i, i + 1):
        response = router.call(
            world["sme"], "POST", "/api/v1/holds", prefer=prefer, body=body, key=f"exp-{i}"
        )
        assert response.status_code == 201, response.text
        out.add(out.expiring, i, response.json()["id"])


def _wait_expired(router: Router, token: str, hold_ids: set[str]) -> None:
    deadline = time.monotonic() + 30
    for hold_id in sorted(hold_ids):
        while (
            state := router.call(token, "GET", f"/api/v1/holds/{hold_id}", prefer=1).json()["state"]
        ) == "HELD":
            assert time.monotonic() < deadline, f"hold {hold_id} not expired in 30 s"
            time.sleep(0.2)
        assert state == "EXPIRED", f"hold {hold_id} is {state}"


def _submit(router: Router, world: dict[str, str], out: Outcomes, i: int, prefer: int) -> None:
    body = {"entrypoint": f"python step.py {i}", "milli_cpu": 500, "memory_mib": 256, "max_runtime_s": 30}
    response = router.call(world["sme"], "POST", "/api/v1/jobs", prefer=prefer, body=body, key=f"job-{i}")
    assert response.status_code == 201, response.text
    out.add(out.jobs, i, response.json()["id"])


def _run_concurrently(tasks: list[Callable[[], None]], on_half: Callable[[], None]) -> None:
    """Run ``tasks`` on 8 threads; call ``on_half`` once half of them are done (the SIGKILL)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures: list[Future[None]] = [pool.submit(task) for task in tasks]
        done_count = 0
        pending = set(futures)
        while pending and done_count < len(futures) // 2:
            finished, pending = wait(pending, timeout=60, return_when="FIRST_COMPLETED")
            assert finished, "the clients made no progress in 60 s"
            done_count += len(finished)
        on_half()
        for future in futures:
            future.result(timeout=60)


def _wait_settled(router: Router, token: str, job_ids: set[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 45
    while True:
        jobs = {j["id"]: j for j in router.call(token, "GET", "/api/v1/jobs", prefer=1).json()}
        pending = [i for i in job_ids if jobs[i]["settled_ms"] is None]
        if not pending:
            return {i: jobs[i] for i in job_ids}
        assert time.monotonic() < deadline, f"jobs not settled in 45 s: {[jobs[i] for i in pending]}"
        time.sleep(0.2)


def test_two_replicas_on_one_postgresql_keep_every_invariant_when_one_is_killed(
    replicas: tuple[list[Replica], str], database_url: str, tmp_path: Path
) -> None:
    started, operator_token = replicas
    a, b = started
    world = bootstrap_world(a.url, operator_token)
    world["operator"] = operator_token
    router = Router(started)
    vouchers = _issue_vouchers(router, world)
    out = Outcomes()
    tasks: list[Callable[[], None]] = []
    for i in range(max(VOUCHERS, HOLDS, JOBS)):
        if i < VOUCHERS:
            tasks += [partial(_redeem, router, world, out, vouchers[i], how) for how in range(4)]
        if i < HOLDS:
            tasks.append(partial(_hold_lifecycle, router, world, out, i))
        if i < JOBS:
            tasks += [partial(_submit, router, world, out, i, prefer) for prefer in (0, 1)]
        if i < EXPIRING:
            tasks.append(partial(_expiring_hold, router, world, out, i))

    _run_concurrently(tasks, on_half=a.kill)
    assert a.proc.returncode == -signal.SIGKILL
    for i in range(JOBS, JOBS + LATE_JOBS):  # only the survivor is left to admit and settle these
        _submit(router, world, out, i, prefer=1)
    job_ids = {ids[0] for ids in out.jobs.values()}
    jobs = _wait_settled(router, world["sme"], job_ids)
    for i, ids in out.expiring.items():
        assert len(set(ids)) == 1, f"one idempotency key made two holds: {ids} (expiring hold {i})"
    _wait_expired(router, world["sme"], {ids[0] for ids in out.expiring.values()})
    checkpoint = router.call(operator_token, "POST", "/api/v1/audit/checkpoint", prefer=1)
    assert checkpoint.status_code in (200, 201), checkpoint.text

    _check_redemptions(out, vouchers)
    _check_holds(out)
    _check_jobs(out, jobs)
    _check_database(database_url, b.state_dir, out, jobs, vouchers)
    for replica in (a, b):  # each replica's checkpoint file verifies against the shared chain
        local = Settings(state_dir=replica.state_dir, database_url=database_url, compute="fake")
        assert (replica.state_dir / "audit" / "checkpoints.jsonl").stat().st_size > 0
        result = verify_local(local)  # what `sbx audit verify --local` runs
        assert result["ok"] is True, result
    states = Counter(job["state"] for job in jobs.values())
    print(f"retries on the other replica after the kill: {router.retries}; job states: {dict(states)}")


def _check_redemptions(out: Outcomes, vouchers: list[dict[str, Any]]) -> None:
    for voucher in vouchers:
        seen = out.redemptions[voucher["jti"]]
        assert len(seen) == 4
        grants = {body["grant"]["id"] for status, body in seen if status in (200, 201)}
        # One grant, or none seen when a key-less winner's answer died with the killed replica (the
        # database check below proves the grant exists exactly once either way).
        assert len(grants) <= 1, f"voucher {voucher['jti']} made {len(grants)} grants: {seen}"
        refusals = [body.get("error") for status, body in seen if status not in (200, 201)]
        assert set(refusals) <= {"already_redeemed"}, seen


def _check_holds(out: Outcomes) -> None:
    for i, ids in out.holds.items():
        assert len(set(ids)) == 1, f"one idempotency key made two holds: {ids} (hold {i})"
    for hold_id, seen in out.closes.items():
        winners = {body["state"] for status, body in seen if status == 200}
        assert len(winners) == 1, f"hold {hold_id} closed as {winners}: {seen}"
        losers = {body.get("error") for status, body in seen if status != 200}
        assert len(losers) <= 1, seen


def _check_jobs(out: Outcomes, jobs: dict[str, dict[str, Any]]) -> None:
    for i, ids in out.jobs.items():
        assert len(set(ids)) == 1, f"job key {i} made two jobs: {ids}"
    for job in jobs.values():
        assert job["state"] in TERMINAL, job
        assert 0 <= job["cost"] <= job["max_cost"], job


def _check_database(
    url: str, state_dir: Path, out: Outcomes, jobs: dict[str, dict[str, Any]], vouchers: list[dict[str, Any]]
) -> None:
    settings = Settings(state_dir=state_dir, database_url=url, compute="fake", background_loops=False)
    container = build_container(settings, group_commit=False)
    try:
        assert build_services(container).ledger.invariants() == []
    finally:
        container.close()
    engine = create_engine(psycopg_url(url))
    try:
        with engine.connect() as conn:
            jtis = [v["jti"] for v in vouchers]
            grants = Counter(
                r[0]
                for r in conn.execute(
                    text("SELECT voucher_jti FROM grants WHERE voucher_jti = ANY(:j)"), {"j": jtis}
                )
            )
            assert grants == Counter(dict.fromkeys(jtis, 1))
            closes = conn.execute(
                text(
                    "SELECT h.id, h.state, count(DISTINCT e.txn_id) FROM holds h LEFT JOIN entries e"
                    " ON e.hold_id = h.id AND e.kind IN ('settle', 'release', 'expire_hold') GROUP BY h.id, h.state"
                )
            ).all()
            for hold_id, state, txns in closes:
                assert txns == (0 if state == "HELD" else 1), f"hold {hold_id} ({state}) closed {txns} times"
            expire_audits = Counter(
                r[0]
                for r in conn.execute(
                    text("SELECT object_id FROM audit_entries WHERE action = 'hold.expire'")
                )
            )
            for ids in out.expiring.values():
                assert expire_audits[ids[0]] == 1, f"hold {ids[0]} expired {expire_audits[ids[0]]} times"
            explicit = {hold_id for hold_id in out.closes}
            assert {h for h, state, _ in closes if state != "HELD"} >= explicit
            actions = Counter(
                (r[0], r[1])
                for r in conn.execute(
                    text(
                        "SELECT action, object_id FROM audit_entries WHERE action IN ('job.admit', 'job.settle')"
                    )
                )
            )
            for job_id in jobs:
                assert actions[("job.admit", job_id)] == 1, (
                    f"job {job_id} admitted {actions[('job.admit', job_id)]}x"
                )
                assert actions[("job.settle", job_id)] == 1, (
                    f"job {job_id} settled {actions[('job.settle', job_id)]}x"
                )
            job_holds = conn.execute(
                text(
                    "SELECT j.id, h.state FROM jobs j JOIN holds h ON h.id = j.hold_id WHERE j.id = ANY(:j)"
                ),
                {"j": list(jobs)},
            ).all()
            assert sorted(j for j, _ in job_holds) == sorted(jobs)
            assert {state for _, state in job_holds} == {"SETTLED"}
            seqs = [r[0] for r in conn.execute(text("SELECT seq FROM audit_entries ORDER BY seq"))]
            assert seqs == list(range(1, len(seqs) + 1)), "audit sequence numbers have a gap"
    finally:
        engine.dispose()
