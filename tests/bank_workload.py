"""A Jepsen-style bank workload against real ``sbx serve`` processes that are SIGKILLed at random.

Many client threads redeem vouchers, place holds, settle them partially, release them, close them a second
time on purpose, redeem a voucher twice on purpose, submit jobs and run DP queries — every mutating call
with an idempotency key, retried on connection errors, 5xx and 429 until it gets a definite answer (a DP
query killed mid-run is retried with its key: ``query_in_progress`` until reconciliation closes it as
``query_interrupted``, never a second charge). A seeded chaos
loop SIGKILLs a broker (one of one on SQLite, either of two on PostgreSQL) at random moments and restarts
it. A reader checks at every read it completes that credit is conserved (``/metrics`` is one database
snapshot: the balances of all account kinds sum to zero) and, per SME (``/balance``, one snapshot), that
what the clients were told is visible and that nothing appeared from nowhere:

    acknowledged redemptions  <=  redeemed  <=  attempted redemptions
    acknowledged settle costs <=  spent     <=  attempted settle costs + attempted jobs x their max cost
                                                 + attempted DP queries x their max cost
    available >= 0, held >= 0, where spent = redeemed - available - held (no co-payment is allowed)

Kills fall after a seeded number of operations plus a seeded jitter (so slow and fast machines see the
same kills per operation). Each broker keeps a warm spare process that has already imported the broker and
runs the real ``sbx serve`` entry point when told to, so a restart costs recovery, not imports.

At the end every acknowledged answer is replayed with its key (the same key must give the same answer
after the crashes) and a container built over the same database checks the ledger invariants, balances,
holds, grants, jobs and the audit chain, and the privacy work (issue 14): no charge left ``reserved`` once
its deadline passed and reconciliation ran, no hold ``HELD`` past its deadline, every acknowledged query
charged once as acknowledged, ε spent = acknowledged charges + interrupted ones, and the subsidy report
equal to the ledger per SME. Used by ``tests/e2e/test_bank.py`` (bounded) and ``bench/soak.py`` (long).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Connection, func, select, text

from broker.container import build_container
from broker.db import data_tables as dt
from broker.db import subsidy
from broker.db import tables as t
from broker.db.database import Database
from broker.db.orgs import Principal
from broker.server import free_port
from broker.services.registry import Services, build_services
from broker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DAY_S = 24 * 3600
API = "/api/v1"
JOB_BODY = {"entrypoint": "python step.py", "milli_cpu": 250, "memory_mib": 128, "max_runtime_s": 5}
# ``lost`` (issue 14): the fake backend forgets its jobs when the broker is killed, so they end LOST.
TERMINAL_JOBS = {"succeeded", "failed", "stopped", "timed_out", "lost", "rejected"}
# Operation mix: holds and their closes dominate (cheap), redemptions and jobs are rarer.
WEIGHTS = {
    "hold": 34,
    "settle": 22,
    "release": 14,
    "close_again": 6,
    "redeem": 8,
    "redeem_dup": 2,
    "job": 3,
    "query": 3,
}
QUERY_DEADLINE_S = 20  # SBX_QUERY_DEADLINE_S of the brokers: a query cut off by a kill is closed after this
QUERY_SHAPE = {"milli_cpu": 1000, "memory_mib": 1024, "max_runtime_s": 120}  # what a query's hold covers
DATASET_ROWS = 400
OPEN_HOLDS_PER_CLIENT = 12
# Importing the broker takes seconds on a busy machine; a restart would spend most of the run importing.
# So each broker keeps a warm spare: a process that has imported everything and runs the real `sbx serve`
# entry point (``broker.cli.main.main``) once told to. Serving, crashing and recovering are unchanged.
# A watchdog thread ends the process when the test process that started it dies (a killed pytest must not
# leave brokers serving: they run in their own session, so nothing else would stop them).
WARM_SPARE = """
import os, pathlib, signal, sys, threading, time
def _watchdog(parent=os.getppid()):
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=_watchdog, daemon=True).start()
import broker.app, broker.cli.main, broker.container, broker.server, broker.services.registry
pathlib.Path(sys.argv[1]).touch()
if sys.stdin.readline().strip() == "serve":
    sys.argv = ["sbx", "serve", *sys.argv[2:]]
    broker.cli.main.main()
"""


class Stop(Exception):
    """The run is over: a client abandons the call it was retrying."""


@dataclass(frozen=True, slots=True)
class BankConfig:
    """How big, how long and how violent one run is (``seed`` fixes every random choice but timing)."""

    seed: int
    work_dir: Path
    database_url: str | None = None  # None: SQLite in the first replica's state directory
    replicas: int = 1
    smes: int = 3
    clients_per_sme: int = 2
    vouchers_per_sme: int = 40
    voucher_credits: int = 20_000
    min_ops: int = 10_000
    min_kills: int = 5
    min_seconds: float = 0.0
    # A guard only: CI runs end at min_ops (2-4 min here, beside the rest of the suite).
    max_seconds: float = 420.0
    kill_every_ops: tuple[int, int] = (700, 1700)  # a kill after this many operations (then a jitter)
    replay_sample: int = 300
    progress: Callable[[str], None] | None = None


@dataclass
class Report:
    """What a run did and every violation it saw (empty ``violations``: every promise kept)."""

    seed: int
    ops: int = 0
    kills: int = 0
    reads: int = 0
    retries: int = 0
    replayed: int = 0
    seconds: float = 0.0
    by_kind: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    kill_times: list[tuple[float, str]] = field(default_factory=list)
    unsettled_jobs: int = 0
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        """A one-line summary."""
        return (
            f"seed={self.seed} ops={self.ops} kills={self.kills} reads={self.reads} retries={self.retries}"
            f" replayed={self.replayed} seconds={self.seconds:.1f} unsettled_jobs={self.unsettled_jobs}"
            f" violations={len(self.violations)} ops_by_kind={dict(self.by_kind)}"
        )


# -- broker processes ------------------------------------------------------------------------------


def broker_env(state_dir: Path, database_url: str | None) -> dict[str, str]:
    """The environment of one ``sbx`` process: fake compute, fast loops, limits out of the way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBX_")}
    env.update(
        SBX_STATE_DIR=str(state_dir),
        SBX_COMPUTE="fake",
        SBX_BACKGROUND_LOOPS="true",
        SBX_LOOP_INTERVAL_MS="200",
        SBX_RATE_REDEEM_PER_S="1000000",
        SBX_RATE_SUBMIT_PER_S="1000000",
        SBX_RATE_QUERY_PER_S="1000000",
        SBX_RATE_BURST="1000000",
        SBX_MAX_OPEN_HOLDS="1000000",
        SBX_QUERY_DEADLINE_S=str(QUERY_DEADLINE_S),
        RAY_USAGE_STATS_ENABLED="0",
    )
    if database_url:
        env["SBX_DATABASE_URL"] = database_url
    return env


