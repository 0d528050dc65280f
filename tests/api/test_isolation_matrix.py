"""Tenant isolation, generated from the route table (issue 8, point 3), over real HTTP on SQLite.

Every route declares an ``x-sbx-policy``. SME A owns one object of every kind (``world_full``); every route
is called by every caller in :data:`CALLERS`, once with path (and query/body) ids filled with A's objects
and once with missing ids of the same shape. Per cell the test checks the status the policy implies (401
anonymous or expired, 403 a role the policy does not admit), that a caller who may not see A's object gets
exactly the answer a missing id gets (status, error code and detail once the id itself is masked), that no
answer to a caller other than A or the operator carries A's ids or values, and that no call of theirs
changed A's objects. A second part sends forbidden extra fields (``org_id``, ``owner``, ``balance``…) in
every JSON body and expects 422 ``invalid_request``.

The matrix runs once per module (one world, one server); each route is then a separate test item that
reports its own findings, so one bug does not hide the others.
"""

from __future__ import annotations

import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from broker.api.policy import KNOWN, POLICY_KEY
from broker.app import create_app
from broker.server import RunningServer
from tests import training_data as td
from tests.api.world_full import EXPIRED, UNUSED_USCC, FullWorld, b64, served_full_world, sqlite_services
from tests.integration.test_datasets_service import csv_bytes, energy_frame, energy_policy
from vouchers import generate_private_pem, public_jwk

# FastAPI's own documentation routes: plain Starlette routes without a policy.
FRAMEWORK_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# Routes kept out of the OpenAPI document on purpose (they still must declare a policy).
HIDDEN_ROUTES = {
    ("GET", "/metrics"),
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
    ("GET", "/ui/data.json"),
    ("GET", "/ui/report"),
    ("POST", "/ui/requests/{request_id}/{decision}"),
    ("POST", "/ui/tokens/{token_id}/revoke"),
    ("GET", "/ui/static/{name}"),
}
ANONYMOUS = "anonymous"
OPERATOR = "op2"
OWNER = "sme-a"
CALLERS = [ANONYMOUS, EXPIRED, OWNER, "sme-b", "custodian-b", "issuer-b", OPERATOR]
ROLE = {OWNER: "sme", "sme-b": "sme", "custodian-b": "custodian", "issuer-b": "issuer", OPERATOR: "operator"}
# Who may see each kind of object of the world (the catalogue of datasets is open to every SME).
ENTITLED: dict[str, set[str]] = {
    "org": {OPERATOR, OWNER},
    "key": {OPERATOR},
    "voucher": {OPERATOR, OWNER},
    "hold": {OPERATOR, OWNER},
    "job": {OPERATOR, OWNER},
    "training": {OPERATOR, OWNER},
    "access_request": {OPERATOR, OWNER},
    "dataset": {OPERATOR, OWNER, "sme-b"},
    "issuer_org": {OPERATOR},
    "custodian_org": {OPERATOR},
    "uscc": {OPERATOR, OWNER},
    "token": {OPERATOR, OWNER},
}
# Path parameter → kind of object, per route prefix where one name means two kinds.
PATH_KINDS = {
    "org_id": "org",
    "kid": "key",
    "jti": "voucher",
    "hold_id": "hold",
    "dataset_id": "dataset",
    "request_id": "access_request",
    "uscc": "uscc",
    "token_id": "token",
}
QUERY_KINDS = {
    "org_id": "org",
    "dataset_id": "dataset",
    "issuer_org": "issuer_org",
    "custodian_org": "custodian_org",
}
# ``token`` is a capability in the path (KubeRay code archives): any value is refused like an unknown one.
LITERAL_PATH = {"decision": "refuse", "name": "style.css", "token": "t" * 43, "seq": "1"}
EXTRA_QUERY = {"period": "2026-11", "start_ms": "0", "end_ms": "1", "old": "1", "new": "1"}
MASS_FIELDS = ["org_id", "owner", "balance", "budget", "status", "state", "amount_settled"]
COOKIE = "sbx_session"
Key = tuple[str, str]


@dataclass(frozen=True)
class Route:
    """One method of one route with its declared policy."""

    method: str
    path: str
    policy: tuple[str, ...]
    in_schema: bool
    body_fields: frozenset[str] | None = None  # the JSON body's declared fields (None: no JSON body)
    parameters: frozenset[str] = frozenset()  # declared parameters as "in:name" (path, query, header)

    @property
    def key(self) -> Key:
        """``(method, path)``."""
        return (self.method, self.path)

    @property
    def is_ui(self) -> bool:
        """Dashboard pages authenticate with the session cookie, not the bearer header."""
        return self.path.startswith("/ui")


