"""A checker for the Kubernetes Pod Security Standard *restricted* profile (which includes *baseline*).

Written from the published controls (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
policy version "latest"): each function below is one control and names the fields it reads. It checks a pod
spec (``PodSpec`` as a dict, e.g. a RayJob's pod template ``spec``) and optional pod annotations, and returns
one message per violation (empty: the pod would be admitted by Pod Security Admission at ``restricted``).
Tests use it on every pod the broker generates, and on relaxed copies to show it can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

Pod = Mapping[str, Any]

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_VOLUME_META = frozenset({"name"})


def containers(spec: Pod) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every container of the pod, init and ephemeral ones included, with a path naming it."""
    for kind in ("containers", "initContainers", "ephemeralContainers"):
        for i, container in enumerate(spec.get(kind) or []):
            yield f"{kind}[{i}]({container.get('name', '?')})", container


def _sc(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("securityContext") or {}


# --- baseline ---------------------------------------------------------------------------------------------
def host_process(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Windows HostProcess containers are forbidden (``windowsOptions.hostProcess``)."""
    bad = ["pod"] if (_sc(spec).get("windowsOptions") or {}).get("hostProcess") else []
    bad += [p for p, c in containers(spec) if (_sc(c).get("windowsOptions") or {}).get("hostProcess")]
    return [f"{p}: windowsOptions.hostProcess must be unset or false" for p in bad]


def host_namespaces(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Sharing the host's network, PID or IPC namespace is forbidden."""
    return [f"spec.{f} must be unset or false" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]


def privileged(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Privileged containers are forbidden."""
    return [
        f"{p}: privileged must be unset or false" for p, c in containers(spec) if _sc(c).get("privileged")
    ]


def baseline_capabilities(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Capabilities beyond the default set may not be added."""
    out = []
    for p, c in containers(spec):
        extra = set((_sc(c).get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if extra:
            out.append(f"{p}: capabilities.add {sorted(extra)} is beyond the baseline set")
    return out


def host_path_volumes(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """hostPath volumes are forbidden."""
    return [
        f"volume {v.get('name')}: hostPath is forbidden" for v in spec.get("volumes") or [] if "hostPath" in v
    ]


def host_ports(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Host ports are forbidden (unset or 0)."""
    return [
        f"{p}: ports[{i}].hostPort must be unset or 0"
        for p, c in containers(spec)
        for i, port in enumerate(c.get("ports") or [])
        if port.get("hostPort")
    ]


def app_armor(spec: Pod, annotations: Mapping[str, str]) -> list[str]:
    """AppArmor may be the runtime default or a localhost profile, never unconfined."""
    out = []
    profiles = [("pod", (_sc(spec).get("appArmorProfile") or {}).get("type"))]
    profiles += [(p, (_sc(c).get("appArmorProfile") or {}).get("type")) for p, c in containers(spec)]
    out += [
        f"{p}: appArmorProfile.type {t!r} is not allowed"
        for p, t in profiles
        if t not in (None, "RuntimeDefault", "Localhost")
    ]
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"annotation {key}={value!r} is not allowed")
    return out


def se_linux(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """SELinux: only the container types, and no custom user or role."""
    out = []
    for p, sc in [("pod", _sc(spec)), *((p, _sc(c)) for p, c in containers(spec))]:
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            out.append(f"{p}: seLinuxOptions.type {options.get('type')!r} is not allowed")
        out += [f"{p}: seLinuxOptions.{f} must be unset" for f in ("user", "role") if options.get(f)]
    return out


def proc_mount(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """The default /proc masks are required."""
    return [
        f"{p}: procMount must be unset or Default"
        for p, c in containers(spec)
        if _sc(c).get("procMount") not in (None, "Default")
    ]


def baseline_seccomp(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Seccomp may not be explicitly Unconfined."""
    scs = [("pod", _sc(spec)), *((p, _sc(c)) for p, c in containers(spec))]
    return [
        f"{p}: seccompProfile Unconfined"
        for p, sc in scs
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"
    ]


def sysctls(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Only the namespaced, safe sysctls."""
    return [
        f"sysctl {s.get('name')} is not in the safe set"
        for s in _sc(spec).get("sysctls") or []
        if s.get("name") not in SAFE_SYSCTLS
    ]


# --- restricted ---------------------------------------------------------------------------------------------
def volume_types(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, secret."""
    out = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - _VOLUME_META
        if not kinds or kinds - RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {volume.get('name')}: type {sorted(kinds)} is not allowed")
    return out


def privilege_escalation(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Every container must set allowPrivilegeEscalation: false."""
    return [
        f"{p}: allowPrivilegeEscalation must be false"
        for p, c in containers(spec)
        if _sc(c).get("allowPrivilegeEscalation") is not False
    ]


def run_as_non_root(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """runAsNonRoot true at pod level (no container setting false) or in every container."""
    pod_level = _sc(spec).get("runAsNonRoot") is True
    out = []
    for p, c in containers(spec):
        value = _sc(c).get("runAsNonRoot")
        if value is False or (value is None and not pod_level):
            out.append(f"{p}: runAsNonRoot must be true (pod or container)")
    return out


def run_as_user(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """runAsUser may not be 0, at pod or container level."""
    scs = [("pod", _sc(spec)), *((p, _sc(c)) for p, c in containers(spec))]
    return [f"{p}: runAsUser must not be 0" for p, sc in scs if sc.get("runAsUser") == 0]


def restricted_seccomp(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """seccompProfile RuntimeDefault or Localhost at pod level or in every container (never Unconfined)."""
    allowed = ("RuntimeDefault", "Localhost")
    pod_type = (_sc(spec).get("seccompProfile") or {}).get("type")
    out = [] if pod_type in (None, *allowed) else [f"pod: seccompProfile.type {pod_type!r} is not allowed"]
    for p, c in containers(spec):
        own = (_sc(c).get("seccompProfile") or {}).get("type")
        if own not in (None, *allowed) or (own is None and pod_type not in allowed):
            out.append(f"{p}: seccompProfile.type must be RuntimeDefault or Localhost")
    return out


def restricted_capabilities(spec: Pod, _annotations: Mapping[str, str]) -> list[str]:
    """Every container drops ALL and adds nothing but NET_BIND_SERVICE."""
    out = []
    for p, c in containers(spec):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{p}: capabilities.drop must contain ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{p}: capabilities.add may only hold NET_BIND_SERVICE")
    return out


Check = Callable[[Pod, Mapping[str, str]], list[str]]
BASELINE: tuple[Check, ...] = (
    host_process,
    host_namespaces,
    privileged,
    baseline_capabilities,
    host_path_volumes,
    host_ports,
    app_armor,
    se_linux,
    proc_mount,
    baseline_seccomp,
    sysctls,
)
RESTRICTED: tuple[Check, ...] = (
    *BASELINE,
    volume_types,
    privilege_escalation,
    run_as_non_root,
    run_as_user,
    restricted_seccomp,
    restricted_capabilities,
)


def restricted_violations(spec: Pod, annotations: Mapping[str, str] | None = None) -> list[str]:
    """Every violation of the restricted profile by the pod ``spec`` (empty: admitted)."""
    return [message for check in RESTRICTED for message in check(spec, annotations or {})]
