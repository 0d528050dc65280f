"""What the embedded sandbox is asked to run and what it reports back: frozen values, no I/O.

The broker writes a :class:`SandboxSpec` as ``<job_dir>/spec.json``; the launcher
(:mod:`broker.compute.sandbox.launch`) reads it, runs the command inside bubblewrap under the
:class:`SandboxLimits` and writes a :class:`SandboxResult` as ``<job_dir>/result.json``. Both files are JSON
parsed strictly (unknown or missing members are refused), because the launcher runs as root and must not
act on anything the broker did not mean.

Errors: every refusal is a :class:`SandboxSpecError` (a ``ValueError``) whose message names the field.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: Stable reason codes of a :class:`SandboxResult` (``None`` when the command simply exited).
OUT_OF_MEMORY = "out_of_memory"
DISK_QUOTA = "disk_quota"
TOO_MANY_PROCESSES = "too_many_processes"
STOPPED = "stopped"
SANDBOX_ERROR = "sandbox_error"
REASONS = frozenset({OUT_OF_MEMORY, DISK_QUOTA, TOO_MANY_PROCESSES, STOPPED, SANDBOX_ERROR})
#: Reasons that mean "a physical limit was hit" (the launcher exits 1 for them).
LIMIT_REASONS = frozenset({OUT_OF_MEMORY, DISK_QUOTA, TOO_MANY_PROCESSES})

#: ``auto``: cgroups when the launcher can create them, else rlimits; ``cgroup``: cgroups or fail;
#: ``rlimit``: the fallback only (tests use it); ``off``: TEST-ONLY, no sandbox at all (see UNSAFE_ENV).
MODES = frozenset({"auto", "cgroup", "rlimit", "off"})
#: The launcher refuses ``mode="off"`` unless this variable is ``1`` in its own environment.
UNSAFE_ENV = "SBX_TEST_UNSAFE_NO_SANDBOX"

#: Variables SME code must never be handed by the broker (Ray's and the broker's own, and the ones that
#: change what the interpreter or the dynamic linker loads); the launcher sets PATH/HOME/SBX_OUTPUT itself.
REFUSED_ENV_PREFIXES = ("RAY_", "SBX_")
REFUSED_ENV_KEYS = frozenset({"PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "HOME"})
#: Sandbox paths a read-only bind may not cover: the launcher mounts these itself.
RESERVED_DESTS = ("/", "/proc", "/dev", "/tmp", "/job", "/output", "/etc", "/usr", "/bin", "/sbin", "/lib")  # noqa: S108

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MAX_COMMAND = 64 * 1024
_MAX_ENV_VALUE = 32 * 1024
_MAX_ENV = 256
_MAX_BINDS = 64
SPEC_VERSION = 1


class SandboxSpecError(ValueError):
    """A spec, limit or result value is malformed; the message names the field and the rule."""


def _int_field(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (bools refused: ``True`` is not a size)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise SandboxSpecError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise SandboxSpecError(f"{name} must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Physical limits of one sandbox, in the broker's integer units (MiB, milli-CPU, bytes).

    ``memory_mib`` caps the memory of every process in the sandbox together (cgroup) or of each process's
    address space (rlimit fallback); ``milli_cpu`` is a CPU quota (cgroup) or a core count rounded up
    (affinity); ``max_pids`` bounds the processes; ``disk_mib`` bounds ``/job`` + ``/output`` together;
    ``log_bytes`` is how much output reaches the job log; ``tmp_mib`` sizes ``/tmp`` and ``/dev/shm``.
    """

    memory_mib: int
    milli_cpu: int
    max_pids: int
    disk_mib: int
    log_bytes: int
    tmp_mib: int

    def __post_init__(self) -> None:
        _int_field("memory_mib", self.memory_mib, 32, 16 << 20)
        _int_field("milli_cpu", self.milli_cpu, 10, 1024 * 1000)
        _int_field("max_pids", self.max_pids, 8, 1 << 20)
        _int_field("disk_mib", self.disk_mib, 1, 16 << 20)
        _int_field("log_bytes", self.log_bytes, 0, 1 << 40)
        _int_field("tmp_mib", self.tmp_mib, 1, 1 << 20)

    def to_dict(self) -> dict[str, int]:
        """The limits as a plain JSON object."""
        return {
            "memory_mib": self.memory_mib,
            "milli_cpu": self.milli_cpu,
            "max_pids": self.max_pids,
            "disk_mib": self.disk_mib,
            "log_bytes": self.log_bytes,
            "tmp_mib": self.tmp_mib,
        }

    @classmethod
    def from_dict(cls, data: object) -> SandboxLimits:
        """Parse :meth:`to_dict`'s shape strictly."""
        obj = _strict_object("limits", data, _LIMIT_KEYS)
        return cls(**obj)


_LIMIT_KEYS = frozenset({"memory_mib", "milli_cpu", "max_pids", "disk_mib", "log_bytes", "tmp_mib"})