class Broker:
    """One ``sbx serve`` process on a fixed port (it comes back on the same port after a kill)."""

    def __init__(self, name: str, state_dir: Path, database_url: str | None) -> None:
        self.name = name
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = broker_env(state_dir, database_url)
        self.log = state_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spare: subprocess.Popen[bytes] | None = None
        self.spares = 0
        self.marker = state_dir.parent / f"{name}.spare-0"

    def wait_warm(self, stop: threading.Event) -> None:
        """Wait until the spare has imported the broker (or ``stop`` is set)."""
        while self.spare is not None and not self.marker.exists() and not stop.wait(0.05):
            if self.spare.poll() is not None:
                return

    def start(self) -> None:
        """Let the warm spare serve, wait until ``/readyz`` answers, then warm the next spare."""
        proc = self.spare or self.warm()
        self.spare = None
        assert proc.stdin is not None
        proc.stdin.write(b"serve\n")
        proc.stdin.close()
        self.proc = proc
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"broker {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.spare = self.warm()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"broker {self.name} not ready in 90 s: {self.log.read_text()[-2000:]}")

    def warm(self) -> subprocess.Popen[bytes]:
        """A spare process that imports the broker, then waits for a line on stdin to run ``sbx serve``."""
        self.spares += 1
        self.marker = self.state_dir.parent / f"{self.name}.spare-{self.spares}"
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-c", WARM_SPARE, str(self.marker), "--port", str(self.port)],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the whole process group: no graceful shutdown, in-flight transactions die."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if it does not exit within 30 s; end the spare."""
        if self.spare is not None:
            assert self.spare.stdin is not None
            self.spare.stdin.close()
            os.killpg(self.spare.pid, signal.SIGKILL)
            self.spare.wait(timeout=30)
            self.spare = None
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def init_state(state_dirs: list[Path], database_url: str | None) -> str:
    """``sbx init`` the first state directory (and database); share its broker key; return the operator token."""
    first = state_dirs[0]
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "init", "--state-dir", str(first), "--json"],
        env=broker_env(first, database_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sbx init failed: {done.stderr}")
    (first / "objects").mkdir(exist_ok=True)
    for other in state_dirs[1:]:
        (other / "keys").mkdir(parents=True, mode=0o700)
        (other / "objects").symlink_to(first / "objects")  # one object store: datasets serve on either
        shutil.copy2(first / "keys" / "broker-keys.json", other / "keys" / "broker-keys.json")  # wrapped
    return str(json.loads(done.stdout)["token"])


@contextmanager
def running_brokers(config: BankConfig) -> Iterator[tuple[list[Broker], str]]:
    """Initialise the state and database, start ``config.replicas`` brokers, stop them afterwards."""
    dirs = [config.work_dir / f"state-{i}" for i in range(config.replicas)]
    brokers = [Broker(f"broker-{i}", d, config.database_url) for i, d in enumerate(dirs)]
    try:
        for broker in brokers:  # the spares import while `sbx init` runs
            broker.spare = broker.warm()
        token = init_state(dirs, config.database_url)
        for broker in brokers:
            broker.start()
        yield brokers, token
    finally:
        for broker in brokers:
            broker.stop()


# -- what the clients know -------------------------------------------------------------------------


@dataclass
class Ack:
    """A definite answer to a mutating call: replayed with its key at the end."""

    token: str
    method: str
    path: str
    body: dict[str, Any] | None
    key: str
    status: int
    answer: Any


@dataclass
class SmeBook:
    """Per-SME totals the reader's bounds are built from (attempted totals grow before a call is sent)."""

    redeem_attempted: int = 0
    redeem_acked: int = 0
    acked_jtis: set[str] = field(default_factory=set)
    settle_attempted: int = 0
    settle_acked: int = 0
    jobs_attempted: int = 0
    queries_attempted: int = 0


@dataclass
class Knowledge:
    """Everything the clients were told, under one lock."""

    books: dict[str, SmeBook]
    lock: threading.Lock = field(default_factory=threading.Lock)
    grants: dict[str, str] = field(default_factory=dict)  # voucher jti -> grant id
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # hold id -> (sme, amount)
    closed: dict[str, tuple[str, int]] = field(default_factory=dict)  # hold id -> (state, settled)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> sme
    acks: list[Ack] = field(default_factory=list)
    queries: dict[str, tuple[str, int]] = field(default_factory=dict)  # acknowledged query id -> (sme, ε)
    interrupted: int = 0  # queries answered query_interrupted (a kill cut them off; charged, no values)
    abandoned: int = 0  # queries still being retried when the run stopped (their outcome is unknown)


