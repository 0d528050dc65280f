from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.resources import Resources
from quotas.admission import (
    Decision,
    DominantShare,
    Pending,
    QueuedJob,
    Snapshot,
    TenantState,
    Verdict,
    WaitReason,
    admitted,
    check_submittable,
    decide,
    dominant_share,
    explain,
    order_queue,
)
from quotas.quota import DEFAULT_QUOTA, Quota, QuotaExceeded

TOTAL = Resources(milli_cpu=16_000, gpus=2, memory_mib=65_536)
BIG_QUOTA = Quota(TOTAL, max_running_jobs=1_000, max_queued_jobs=1_000, copay_limit=10**9)
RICH = TenantState(BIG_QUOTA, Resources(), 0, available_credit=10**9, copay_headroom=10**9)
CPU1 = Resources(milli_cpu=1_000, memory_mib=1_024)


def job(
    job_id: str,
    org: str,
    res: Resources = CPU1,
    *,
    priority: int = 0,
    at: int = 0,
    covered: int = 0,
    copay: int = 0,
) -> QueuedJob:
    return QueuedJob(job_id, org, res, priority, at, covered, copay)


def snapshot(
    tenants: dict[str, TenantState], capacity: Resources = TOTAL, total: Resources = TOTAL
) -> Snapshot:
    return Snapshot(capacity, tenants, total)


def admitted_ids(decisions: list[Decision]) -> list[str]:
    return [j.job_id for j in admitted(decisions)]


# --- dominant share -------------------------------------------------------------------------------------


def test_dominant_share_is_the_largest_exact_share() -> None:
    total = Resources(milli_cpu=9_000, gpus=4, memory_mib=18_000)
    assert dominant_share(Resources(3_000, 0, 1_000), total) == Fraction(1, 3)
    assert dominant_share(Resources(1_000, 2, 1_000), total) == Fraction(1, 2)
    assert dominant_share(Resources(), total) == 0


def test_dominant_share_ignores_resources_the_cluster_lacks() -> None:
    assert dominant_share(Resources(milli_cpu=500, gpus=3), Resources(milli_cpu=1_000)) == Fraction(1, 2)
    assert dominant_share(Resources(milli_cpu=5), Resources()) == 0


@given(
    st.builds(Resources, st.integers(1, 10**6), st.integers(0, 64), st.integers(1, 10**7)),
    st.lists(
        st.builds(Resources, st.integers(0, 10**6), st.integers(0, 64), st.integers(0, 10**7)), min_size=2
    ),
)
def test_integer_share_keys_order_exactly_like_fractions(total: Resources, uses: list[Resources]) -> None:
    drf = DominantShare(total)

    def frac(u: Resources) -> Fraction:
        shares = [Fraction(u.milli_cpu, total.milli_cpu), Fraction(u.memory_mib, total.memory_mib)]
        if total.gpus:
            shares.append(Fraction(u.gpus, total.gpus))
        return max(shares)

    for u in uses:
        assert drf.share(u) == frac(u)
    by_key = sorted(uses, key=lambda u: drf.key(u.milli_cpu, u.gpus, u.memory_mib))
    assert [frac(u) for u in by_key] == sorted(frac(u) for u in uses)


# --- ordering -------------------------------------------------------------------------------------------


def test_two_smes_with_equal_demand_alternate() -> None:
    queue = [job(f"a{i}", "a", at=i) for i in range(4)] + [job(f"b{i}", "b", at=10 + i) for i in range(4)]
    expected = ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    snap = snapshot({"a": RICH, "b": RICH})
    assert [j.job_id for j in order_queue(queue, snap)] == expected
    assert admitted_ids(decide(snap, queue)) == expected


def test_lowest_dominant_share_goes_first() -> None:
    busy = TenantState(BIG_QUOTA, Resources(milli_cpu=8_000), 4, 10**9, 10**9)
    queue = [job("busy1", "busy", at=0), job("idle1", "idle", at=5), job("idle2", "idle", at=6)]
    order = [j.job_id for j in order_queue(queue, snapshot({"busy": busy, "idle": RICH}))]
    assert order == ["idle1", "idle2", "busy1"]


