"""A job's files on the broker's disk: its unpacked code, its output, its staged input, its log.

Layout under ``<state dir>/jobs/<job id>/`` (the directory is 0700, owned by the broker)::

    work/      the job's code archive, unpacked here by the broker itself (never Ray's shared working_dir
               cache); the sandbox's /job, the only writable place besides /output and /tmp
    output/    what the job returns ($SBX_OUTPUT inside the sandbox), downloadable by its SME
    input/     a harness run's staged, read-only input (the bounded dataset version, the run's spec)
    spec.json  the sandbox launcher's instructions;  result.json  what the launcher saw (exit, kill reason)
    log.txt    the finished job's log (capped), kept when the backend's copy is gone (a head restart)

Archives are checked before anything is written: compressed size, entry count, path depth, declared
unpacked size, no absolute or escaping paths, no links or devices. Unpacking then streams every entry and
counts the bytes really written, so an archive whose headers lie (a zip bomb) stops at the cap. Whatever
fails on the way leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from common.errors import InvalidInput

_CHUNK = 1 << 16
_MAX_NAME_BYTES = 255  # one path component, as Linux filesystems allow
_MAX_PATH_BYTES = 4096
ARCHIVE_ERROR = "invalid_archive"


def code_key(job_id: str) -> str:
    """Where a remotely run job's code archive is kept in the shared object store (any replica may admit it)."""
    return f"jobs/{job_id}/code.zip"


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Caps on one job's code archive (settings ``SBX_JOB_ARCHIVE_*``)."""

    max_bytes: int = 32 * 1024 * 1024
    max_unpacked_bytes: int = 128 * 1024 * 1024
    max_entries: int = 10_000
    max_depth: int = 32


class ArchiveRefused(InvalidInput):
    """The code archive breaks a rule or a cap (nothing was written)."""

    code = ARCHIVE_ERROR


@dataclass(frozen=True, slots=True)
class CheckedArchive:
    """An archive whose directory passed every check; ``declared_bytes`` is what its headers claim."""

    raw: bytes
    entries: int
    declared_bytes: int