class Run:
    """Shared state of one run: brokers, tokens, knowledge, counters, violations."""

    def __init__(self, config: BankConfig, brokers: list[Broker], tokens: dict[str, str]) -> None:
        self.config = config
        self.brokers = brokers
        self.dataset_id = tokens.pop("dataset_id", "")
        self.tokens = tokens
        self.report = Report(seed=config.seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def violation(self, text: str) -> None:
        """Record one broken promise."""
        with self.lock:
            self.report.violations.append(text)
        if self.config.progress is not None:
            self.config.progress(f"VIOLATION: {text}")

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter of the report."""
        with self.lock:
            setattr(self.report, name, getattr(self.report, name) + amount)


class Caller:
    """One thread's HTTP clients, one per broker, and the retry-until-definite loop."""

    def __init__(self, run: Run, rng: random.Random) -> None:
        self.run = run
        self.rng = rng
        self.clients = [httpx.Client(base_url=b.url, timeout=15) for b in run.brokers]

    def close(self) -> None:
        """Close the connections."""
        for client in self.clients:
            client.close()

    def call(
        self,
        token: str,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        key: str | None = None,
        params: dict[str, Any] | None = None,
        patient: bool = False,
    ) -> httpx.Response:
        """Send until a definite answer (not a transport error, 5xx or 429); ``patient`` ignores ``stop``."""
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        deadline = time.monotonic() + 120
        attempt = 0
        while True:
            if self.run.stop.is_set() and not patient:
                raise Stop(f"{method} {path}: the run stopped")
            if time.monotonic() > deadline:
                self.run.violation(f"{method} {path} got no definite answer in 120 s ({attempt} attempts)")
                raise Stop(f"{method} {path} got no definite answer")
            client = self.clients[self.rng.randrange(len(self.clients))]
            attempt += 1
            if attempt > 1:
                self.run.count("retries")
            try:
                response = client.request(method, path, json=body, headers=headers, params=params)
            except httpx.TransportError:
                time.sleep(0.02 * min(attempt, 10))
                continue
            if response.status_code >= 500:
                self.run.violation(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
                time.sleep(0.05)
                continue
            if response.status_code == 429:
                time.sleep(min(float(response.headers.get("Retry-After", "1")), 1.0))
                continue
            return response


# -- the clients -----------------------------------------------------------------------------------


class Client:
    """One SME's client thread: a seeded random mix of operations, each retried until definite."""

    def __init__(
        self, run: Run, know: Knowledge, sme: str, name: str, vouchers: list[dict[str, Any]], seed: int
    ) -> None:
        self.run = run
        self.know = know
        self.sme = sme
        self.name = name
        self.vouchers = vouchers
        self.redeemed: list[dict[str, Any]] = []
        self.open: list[tuple[str, int]] = []
        self.closed: list[str] = []
        self.rng = random.Random(seed)
        self.caller = Caller(run, random.Random(seed + 1))
        self.n = 0

    def loop(self) -> None:
        """Run operations until the run stops."""
        kinds = list(WEIGHTS)
        weights = list(WEIGHTS.values())
        try:
            while not self.run.stop.is_set():
                kind = self.rng.choices(kinds, weights)[0]
                if len(self.open) >= OPEN_HOLDS_PER_CLIENT and kind == "hold":
                    kind = "settle"
                op = getattr(self, f"op_{kind}")
                if op():
                    self.run.count("ops")
                    with self.run.lock:
                        self.run.report.by_kind[kind] += 1
        except Stop:
            pass
        finally:
            self.caller.close()

    def key(self, what: str) -> str:
        """A fresh idempotency key."""
        self.n += 1
        return f"{self.name}-{what}-{self.n}"

    def send(
        self, role: str, method: str, path: str, body: dict[str, Any] | None, key: str
    ) -> tuple[int, Any]:
        """Send a mutating call until definite; remember successful answers for the replay."""
        token = self.run.tokens[role]
        response = self.caller.call(token, method, path, body=body, key=key)
        answer = response.json()
        with self.run.lock:
            self.run.report.answers[f"{path.split('/')[-1]}:{response.status_code}"] += 1
        if response.status_code < 300:
            with self.know.lock:
                self.know.acks.append(Ack(token, method, path, body, key, response.status_code, answer))
        return response.status_code, answer

    def unexpected(self, what: str, status: int, answer: Any) -> None:
        """A definite answer the broker should not have given."""
        self.run.violation(f"{self.name} {what}: unexpected {status} {json.dumps(answer)[:300]}")

    def op_redeem(self) -> bool:
        """Redeem the next voucher (a retried key must return the same grant, never already_redeemed)."""
        if not self.vouchers:
            return False
        voucher = self.vouchers[0]
        with self.know.lock:
            self.know.books[self.sme].redeem_attempted += voucher["credits"]
        status, answer = self.send(
            f"sme:{self.sme}",
            "POST",
            f"{API}/vouchers/redeem",
            {"token": voucher["token"]},
            self.key("redeem"),
        )
        self.vouchers.pop(0)
        if status != 201 or answer["grant"]["amount"] != voucher["credits"]:
            self.unexpected(f"redeem {voucher['jti']}", status, answer)
            return True
        with self.know.lock:
            book = self.know.books[self.sme]
            book.redeem_acked += voucher["credits"]
            book.acked_jtis.add(voucher["jti"])
            self.know.grants[voucher["jti"]] = answer["grant"]["id"]
        self.redeemed.append(voucher)
        return True

    def op_redeem_dup(self) -> bool:
        """Redeem an already redeemed voucher under a new key: must be refused ``already_redeemed``."""
        if not self.redeemed:
            return False
        voucher = self.rng.choice(self.redeemed)
        status, answer = self.send(
            f"sme:{self.sme}", "POST", f"{API}/vouchers/redeem", {"token": voucher["token"]}, self.key("dup")
        )
        if status != 409 or answer.get("error") != "already_redeemed":
            self.unexpected(f"second redemption of {voucher['jti']}", status, answer)
        return True

    def op_hold(self) -> bool:
        """Hold a few credits: placed, or refused for want of credit."""
        amount = self.rng.randint(1, 60)
        status, answer = self.send(
            f"sme:{self.sme}", "POST", f"{API}/holds", {"amount": amount}, self.key("hold")
        )
        if status == 201 and answer["amount"] == amount and answer["state"] == "HELD":
            with self.know.lock:
                self.know.holds[answer["id"]] = (self.sme, amount)
            self.open.append((answer["id"], amount))
        elif answer.get("error") != "insufficient_credit":
            self.unexpected("hold", status, answer)
        return True

    def op_settle(self) -> bool:
        """Settle a random open hold for a random part of it (operator)."""
        if not self.open:
            return False
        hold_id, amount = self.open.pop(self.rng.randrange(len(self.open)))
        cost = self.rng.randint(0, amount)
        with self.know.lock:
            self.know.books[self.sme].settle_attempted += cost
        status, answer = self.send(
            "operator", "POST", f"{API}/holds/{hold_id}/settle", {"cost": cost}, self.key("settle")
        )
        if status != 200 or answer["state"] != "SETTLED" or answer["settled"] != cost:
            self.unexpected(f"settle {hold_id} for {cost}", status, answer)
            return True
        with self.know.lock:
            self.know.books[self.sme].settle_acked += cost
            self.know.closed[hold_id] = ("SETTLED", cost)
        self.closed.append(hold_id)
        return True

    def op_release(self) -> bool:
        """Release a random open hold (the SME itself)."""
        if not self.open:
            return False
        hold_id, _amount = self.open.pop(self.rng.randrange(len(self.open)))
        status, answer = self.send(
            f"sme:{self.sme}", "POST", f"{API}/holds/{hold_id}/release", None, self.key("release")
        )
        if status != 200 or answer["state"] != "RELEASED" or answer["settled"] != 0:
            self.unexpected(f"release {hold_id}", status, answer)
            return True
        with self.know.lock:
            self.know.closed[hold_id] = ("RELEASED", 0)
        self.closed.append(hold_id)
        return True

    def op_close_again(self) -> bool:
        """Release a hold already closed, under a new key: must be refused with a 409."""
        if not self.closed:
            return False
        hold_id = self.rng.choice(self.closed)
        status, answer = self.send(
            f"sme:{self.sme}", "POST", f"{API}/holds/{hold_id}/release", None, self.key("again")
        )
        if status != 409:
            self.unexpected(f"second close of {hold_id}", status, answer)
        return True

    def op_job(self) -> bool:
        """Submit a small job (the fake backend runs it for a second): queued, or refused by quota/credit."""
        with self.know.lock:
            self.know.books[self.sme].jobs_attempted += 1
        status, answer = self.send(f"sme:{self.sme}", "POST", f"{API}/jobs", dict(JOB_BODY), self.key("job"))
        if status == 201:
            with self.know.lock:
                self.know.jobs[answer["id"]] = self.sme
        elif answer.get("error") not in ("insufficient_credit", "quota_exceeded"):
            self.unexpected("job", status, answer)
        return True

    def op_query(self) -> bool:
        """A DP count: answered once and charged once, however often it is retried with its key."""
        eps = self.rng.choice((500, 1000, 2000))
        with self.know.lock:
            self.know.books[self.sme].queries_attempted += 1
        body = {"queries": [{"kind": "count", "epsilon_micro": eps}]}
        try:
            status, answer = self._query_until_definite(body, self.key("query"))
        except Stop:
            with self.know.lock:
                self.know.abandoned += 1
            raise
        if status == 200 and answer["charged"]["epsilon_micro"] == eps:
            with self.know.lock:
                self.know.queries[answer["query_id"]] = (self.sme, eps)
        elif answer.get("error") == "query_interrupted":
            with self.know.lock:
                self.know.interrupted += 1
        elif answer.get("error") != "insufficient_credit":
            self.unexpected("query", status, answer)
        return True

    def _query_until_definite(self, body: dict[str, Any], key: str) -> tuple[int, Any]:
        """Send with one key until the answer is not ``query_in_progress`` (the first attempt was cut off
        and its charge is reserved until reconciliation closes it)."""
        path = f"{API}/datasets/{self.run.dataset_id}/queries"
        deadline = time.monotonic() + 4 * QUERY_DEADLINE_S + 60
        while True:
            status, answer = self.send(f"sme:{self.sme}", "POST", path, body, key)
            if answer.get("error") != "query_in_progress":
                return status, answer
            if time.monotonic() > deadline:
                self.run.violation(f"query {key} still in progress after {4 * QUERY_DEADLINE_S + 60} s")
                return status, answer
            if self.run.stop.wait(0.5):
                raise Stop(f"query {key}: the run stopped")


# -- the reader ------------------------------------------------------------------------------------


def _ledger_kinds(text: str) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "sbx_ledger_balance_credits":
            for sample in family.samples:
                kinds[sample.labels["kind"]] = int(sample.value)
    return kinds


class Reader:
    """Checks conservation at every read it completes while the clients and the chaos run."""

    def __init__(
        self, run: Run, know: Knowledge, job_max_cost: int, issued: int, query_max_cost: int = 0
    ) -> None:
        self.run = run
        self.know = know
        self.job_max_cost = job_max_cost
        self.query_max_cost = query_max_cost
        self.issued = issued
        self.caller = Caller(run, random.Random(run.config.seed + 7))

    def loop(self) -> None:
        """Read until the run stops."""
        try:
            while not self.run.stop.is_set():
                checked = self.read_total()
                for sme in self.know.books:
                    self.read_sme(sme)
                self.run.count("reads", int(checked))
                time.sleep(0.2)
        except Stop:
            pass
        finally:
            self.caller.close()

    def read_total(self) -> bool:
        """One snapshot of every account kind: they sum to zero, none is negative but the programme.

        False when the scrape had no ledger figures (the database did not answer it)."""
        response = self.caller.call(self.run.tokens["operator"], "GET", "/metrics")
        kinds = _ledger_kinds(response.text)
        if not kinds:
            return False
        if sum(kinds.values()) != 0:
            self.run.violation(f"ledger total is {sum(kinds.values())}, not 0: {kinds}")
        negative = {k: v for k, v in kinds.items() if v < 0 and k not in ("programme", "copay")}
        if negative or kinds.get("programme", 0) > 0 or -kinds.get("programme", 0) > self.issued:
            self.run.violation(f"impossible account totals: {kinds} (issued {self.issued})")
        return True

    def read_sme(self, sme: str) -> None:
        """One SME's balance snapshot against what was acknowledged before and attempted after it."""
        with self.know.lock:
            before = self.know.books[sme]
            low_redeem, low_settle, jtis = before.redeem_acked, before.settle_acked, set(before.acked_jtis)
        response = self.caller.call(
            self.run.tokens["operator"], "GET", f"{API}/balance", params={"org_id": sme}
        )
        if response.status_code != 200:
            self.run.violation(f"balance of {sme}: {response.status_code} {response.text[:200]}")
            return
        view = response.json()
        with self.know.lock:
            after = self.know.books[sme]
            high_redeem = after.redeem_attempted
            high_spend = (
                after.settle_attempted
                + after.jobs_attempted * self.job_max_cost
                + after.queries_attempted * self.query_max_cost
            )
        redeemed = sum(g["amount"] for g in view["grants"])
        available, held = view["available"], view["held"]
        spent = redeemed - available - held
        seen = {g["voucher_jti"] for g in view["grants"]}
        problems = []
        if available < 0 or held < 0 or view["copay_used"] != 0:
            problems.append("negative available/held or co-payment used")
        if not low_redeem <= redeemed <= high_redeem or not jtis <= seen:
            problems.append(
                f"redeemed {redeemed} outside [{low_redeem}, {high_redeem}] or acked grant missing"
            )
        if not low_settle <= spent <= high_spend:
            problems.append(f"spent {spent} outside [{low_settle}, {high_spend}]")
        if problems:
            self.run.violation(
                f"SME {sme}: {'; '.join(problems)} (available {available}, held {held}, redeemed {redeemed})"
            )


# -- chaos -----------------------------------------------------------------------------------------


def chaos(run: Run, rng: random.Random) -> None:
    """SIGKILL a random broker at a random moment, restart it, repeat until the run stops.

    The moments are drawn in operations (a seeded number of them since the last kill, then a seeded
    sub-second jitter) so a slow machine gets as many kills per operation as a fast one."""
    low, high = run.config.kill_every_ops
    while True:
        broker = rng.choice(run.brokers)
        due = run.report.ops + rng.randint(low, high)
        jitter = rng.uniform(0.0, 0.5)
        while run.report.ops < due and not run.stop.wait(0.05):
            pass
        broker.wait_warm(run.stop)  # a kill measures recovery, not the seconds Python takes to import
        if run.stop.wait(jitter):
            return
        at = time.monotonic() - run.started
        broker.kill()
        run.count("kills")
        with run.lock:
            run.report.kill_times.append((round(at, 2), broker.name))
        try:
            broker.start()
        except RuntimeError as exc:
            run.violation(f"restart failed: {exc}")
            run.stop.set()
        if run.config.progress is not None:
            down = time.monotonic() - run.started - at
            run.config.progress(
                f"t={at:.1f}s SIGKILL {broker.name} (kill {run.report.kills}), back in {down:.1f}s"
            )


# -- set-up ----------------------------------------------------------------------------------------


def setup_world(config: BankConfig, url: str, operator: str) -> tuple[dict[str, str], dict[str, list[Any]]]:
    """Create an issuer and the SMEs (no co-payment), issue every voucher up front; return tokens, vouchers."""
    tokens = {"operator": operator}
    vouchers: dict[str, list[Any]] = {}
    with httpx.Client(base_url=url, timeout=60) as http:

        def post(token: str, path: str, body: dict[str, Any] | None = None) -> Any:
            response = http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
            if response.status_code not in (200, 201):
                raise RuntimeError(f"set-up {path}: {response.status_code} {response.text}")
            return response.json()

        issuer = post(
            operator,
            f"{API}/orgs",
            {"name": "bank-issuer", "role": "issuer", "year_budget": 10**13, "sme_cap": 10**12},
        )
        tokens["issuer"] = post(operator, f"{API}/orgs/{issuer['id']}/tokens", {})["token"]
        post(tokens["issuer"], f"{API}/issuer/keys")
        now = int(time.time())
        for i in range(config.smes):
            sme = post(operator, f"{API}/orgs", {"name": f"bank-sme-{i}", "role": "sme", "copay_limit": 0})
            tokens[f"sme:{sme['id']}"] = post(operator, f"{API}/orgs/{sme['id']}/tokens", {})["token"]
            vouchers[sme["id"]] = [
                post(
                    tokens["issuer"],
                    f"{API}/vouchers",
                    {
                        "sme_org": sme["id"],
                        "credits": config.voucher_credits,
                        "coverage_bps": 10_000,
                        "resources": ["cpu", "memory"],
                        "valid_until_s": now + DAY_S,
                        "credit_expires_s": now + 30 * DAY_S,
                    },
                )
                for _ in range(config.vouchers_per_sme)
            ]
        shape = {k: v for k, v in JOB_BODY.items() if k != "entrypoint"}
        first_sme = tokens[f"sme:{next(iter(vouchers))}"]
        quote = post(first_sme, f"{API}/jobs/quote", shape)
        tokens["query_max_cost"] = str(int(post(first_sme, f"{API}/jobs/quote", QUERY_SHAPE)["max_cost"]))
        tokens["dataset_id"] = _dataset_with_grants(post, operator, tokens, list(vouchers))
    for batch in vouchers.values():
        for voucher in batch:
            voucher["credits"] = config.voucher_credits
    tokens["job_max_cost"] = str(int(quote["max_cost"]))
    return tokens, vouchers


def _dataset_with_grants(
    post: Callable[..., Any], operator: str, tokens: dict[str, str], smes: list[str]
) -> str:
    """A custodian registers a small household table; every SME is granted ε for DP queries on it."""
    custodian = post(operator, f"{API}/orgs", {"name": "bank-custodian", "role": "custodian"})
    tokens["custodian"] = post(operator, f"{API}/orgs/{custodian['id']}/tokens", {})["token"]
    rows = "\n".join(
        f"h{i % 300},{['n', 's', 'e', 'w'][i % 4]},{(i * 37) % 2000}" for i in range(DATASET_ROWS)
    )
    policy = {
        "privacy_unit": "household_id",
        "max_rows_per_unit": 2,
        "columns": [
            {"name": "household_id", "kind": "unit"},
            {"name": "district", "kind": "categorical", "categories": ["n", "s", "e", "w"]},
            {"name": "kwh", "kind": "numeric", "lo": "0", "hi": "2000", "decimals": 0},
        ],
        "total_budget": {"epsilon_micro": 10**12, "delta_e12": 0},
        "sme_cap": {"epsilon_micro": 10**11, "delta_e12": 0},
    }
    content = base64.b64encode(f"household_id,district,kwh\n{rows}\n".encode()).decode()
    dataset = post(
        tokens["custodian"],
        f"{API}/datasets",
        {"name": "bank-energy", "format": "csv", "policy": policy, "content_b64": content},
    )
    for sme in smes:
        ask = {"purpose": "bank workload", "epsilon_micro": 10**10}
        request = post(tokens[f"sme:{sme}"], f"{API}/datasets/{dataset['id']}/access-requests", ask)
        post(tokens["custodian"], f"{API}/access-requests/{request['id']}/approve", {"valid_for_s": DAY_S})
    return str(dataset["id"])


# -- the run ---------------------------------------------------------------------------------------


def run_bank(config: BankConfig) -> Report:
    """Run the whole workload under chaos and check everything; the report lists every violation."""
    config.work_dir.mkdir(parents=True, exist_ok=True)
    say = config.progress or (lambda _text: None)
    say(f"bank workload: seed={config.seed} replicas={config.replicas} db={config.database_url or 'sqlite'}")
    begin = time.monotonic()
    with running_brokers(config) as (brokers, operator):
        tokens, vouchers = setup_world(config, brokers[0].url, operator)
        say(f"brokers up and world set up in {time.monotonic() - begin:.1f}s")
        job_max_cost = int(tokens.pop("job_max_cost"))
        query_max_cost = int(tokens.pop("query_max_cost"))
        run = Run(config, brokers, tokens)
        know = Knowledge(books={sme: SmeBook() for sme in vouchers})
        clients = _clients(run, know, vouchers)
        issued = config.voucher_credits * config.vouchers_per_sme * config.smes
        reader = Reader(run, know, job_max_cost, issued, query_max_cost)
        threads = [threading.Thread(target=c.loop, name=c.name) for c in clients]
        threads.append(threading.Thread(target=reader.loop, name="reader"))
        chaos_thread = threading.Thread(target=chaos, args=(run, random.Random(config.seed)), name="chaos")
        for thread in [*threads, chaos_thread]:
            thread.start()
        try:
            _wait_until_done(run, say)
        finally:
            run.stop.set()
            chaos_thread.join(timeout=120)
            for thread in threads:
                thread.join(timeout=180)
        run.report.seconds = time.monotonic() - run.started
        say(f"clients stopped after {run.report.seconds:.1f}s: {run.report.line()}")
        _final_http_checks(run, know)
        _final_database_checks(run, know, list(vouchers))
        say(f"final checks done at {time.monotonic() - begin:.1f}s")
    say(f"brokers stopped at {time.monotonic() - begin:.1f}s")
    return run.report


def _clients(run: Run, know: Knowledge, vouchers: dict[str, list[Any]]) -> list[Client]:
    clients = []
    per = run.config.clients_per_sme
    for s, (sme, batch) in enumerate(vouchers.items()):
        for c in range(per):
            name = f"c{s}.{c}"
            mine = batch[c::per]
            clients.append(Client(run, know, sme, name, mine, run.config.seed * 1000 + s * 10 + c))
    return clients


def _wait_until_done(run: Run, say: Callable[[str], None]) -> None:
    config = run.config
    last = time.monotonic()
    while True:
        time.sleep(0.2)
        elapsed = time.monotonic() - run.started
        report = run.report
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            say(f"t={elapsed:.0f}s ops={report.ops} kills={report.kills} reads={report.reads}")
        enough = report.ops >= config.min_ops and report.kills >= config.min_kills
        if (enough and elapsed >= config.min_seconds) or elapsed >= config.max_seconds:
            return


def _wait_for_jobs(caller: Caller, operator: str, smes: list[str]) -> list[dict[str, Any]]:
    """Each SME's latest jobs once all are settled, or after 30 s (the database checks see every job)."""
    deadline = time.monotonic() + 30
    while True:
        jobs = [
            job
            for sme in smes
            for job in caller.call(
                operator, "GET", f"{API}/jobs", params={"org_id": sme, "limit": 1000}, patient=True
            ).json()
        ]
        if all(j["settled_ms"] is not None for j in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.3)


def _final_http_checks(run: Run, know: Knowledge) -> None:
    """Wait for jobs to settle, replay acknowledged answers with their keys, take an audit checkpoint."""
    caller = Caller(run, random.Random(run.config.seed + 11))
    try:
        operator = run.tokens["operator"]
        jobs = _wait_for_jobs(caller, operator, list(know.books))
        run.report.unsettled_jobs = sum(1 for j in jobs if j["settled_ms"] is None)
        for job in jobs:
            if job["settled_ms"] is not None and job["state"] not in TERMINAL_JOBS:
                run.violation(f"job {job['id']} settled in state {job['state']}")
            if job["settled_ms"] is not None and not 0 <= job["cost"] <= job["max_cost"]:
                run.violation(f"job {job['id']} cost {job['cost']} outside [0, {job['max_cost']}]")
        rng = random.Random(run.config.seed + 13)
        sample = rng.sample(know.acks, min(run.config.replay_sample, len(know.acks)))
        for ack in sample:
            again = caller.call(ack.token, ack.method, ack.path, body=ack.body, key=ack.key, patient=True)
            run.report.replayed += 1
            if again.status_code != ack.status or again.json() != ack.answer:
                run.violation(
                    f"replay of key {ack.key} on {ack.path}: {again.status_code} {again.text[:300]}"
                    f" != first answer {ack.status} {json.dumps(ack.answer)[:300]}"
                )
        checkpoint = caller.call(operator, "POST", f"{API}/audit/checkpoint", patient=True)
        if checkpoint.status_code not in (200, 201):
            run.violation(f"audit checkpoint: {checkpoint.status_code} {checkpoint.text[:300]}")
    finally:
        caller.close()


def _final_database_checks(run: Run, know: Knowledge, smes: list[str]) -> None:
    """A container over the same database: invariants, balances, holds, grants, jobs, audit chain."""
    first = run.brokers[0].state_dir
    settings = Settings(
        state_dir=first,
        database_url=run.config.database_url,
        compute="fake",
        background_loops=False,
        query_deadline_s=QUERY_DEADLINE_S,
    )
    container = build_container(settings, group_commit=False)
    try:
        services = build_services(container)
        _reconcile_after_deadline(services)
        for problem in privacy_problems(container.db, know, now_ms=container.clock.now_ms()):
            run.violation(problem)
        operator = services.orgs.authenticate(run.tokens["operator"])
        assert operator is not None
        for problem in report_problems(services, operator):
            run.violation(problem)
        for problem in services.ledger.invariants():
            run.violation(f"ledger invariant: {problem}")
        services.audit.checkpoint(None)
        verdict = services.audit.verify(None)
        if not verdict["ok"]:
            run.violation(f"audit chain does not verify: {verdict}")
        for problem in container.db.read(lambda conn: table_problems(conn, know, smes)):
            run.violation(problem)
        for problem in roll_up_problems(container.db):
            run.violation(problem)
    finally:
        container.close()


def _reconcile_after_deadline(services: Services) -> None:
    """Wait until every reserved query charge is past its deadline, then run the reconciliation the brokers'
    loops run every 30 s (and on start), so the end state is the one a running broker converges to."""
    db = services.container.db
    newest = db.read(
        lambda conn: conn.execute(
            select(func.max(dt.privacy_charges.c.created_ms)).where(dt.privacy_charges.c.status == "reserved")
        ).scalar()
    )
    if newest is not None:
        wait_s = (int(newest) + QUERY_DEADLINE_S * 1000 - services.container.clock.now_ms()) / 1000 + 0.5
        time.sleep(max(0.0, wait_s))
    while services.datasets.reconcile_interrupted():
        pass


def privacy_problems(db: Database, know: Knowledge, *, now_ms: int) -> list[str]:
    """The privacy end state (issue 14): no charge left ``reserved``; no hold ``HELD`` past its deadline or for
    a closed query; every acknowledged query charged once, as acknowledged; the rest interrupted (or, at most
    one per query abandoned at the stop, answered unseen); ε spent = the sum of the charges, per dataset."""
    problems: list[str] = []

    def read(conn: Connection) -> None:
        charges = {
            r.id: r
            for r in conn.execute(select(dt.privacy_charges).where(dt.privacy_charges.c.kind == "query"))
        }
        problems.extend(
            f"charge {c.id} is still reserved" for c in charges.values() if c.status == "reserved"
        )
        for query_id, (sme, eps) in know.queries.items():
            row = charges.get(query_id)
            if row is None or row.status != "answered" or row.sme_org != sme or int(row.epsilon_micro) != eps:
                problems.append(f"acknowledged query {query_id} ({sme}, {eps}) is stored as {row}")
        unseen = [c for c in charges.values() if c.id not in know.queries and c.status == "answered"]
        if len(unseen) > know.abandoned:
            problems.append(
                f"{len(unseen)} answered charges were never acknowledged ({know.abandoned} abandoned)"
            )
        interrupted = sum(1 for c in charges.values() if c.status == "interrupted")
        if interrupted < know.interrupted:
            problems.append(f"{know.interrupted} queries were told interrupted but {interrupted} charges are")
        for ds in conn.execute(select(dt.datasets.c.id, dt.datasets.c.spent_epsilon_micro)):
            total = sum(int(c.epsilon_micro) for c in charges.values() if c.dataset_id == ds.id)
            if int(ds.spent_epsilon_micro) != total:
                problems.append(
                    f"dataset {ds.id} spent {ds.spent_epsilon_micro} micro-ε but its charges sum to {total}"
                )
        held = conn.execute(
            select(t.holds.c.id, t.holds.c.job_id, t.holds.c.expires_ms).where(t.holds.c.state == "HELD")
        ).all()
        closed = {c.id for c in charges.values() if c.status != "reserved"}
        problems.extend(f"hold {h.id} is HELD past its deadline" for h in held if h.expires_ms <= now_ms)
        problems.extend(
            f"hold {h.id} of closed query {h.job_id} is still HELD" for h in held if h.job_id in closed
        )

    db.read(read)
    return problems


LEDGER_BY_SME = text(  # per SME: settle legs on programmes' spent and its copaid account, in [:s, :e)
    """
    SELECT h.org_id AS org_id,
           SUM(CASE WHEN a.kind = 'spent' THEN e.amount ELSE 0 END) AS voucher,
           SUM(CASE WHEN a.kind = 'copaid' THEN e.amount ELSE 0 END) AS copay
    FROM entries e JOIN accounts a ON a.id = e.account_id JOIN holds h ON h.id = e.hold_id
    WHERE e.kind = 'settle' AND e.created_ms >= :s AND e.created_ms < :e
    GROUP BY h.org_id
    """
)


def report_problems(services: Services, operator: Principal) -> list[str]:
    """The subsidy report of this month against the settle entries of its period, per SME and in total."""
    period = time.strftime("%Y-%m", time.gmtime())
    report = services.reports.subsidy(operator, period=period)["report"]
    start, end = report["period"]["start_ms"], report["period"]["end_ms"]
    rows = services.container.db.read(lambda conn: conn.execute(LEDGER_BY_SME, {"s": start, "e": end}).all())
    truth = {r.org_id: (int(r.voucher), int(r.copay)) for r in rows}
    shown = {r["org_id"]: (r["voucher_share"], r["copay"], r["cost"]) for r in report["rows"]}
    problems = []
    for org, (voucher, copay) in truth.items():
        got = shown.get(org, (0, 0, 0))
        if got != (voucher, copay, voucher + copay):
            problems.append(f"report row of {org} (voucher, copay, cost) = {got}, ledger {(voucher, copay)}")
    totals = report["totals"]
    expected = (sum(v for v, _ in truth.values()), sum(c for _, c in truth.values()))
    if (totals["voucher_share"], totals["copay"]) != expected:
        problems.append(f"report totals {totals['voucher_share']}, {totals['copay']} != ledger {expected}")
    return problems


def roll_up_problems(db: Database) -> list[str]:
    """The subsidy roll-up settlements kept (each in its settlement's transaction, crashes or not) against the
    one rebuilt from the ledger (rolled back: the kept roll-up is left as it was)."""
    differ = db.write(subsidy.drift)
    if not differ:
        return []
    return [f"the subsidy roll-up differs from the ledger in {len(differ)} rows, e.g. {differ[:10]}"]


def table_problems(conn: Connection, know: Knowledge, smes: list[str]) -> list[str]:
    """The end state against the tables and what clients were told: negative accounts, holds closed other
    than once or unlike their acknowledgement, grants per voucher, jobs settled more than once."""
    problems: list[str] = []
    negative = conn.execute(
        select(t.accounts.c.id, t.accounts.c.kind, t.accounts.c.balance).where(
            t.accounts.c.kind.not_in(("programme", "copay")), t.accounts.c.balance < 0
        )
    ).all()
    problems.extend(f"account {r.id} ({r.kind}) is negative: {r.balance}" for r in negative)
    problems.extend(_hold_problems(conn, know))
    problems.extend(_grant_problems(conn, know, smes))
    problems.extend(_job_problems(conn, know))
    return problems


def _hold_problems(conn: Connection, know: Knowledge) -> list[str]:
    problems: list[str] = []
    query = (
        select(t.entries.c.hold_id, func.count(func.distinct(t.entries.c.txn_id)).label("txns"))
        .where(t.entries.c.kind.in_(("settle", "release", "expire_hold")), t.entries.c.hold_id.is_not(None))
        .group_by(t.entries.c.hold_id)
    )
    closes = {str(r.hold_id): int(r.txns) for r in conn.execute(query)}
    holds = {r.id: r for r in conn.execute(select(t.holds)).all()}
    for hold in holds.values():
        txns = int(closes.get(hold.id, 0))
        if hold.state == "HELD":
            if txns != 0 or hold.expires_ms <= hold.created_ms:
                problems.append(f"hold {hold.id} is HELD with {txns} closings, expires {hold.expires_ms}")
        elif txns != 1:
            problems.append(f"hold {hold.id} ({hold.state}) was closed in {txns} transactions")
    for hold_id, (_sme, amount) in know.holds.items():
        if hold_id not in holds or holds[hold_id].amount != amount:
            problems.append(f"acknowledged hold {hold_id} of {amount} is missing or changed")
    for hold_id, (state, settled) in know.closed.items():
        row = holds.get(hold_id)
        if row is None or row.state != state or row.settled != settled:
            problems.append(f"hold {hold_id} acknowledged {state} {settled}, stored {row}")
    return problems


def _grant_problems(conn: Connection, know: Knowledge, smes: list[str]) -> list[str]:
    rows = conn.execute(select(t.grants.c.voucher_jti, t.grants.c.id, t.grants.c.org_id)).all()
    per_jti = Counter(r.voucher_jti for r in rows)
    problems = [f"voucher {jti} made {n} grants" for jti, n in per_jti.items() if n != 1]
    by_jti = {r.voucher_jti: r for r in rows}
    for jti, grant_id in know.grants.items():
        row = by_jti.get(jti)
        if row is None or row.id != grant_id:
            problems.append(f"voucher {jti} acknowledged as grant {grant_id}, stored {row}")
    foreign = [r for r in rows if r.org_id not in smes]
    problems.extend(f"grant {r.id} belongs to an unknown organisation {r.org_id}" for r in foreign)
    return problems


def _job_problems(conn: Connection, know: Knowledge) -> list[str]:
    problems: list[str] = []
    settles = Counter(
        r.object_id
        for r in conn.execute(
            select(t.audit_entries.c.object_id).where(t.audit_entries.c.action == "job.settle")
        )
    )
    problems.extend(f"job {job} settled {n} times" for job, n in settles.items() if n > 1)
    jobs = {r.id: r for r in conn.execute(select(t.jobs.c.id, t.jobs.c.hold_id, t.jobs.c.settled_ms))}
    for job_id in know.jobs:
        if job_id not in jobs:
            problems.append(f"acknowledged job {job_id} is not stored")
        elif jobs[job_id].settled_ms is not None and settles[job_id] != 1:
            problems.append(f"job {job_id} is settled but its settlement was audited {settles[job_id]} times")
    return problems


# -- the CI runs' shared verdict -------------------------------------------------------------------

MIN_OPS, MIN_KILLS = 10_000, 5


def seed_from_env() -> int:
    """``SBX_BANK_SEED`` to replay a run, else a fresh random seed."""
    return int(os.environ.get("SBX_BANK_SEED") or random.SystemRandom().randrange(1, 10**6))


def check_report(report: Report) -> None:
    """Print the run's summary and fail on any violation, too few operations or too few kills."""
    print(
        f"bank: {report.line()}\nkills at (s, broker): {report.kill_times}\nanswers: {dict(report.answers)}"
    )
    shown = "\n  ".join(report.violations[:30])
    assert report.violations == [], (
        f"seed {report.seed}: {len(report.violations)} violations (SBX_BANK_SEED={report.seed} replays the"
        f" schedule):\n  {shown}"
    )
    assert report.ops >= MIN_OPS, (
        f"only {report.ops} operations in {report.seconds:.0f} s (seed {report.seed})"
    )
    assert report.kills >= MIN_KILLS, f"only {report.kills} kills (seed {report.seed})"
    assert report.reads > 0 and report.replayed > 0