def test_a_gpu_heavy_sme_is_ranked_by_its_gpu_share() -> None:
    gpu_user = TenantState(BIG_QUOTA, Resources(milli_cpu=1_000, gpus=1), 1, 10**9, 10**9)  # share 1/2 (GPU)
    cpu_user = TenantState(BIG_QUOTA, Resources(milli_cpu=4_000), 4, 10**9, 10**9)  # share 1/4 (CPU)
    queue = [job("g", "gpu", at=0), job("c", "cpu", at=1)]
    assert [j.job_id for j in order_queue(queue, snapshot({"gpu": gpu_user, "cpu": cpu_user}))] == ["c", "g"]


def test_within_an_sme_priority_then_fifo_then_id() -> None:
    queue = [
        job("late-low", "a", priority=0, at=5),
        job("early-low", "a", priority=0, at=1),
        job("late-high", "a", priority=9, at=7),
        job("same-time-b", "a", priority=0, at=1),
    ]
    order = [j.job_id for j in order_queue(queue, snapshot({"a": RICH}))]
    assert order == ["late-high", "early-low", "same-time-b", "late-low"]


def test_unknown_sme_is_refused() -> None:
    with pytest.raises(InvalidInput, match="ghost"):
        decide(snapshot({}), [job("j", "ghost")])


def test_empty_queue_decides_nothing() -> None:
    assert decide(snapshot({"a": RICH}), []) == []
    assert order_queue([], snapshot({})) == []


# --- verdicts and reasons -------------------------------------------------------------------------------


def test_capacity_limits_admissions_and_the_rest_wait_for_capacity() -> None:
    queue = [job(f"j{i}", "a", at=i) for i in range(5)]
    decisions = decide(snapshot({"a": RICH}, capacity=Resources(3_000, 0, 8_192)), queue)
    assert admitted_ids(decisions) == ["j0", "j1", "j2"]
    assert [(d.job.job_id, d.reason) for d in decisions if not d.admitted] == [
        ("j3", WaitReason.CAPACITY),
        ("j4", WaitReason.CAPACITY),
    ]


def test_running_jobs_limit() -> None:
    quota = Quota(TOTAL, max_running_jobs=2, max_queued_jobs=10, copay_limit=0)
    state = TenantState(quota, CPU1, running_jobs=1, available_credit=0, copay_headroom=0)
    decisions = decide(snapshot({"a": state}), [job(f"j{i}", "a", at=i) for i in range(3)])
    assert [(d.verdict, d.reason) for d in decisions] == [
        (Verdict.ADMIT, None),
        (Verdict.WAIT, WaitReason.RUNNING_JOBS),
        (Verdict.WAIT, WaitReason.RUNNING_JOBS),
    ]


def test_resource_quota_and_backfill_of_a_smaller_job() -> None:
    quota = Quota(Resources(4_000, 0, 8_192), max_running_jobs=10, max_queued_jobs=10, copay_limit=0)
    state = TenantState(quota, Resources(2_000, 0, 2_048), 2, 0, 0)
    big = job("big", "a", Resources(3_000, 0, 1_024), priority=5)
    small = job("small", "a", Resources(1_000, 0, 1_024))
    decisions = decide(snapshot({"a": state}), [small, big])
    assert [(d.job.job_id, d.verdict, d.reason) for d in decisions] == [
        ("big", Verdict.WAIT, WaitReason.QUOTA),
        ("small", Verdict.ADMIT, None),
    ]


def test_credit_and_copay_headroom() -> None:
    state = TenantState(BIG_QUOTA, Resources(), 0, available_credit=100, copay_headroom=10)
    queue = [
        job("fits", "a", covered=60, copay=5, at=0),
        job("no-credit", "a", covered=50, copay=0, at=1),
        job("no-copay", "a", covered=0, copay=6, at=2),
        job("exact", "a", covered=40, copay=5, at=3),
    ]
    decisions = decide(snapshot({"a": state}), queue)
    assert [(d.job.job_id, d.reason) for d in decisions] == [
        ("fits", None),
        ("no-credit", WaitReason.CREDIT),
        ("no-copay", WaitReason.CREDIT),
        ("exact", None),
    ]


