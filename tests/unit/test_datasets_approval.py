from dataclasses import replace

import pytest

from common.clock import FakeClock
from common.errors import Conflict, InvalidInput
from datasets.approval import (
    AccessDenied,
    AccessRequest,
    AccessStatus,
    ReleaseKind,
    approve,
    check_transition,
    check_use,
    expire_if_due,
    new_request,
    refuse,
    revoke,
)
from datasets.policy import ColumnSpec, DatasetPolicy

POLICY = DatasetPolicy("u", 1, (ColumnSpec.unit("u"),), 10_000_000, 2_000_000, 1000, 100)
BOTH = frozenset({ReleaseKind.QUERY, ReleaseKind.TRAINING})
DAY = 86_400_000


def request(clock: FakeClock, eps: int = 3_000_000) -> AccessRequest:
    return new_request(
        request_id="r1",
        dataset_hash="h1",
        sme_org="sme-a",
        purpose="traffic model",
        epsilon_micro=eps,
        delta_e12=50,
        kinds=BOTH,
        clock=clock,
    )


def test_transitions_table() -> None:
    legal = {
        (AccessStatus.PENDING, AccessStatus.APPROVED),
        (AccessStatus.PENDING, AccessStatus.REFUSED),
        (AccessStatus.APPROVED, AccessStatus.REVOKED),
        (AccessStatus.APPROVED, AccessStatus.EXPIRED),
    }
    for a in AccessStatus:
        for b in AccessStatus:
            if (a, b) in legal:
                check_transition(a, b)
            else:
                with pytest.raises(Conflict):
                    check_transition(a, b)
    assert {s for s in AccessStatus if s.is_terminal()} == {
        AccessStatus.REFUSED,
        AccessStatus.REVOKED,
        AccessStatus.EXPIRED,
    }


def test_approval_binds_version_sme_cap_kinds_expiry() -> None:
    clock = FakeClock()
    req = approve(
        request(clock),
        POLICY,
        expires_ms=clock.now_ms() + DAY,
        clock=clock,
        epsilon_cap_micro=1_000_000,
        kinds=frozenset({ReleaseKind.QUERY}),
    )
    assert req.status is AccessStatus.APPROVED and req.grant is not None
    assert (req.grant.dataset_hash, req.grant.sme_org, req.grant.epsilon_cap_micro) == (
        "h1",
        "sme-a",
        1_000_000,
    )
    assert (
        check_use(req, dataset_hash="h1", sme_org="sme-a", kind=ReleaseKind.QUERY, clock=clock) == req.grant
    )
    for kwargs in (
        {"dataset_hash": "h2", "sme_org": "sme-a", "kind": ReleaseKind.QUERY},
        {"dataset_hash": "h1", "sme_org": "sme-b", "kind": ReleaseKind.QUERY},
        {"dataset_hash": "h1", "sme_org": "sme-a", "kind": ReleaseKind.TRAINING},
    ):
        with pytest.raises(AccessDenied):
            check_use(req, clock=clock, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        approve(req, POLICY, expires_ms=clock.now_ms() + DAY, clock=clock)


def test_cap_never_exceeds_ask_or_dataset_cap() -> None:
    clock = FakeClock()
    expires = clock.now_ms() + DAY
    with pytest.raises(InvalidInput, match="per-SME cap"):
        approve(request(clock), POLICY, expires_ms=expires, clock=clock)  # asked 3 > cap 2
    with pytest.raises(InvalidInput, match="more epsilon"):
        approve(
            request(clock, eps=1_000_000),
            POLICY,
            expires_ms=expires,
            clock=clock,
            epsilon_cap_micro=1_500_000,
        )
    with pytest.raises(InvalidInput, match="subset"):
        approve(request(clock, 1_000_000), POLICY, expires_ms=expires, clock=clock, kinds=frozenset())
    with pytest.raises(InvalidInput, match="future"):
        approve(request(clock, 1_000_000), POLICY, expires_ms=clock.now_ms(), clock=clock)
    ok = approve(request(clock, 1_000_000), POLICY, expires_ms=expires, clock=clock)
    assert ok.grant is not None and ok.grant.epsilon_cap_micro == 1_000_000 and ok.grant.kinds == BOTH


def test_refuse_revoke_expire() -> None:
    clock = FakeClock()
    refused = refuse(request(clock), reason="no purpose fit", clock=clock)
    assert refused.status is AccessStatus.REFUSED
    with pytest.raises(Conflict):
        revoke(refused, reason="x", clock=clock)
    approved = approve(request(clock, 1_000_000), POLICY, expires_ms=clock.now_ms() + DAY, clock=clock)
    assert revoke(approved, reason="breach", clock=clock).status is AccessStatus.REVOKED
    clock.advance(DAY)
    expired = expire_if_due(approved, clock=clock)
    assert expired.status is AccessStatus.EXPIRED
    with pytest.raises(AccessDenied, match="expired"):
        check_use(approved, dataset_hash="h1", sme_org="sme-a", kind=ReleaseKind.QUERY, clock=clock)
    with pytest.raises(Conflict):
        revoke(expired, reason="late", clock=clock)
    assert expire_if_due(replace(refused), clock=clock) == refused


def test_requests_are_validated() -> None:
    clock = FakeClock()
    for kwargs in ({"purpose": " "}, {"epsilon_micro": 0}, {"kinds": frozenset()}, {"delta_e12": -1}):
        args: dict[str, object] = {
            "request_id": "r",
            "dataset_hash": "h",
            "sme_org": "s",
            "purpose": "p",
            "epsilon_micro": 1,
            "kinds": BOTH,
            "clock": clock,
        }
        args.update(kwargs)
        with pytest.raises(InvalidInput):
            new_request(**args)  # type: ignore[arg-type]
