"""API fuzzing with Schemathesis against the broker's own OpenAPI document, in-process over ASGI (issue 8,
point 2), on SQLite.

Every operation of the document gets a few derandomized Hypothesis examples, valid and invalid (positive and
negative generation modes); each example is sent once with a valid token of each role (operator, issuer,
custodian, SME A of :mod:`tests.api.world_full`) and once with no token. Checks: no 5xx, a 2xx body matches the response schema the
operation declares, and every 4xx carries the ``{"error", "detail"}`` body.

Side effects are not skipped: generated ids are random, so writes on existing objects almost never hit one,
and the writes that do succeed (new organisations, tokens, issuer keys, vouchers, audit checkpoints) leave the
broker usable for the next examples. One exception: a fuzzed rate card can be absurd enough to make every later
job submission fail (a bug, pinned by its own xfail test here), so after each ``PUT /api/v1/rate-card`` example
the world's original card is put back. The fuzzer's own state is one module-scoped
world, thrown away afterwards. Bounded: ``MAX_EXAMPLES`` per operation, no shrinking, no example database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from broker.app import create_app
from tests.api.conftest import Live
from tests.api.test_isolation_matrix import Route, route_table
from tests.api.world_full import FullWorld, build_full_world, sqlite_services
from tests.conftest import make_world

MAX_EXAMPLES = 3
ROLES = {"operator": "op2", "issuer": "issuer", "custodian": "custodian", "sme": "sme-a"}
CALLERS: list[str | None] = [*ROLES.values(), None]  # each role's token, then none at all


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FullWorld, FastAPI]]:
    """One world with a token per role and the app over it (in-process, no server)."""
    with sqlite_services(tmp_path_factory.mktemp("fuzz")) as services:
        clock: Any = services.container.clock
        full = build_full_world(make_world(services, clock))
        yield full, create_app(services)


@pytest.fixture(scope="module")
def api_schema(fuzz_world: tuple[FullWorld, FastAPI]) -> Any:
    """The live OpenAPI document of the app, loaded through ASGI, with bounded deterministic generation."""
    loaded = schemathesis.openapi.from_asgi("/openapi.json", fuzz_world[1])
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        deterministic=True,
        no_shrink=True,
        database="none",
    )
    return loaded


def error_body_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx answer is ``{"error": code, "detail": text}``."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, f"4xx without the error body: {body}"
    assert isinstance(body["error"], str) and isinstance(body["detail"], str), body
    return True


def declared_schema_of_success(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 2xx body matches the response schema its operation declares (error bodies: see the test below)."""
    if not 200 <= response.status_code < 300:
        return None
    return response_schema_conformance(ctx, response, case)


CHECKS = [not_a_server_error, declared_schema_of_success, error_body_shape]


def _restore_rate_card(full: FullWorld, card: dict[str, Any]) -> None:
    """Put back the world's rate card after a fuzzed one: an absurd card makes every later job submission
    fail (the bug is pinned by the xfail test below, so the fuzzer need not rediscover it everywhere)."""
    full.world.services.jobs.set_rate_card(
        full.world.operator,
        cpu=str(card["credits_per_cpu_second"]),
        gpu=str(card["credits_per_gpu_second"]),
        gib=str(card["credits_per_gib_second"]),
    )


def _operations() -> list[Any]:
    """Every operation of the OpenAPI document (the route table minus the hidden routes), in both modes."""
    return [
        pytest.param(route.method, route.path, mode, id=f"{route.method} {route.path} {mode.value}")
        for route in route_table()[0]
        if route.in_schema
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if mode is GenerationMode.POSITIVE or _can_be_invalid(route)
    ]


def _can_be_invalid(route: Route) -> bool:
    """Schemathesis can only make a body or a constrained query invalid: plain string path parameters and
    headers accept any string, so a negative run of such an operation would find no example at all."""
    return route.body_fields is not None or any(p.startswith("query:") for p in route.parameters)


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_fuzz_operation_for_every_role(
    api_schema: Any, fuzz_world: tuple[FullWorld, FastAPI], method: str, path: str, mode: GenerationMode
) -> None:
    full = fuzz_world[0]
    operation = api_schema[path][method]
    card = full.world.services.jobs.rate_card()

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        for name in CALLERS:
            headers = {"Authorization": f"Bearer {full.tokens[name]}"} if name else {}
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)
        if (method, path) == ("PUT", "/api/v1/rate-card"):
            _restore_rate_card(full, card)

    run()


def test_openapi_declares_the_error_body_the_app_sends(fuzz_world: tuple[FullWorld, FastAPI]) -> None:
    """Clients generated from the document must be able to parse the 422 the app really sends."""
    document = fuzz_world[1].openapi()
    body = document["components"]["schemas"]["ErrorBody"]["properties"]
    assert body["error"]["type"] == "string" and body["detail"]["type"] == "string"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status in ("401", "403", "404", "422"):
                ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, status)


def test_an_absurd_rate_card_is_refused_or_priced_without_a_server_error(live: Live) -> None:
    live.world.credit(1_000)
    with live.client("op2") as operator, live.client("sme-a") as sme:
        card = {
            "credits_per_cpu_second": "9" * 40,
            "credits_per_gpu_second": "1",
            "credits_per_gib_second": "1",
        }
        set_card = operator.put("/api/v1/rate-card", json=card)
        submitted = sme.post("/api/v1/jobs", json={"entrypoint": "python x.py", "max_runtime_s": 60})
    assert set_card.status_code < 500 and submitted.status_code < 500, submitted.text
    assert set_card.status_code == 422 or submitted.status_code in (402, 409, 422), submitted.text


def test_the_world_of_the_fuzzer_has_every_role(fuzz_world: tuple[FullWorld, FastAPI]) -> None:
    full = fuzz_world[0]
    services, tokens = full.world.services, full.tokens
    roles = {name: services.orgs.authenticate(tokens[name]) for name in ROLES.values()}
    assert {role: p.role if p else None for role, p in zip(ROLES, roles.values(), strict=True)} == {
        role: role for role in ROLES
    }