def _routes_of(app: Any) -> tuple[list[Route], list[str]]:
    """Every (method, path) of the app with its policy; and the framework routes without one."""
    routes: list[Route] = []
    framework: list[str] = []
    for ctx in iter_route_contexts(app.routes):
        extra = getattr(ctx, "openapi_extra", None)
        if type(ctx.original_route).__name__ != "APIRoute":
            framework.append(str(ctx.path))
            continue
        declared = tuple((extra or {}).get(POLICY_KEY, ()))
        for method in sorted(getattr(ctx, "methods", None) or ()):
            routes.append(
                Route(method, str(ctx.path), declared, bool(getattr(ctx, "include_in_schema", True)))
            )
    return routes, framework


def _body_fields(document: dict[str, Any], route: Route) -> frozenset[str] | None:
    operation = document["paths"].get(route.path, {}).get(route.method.lower(), {})
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    name = schema["$ref"].rsplit("/", 1)[-1]
    return frozenset(document["components"]["schemas"][name].get("properties", {}))


def _parameters(document: dict[str, Any], route: Route) -> frozenset[str]:
    operation = document["paths"].get(route.path, {}).get(route.method.lower(), {})
    return frozenset(f"{p['in']}:{p['name']}" for p in operation.get("parameters", []))


@cache
def route_table() -> tuple[list[Route], list[str]]:
    """The route table of a real app over a throwaway SQLite state (computed once, at collection)."""
    with tempfile.TemporaryDirectory() as tmp, sqlite_services(Path(tmp)) as services:
        app = create_app(services)
        routes, framework = _routes_of(app)
        document = app.openapi()
    with_bodies = [
        Route(r.method, r.path, r.policy, r.in_schema, _body_fields(document, r), _parameters(document, r))
        for r in routes
    ]
    return with_bodies, framework


def _route_params() -> list[Any]:
    return [pytest.param(r, id=f"{r.method} {r.path}") for r in route_table()[0]]


# ---------------------------------------------------------------------------------------------- policy table


def test_every_route_declares_a_known_policy() -> None:
    routes, framework = route_table()
    assert sorted(framework) == sorted(FRAMEWORK_ROUTES), "a route without x-sbx-policy was added"
    undeclared = [r.key for r in routes if not r.policy or set(r.policy) - KNOWN]
    assert undeclared == [], f"routes without a (known) policy: {undeclared}"
    hidden = {r.key for r in routes if not r.in_schema}
    assert hidden == HIDDEN_ROUTES, "a route kept out of the OpenAPI document must be listed in HIDDEN_ROUTES"


def test_the_openapi_document_carries_every_policy() -> None:
    with tempfile.TemporaryDirectory() as tmp, sqlite_services(Path(tmp)) as services:
        document = create_app(services).openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get(POLICY_KEY), f"{method.upper()} {path} has no {POLICY_KEY} in OpenAPI"


# ------------------------------------------------------------------------------------------------- requests


def _now_s() -> int:
    return int(time.time())