def test_a_blocked_sme_does_not_block_others() -> None:
    broke = TenantState(BIG_QUOTA, Resources(), 0, available_credit=0, copay_headroom=0)
    queue = [job("b1", "broke", covered=1, at=0), job("r1", "rich", covered=1, at=1)]
    decisions = decide(snapshot({"broke": broke, "rich": RICH}), queue)
    assert admitted_ids(decisions) == ["r1"]
    assert next(d for d in decisions if d.job.job_id == "b1").reason is WaitReason.CREDIT


def test_reason_order_running_jobs_before_quota_before_credit_before_capacity() -> None:
    quota = Quota(Resources(1_000, 0, 1_024), max_running_jobs=1, max_queued_jobs=5, copay_limit=0)
    full = TenantState(quota, Resources(), running_jobs=1, available_credit=0, copay_headroom=0)
    roomy = TenantState(quota, Resources(), running_jobs=0, available_credit=0, copay_headroom=0)
    no_capacity = Resources()
    too_big = job("x", "a", Resources(2_000, 0, 0), covered=1)
    assert decide(snapshot({"a": full}, no_capacity), [too_big])[0].reason is WaitReason.RUNNING_JOBS
    assert decide(snapshot({"a": roomy}, no_capacity), [too_big])[0].reason is WaitReason.QUOTA
    fits_quota = job("y", "a", Resources(1_000, 0, 0), covered=1)
    assert decide(snapshot({"a": roomy}, no_capacity), [fits_quota])[0].reason is WaitReason.CREDIT
    free = job("z", "a", Resources(1_000, 0, 0))
    assert decide(snapshot({"a": roomy}, no_capacity), [free])[0].reason is WaitReason.CAPACITY


# --- properties -----------------------------------------------------------------------------------------

