"""Staging for a root launcher: sources the unprivileged sandbox uid may read but not reach.

bwrap resolves every bind source by path (``--bind-fd`` too: it ``realpath``s the descriptor), as the
unprivileged host uid the launcher dropped to. That uid cannot traverse the broker's 0700 job directory
or a 0700 home holding the interpreter. So a root launcher first moves itself into a **private mount
namespace** (mount events do not propagate to the host), mounts a small tmpfs on a fresh directory under
``/tmp`` and bind-mounts each unreachable source into it from an ``O_PATH`` descriptor (race-free: the
mount is exactly the directory that was opened). bwrap then binds from the staged paths. Nothing of this
is visible outside the launcher and its children; :meth:`Stage.close` unmounts it and removes the
directory.

Errors: :class:`StageError` when a namespace or mount cannot be made.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2


class StageError(OSError):
    """The private mount namespace or a staging mount could not be made."""


def _libc() -> ctypes.CDLL:
    """The C library, with errno captured (mount(2) and unshare(2) have no wrapper in Python 3.11)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    """Raise :class:`StageError` with the errno of a failed libc call."""
    if result != 0:
        errno = ctypes.get_errno()
        raise StageError(errno, f"{what}: {os.strerror(errno)}")


def enter_private_mount_namespace() -> None:
    """Give the calling process its own mount namespace, with every mount made private (no propagation)."""
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")


def world_reachable(path: str) -> bool:
    """True when every directory above ``path`` is searchable by anyone (so any uid can reach it)."""
    current = Path(path)
    for parent in current.parents:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class Stage:
    """A tmpfs of bind mounts in the launcher's private mount namespace; maps host paths to staged ones."""

    def __init__(self) -> None:
        self._libc = _libc()
        self.root = tempfile.mkdtemp(prefix="sbx-stage-", dir="/tmp")
        self.sources: dict[str, str] = {}
        _check(
            self._libc.mount(
                b"sbx-stage", self.root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k"
            ),
            "mounting the staging tmpfs",
        )

    def add(self, path: str) -> str:
        """Bind ``path`` (a directory or file) into the stage, from an O_PATH descriptor; return its path."""
        if path in self.sources:
            return self.sources[path]
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            target = os.path.join(self.root, str(len(self.sources)))
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(target)
            else:
                Path(target).touch()
            source = f"/proc/self/fd/{fd}".encode()
            _check(self._libc.mount(source, target.encode(), None, MS_BIND | MS_REC, None), f"staging {path}")
        finally:
            os.close(fd)
        self.sources[path] = target
        return target

    def add_unreachable(self, paths: Iterable[str]) -> None:
        """Stage each of ``paths`` that an arbitrary uid could not reach by path."""
        for path in paths:
            if not world_reachable(path):
                self.add(path)

    def close(self) -> None:
        """Unmount the stage (lazily: bwrap may still hold it) and remove its directory."""
        self._libc.umount2(self.root.encode(), MNT_DETACH)
        with contextlib.suppress(OSError):  # else an empty root-owned directory stays under /tmp: harmless
            os.rmdir(self.root)