def _json_body(route: Route, ids: dict[str, str], full: FullWorld) -> dict[str, Any] | None:
    """A valid JSON body for each route (a new body-taking route must be added here)."""
    csv_b64 = b64(csv_bytes(energy_frame(20)))
    bodies: dict[Key, dict[str, Any] | None] = {
        ("POST", "/api/v1/orgs"): {"name": "matrix-org", "role": "sme"},
        ("POST", "/api/v1/orgs/{org_id}/tokens"): {"label": "matrix"},
        ("PUT", "/api/v1/orgs/{org_id}/programme"): {"year_budget": 10, "sme_cap": 5},
        ("PUT", "/api/v1/orgs/{org_id}/copay-limit"): {"copay_limit": 0},
        ("PATCH", "/api/v1/issuer/keys/{kid}"): {"status": "retired"},
        ("POST", "/api/v1/vouchers"): {
            "sme_org": full.world.sme_b.org_id,
            "credits": 10,
            "coverage_bps": 10_000,
            "valid_until_s": _now_s() + 86_400,
            "credit_expires_s": _now_s() + 30 * 86_400,
        },
        ("POST", "/api/v1/vouchers/redeem"): {"token": "not-a-voucher"},
        ("POST", "/api/v1/issuer/keys/register"): {"public_jwk": public_jwk(generate_private_pem())},
        ("POST", "/api/v1/vouchers/register"): {"token": "not-a-voucher"},
        ("POST", "/api/v1/holds"): {"amount": 1, "org_id": ids["org"]},
        ("POST", "/api/v1/holds/{hold_id}/settle"): {"cost": 0},
        ("PUT", "/api/v1/rate-card"): {
            "credits_per_cpu_second": "1",
            "credits_per_gpu_second": "10",
            "credits_per_gib_second": "1",
        },
        ("PUT", "/api/v1/orgs/{org_id}/quota"): {
            "max_milli_cpu": 8000,
            "max_gpus": 0,
            "max_memory_mib": 16_384,
            "max_running_jobs": 4,
            "max_queued_jobs": 16,
        },
        ("POST", "/api/v1/jobs/quote"): {"max_runtime_s": 60},
        ("POST", "/api/v1/jobs"): {"entrypoint": "python matrix.py", "max_runtime_s": 60},
        ("POST", "/api/v1/training"): {"dataset_id": ids["dataset"], "spec": td.spec(target_epsilon=0.5)},
        ("POST", "/api/v1/datasets"): {
            "name": "matrix",
            "format": "csv",
            "policy": energy_policy(),
            "content_b64": csv_b64,
        },
        ("POST", "/api/v1/datasets/{dataset_id}/versions"): {
            "format": "parquet",
            "policy": td.policy(),
            "content_b64": b64(td.parquet_bytes(td.make_frame(100, seed=3))),
        },
        ("POST", "/api/v1/datasets/{dataset_id}/access-requests"): {
            "purpose": "matrix",
            "epsilon_micro": 1000,
        },
        ("POST", "/api/v1/datasets/{dataset_id}/queries"): {
            "queries": [{"kind": "count", "epsilon_micro": 1000}]
        },
        ("POST", "/api/v1/access-requests/{request_id}/approve"): {"valid_for_s": 60},
        ("POST", "/api/v1/access-requests/{request_id}/refuse"): {"reason": "matrix"},
        ("POST", "/api/v1/access-requests/{request_id}/revoke"): {"reason": "matrix"},
        ("POST", "/api/v1/audit/cosignatures"): {"checkpoint_seq": 1, "cosignature": "\u2014 w AAAAAAAA"},
        ("PUT", "/api/v1/orgs/{org_id}/locale"): {"locale": "en"},
    }
    if route.key in bodies:
        return bodies[route.key]
    assert route.method in ("GET", "HEAD") or route.is_ui or route.key in NO_BODY, (
        f"{route.method} {route.path}: add a valid body to the isolation matrix"
    )
    return None


NO_BODY: set[Key] = {
    ("POST", "/api/v1/tokens/{token_id}/revoke"),
    ("POST", "/api/v1/issuer/keys"),
    ("POST", "/api/v1/vouchers/{jti}/revoke"),
    ("POST", "/api/v1/holds/{hold_id}/release"),
    ("POST", "/api/v1/audit/verify"),
    ("POST", "/api/v1/audit/checkpoint"),
    ("POST", "/api/v1/audit/ledger"),
    ("POST", "/api/v1/jobs/{job_id}/stop"),
}


def _kind_of_path_param(route: Route, name: str) -> str | None:
    if name == "job_id":
        return "training" if route.path.startswith("/api/v1/training") else "job"
    return PATH_KINDS.get(name)


def _missing_like(real: str) -> str:
    """An id of the same shape as ``real`` that names nothing."""
    prefix, sep, _ = real.partition("_")
    if sep and prefix.isalpha():
        return f"{prefix}_{secrets.token_hex(10)}"
    return secrets.token_urlsafe(len(real))[: len(real)]


@dataclass
class Call:
    """One request of the matrix and what it touched."""

    route: Route
    caller: str
    variant: str  # "foreign" (A's ids) or "missing"
    url: str
    params: dict[str, str]
    body: dict[str, Any] | None
    kinds: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)