ORGS = ["a", "b", "c", "d"]
# Coarse steps, so that exact fits (request == room) happen often.
small_res = st.builds(
    Resources,
    st.integers(0, 8).map(lambda k: k * 500),
    st.integers(0, 1),
    st.integers(0, 8).map(lambda k: k * 1_024),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Snapshot, list[QueuedJob]]:
    total = draw(
        st.builds(
            Resources,
            st.integers(2, 32).map(lambda k: k * 500),
            st.integers(0, 4),
            st.integers(1, 32).map(lambda k: k * 1_024),
        )
    )
    capacity = draw(
        st.builds(
            Resources,
            st.integers(0, total.milli_cpu // 500).map(lambda k: k * 500),
            st.integers(0, total.gpus),
            st.integers(0, total.memory_mib // 1_024).map(lambda k: k * 1_024),
        )
    )
    orgs = draw(st.lists(st.sampled_from(ORGS), min_size=1, max_size=4, unique=True))
    tenants = {}
    for org in orgs:
        quota = Quota(
            draw(small_res) + draw(small_res), draw(st.integers(0, 6)), 50, draw(st.integers(0, 100))
        )
        in_use = draw(small_res)
        tenants[org] = TenantState(
            quota,
            in_use,
            draw(st.integers(0, 3)),
            draw(st.integers(0, 200)),
            draw(st.integers(0, 100)),
            last_admitted_ms=draw(st.integers(0, 5)),
        )
    queue = draw(
        st.lists(
            st.builds(
                QueuedJob,
                job_id=st.text("xyz", min_size=1, max_size=4),
                org_id=st.sampled_from(orgs),
                resources=small_res,
                priority=st.integers(0, 2),
                submitted_ms=st.integers(0, 20),
                max_cost_covered=st.integers(0, 60),
                max_cost_copay=st.integers(0, 30),
            ),
            max_size=25,
            unique_by=lambda j: j.job_id,
        )
    )
    return Snapshot(capacity, tenants, total), queue


def _fits(snap: Snapshot, use: dict[str, list[int]], free: list[int], j: QueuedJob) -> WaitReason | None:
    """The reference check, written independently from the implementation."""
    t = snap.tenants[j.org_id]
    u = use[j.org_id]
    r = (j.resources.milli_cpu, j.resources.gpus, j.resources.memory_mib)
    q = t.quota.max_resources
    if u[3] >= t.quota.max_running_jobs:
        return WaitReason.RUNNING_JOBS
    if any(a + b > c for a, b, c in zip(u[:3], r, (q.milli_cpu, q.gpus, q.memory_mib), strict=True)):
        return WaitReason.QUOTA
    if j.max_cost_covered > u[4] or j.max_cost_copay > u[5]:
        return WaitReason.CREDIT
    if any(a > b for a, b in zip(r, free, strict=True)):
        return WaitReason.CAPACITY
    return None


def _reference_decide(snap: Snapshot, queue: list[QueuedJob]) -> list[tuple[str, WaitReason | None]]:
    """A slow, obviously-correct DRF pass: recompute every share with Fractions before each pick."""

    def order(j: QueuedJob) -> tuple[int, int, str]:
        return (-j.priority, j.submitted_ms, j.job_id)

    pending = {
        org: sorted((j for j in queue if j.org_id == org), key=order) for org in {j.org_id for j in queue}
    }
    use = {
        org: [
            t.in_use.milli_cpu,
            t.in_use.gpus,
            t.in_use.memory_mib,
            t.running_jobs,
            t.available_credit,
            t.copay_headroom,
        ]
        for org, t in snap.tenants.items()
    }
    free = [snap.capacity.milli_cpu, snap.capacity.gpus, snap.capacity.memory_mib]
    total = snap.cluster_total
    out: list[tuple[str, WaitReason | None]] = []

    # Ties: the SME served least recently goes first; an SME served in this pass was served after any
    # recorded admission, later in the pass means more recently.
    served = {org: (0, t.last_admitted_ms) for org, t in snap.tenants.items()}
    served_in_pass = 0

    def share(org: str) -> Fraction:
        u = use[org]
        parts = [
            Fraction(x, t)
            for x, t in zip(u[:3], (total.milli_cpu, total.gpus, total.memory_mib), strict=True)
            if t
        ]
        return max(parts, default=Fraction(0))

    while any(pending.values()):
        org = min(
            (o for o in pending if pending[o]),
            key=lambda o: (share(o), served[o], pending[o][0].submitted_ms, o),
        )
        while pending[org]:
            j = pending[org].pop(0)
            reason = _fits(snap, use, free, j)
            out.append((j.job_id, reason))
            if reason is None:
                r = (j.resources.milli_cpu, j.resources.gpus, j.resources.memory_mib)
                for i in range(3):
                    use[org][i] += r[i]
                    free[i] -= r[i]
                use[org][3] += 1
                use[org][4] -= j.max_cost_covered
                use[org][5] -= j.max_cost_copay
                served_in_pass += 1
                served[org] = (1, served_in_pass)
                break
    return out


@settings(max_examples=150)
@given(scenarios())
def test_decide_matches_the_reference_drf_pass(scenario: tuple[Snapshot, list[QueuedJob]]) -> None:
    snap, queue = scenario
    assert [(d.job.job_id, d.reason) for d in decide(snap, queue)] == _reference_decide(snap, queue)


@settings(max_examples=150)
@given(scenarios())
def test_decide_never_admits_beyond_capacity_quota_credit_or_running_jobs(
    scenario: tuple[Snapshot, list[QueuedJob]],
) -> None:
    snap, queue = scenario
    decisions = decide(snap, queue)
    assert Counter(d.job.job_id for d in decisions) == Counter(j.job_id for j in queue)
    assert all((d.verdict is Verdict.ADMIT) == (d.reason is None) for d in decisions)
    taken = Resources()
    for d in decisions:
        if d.admitted:
            taken = taken + d.job.resources
    assert taken.fits_in(snap.capacity)
    for org, state in snap.tenants.items():
        mine = [d.job for d in decisions if d.admitted and d.job.org_id == org]
        use = state.in_use
        for j in mine:
            use = use + j.resources
        assert use.fits_in(state.quota.max_resources) or not mine
        assert state.running_jobs + len(mine) <= max(state.quota.max_running_jobs, state.running_jobs)
        assert sum(j.max_cost_covered for j in mine) <= state.available_credit
        assert sum(j.max_cost_copay for j in mine) <= state.copay_headroom


@settings(max_examples=150)
@given(scenarios())
def test_every_waiting_job_really_does_not_fit_after_the_pass(
    scenario: tuple[Snapshot, list[QueuedJob]],
) -> None:
    """Maximality: backfill leaves no job behind that would still fit, and each reason is true at the end."""
    snap, queue = scenario
    decisions = decide(snap, queue)
    use = {
        org: [
            t.in_use.milli_cpu,
            t.in_use.gpus,
            t.in_use.memory_mib,
            t.running_jobs,
            t.available_credit,
            t.copay_headroom,
        ]
        for org, t in snap.tenants.items()
    }
    free = [snap.capacity.milli_cpu, snap.capacity.gpus, snap.capacity.memory_mib]
    for d in decisions:
        if d.admitted:
            r = d.job.resources
            for i, x in enumerate((r.milli_cpu, r.gpus, r.memory_mib)):
                use[d.job.org_id][i] += x
                free[i] -= x
            use[d.job.org_id][3] += 1
            use[d.job.org_id][4] -= d.job.max_cost_covered
            use[d.job.org_id][5] -= d.job.max_cost_copay
    for d in decisions:
        if not d.admitted:
            assert _fits(snap, use, free, d.job) is not None


@given(scenarios())
def test_within_an_sme_decisions_follow_priority_then_fifo(
    scenario: tuple[Snapshot, list[QueuedJob]],
) -> None:
    snap, queue = scenario
    for jobs in (order_queue(queue, snap), [d.job for d in decide(snap, queue)]):
        for org in snap.tenants:
            keys = [(-j.priority, j.submitted_ms, j.job_id) for j in jobs if j.org_id == org]
            assert keys == sorted(keys)


@given(
    st.integers(1, 6), st.integers(1, 8), st.sampled_from([CPU1, Resources(gpus=1), Resources(500, 0, 4_096)])
)
def test_equal_demand_smes_take_turns(n_orgs: int, per_org: int, res: Resources) -> None:
    orgs = [f"org{i}" for i in range(n_orgs)]
    queue = [
        job(f"{org}-{k}", org, res, at=k * n_orgs + i) for i, org in enumerate(orgs) for k in range(per_org)
    ]
    total = Resources(1_000 * n_orgs * per_org, n_orgs * per_org, 4_096 * n_orgs * per_org)
    roomy = TenantState(Quota(total, 100, 100, 0), Resources(), 0, 0, 0)
    snap = snapshot(dict.fromkeys(orgs, roomy), capacity=total, total=total)
    ordered = order_queue(queue, snap)
    assert [j.org_id for j in ordered] == orgs * per_org
    assert [j.job_id for j in admitted(decide(snap, queue))] == [j.job_id for j in ordered]


# --- submission -----------------------------------------------------------------------------------------


def test_check_submittable_accepts_a_job_within_the_quota() -> None:
    check_submittable(
        job("ok", "a", Resources(8_000, 1, 32_768), copay=100_000), DEFAULT_QUOTA, queued_count=99
    )


@pytest.mark.parametrize(
    ("candidate", "queued", "total", "words"),
    [
        (job("big", "a", Resources(8_001, 0, 0)), 0, None, "quota"),
        (job("gpu", "a", Resources(0, 2, 0)), 0, None, "quota"),
        (job("fat", "a", Resources(1_000, 1, 0)), 0, Resources(64_000, 0, 10**6), "whole cluster"),
        (job("copay", "a", copay=100_001), 0, None, "co-payment"),
        (job("full", "a"), 100, None, "queued"),
    ],
)
def test_check_submittable_rejects_jobs_that_can_never_run(
    candidate: QueuedJob, queued: int, total: Resources | None, words: str
) -> None:
    with pytest.raises(QuotaExceeded, match=words) as info:
        check_submittable(candidate, DEFAULT_QUOTA, queued, total)
    assert info.value.code == "quota_exceeded"


def test_check_submittable_rejects_empty_jobs_and_zero_running_quota() -> None:
    with pytest.raises(InvalidInput):
        check_submittable(job("none", "a", Resources()), DEFAULT_QUOTA, 0)
    frozen = Quota(TOTAL, max_running_jobs=0, max_queued_jobs=5, copay_limit=0)
    with pytest.raises(QuotaExceeded, match="no running jobs"):
        check_submittable(job("j", "a"), frozen, 0)


# --- pending reasons -----------------------------------------------------------------------------------


def _pending(snap: Snapshot, queue: list[QueuedJob]) -> dict[str, Pending]:
    return {p.job_id: p for p in explain(snap, decide(snap, queue))}


def test_each_limit_is_named_with_its_amounts() -> None:
    quota = Quota(Resources(2_000, 0, 4_096), max_running_jobs=1, max_queued_jobs=5, copay_limit=0)
    full = TenantState(quota, CPU1, running_jobs=1, available_credit=0, copay_headroom=0)
    roomy = TenantState(quota, CPU1, running_jobs=0, available_credit=50, copay_headroom=5)
    assert _pending(snapshot({"a": full}), [job("x", "a")])["x"].reason is WaitReason.RUNNING_JOBS
    big = _pending(snapshot({"a": roomy}), [job("x", "a", Resources(1_500, 0, 1_024))])["x"]
    assert (big.reason, big.facts) == (WaitReason.QUOTA, (0, 1_500, 1_000))
    assert big.detail() == "quota: needs 1.5 CPU, 1 CPU left of its SME's CPU quota (0.5 CPU short)"
    poor = _pending(snapshot({"a": roomy}), [job("x", "a", covered=60)])["x"]
    assert poor.reason is WaitReason.CREDIT and "needs 60 credits of voucher credit and 50" in poor.detail()
    copay = _pending(snapshot({"a": roomy}), [job("x", "a", covered=10, copay=6)])["x"]
    assert "6 credits of co-payment" in copay.detail() and "headroom left is 5" in copay.detail()
    tight = _pending(snapshot({"a": roomy}, capacity=Resources(500, 0, 4_096)), [job("x", "a")])["x"]
    assert (tight.reason, tight.facts, tight.behind) == (WaitReason.CAPACITY, (0, 1_000, 500), None)
    assert tight.detail() == "cluster: needs 1 CPU, 0.5 CPU left free in the cluster (0.5 CPU short)"


def test_a_job_that_lost_the_room_to_a_lower_share_waits_behind_it() -> None:
    queue = [job("a1", "a", at=0), job("b1", "b", at=1), job("a2", "a", at=2)]
    waits = _pending(snapshot({"a": RICH, "b": RICH}, capacity=Resources(2_000, 0, 8_192)), queue)
    assert list(waits) == ["a2"]
    assert waits["a2"].reason is WaitReason.FAIR_SHARE and waits["a2"].behind == "b"
    assert waits["a2"].position == 1 and "behind b" in waits["a2"].detail()


@settings(max_examples=150)
@given(scenarios())
def test_every_waiting_job_has_one_pending_reason_in_fair_order(
    scenario: tuple[Snapshot, list[QueuedJob]],
) -> None:
    snap, queue = scenario
    decisions = decide(snap, queue)
    pending = explain(snap, decisions)
    waiting = [d for d in decisions if not d.admitted]
    assert [p.job_id for p in pending] == [d.job.job_id for d in waiting]
    assert [p.position for p in pending] == list(range(1, len(waiting) + 1))
    for p, d in zip(pending, waiting, strict=True):
        if d.reason is WaitReason.CAPACITY:
            assert p.reason in (WaitReason.CAPACITY, WaitReason.FAIR_SHARE)
            assert (p.behind is not None) == (p.reason is WaitReason.FAIR_SHARE)
            assert p.behind != p.org_id
        else:
            assert p.reason is d.reason
        if p.reason in (WaitReason.QUOTA, WaitReason.CAPACITY, WaitReason.FAIR_SHARE):
            _, need, have = p.facts
            assert need > have  # the named resource really is short
        assert p.detail()
