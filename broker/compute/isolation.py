"""Which backends may run SME code, and why the others refuse it (``docs/security.md``).

* ``ray-local``: every SME entrypoint runs in the bubblewrap sandbox (``broker.compute.sandbox``); when no
  sandbox can be started on this machine, SME code is refused (``sandbox_unavailable``) rather than run
  unprotected. Requirements cannot be installed inside it (no network).
* ``ray`` (a shared cluster at ``SBX_RAY_ADDRESS``): Ray has no isolation between jobs and the broker
  cannot check that the cluster's workers sandbox entrypoints, so it runs only the broker's own harness there.
* ``kuberay``: a RayCluster per job, pods at the restricted Pod Security Standard, egress denied.
* ``fake``: runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import DomainError, InvalidInput

from .base import BackendError, ComputeBackend, SandboxUnavailable
from .ray_jobs import REMOTE_RAY_REFUSAL, RayJobsBackend
from .ray_local import LocalRayBackend

NO_REQUIREMENTS = (
    "requirements cannot be installed for a sandboxed job (the sandbox has no network): bundle pure-Python "
    "dependencies in the working directory, or use the packages of the broker's environment"
)


def code_job_refusal(backend: ComputeBackend, *, has_requirements: bool) -> DomainError | None:
    """Why ``backend`` would not run an SME code job (``None`` when it would, isolated)."""
    if isinstance(backend, LocalRayBackend):
        refusal = backend.sandbox_refusal()
        if refusal is not None:
            return SandboxUnavailable(refusal)
        return InvalidInput(NO_REQUIREMENTS) if has_requirements else None
    if isinstance(backend, RayJobsBackend):
        return SandboxUnavailable(REMOTE_RAY_REFUSAL)
    return None


def stages_locally(backend: ComputeBackend) -> bool:
    """True when ``backend`` runs jobs on this machine in the broker's sandbox, so a harness run's input is
    staged into its job directory (read-only inside) and it gets no credentials at all."""
    return isinstance(backend, LocalRayBackend)


@dataclass(frozen=True, slots=True)
class IsolationStatus:
    """What isolation the running backend gives SME code (``/readyz``, ``sbx doctor``, the demo)."""

    backend: str
    sme_code: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        """The JSON form."""
        return {"backend": self.backend, "sme_code": self.sme_code, "detail": self.detail}


KUBERAY_ISOLATION = (
    "a RayCluster per job; pods at the restricted Pod Security Standard without a service-account token; "
    "egress denied except DNS and the broker's archive endpoint (docs/security.md)"
)


def isolation_status(backend: ComputeBackend) -> IsolationStatus:
    """Whether ``backend`` runs SME code, and under what isolation."""
    if isinstance(backend, LocalRayBackend):
        refusal = backend.sandbox_refusal()
        detail = refusal or sandbox_summary()
        return IsolationStatus(backend.kind, refusal is None, detail)
    if isinstance(backend, RayJobsBackend):
        return IsolationStatus(backend.kind, False, REMOTE_RAY_REFUSAL)
    if backend.kind == "kuberay":
        return IsolationStatus(backend.kind, True, KUBERAY_ISOLATION)
    return IsolationStatus(backend.kind, True, "the fake backend runs no code")


def sandbox_summary() -> str:
    """One line on the embedded sandbox: tool and version, cgroup version, which limits are enforced."""
    from .sandbox import probe

    return probe().summary


def check_backend(backend: ComputeBackend) -> bool:
    """Whether ``backend`` answers now; a dead local Ray head is restarted (the answer is then False for this
    round, so ``/readyz`` and ``sbx_backend_up`` show the outage). Cheap enough for every loop round: the
    local check looks at the head's process, a remote one asks the cluster for its capacity."""
    if isinstance(backend, LocalRayBackend):
        if backend.head_alive():
            return True
        backend.restart()
        return False
    try:
        backend.capacity()
    except BackendError:
        return False
    return True
