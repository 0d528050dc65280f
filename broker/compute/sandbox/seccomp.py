"""A small seccomp denylist for the sandbox: a classic-BPF program bwrap loads with ``--seccomp FD``.

Namespaces do not shrink the kernel's attack surface, so the command is refused (``EPERM``) the system
calls that ordinary programs (Python, numpy, torch, a shell) never need and that kernel privilege
escalations keep coming through: the key store, eBPF, ``userfaultfd``, ``perf_event_open``, io_uring,
module and kexec loading, file handles (``open_by_handle_at``), the mount API, namespace changes, swap,
reboot, quotas, the kernel log and raw port I/O. System calls of a foreign ABI (i386 ``int 0x80`` and
x32 on x86_64) are refused as a whole, since the table below would not match their numbers.

Pure: :func:`denylist_program` returns the filter's bytes (an array of ``struct sock_filter``) for a
machine name, or ``None`` for an architecture without a table (then no filter is loaded, and
``enforced`` does not name one).
"""

from __future__ import annotations

import errno
import struct

#: Denied system calls → (x86_64 number, aarch64 number); ``None`` where the call does not exist.
DENIED: dict[str, tuple[int | None, int | None]] = {
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "userfaultfd": (323, 282),
    "perf_event_open": (298, 241),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "vhangup": (153, 58),
    "syslog": (103, 116),
    "lookup_dcookie": (212, 18),
    "iopl": (172, None),
    "ioperm": (173, None),
    "uselib": (134, None),
}

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_COLUMN = {"x86_64": 0, "aarch64": 1}
X32_SYSCALL_BIT = 0x40000000

# classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFF_NR = 0  # struct seccomp_data: int nr; __u32 arch; ...
_OFF_ARCH = 4


def denied_numbers(machine: str) -> tuple[int, ...] | None:
    """The denied system call numbers on ``machine`` (``os.uname().machine``), or ``None`` without a table."""
    column = _COLUMN.get(machine)
    if column is None:
        return None
    return tuple(sorted(n for pair in DENIED.values() if (n := pair[column]) is not None))


def denylist_program(machine: str) -> bytes | None:
    """The filter for ``machine``: foreign ABIs and the :data:`DENIED` calls get ``EPERM``, all else runs."""
    numbers = denied_numbers(machine)
    if numbers is None:
        return None
    ops: list[tuple[int, int, int]] = [(_LD_W_ABS, _OFF_ARCH, 0), (_JEQ_K, AUDIT_ARCH[machine], -1)]
    ops.append((_LD_W_ABS, _OFF_NR, 0))
    if machine == "x86_64":
        ops.append((_JGE_K, X32_SYSCALL_BIT, 1))  # x32: deny
    ops += [(_JEQ_K, n, 1) for n in numbers]
    ops += [(_RET_K, _RET_ALLOW, 0), (_RET_K, _RET_ERRNO | errno.EPERM, 0)]
    return _assemble(ops)


def _assemble(ops: list[tuple[int, int, int]]) -> bytes:
    """Encode ``(code, k, kind)`` ops as ``struct sock_filter``; the last op is the deny return.

    ``kind`` 1: a jump taken → deny, else fall through; -1: a jump taken → fall through, else deny;
    0: not a jump.
    """
    deny = len(ops) - 1
    out = bytearray()
    for index, (code, k, kind) in enumerate(ops):
        to_deny = deny - index - 1
        jt, jf = (to_deny, 0) if kind == 1 else (0, to_deny) if kind == -1 else (0, 0)
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)