def check_archive(archive_b64: str, limits: ArchiveLimits) -> CheckedArchive:
    """Decode and check a base64 zip without writing anything; raise :class:`ArchiveRefused` on any breach."""
    if len(archive_b64) > (limits.max_bytes * 4) // 3 + 4:
        raise ArchiveRefused(f"the code archive is over {limits.max_bytes} bytes")
    try:
        raw = base64.b64decode(archive_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArchiveRefused("working_dir_zip_b64 is not valid base64") from exc
    if len(raw) > limits.max_bytes:
        raise ArchiveRefused(f"the code archive is over {limits.max_bytes} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ArchiveRefused("working_dir_zip_b64 is not a zip archive") from exc
    if len(infos) > limits.max_entries:
        raise ArchiveRefused(f"the code archive has {len(infos)} entries; at most {limits.max_entries}")
    declared = 0
    files: set[str] = set()
    dirs: set[str] = set()
    for info in infos:
        _check_entry(info, limits)
        _check_no_conflict(PurePosixPath(info.filename), info.is_dir(), files, dirs)
        declared += info.file_size
    if declared > limits.max_unpacked_bytes:
        raise ArchiveRefused(f"the code archive unpacks to more than {limits.max_unpacked_bytes} bytes")
    return CheckedArchive(raw, len(infos), declared)


def _check_entry(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    name = info.filename
    path = PurePosixPath(name)
    if not name or "\x00" in name or "\\" in name or path.is_absolute() or ".." in path.parts:
        raise ArchiveRefused(f"the archive entry {name!r} points outside the working directory")
    if len(path.parts) > limits.max_depth:
        raise ArchiveRefused(f"the archive entry {name!r} is nested deeper than {limits.max_depth} levels")
    if info.flag_bits & 0x1:
        raise ArchiveRefused(f"the archive entry {name!r} is encrypted; send it unencrypted")
    if (
        any(len(part.encode()) > _MAX_NAME_BYTES for part in path.parts)
        or len(name.encode()) > _MAX_PATH_BYTES
    ):
        raise ArchiveRefused(f"the archive entry {name[:80]!r}… has a name longer than the filesystem allows")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no Unix file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveRefused(f"the archive entry {name!r} is a link or a device; only files and directories")


def _check_no_conflict(path: PurePosixPath, is_dir: bool, files: set[str], dirs: set[str]) -> None:
    """Refuse an archive in which one path is both a file and a directory (or named twice as a file)."""
    parents = [str(p) for p in path.parents if str(p) != "."]
    key = str(path)
    if (
        any(parent in files for parent in parents)
        or (is_dir and key in files)
        or (not is_dir and key in dirs | files)
    ):
        raise ArchiveRefused(f"the archive names {key!r} twice, or as both a file and a directory")
    dirs.update(parents)
    (dirs if is_dir else files).add(key)


class JobFiles:
    """The job directories under one root (``<state dir>/jobs``)."""

    def __init__(self, root: Path, limits: ArchiveLimits | None = None) -> None:
        """Keep job directories under ``root`` (created on first use, mode 0700)."""
        self.root = Path(root).resolve()
        self.limits = limits or ArchiveLimits()

    def job_dir(self, job_id: str) -> Path:
        """The directory of job ``job_id`` (not created)."""
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def work_dir(self, job_id: str) -> Path:
        """The job's code and working directory (the sandbox's /job)."""
        return self.job_dir(job_id) / "work"

    def output_dir(self, job_id: str) -> Path:
        """What the job returns (the sandbox's /output)."""
        return self.job_dir(job_id) / "output"

    def input_dir(self, job_id: str) -> Path:
        """A harness run's staged input (read-only inside its sandbox)."""
        return self.job_dir(job_id) / "input"

    def prepare(self, job_id: str) -> Path:
        """Create the job's directory with empty ``work/`` and ``output/`` (idempotent); return it."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        job_dir = self.job_dir(job_id)
        job_dir.mkdir(exist_ok=True, mode=0o700)
        for sub in ("work", "output"):
            (job_dir / sub).mkdir(exist_ok=True, mode=0o755)
        return job_dir

    def unpack(self, job_id: str, archive: CheckedArchive) -> int:
        """Unpack a checked archive into the job's ``work/``, counting real bytes; return the bytes written.

        Stops at ``max_unpacked_bytes`` whatever the headers said, and removes the job's directory on any
        failure, so a refused archive leaves nothing behind.
        """
        work = self.prepare(job_id) / "work"
        try:
            return self._extract(archive, work)
        except BaseException:
            self.remove(job_id)
            raise

    def _extract(self, archive: CheckedArchive, work: Path) -> int:
        budget = self.limits.max_unpacked_bytes
        written = 0
        with zipfile.ZipFile(io.BytesIO(archive.raw)) as zf:
            for info in zf.infolist():
                try:
                    written += _extract_entry(zf, info, work, budget - written)
                except (zipfile.BadZipFile, NotImplementedError, OSError, RuntimeError, ValueError) as exc:
                    raise ArchiveRefused(
                        f"the archive entry {info.filename!r} cannot be unpacked: {exc}"
                    ) from exc
        return written

    def remove(self, job_id: str) -> None:
        """Remove everything of the job (a refused or failed submission)."""
        remove_tree(self.job_dir(job_id))

    def expire_work(self, job_id: str) -> None:
        """Remove the job's code dir and staged input after its retention; its log and output stay."""
        for sub in ("work", "input"):
            remove_tree(self.job_dir(job_id) / sub)

    def keep_log(self, job_id: str, text: str) -> None:
        """Keep a finished job's log (already capped by the backend) as ``log.txt`` in its directory."""
        job_dir = self.job_dir(job_id)
        if job_dir.is_dir():
            tmp = job_dir / "log.txt.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(job_dir / "log.txt")

    def kept_log(self, job_id: str) -> str | None:
        """The kept log of a finished job, or ``None`` when there is none."""
        try:
            return (self.job_dir(job_id) / "log.txt").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def output_zip(self, job_id: str) -> BinaryIO:
        """The job's ``output/`` as a zip (one top-level directory named after the job), in an anonymous
        temporary file positioned at its start: the caller streams it and closes it (memory stays small
        whatever the output's size).

        The job's tree is hostile input: it is walked without recursion (any depth), links, FIFOs and devices
        are skipped, each file is read once by descriptor with ``O_NOFOLLOW`` (a hard-linked file is zipped
        once, not once per name) and names that are not UTF-8 are escaped, never an error.
        """
        out = self.output_dir(job_id)
        target = tempfile.TemporaryFile(prefix="sbx-output-")  # noqa: SIM115 - handed to the caller
        try:
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                seen: set[tuple[int, int]] = set()
                for rel, entry in walk_tree(out):
                    _zip_entry(zf, f"{job_id}/{rel}", entry, seen)
        except BaseException:
            target.close()
            raise
        target.seek(0)
        return target


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, work: Path, budget: int) -> int:
    """Write one entry below ``work``; returns its bytes. Refuses past ``budget`` whatever the header said."""
    dest = (work / info.filename).resolve()
    if not dest.is_relative_to(work):
        raise ArchiveRefused(f"the archive entry {info.filename!r} points outside the working directory")
    if info.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise ArchiveRefused("the code archive unpacks to more than its cap")
            out.write(chunk)
    return written


def walk_tree(root: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry below ``root`` with its relative path, depth first, sorted, never following a link and
    never recursing (a tree nested thousands of levels deep is walked like any other)."""
    stack: list[tuple[str, Path]] = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in reversed(entries):
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                stack.append((f"{rel}/", Path(entry.path)))
        for entry in entries:
            yield f"{prefix}{entry.name}", entry


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it without recursion and without following links (a job's tree
    may be nested deeper than Python's recursion limit); what cannot be removed is left, never an error."""
    dirs: list[str] = []
    try:
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)
            return
    except OSError:
        return
    dirs.append(str(path))
    for _rel, entry in walk_tree(path):
        if entry.is_dir(follow_symlinks=False):
            dirs.append(entry.path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    for directory in reversed(dirs):  # children were listed after their parents
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _zip_entry(zf: zipfile.ZipFile, name: str, entry: os.DirEntry[str], seen: set[tuple[int, int]]) -> None:
    """Add one entry of a job's output: directories as such, regular files once each, nothing else."""
    safe = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if entry.is_dir(follow_symlinks=False):
        zf.writestr(zipfile.ZipInfo(f"{safe}/"), b"")
        return
    if not entry.is_file(follow_symlinks=False):
        return  # links, FIFOs, sockets, devices: never followed, never read
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) in seen:
            return  # swapped for something else meanwhile, or another name of a file already zipped
        seen.add((info.st_dev, info.st_ino))
        zinfo = zipfile.ZipInfo(safe)
        zinfo.compress_type = zipfile.ZIP_DEFLATED
        zinfo.external_attr = 0o644 << 16
        with zf.open(zinfo, "w") as dest:
            shutil.copyfileobj(src, dest, _CHUNK)