def _build_call(route: Route, caller: str, variant: str, full: FullWorld, missing: dict[str, str]) -> Call:
    ids = dict(full.ids) if variant == "foreign" else {**full.ids, **missing}
    kinds: set[str] = set()
    sent: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        kind = _kind_of_path_param(route, name)
        if kind is None:
            return LITERAL_PATH[name]
        kinds.add(kind)
        sent.add(ids[kind])
        return ids[kind]

    url = re.sub(r"\{(\w+)\}", fill, route.path)
    params = {k: v for k, v in EXTRA_QUERY.items()}
    for name, kind in QUERY_KINDS.items():
        if f"query:{name}" in _query_names(route):
            params[name] = ids[kind]
            kinds.add(kind)
            sent.add(ids[kind])
    body = _json_body(route, ids, full)
    if body is not None and body.get("org_id") == ids["org"]:
        kinds.add("org")
        sent.add(ids["org"])
    if body is not None and body.get("dataset_id") == ids["dataset"]:
        kinds.add("dataset")
        sent.add(ids["dataset"])
    return Call(route, caller, variant, url, params, body, kinds, sent)


# Hidden pages read these query parameters without declaring them.
HIDDEN_QUERY: dict[Key, set[str]] = {("GET", "/ui/report"): {"query:issuer_org"}}


def _query_names(route: Route) -> set[str]:
    return set(route.parameters) | HIDDEN_QUERY.get(route.key, set())


def _send(client: httpx.Client, call: Call, token: str | None) -> httpx.Response:
    headers: dict[str, str] = {}
    if token is not None:
        if call.route.is_ui:
            headers["Cookie"] = f"{COOKIE}={token}"
        else:
            headers["Authorization"] = f"Bearer {token}"
    client.cookies.clear()
    if call.route.is_ui and call.route.method == "POST":
        form = {"reason": "matrix", "token": "not-a-token"}
        return client.request(call.route.method, call.url, data=form, headers=headers)
    return client.request(call.route.method, call.url, params=call.params, json=call.body, headers=headers)


# ------------------------------------------------------------------------------------------------- verdicts


def _masked(text: str, sent: set[str]) -> str:
    for i, value in enumerate(sorted(sent, key=len, reverse=True)):
        text = text.replace(value, f"<id{i}>")
    return text


def _signature(response: httpx.Response, call: Call) -> tuple[int, str, str]:
    """What a caller learns from an answer, with the ids it sent masked out."""
    location = _masked(response.headers.get("location", ""), call.sent)
    return response.status_code, _masked(response.text, call.sent), location


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def _expected_class(route: Route, caller: str) -> str:
    """``ok``, ``401`` or ``403`` as the declared policy implies for this caller."""
    if "public" in route.policy:
        return "ok"
    if caller in (ANONYMOUS, EXPIRED):
        return "401"
    if {"any", "own"} & set(route.policy) or ROLE[caller] in route.policy:
        return "ok"
    return "403"


