"""A typed Python client of the broker's REST API, for SMEs and custodians in notebooks (and the CLI).

Every method is one HTTP call and returns the broker's JSON answer (a ``dict`` or a ``list`` of them, as
documented in the OpenAPI description at ``/docs``); a refusal raises :class:`BrokerError` carrying the
broker's ``code``. ε is given as a decimal string or number (``"0.5"``) and sent as integer micro-ε, δ as
a float or string (``"1e-5"``) and sent as integer 10⁻¹² units — the same bounded parser as the CLI
(:mod:`common.numbers`), so a value the CLI refuses is refused here, before anything is sent.

    >>> from broker.client import Client
    >>> sbx = Client("http://localhost:8000", token="sbx_tok_…")
    >>> ds = sbx.datasets()[0]["id"]
    >>> sbx.query(ds, [{"kind": "count", "epsilon": "0.1"}], dry_run=True)["charged"]
    {'epsilon_micro': 100000, 'delta_e12': 0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from broker.client.errors import BrokerError, Unreachable
from broker.client.types import DryRunAnswer, HistoryEntry, Me, QueryAnswer
from common.errors import InvalidInput
from common.numbers import parse_exact

Json = dict[str, Any]
Kind = Literal["query", "training"]
API = "/api/v1"


def epsilon_micro(value: str | float | int) -> int:
    """ε (``"0.25"``, ``0.25``) as exact integer micro-ε: positive, at most 6 decimals."""
    exact = parse_exact(value, "epsilon", lo=0, lo_open=True, ratios=False)
    return _scaled(exact, value, "epsilon", 6)


def delta_e12(value: str | float | int) -> int:
    """δ (``"1e-5"``, ``1e-5``, ``0``) as exact integer 10⁻¹² units: in [0, 1), at most 12 decimals."""
    exact = parse_exact(value, "delta", lo=0, hi=1, hi_open=True, ratios=False)
    return _scaled(exact, value, "delta", 12)


def _scaled(exact: Fraction, given: object, field: str, decimals: int) -> int:
    """``exact`` in units of 10^-decimals, refused when it has more decimals than that (as the CLI does)."""
    scaled = exact * 10**decimals
    if scaled.denominator != 1:
        raise InvalidInput(f"{field} must have at most {decimals} decimals, got {given!r}")
    return int(scaled)


class Transport:
    """One HTTP connection pool with the caller's token and language; errors become :class:`BrokerError`."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float, language: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if language:
            headers["Accept-Language"] = language.replace("_", "-")  # the broker translates details
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send one request and return a successful response (else raise :class:`BrokerError`)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=clean, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, type(exc).__name__) from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def _error(response: httpx.Response) -> BrokerError:
    """The broker's ``{"error", "detail"}`` body as an exception (any other body: ``http_<status>``)."""
    try:
        payload = response.json()
        return BrokerError(str(payload["error"]), str(payload["detail"]), status=response.status_code)
    except (ValueError, KeyError, TypeError):
        status = response.status_code
        return BrokerError(f"http_{status}", f"HTTP {status}", status=status, structured=False)


def decode(response: httpx.Response) -> Any:
    """The JSON of an answer, its text when it is not JSON, ``None`` when empty."""
    if not response.content:
        return None
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


