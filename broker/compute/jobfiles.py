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
import io
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.errors import InvalidInput

_CHUNK = 1 << 16
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
    for info in infos:
        _check_entry(info, limits)
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
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no Unix file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveRefused(f"the archive entry {name!r} is a link or a device; only files and directories")


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
                dest = (work / info.filename).resolve()
                if not dest.is_relative_to(work):
                    raise ArchiveRefused(
                        f"the archive entry {info.filename!r} points outside the working directory"
                    )
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(dest, "xb") as out:
                        while chunk := src.read(_CHUNK):
                            written += len(chunk)
                            if written > budget:
                                raise ArchiveRefused(f"the code archive unpacks to more than {budget} bytes")
                            out.write(chunk)
                except (zipfile.BadZipFile, NotImplementedError, FileExistsError) as exc:
                    raise ArchiveRefused(
                        f"the archive entry {info.filename!r} cannot be unpacked: {exc}"
                    ) from exc
        return written

    def remove(self, job_id: str) -> None:
        """Remove everything of the job (a refused or failed submission)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def expire_work(self, job_id: str) -> None:
        """Remove the job's code dir and staged input after its retention; its log and output stay."""
        for sub in ("work", "input"):
            shutil.rmtree(self.job_dir(job_id) / sub, ignore_errors=True)

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

    def output_zip(self, job_id: str) -> bytes:
        """The job's ``output/`` as a zip (one top-level directory named after the job)."""
        out = self.output_dir(job_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            if out.is_dir():
                for path in sorted(out.rglob("*")):
                    if path.is_symlink() or not (path.is_file() or path.is_dir()):
                        continue  # the job's own links never lead the broker out of its directory
                    zf.write(path, f"{job_id}/{path.relative_to(out)}")
        return buffer.getvalue()