def _is_login_redirect(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers.get("location", "").startswith("/ui/login")


def _is_refused_notice(response: httpx.Response) -> bool:
    return response.status_code == 303 and "Not+done" in response.headers.get("location", "")


def _check_class(call: Call, response: httpx.Response, expected: str) -> list[str]:
    status, code = response.status_code, _error_code(response)
    where = f"{call.caller}/{call.variant}: {call.route.method} {call.url}"
    if status >= 500:
        return [f"{where} → {status} {response.text[:200]}"]
    if expected == "401":
        ok = (status, code) == (401, "unauthorized") or (call.route.is_ui and _is_login_redirect(response))
        return [] if ok else [f"{where} → {status} {code}, expected 401 unauthorized"]
    if expected == "403":
        ok = (status, code) == (403, "forbidden") or (call.route.is_ui and _is_refused_notice(response))
        return [] if ok else [f"{where} → {status} {code}, expected 403 forbidden"]
    if status in (401, 403) and "public" not in call.route.policy and not call.kinds:
        return [f"{where} → {status} {code} for a role the policy admits"]
    return []


def _check_missing(call: Call, response: httpx.Response, expected: str) -> list[str]:
    """An admitted caller naming a missing object in the path gets 404 ``not_found`` (pages: a "Not done"
    notice). Query parameters are filters (``?dataset_id=`` of nothing lists nothing), so not checked here."""
    if expected != "ok" or not call.kinds or "{" not in call.route.path:
        return []
    if (response.status_code, _error_code(response)) == (404, "not_found"):
        return []
    if call.route.is_ui and _is_refused_notice(response):
        return []
    return [
        f"{call.caller}/missing: {call.route.method} {call.url} → {response.status_code} {response.text[:160]}"
    ]


def _check_leak(call: Call, response: httpx.Response, full: FullWorld) -> list[str]:
    if call.caller in (OWNER, OPERATOR):
        return []
    text = response.text + response.headers.get("location", "")
    leaked = [s for s in full.private if s in text and s not in call.sent]
    return [f"{call.caller}: {call.route.method} {call.url} leaks A's {leaked}"] if leaked else []


@dataclass
class Matrix:
    """The world and the findings of the matrix, by route."""

    full: FullWorld
    server: RunningServer
    client: httpx.Client
    findings: dict[Key, list[str]]
    before: dict[str, Any]
    after: dict[str, Any]


def _snapshot(full: FullWorld) -> dict[str, Any]:
    """A's objects as the operator reads them (the matrix must not change them)."""
    svc, op, ids = full.world.services, full.world.operator, full.ids
    return {
        "balance": svc.ledger.balance(op, org_id=ids["org"]),
        "hold": svc.ledger.get_hold(op, hold_id=ids["hold"]),
        "job": svc.jobs.get(op, job_id=ids["job"]),
        "training": svc.training.status(op, job_id=ids["training"]),
        "voucher": svc.vouchers.show(op, jti=ids["voucher"]),
        "voucher_unredeemed": svc.vouchers.show(op, jti=ids["voucher_unredeemed"]),
        "request": svc.datasets.get_request(op, request_id=ids["access_request"]),
        "keys": svc.vouchers.list_keys(full.world.issuer),
        "org": svc.orgs.list(full.world.sme),
    }


def _run_route(client: httpx.Client, route: Route, full: FullWorld, missing: dict[str, str]) -> list[str]:
    """Every caller on one route, with A's ids and with missing ids; the findings (empty: isolated)."""
    findings: list[str] = []
    for caller in CALLERS:
        token = None if caller == ANONYMOUS else full.tokens[caller]
        foreign = _build_call(route, caller, "foreign", full, missing)
        absent = _build_call(route, caller, "missing", full, missing)
        expected = _expected_class(route, caller)
        entitled = bool(foreign.kinds) and all(caller in ENTITLED[k] for k in foreign.kinds)
        # A's own or the operator's writes on A's objects are not an isolation question: not sent.
        if not (entitled and route.method != "GET" and expected == "ok"):
            got = _send(client, foreign, token)
            findings += _check_class(foreign, got, expected) + _check_leak(foreign, got, full)
            if entitled and expected == "ok" and got.status_code in (401, 403, 404):
                findings.append(
                    f"{caller}: {route.method} {foreign.url} → {got.status_code} for an entitled caller"
                )
        gone = _send(client, absent, token)
        findings += _check_class(absent, gone, expected) + _check_leak(absent, gone, full)
        findings += _check_missing(absent, gone, expected)
        if foreign.kinds and not entitled and _signature(got, foreign) != _signature(gone, absent):
            findings.append(
                f"{caller}: {route.method} {route.path} answers A's object differently from a missing one:"
                f" {got.status_code} {got.text[:160]!r} vs {gone.status_code} {gone.text[:160]!r}"
            )
    return findings


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    """Build the world, serve it, and run every route × caller × (A's ids, missing ids) once."""
    with served_full_world(tmp_path_factory.mktemp("matrix")) as (full, server):
        missing = {kind: _missing_like(value) for kind, value in full.ids.items()}
        missing["uscc"] = UNUSED_USCC  # a missing code must still be a valid one (else 422, not 404)
        before = _snapshot(full)
        findings: dict[Key, list[str]] = {}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for route in route_table()[0]:
                findings[route.key] = _run_route(client, route, full, missing)
            yield Matrix(full, server, client, findings, before, _snapshot(full))


# Known bugs (strict: the mark fails the day the bug is fixed, so it gets removed).
def _role_bug(route: Key, service: str, callers: str) -> str:
    return (
        f"BUG: broker/services/{service} does not enforce the route's declared x-sbx-policy: a {callers} "
        f"token on {route[0]} {route[1]} (any id) gets 404 not_found instead of 403 forbidden "
        "(no require_role before the lookup; consistent for foreign and missing ids, so nothing leaks)"
    )


BUGS: dict[Key, str] = {}  # the role-policy bugs found here are fixed: broker/api/deps.py:enforce_policy


def _route_cases() -> list[Any]:
    cases = []
    for param in _route_params():
        route: Route = param.values[0]
        marks = [pytest.mark.xfail(strict=True, reason=BUGS[route.key])] if route.key in BUGS else []
        cases.append(pytest.param(route, id=param.id, marks=marks))
    return cases


@pytest.mark.parametrize("route", _route_cases())
def test_route_isolates_tenants(matrix: Matrix, route: Route) -> None:
    findings = matrix.findings[route.key]
    assert findings == [], "\n".join(findings)


def test_no_caller_changed_the_objects_of_a(matrix: Matrix) -> None:
    assert matrix.after == matrix.before


# ------------------------------------------------------------------------------------------- mass assignment

# An admitted caller per role, entitled to A's objects, so an honoured extra field would take effect.
ADMITTED_CALLER = {
    "operator": OPERATOR,
    "sme": OWNER,
    "issuer": "issuer",
    "custodian": "custodian",
    "any": OPERATOR,  # any authenticated caller (a witness posting a cosignature)
}


def _mass_cases() -> list[Any]:
    cases = []
    for route in route_table()[0]:
        if route.body_fields is None:
            continue
        for name in MASS_FIELDS:
            if name not in route.body_fields:
                cases.append(pytest.param(route, name, id=f"{route.method} {route.path} +{name}"))
    return cases


def _admitted_caller(route: Route) -> str:
    for role, caller in ADMITTED_CALLER.items():
        if role in route.policy:
            return caller
    raise AssertionError(f"{route.key}: no admitted caller for policy {route.policy}")


@pytest.mark.parametrize(("route", "extra"), _mass_cases())
def test_undeclared_owner_balance_or_status_fields_are_refused(
    matrix: Matrix, route: Route, extra: str
) -> None:
    full = matrix.full
    call = _build_call(route, _admitted_caller(route), "foreign", full, {})
    assert call.body is not None
    call.body = {**call.body, extra: full.world.sme_b.org_id if extra in ("org_id", "owner") else 10**9}
    response = _send(matrix.client, call, full.tokens[call.caller])
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert extra in response.json()["detail"]


def test_declared_owner_fields_are_the_documented_ones() -> None:
    """The only body fields named like owners or states are these (each one is covered by the matrix)."""
    declared = {
        (r.method, r.path, name)
        for r in route_table()[0]
        for name in MASS_FIELDS
        if r.body_fields is not None and name in r.body_fields
    }
    assert declared == {
        ("POST", "/api/v1/holds", "org_id"),  # an operator's hold for an SME; others: own only (matrix)
        ("PATCH", "/api/v1/issuer/keys/{kid}", "status"),  # retire/revoke: the point of the route
    }


NESTED = [
    pytest.param(("POST", "/api/v1/datasets"), "policy", id="dataset policy"),
    pytest.param(("POST", "/api/v1/datasets/{dataset_id}/versions"), "policy", id="version policy"),
    pytest.param(("POST", "/api/v1/training"), "spec", id="training spec"),
    pytest.param(("POST", "/api/v1/datasets/{dataset_id}/queries"), "queries", id="query"),
]


POISON = 987_654_321


@pytest.mark.parametrize(("key", "member"), NESTED)
@pytest.mark.parametrize("extra", ["owner", "budget", "status", "org_id"])
def test_free_form_members_refuse_or_drop_undeclared_fields(
    matrix: Matrix, key: Key, member: str, extra: str
) -> None:
    """Free-form members (policy, spec, queries) are parsed by the services: an extra field is refused with
    a 4xx error body, or accepted and provably dropped (its value appears nowhere in what was stored)."""
    route = next(r for r in route_table()[0] if r.key == key)
    full = matrix.full
    call = _build_call(route, _admitted_caller(route), "foreign", full, {})
    assert call.body is not None
    value = call.body[member]
    poisoned = [{**value[0], extra: POISON}] if isinstance(value, list) else {**value, extra: POISON}
    call.body = {**call.body, member: poisoned}
    if "name" in call.body:
        call.body["name"] = f"mass-{member}-{extra}"  # a fresh dataset each time: no name clash
    response = _send(matrix.client, call, full.tokens[call.caller])
    if response.is_success:
        assert str(POISON) not in response.text
        return
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error", "detail"}
    assert response.json()["error"] not in ("conflict", "already_exists", "budget_exceeded"), response.text
