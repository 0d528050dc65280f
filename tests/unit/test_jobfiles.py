"""Job files: archives are checked before anything is written, unpacked with real byte counting (a zip bomb
stops at the cap), and a refused archive leaves nothing behind."""

from __future__ import annotations

import base64
import io
import stat
import zipfile
from pathlib import Path

import pytest

from broker.compute.jobfiles import ArchiveLimits, ArchiveRefused, JobFiles, check_archive

LIMITS = ArchiveLimits(max_bytes=64 * 1024, max_unpacked_bytes=256 * 1024, max_entries=20, max_depth=4)


def _zip(entries: dict[str, bytes], *, links: tuple[str, ...] = ()) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return base64.b64encode(buffer.getvalue()).decode()


def _lying_bomb(size: int) -> str:
    """A zip whose header claims a tiny file that really inflates to ``size`` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.bin", b"\0" * size)
    raw = bytearray(buffer.getvalue())
    # Patch the declared uncompressed size in the central directory (offset 24 of its header) to 1 byte.
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (1).to_bytes(4, "little")
    local = raw.find(b"PK\x03\x04")
    raw[local + 22 : local + 26] = (1).to_bytes(4, "little")
    return base64.b64encode(bytes(raw)).decode()


def test_a_good_archive_unpacks_with_its_real_size(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "jobs", LIMITS)
    checked = check_archive(_zip({"main.py": b"print(1)\n", "pkg/mod.py": b"x = 1\n"}), LIMITS)
    written = files.unpack("job_a", checked)
    assert written == len(b"print(1)\n") + len(b"x = 1\n")
    assert (files.work_dir("job_a") / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert files.output_dir("job_a").is_dir()
    assert stat.S_IMODE(files.job_dir("job_a").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("archive", "fragment"),
    [
        (_zip({"../evil.py": b"x"}), "outside"),
        (_zip({"/etc/evil": b"x"}), "outside"),
        (_zip({"a/b/c/d/e/f.py": b"x"}), "deeper"),
        (_zip({f"f{i}.py": b"x" for i in range(21)}), "entries"),
        (_zip({"big.bin": b"\0" * (300 * 1024)}), "unpacks to more"),
        (_zip({"ok.py": b"x"}, links=("link",)), "link"),
        ("not base64!!", "base64"),
        (base64.b64encode(b"not a zip").decode(), "not a zip"),
        (base64.b64encode(b"\0" * (70 * 1024)).decode(), "over"),
    ],
)
def test_bad_archives_are_refused_before_anything_is_written(
    tmp_path: Path, archive: str, fragment: str
) -> None:
    with pytest.raises(ArchiveRefused, match=fragment) as exc:
        check_archive(archive, LIMITS)
    assert exc.value.code == "invalid_archive"
    assert not (tmp_path / "jobs").exists()


def test_a_bomb_whose_headers_lie_stops_at_the_cap_and_leaves_nothing(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "jobs", LIMITS)
    bomb = _lying_bomb(10 * 1024 * 1024)
    checked = check_archive(bomb, LIMITS)  # the directory claims one byte: only unpacking can tell
    assert checked.declared_bytes == 1
    with pytest.raises(ArchiveRefused):
        files.unpack("job_bomb", checked)
    assert not files.job_dir("job_bomb").exists()


def test_negative_control_the_cap_is_what_refuses_a_compressible_bomb(tmp_path: Path) -> None:
    """10 MiB of zeros compress to a few KiB: under the caps it is refused, with a roomy cap it unpacks whole."""
    bomb = _zip({"zeros.bin": b"\0" * (10 * 1024 * 1024)})
    with pytest.raises(ArchiveRefused, match="unpacks to more"):
        check_archive(bomb, LIMITS)
    roomy = ArchiveLimits(max_bytes=64 * 1024, max_unpacked_bytes=64 * 1024 * 1024)
    files = JobFiles(tmp_path / "jobs", roomy)
    assert files.unpack("job_z", check_archive(bomb, roomy)) == 10 * 1024 * 1024


def test_output_zip_has_one_top_level_directory_and_skips_links(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "jobs", LIMITS)
    files.prepare("job_o")
    out = files.output_dir("job_o")
    (out / "model.txt").write_text("weights")
    (out / "leak").symlink_to("/etc/passwd")
    with zipfile.ZipFile(files.output_zip("job_o")) as zf:
        assert zf.namelist() == ["job_o/model.txt"]


def test_expiry_removes_code_but_keeps_output(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "jobs", LIMITS)
    files.unpack("job_e", check_archive(_zip({"main.py": b"x"}), LIMITS))
    (files.output_dir("job_e") / "result.txt").write_text("kept")
    files.expire_work("job_e")
    assert not files.work_dir("job_e").exists()
    assert (files.output_dir("job_e") / "result.txt").read_text() == "kept"


def test_job_ids_cannot_name_a_path(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "jobs", LIMITS)
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            files.job_dir(bad)