class Client:
    """The broker's API as methods. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        language: str | None = None,
    ) -> None:
        self.transport = Transport(url, token, timeout_s=timeout_s, language=language)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.transport.close()

    @property
    def url(self) -> str:
        """The broker's base URL."""
        return self.transport.url

    # -- generic ----------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Any API call by method and path: the decoded answer (the CLI's one entry point)."""
        response = self.transport.send(
            method, path, body=body, params=params, idempotency_key=idempotency_key
        )
        return decode(response)

    def download(self, path: str) -> bytes:
        """A binary resource (weights, a job's output zip, a report file)."""
        return self.transport.send("GET", path).content

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", API + path, params=params)

    def _post(self, path: str, body: Any = None, *, key: str | None = None) -> Any:
        return self.request("POST", API + path, body=body, idempotency_key=key)

    # -- who and what -----------------------------------------------------------------------------
    def me(self) -> Me:
        """The caller's organisation and role."""
        result: Me = self._get("/me")
        return result

    def balance(self, org_id: str | None = None) -> Json:
        """An SME's credit: available, held, co-payment used and limit, grants."""
        result: Json = self._get("/balance", org_id=org_id)
        return result

    # -- vouchers ---------------------------------------------------------------------------------
    def redeem_voucher(self, token: str, *, idempotency_key: str | None = None) -> Json:
        """Redeem a voucher token (the JWT an issuer gave you) into a credit grant."""
        result: Json = self._post("/vouchers/redeem", {"token": token.strip()}, key=idempotency_key)
        return result

    def vouchers(self) -> list[Json]:
        """Vouchers the caller issued (issuers) or holds (SMEs)."""
        result: list[Json] = self._get("/vouchers")
        return result

    def voucher(self, jti: str) -> Json:
        """One voucher by its id."""
        result: Json = self._get(f"/vouchers/{jti}")
        return result

    # -- jobs -------------------------------------------------------------------------------------
    def quote(
        self, *, milli_cpu: int = 1000, gpus: int = 0, memory_mib: int = 1024, max_runtime_s: int
    ) -> Json:
        """The most a job of this shape can cost (its hold)."""
        body = {
            "milli_cpu": milli_cpu,
            "gpus": gpus,
            "memory_mib": memory_mib,
            "max_runtime_s": max_runtime_s,
        }
        result: Json = self._post("/jobs/quote", body)
        return result

    def submit_job(
        self,
        entrypoint: str,
        *,
        max_runtime_s: int,
        milli_cpu: int = 1000,
        gpus: int = 0,
        memory_mib: int = 1024,
        priority: int = 0,
        requirements: Sequence[str] = (),
        working_dir_zip_b64: str | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        """Queue a job paid with the caller's credit."""
        body: Json = {
            "entrypoint": entrypoint,
            "max_runtime_s": max_runtime_s,
            "milli_cpu": milli_cpu,
            "gpus": gpus,
            "memory_mib": memory_mib,
            "priority": priority,
            "requirements": list(requirements),
        }
        if working_dir_zip_b64 is not None:
            body["working_dir_zip_b64"] = working_dir_zip_b64
        result: Json = self._post("/jobs", body, key=idempotency_key)
        return result

    def jobs(self, **filters: Any) -> list[Json]:
        """The caller's jobs (operators: everyone's), with the route's filters (``state=`` …)."""
        result: list[Json] = self._get("/jobs", **filters)
        return result

    def job(self, job_id: str) -> Json:
        """A job with its state, bill and (while queued) why it waits."""
        result: Json = self._get(f"/jobs/{job_id}")
        return result

    def job_logs(self, job_id: str) -> str:
        """The tail of a job's output."""
        return str(self._get(f"/jobs/{job_id}/logs")["logs"])

    def job_output(self, job_id: str) -> bytes:
        """What a finished job wrote to ``$SBX_OUTPUT``, as a zip."""
        return self.download(f"{API}/jobs/{job_id}/output")

    def stop_job(self, job_id: str) -> Json:
        """Stop a job (settled for what it used)."""
        result: Json = self._post(f"/jobs/{job_id}/stop")
        return result

    # -- datasets and access ----------------------------------------------------------------------
    def datasets(self) -> list[Json]:
        """Datasets the caller may see."""
        result: list[Json] = self._get("/datasets")
        return result

    def dataset(self, dataset_id: str) -> Json:
        """A dataset with its versions and policies."""
        result: Json = self._get(f"/datasets/{dataset_id}")
        return result

    def register_dataset(
        self,
        name: str,
        *,
        policy: Mapping[str, Any],
        content_b64: str,
        format: Literal["csv", "parquet"],
        description: str = "",
    ) -> Json:
        """Register a table under its policy (custodians)."""
        body = {
            "name": name,
            "format": format,
            "policy": dict(policy),
            "content_b64": content_b64,
            "description": description,
        }
        result: Json = self._post("/datasets", body)
        return result

    def budget(self, dataset_id: str) -> Json:
        """A dataset's privacy budget as the caller may see it."""
        result: Json = self._get(f"/datasets/{dataset_id}/budget")
        return result

    def request_access(
        self,
        dataset_id: str,
        *,
        purpose: str,
        epsilon: str | float,
        delta: str | float | None = None,
        kinds: Sequence[Kind] = ("query",),
    ) -> Json:
        """Ask a dataset's custodian for ε (and δ, needed for private training) for a purpose."""
        body: Json = {"purpose": purpose, "epsilon_micro": epsilon_micro(epsilon), "kinds": list(kinds)}
        if delta is not None:
            body["delta_e12"] = delta_e12(delta)
        result: Json = self._post(f"/datasets/{dataset_id}/access-requests", body)
        return result

    def access_requests(self, **filters: Any) -> list[Json]:
        """Access requests the caller made (SMEs) or must decide (custodians)."""
        result: list[Json] = self._get("/access-requests", **filters)
        return result

    def approve(
        self,
        request_id: str,
        *,
        valid_for_s: int,
        epsilon: str | float | None = None,
        delta: str | float | None = None,
        kinds: Sequence[Kind] | None = None,
    ) -> Json:
        """Approve a pending request on one's dataset, possibly with less ε or δ (custodians)."""
        body: Json = {"valid_for_s": valid_for_s}
        if epsilon is not None:
            body["epsilon_micro"] = epsilon_micro(epsilon)
        if delta is not None:
            body["delta_e12"] = delta_e12(delta)
        if kinds is not None:
            body["kinds"] = list(kinds)
        result: Json = self._post(f"/access-requests/{request_id}/approve", body)
        return result

    def refuse(self, request_id: str, *, reason: str) -> Json:
        """Refuse a pending request (custodians)."""
        result: Json = self._post(f"/access-requests/{request_id}/refuse", {"reason": reason})
        return result

    def revoke(self, request_id: str, *, reason: str) -> Json:
        """Revoke an approved grant (custodians)."""
        result: Json = self._post(f"/access-requests/{request_id}/revoke", {"reason": reason})
        return result

    # -- DP queries -------------------------------------------------------------------------------
    @overload
    def query(
        self,
        dataset_id: str,
        queries: Sequence[Mapping[str, Any]],
        *,
        dry_run: Literal[False] = False,
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> QueryAnswer: ...

    @overload
    def query(
        self,
        dataset_id: str,
        queries: Sequence[Mapping[str, Any]],
        *,
        dry_run: Literal[True],
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> DryRunAnswer: ...

    @overload
    def query(
        self,
        dataset_id: str,
        queries: Sequence[Mapping[str, Any]],
        *,
        dry_run: bool,
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> QueryAnswer | DryRunAnswer: ...

    def query(
        self,
        dataset_id: str,
        queries: Sequence[Mapping[str, Any]],
        *,
        dry_run: bool = False,
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> QueryAnswer | DryRunAnswer:
        """Run a batch of DP queries within the caller's grant; ``dry_run=True`` answers the exact ε and δ
        it would be charged and the credit it would hold, spending nothing. A query may give ``epsilon``
        as a decimal (converted here) or ``epsilon_micro``."""
        body: Json = {"queries": [_query_spec(q) for q in queries]}
        if version is not None:
            body["version"] = version
        path = f"{API}/datasets/{dataset_id}/queries"
        result: QueryAnswer | DryRunAnswer = self.request(
            "POST",
            path,
            body=body,
            params={"dry_run": "true" if dry_run else None},
            idempotency_key=idempotency_key,
        )
        return result

    def query_history(self, *, dataset_id: str | None = None, limit: int = 200) -> list[HistoryEntry]:
        """The caller's past queries and training runs (newest first): cost, credits, status."""
        result: list[HistoryEntry] = self._get("/queries", dataset_id=dataset_id, limit=limit)
        return result

    # -- private training -------------------------------------------------------------------------
    def train(self, dataset_id: str, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Json:
        """Submit a DP-SGD training run over a dataset (its spec as ``docs/training.md`` describes)."""
        body = {"dataset_id": dataset_id, "spec": dict(spec)}
        result: Json = self._post("/training", body, key=idempotency_key)
        return result

    def trainings(self) -> list[Json]:
        """The caller's training runs."""
        result: list[Json] = self._get("/training")
        return result

    def training(self, job_id: str) -> Json:
        """A run's state, bill and (when finished) its DP summary."""
        result: Json = self._get(f"/training/{job_id}")
        return result

    def weights(self, job_id: str) -> bytes:
        """A finished run's DP model weights (safetensors)."""
        return self.download(f"{API}/training/{job_id}/weights")


def _query_spec(spec: Mapping[str, Any]) -> Json:
    """A query with ``epsilon`` as a decimal turned into ``epsilon_micro`` (others passed as given)."""
    out = dict(spec)
    if "epsilon" in out and "epsilon_micro" not in out:
        out["epsilon_micro"] = epsilon_micro(out.pop("epsilon"))
    return out


__all__ = ["BrokerError", "Client", "Json", "Transport", "Unreachable", "delta_e12", "epsilon_micro"]