def _abs_path(name: str, value: object) -> str:
    """``value`` as a normalised absolute path without NULs, ``..`` or trailing slashes."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise SandboxSpecError(f"{name} must be an absolute path, got {value!r}")
    if ".." in value.split("/") or posixpath.normpath(value) != value:
        raise SandboxSpecError(f"{name} must be a normalised path (no '..', '//' or trailing '/'): {value!r}")
    return value


def _covers(root: str, path: str) -> bool:
    """True when ``path`` is ``root`` or lies under it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def validate_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` once every key and value passed the rules (see ``REFUSED_ENV_*``)."""
    if len(env) > _MAX_ENV:
        raise SandboxSpecError(f"env has {len(env)} variables, at most {_MAX_ENV} are allowed")
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise SandboxSpecError(f"env key {key!r} is not a valid variable name")
        if key.startswith(REFUSED_ENV_PREFIXES) or key in REFUSED_ENV_KEYS:
            raise SandboxSpecError(f"env key {key!r} is reserved: the sandbox sets or forbids it")
        if not isinstance(value, str) or "\0" in value or len(value) > _MAX_ENV_VALUE:
            raise SandboxSpecError(f"env value of {key!r} must be a string without NUL, ≤ 32 KiB")
        out[key] = value
    return out


def _validate_binds(binds: tuple[tuple[str, str], ...]) -> None:
    """Each read-only bind is (absolute host path, absolute sandbox path) outside the reserved dirs."""
    if len(binds) > _MAX_BINDS:
        raise SandboxSpecError(f"at most {_MAX_BINDS} read-only binds are allowed")
    seen: set[str] = set()
    for pair in binds:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise SandboxSpecError(f"a read-only bind is a (host path, sandbox path) pair, got {pair!r}")
        _abs_path("readonly_binds host path", pair[0])
        dest = _abs_path("readonly_binds sandbox path", pair[1])
        for reserved in RESERVED_DESTS:
            if (reserved == "/" and dest == "/") or (reserved != "/" and _covers(reserved, dest)):
                raise SandboxSpecError(
                    f"read-only bind target {dest!r} is inside {reserved!r}, which is reserved"
                )
        if dest in seen:
            raise SandboxSpecError(f"read-only bind target {dest!r} is given twice")
        seen.add(dest)


def _validate_gpus(devices: tuple[str, ...]) -> None:
    """GPU devices are device nodes under ``/dev`` (bound with device access, nothing else of /dev)."""
    for dev in devices:
        path = _abs_path("gpu_devices entry", dev)
        if not path.startswith("/dev/") or path.count("/") > 3:
            raise SandboxSpecError(f"gpu device {dev!r} must be a device node under /dev")


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """One job's sandbox: what to run, where its files are, under which limits (see the module doc).

    ``job_dir`` is a host directory the broker created (0700, its own uid) with ``work/`` (the unpacked
    archive: ``/job``, the cwd, writable), ``output/`` (``/output`` = ``$SBX_OUTPUT``, writable) and
    ``spec.json``/``result.json``. ``readonly_binds`` are extra (host path, sandbox path) pairs such as a
    harness's staged input at ``/input``; ``gpu_devices`` are the admitted GPUs' device nodes.
    """

    job_id: str
    job_dir: str
    command: str
    limits: SandboxLimits
    env: Mapping[str, str] = field(default_factory=dict)
    gpu_devices: tuple[str, ...] = ()
    readonly_binds: tuple[tuple[str, str], ...] = ()
    mode: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not _JOB_ID.match(self.job_id):
            raise SandboxSpecError(f"job_id {self.job_id!r} must match {_JOB_ID.pattern}")
        _abs_path("job_dir", self.job_dir)
        if not isinstance(self.command, str) or not self.command.strip() or "\0" in self.command:
            raise SandboxSpecError("command must be a non-empty string without NUL")
        if len(self.command.encode()) > _MAX_COMMAND:
            raise SandboxSpecError(f"command is longer than {_MAX_COMMAND} bytes")
        if not isinstance(self.limits, SandboxLimits):
            raise SandboxSpecError("limits must be a SandboxLimits")
        if self.mode not in MODES:
            raise SandboxSpecError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "env", MappingProxyType(validate_env(self.env)))
        object.__setattr__(self, "gpu_devices", tuple(self.gpu_devices))
        object.__setattr__(self, "readonly_binds", tuple(tuple(b) for b in self.readonly_binds))
        _validate_gpus(self.gpu_devices)
        _validate_binds(self.readonly_binds)

    @property
    def work_dir(self) -> str:
        """The host directory mounted at ``/job``."""
        return posixpath.join(self.job_dir, "work")

    @property
    def output_dir(self) -> str:
        """The host directory mounted at ``/output``."""
        return posixpath.join(self.job_dir, "output")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) that :meth:`from_json` reads back to an equal spec."""
        doc = {
            "version": SPEC_VERSION,
            "job_id": self.job_id,
            "job_dir": self.job_dir,
            "command": self.command,
            "limits": self.limits.to_dict(),
            "env": dict(sorted(self.env.items())),
            "gpu_devices": list(self.gpu_devices),
            "readonly_binds": [list(b) for b in self.readonly_binds],
            "mode": self.mode,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SandboxSpec:
        """Parse :meth:`to_json`'s output strictly: unknown, missing or mistyped members are refused."""
        obj = _strict_object("spec", _loads(text), _SPEC_KEYS)
        if obj.pop("version") != SPEC_VERSION:
            raise SandboxSpecError(f"spec version must be {SPEC_VERSION}")
        env = obj["env"]
        if not isinstance(env, dict):
            raise SandboxSpecError("env must be an object")
        return cls(
            job_id=obj["job_id"],
            job_dir=obj["job_dir"],
            command=obj["command"],
            limits=SandboxLimits.from_dict(obj["limits"]),
            env=env,
            gpu_devices=tuple(_str_list("gpu_devices", obj["gpu_devices"])),
            readonly_binds=tuple(_pair_list(obj["readonly_binds"])),
            mode=obj["mode"],
        )


_SPEC_KEYS = frozenset(
    {"version", "job_id", "job_dir", "command", "limits", "env", "gpu_devices", "readonly_binds", "mode"}
)


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """What the launcher observed: the command's exit status, why it was ended, and what was enforced.

    ``exit_code`` is the command's status (128+N when it died of signal N; ``None`` when the sandbox never
    started); ``reason`` is one of ``REASONS`` or ``None`` when the command simply exited; ``detail`` is a
    short human sentence; ``enforced`` names each mechanism that was in force (``"cgroup-v1:memory"``,
    ``"rlimit:fsize"``, ``"disk-watchdog"``...); ``log_truncated`` says the job log was cut at its cap.
    """

    exit_code: int | None
    reason: str | None
    detail: str
    enforced: tuple[str, ...]
    log_truncated: bool

    def __post_init__(self) -> None:
        if self.exit_code is not None:
            _int_field("exit_code", self.exit_code, -(1 << 31), 1 << 31)
        if self.reason is not None and self.reason not in REASONS:
            raise SandboxSpecError(f"reason must be one of {sorted(REASONS)} or null, got {self.reason!r}")
        if not isinstance(self.detail, str):
            raise SandboxSpecError("detail must be a string")
        object.__setattr__(self, "enforced", tuple(_str_list("enforced", list(self.enforced))))
        if not isinstance(self.log_truncated, bool):
            raise SandboxSpecError("log_truncated must be a boolean")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) that :meth:`from_json` reads back to an equal result."""
        doc = {
            "exit_code": self.exit_code,
            "reason": self.reason,
            "detail": self.detail,
            "enforced": list(self.enforced),
            "log_truncated": self.log_truncated,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SandboxResult:
        """Parse :meth:`to_json`'s output strictly."""
        obj = _strict_object("result", _loads(text), _RESULT_KEYS)
        return cls(
            exit_code=obj["exit_code"],
            reason=obj["reason"],
            detail=obj["detail"],
            enforced=tuple(_str_list("enforced", obj["enforced"])),
            log_truncated=obj["log_truncated"],
        )


_RESULT_KEYS = frozenset({"exit_code", "reason", "detail", "enforced", "log_truncated"})


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook that refuses duplicate members (the last one would silently win)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SandboxSpecError(f"duplicate JSON member {key!r}")
        out[key] = value
    return out


def _loads(text: str | bytes) -> object:
    """Parse JSON, refusing duplicate members and reporting malformed input as a spec error."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SandboxSpecError(f"not valid JSON: {exc}") from exc


def _strict_object(name: str, data: object, keys: frozenset[str]) -> dict[str, Any]:
    """``data`` as a dict with exactly ``keys``."""
    if not isinstance(data, dict):
        raise SandboxSpecError(f"{name} must be a JSON object")
    unknown, missing = set(data) - keys, keys - set(data)
    if unknown:
        raise SandboxSpecError(f"{name} has unknown members: {sorted(unknown)}")
    if missing:
        raise SandboxSpecError(f"{name} lacks members: {sorted(missing)}")
    return dict(data)


def _str_list(name: str, data: object) -> list[str]:
    """``data`` as a list of strings."""
    if not isinstance(data, list | tuple) or not all(isinstance(x, str) for x in data):
        raise SandboxSpecError(f"{name} must be a list of strings")
    return list(data)


def _pair_list(data: object) -> list[tuple[str, str]]:
    """``data`` as a list of two-string pairs."""
    if not isinstance(data, list):
        raise SandboxSpecError("readonly_binds must be a list of [host, sandbox] pairs")
    pairs = []
    for item in data:
        items = _str_list("readonly_binds entry", item)
        if len(items) != 2:
            raise SandboxSpecError("a readonly_binds entry is a [host, sandbox] pair")
        pairs.append((items[0], items[1]))
    return pairs
