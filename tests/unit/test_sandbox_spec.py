"""The sandbox's pure parts: spec/result values and their strict JSON, the bwrap command line, the limit
arithmetic, and the cgroup file handling on a directory laid out like a cgroup v1/v2 hierarchy."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import struct
from pathlib import Path

import pytest

from broker.compute.sandbox import SandboxLimits, SandboxResult, SandboxSpec, SandboxSpecError, job_host_ids
from broker.compute.sandbox.bwrap import (
    HostLayout,
    SandboxFds,
    build_argv,
    generated_etc,
    mount_points,
    sandbox_env,
)
from broker.compute.sandbox.launch import disk_usage, exit_status, next_interval
from broker.compute.sandbox.limits import (
    Cgroup,
    _own_cgroups,
    cgroup_version,
    cpu_set,
    create_cgroup,
    rlimits,
    sweep_stale,
)
from broker.compute.sandbox.seccomp import AUDIT_ARCH, DENIED, denylist_program

LIMITS = SandboxLimits(memory_mib=512, milli_cpu=1500, max_pids=64, disk_mib=100, log_bytes=4096, tmp_mib=32)
FDS = SandboxFds(work=3, output=4, passwd=5, group=6, hosts=7)
HOST = HostLayout(
    system_dirs={
        "/usr": None,
        "/bin": "usr/bin",
        "/lib": "usr/lib",
        "/lib64": "usr/lib64",
        "/sbin": "usr/sbin",
    },
    etc_entries=("/etc/ld.so.cache", "/etc/ssl/certs"),
    base_prefix="/root/.pyenv/versions/3.11.7",
    venv_prefix="/work/main/.venv",
    sources={"/root/.pyenv/versions/3.11.7": "/tmp/sbx-stage-x/0"},
)


def spec(**changes: object) -> SandboxSpec:
    args: dict[str, object] = {
        "job_id": "job-1",
        "job_dir": "/state/jobs/job-1",
        "command": "python train.py",
        "limits": LIMITS,
        "env": {"EPOCHS": "3"},
    }
    args.update(changes)
    return SandboxSpec(**args)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    """Every (a, b) that follows ``flag`` in ``argv``."""
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


# --- values -------------------------------------------------------------------------------------------


def test_spec_round_trips_through_json() -> None:
    original = spec(gpu_devices=("/dev/nvidia0",), readonly_binds=(("/state/in", "/input"),), mode="rlimit")
    assert SandboxSpec.from_json(original.to_json()) == original
    assert original.work_dir == "/state/jobs/job-1/work" and original.output_dir == "/state/jobs/job-1/output"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(extra=1),
        lambda d: d.pop("mode"),
        lambda d: d["limits"].update(swap_mib=1),
        lambda d: d.update(version=2),
        lambda d: d["limits"].update(memory_mib=True),
        lambda d: d.update(env=["A"]),
    ],
)
def test_spec_json_is_strict(mutate: object) -> None:
    doc = json.loads(spec().to_json())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(SandboxSpecError):
        SandboxSpec.from_json(json.dumps(doc))


def test_duplicate_json_members_are_refused() -> None:
    text = spec().to_json()
    with pytest.raises(SandboxSpecError, match="duplicate"):
        SandboxSpec.from_json(text[:-1] + ',"mode":"off"}')


@pytest.mark.parametrize(
    "key",
    ["RAY_ADDRESS", "SBX_OUTPUT", "SBX_TOKEN", "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "HOME"],
)
def test_reserved_env_keys_are_refused(key: str) -> None:
    with pytest.raises(SandboxSpecError, match="reserved"):
        spec(env={key: "x"})


@pytest.mark.parametrize("env", [{"1BAD": "x"}, {"A=B": "x"}, {"A": "x\0y"}])
def test_malformed_env_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(SandboxSpecError):
        spec(env=env)


@pytest.mark.parametrize(
    "changes",
    [
        {"job_id": "../x"},
        {"job_dir": "relative"},
        {"job_dir": "/a/../b"},
        {"command": "  "},
        {"mode": "none"},
        {"readonly_binds": (("/src", "/proc/x"),)},
        {"readonly_binds": (("/src", "/job/x"),)},
        {"readonly_binds": (("/src", "/"),)},
        {"readonly_binds": (("/a", "/in"), ("/b", "/in"))},
        {"readonly_binds": (("rel", "/in"),)},
        {"gpu_devices": ("/etc/shadow",)},
    ],
)
def test_malformed_specs_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(SandboxSpecError):
        spec(**changes)


@pytest.mark.parametrize(
    "changes", [{"memory_mib": 1}, {"milli_cpu": 0}, {"max_pids": 2}, {"disk_mib": 0}, {"log_bytes": -1}]
)
def test_limits_are_validated(changes: dict[str, int]) -> None:
    with pytest.raises(SandboxSpecError):
        SandboxLimits(**{**LIMITS.to_dict(), **changes})


def test_spec_env_is_a_frozen_copy() -> None:
    env = {"A": "1"}
    value = spec(env=env)
    env["B"] = "2"
    assert dict(value.env) == {"A": "1"}
    with pytest.raises(TypeError):
        value.env["C"] = "3"  # type: ignore[index]


def test_result_round_trips_and_is_strict() -> None:
    result = SandboxResult(137, "out_of_memory", "memory limit", ("cgroup-v1:memory", "disk-watchdog"), True)
    assert SandboxResult.from_json(result.to_json()) == result
    with pytest.raises(SandboxSpecError):
        SandboxResult(0, "exploded", "", (), False)
    with pytest.raises(SandboxSpecError):
        SandboxResult.from_json(result.to_json()[:-1] + ',"more":1}')


def test_exit_status_of_the_launcher() -> None:
    assert exit_status(SandboxResult(3, None, "", (), False), None) == 3
    assert exit_status(SandboxResult(137, "out_of_memory", "", (), False), None) == 1
    assert exit_status(SandboxResult(143, "stopped", "", (), False), 15) == 143
    assert exit_status(SandboxResult(None, "sandbox_error", "", (), False), None) == 1


# --- the command line ---------------------------------------------------------------------------------


def test_argv_is_an_allow_list_never_the_host_root() -> None:
    argv = build_argv(spec(), bwrap="/x/bwrap", fds=FDS, host=HOST)
    binds = pairs(argv, "--ro-bind") + pairs(argv, "--bind")
    assert ("/", "/") not in binds and all(src != "/" for src, _ in binds)
    assert ("/usr", "/usr") in binds
    assert ("usr/bin", "/bin") in pairs(argv, "--symlink")  # symlinks stay symlinks
    assert ("/tmp/sbx-stage-x/0", "/root/.pyenv/versions/3.11.7") in binds  # staged source, same path inside
    assert ("/work/main/.venv", "/work/main/.venv") in binds
    assert ("3", "/job") in pairs(argv, "--bind-fd") and ("4", "/output") in pairs(argv, "--bind-fd")
    etc = {dest for _, dest in binds if dest.startswith("/etc")}
    assert etc == {"/etc/ld.so.cache", "/etc/ssl/certs"}  # never all of /etc, never /etc/shadow
    assert {d for _, d in pairs(argv, "--ro-bind-data")} == {"/etc/passwd", "/etc/group", "/etc/hosts"}
    assert argv[-4:] == ["--", "/bin/sh", "-c", "python train.py"]
    assert argv[-8:-4] == ["--remount-ro", "/", "--chdir", "/job"]


def test_a_venv_under_tmp_is_bound_on_top_of_the_fresh_tmp() -> None:
    """A clone (and its .venv) under /tmp must not be hidden by the sandbox's own /tmp: the tmpfs comes
    first, the prefixes are bound on top. (In the other order `python` silently became the base interpreter
    without the venv's packages.)"""
    layout = HostLayout(**{**_layout_fields(), "venv_prefix": "/tmp/ci-clone/.venv"})
    argv = build_argv(spec(), bwrap="/x/bwrap", fds=FDS, host=layout)
    tmpfs_at = next(i for i in range(len(argv) - 1) if argv[i : i + 2] == ["--tmpfs", "/tmp"])
    assert tmpfs_at < argv.index("/tmp/ci-clone/.venv")


def test_argv_namespaces_and_process_options() -> None:
    argv = build_argv(spec(), bwrap="/x/bwrap", fds=FDS, host=HOST, status_fd=9)
    for flag in (
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--new-session",
        "--die-with-parent",
        "--clearenv",
    ):
        assert flag in argv
    assert argv[argv.index("--uid") + 1] == "1000" and argv[argv.index("--gid") + 1] == "1000"
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--hostname") + 1] == "sandbox"
    assert argv[argv.index("--json-status-fd") + 1] == "9"
    assert argv.index("--clearenv") < argv.index("--setenv")


def test_seccomp_filter_is_passed_when_given() -> None:
    assert "--seccomp" not in build_argv(spec(), bwrap="/x/bwrap", fds=FDS, host=HOST)
    fds = SandboxFds(work=3, output=4, passwd=5, group=6, hosts=7, seccomp=8)
    argv = build_argv(spec(), bwrap="/x/bwrap", fds=fds, host=HOST)
    assert argv[argv.index("--seccomp") + 1] == "8" and 8 in fds.all()


def test_scratch_mounts_are_size_capped() -> None:
    argv = build_argv(spec(), bwrap="/x/bwrap", fds=FDS, host=HOST)
    tmpfs = {argv[i + 1]: argv[i - 1] for i, a in enumerate(argv) if a == "--tmpfs"}
    assert tmpfs == {"/tmp": str(32 << 20), "/dev/shm": str(32 << 20)}
    assert all(argv[i - 2] == "--size" for i, a in enumerate(argv) if a == "--tmpfs")
    assert argv.index("--dev") < argv.index("/dev/shm")  # the shm tmpfs goes over bwrap's /dev


def test_environment_is_explicit() -> None:
    env = sandbox_env(spec(), HOST)
    assert env["PATH"] == "/work/main/.venv/bin:/root/.pyenv/versions/3.11.7/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["HOME"] == "/job" and env["SBX_OUTPUT"] == "/output" and env["TMPDIR"] == "/tmp"
    assert env["EPOCHS"] == "3"
    assert set(env) == {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "SBX_OUTPUT",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "EPOCHS",
    }
    argv = build_argv(spec(), bwrap="/x/bwrap", fds=FDS, host=HOST)
    assert dict(pairs(argv, "--setenv")) == env


def test_gpus_only_when_listed_and_binds_staged() -> None:
    plain = build_argv(spec(), bwrap="/x/bwrap", fds=FDS, host=HOST)
    assert "--dev-bind" not in plain
    staged = HostLayout(**{**_layout_fields(), "sources": {"/state/jobs/job-1/input": "/tmp/stage/1"}})
    argv = build_argv(
        spec(gpu_devices=("/dev/nvidia0",), readonly_binds=(("/state/jobs/job-1/input", "/input"),)),
        bwrap="/x/bwrap",
        fds=FDS,
        host=staged,
    )
    assert pairs(argv, "--dev-bind") == [("/dev/nvidia0", "/dev/nvidia0")]
    assert ("/tmp/stage/1", "/input") in pairs(argv, "--ro-bind")


def test_prefixes_inside_system_dirs_are_not_bound_twice() -> None:
    debian = HostLayout(
        system_dirs={"/usr": None}, etc_entries=(), base_prefix="/usr", venv_prefix="/usr/local"
    )
    argv = build_argv(spec(), bwrap="/usr/bin/bwrap", fds=FDS, host=debian)
    assert [d for _, d in pairs(argv, "--ro-bind")] == ["/usr"]
    assert mount_points(spec(), debian) >= {"/", "/usr", "/job", "/output", "/tmp", "/proc", "/dev"}
    assert "/usr/local" not in mount_points(spec(), debian)


def test_mode_off_has_no_command_line() -> None:
    with pytest.raises(ValueError, match="without a sandbox"):
        build_argv(spec(mode="off"), bwrap="/x/bwrap", fds=FDS, host=HOST)


def test_host_source_maps_the_longest_staged_root() -> None:
    layout = HostLayout(
        system_dirs={},
        etc_entries=(),
        base_prefix="/p",
        venv_prefix="/v",
        sources={"/a": "/s/0", "/a/b": "/s/1"},
    )
    assert layout.source("/a/b/c") == "/s/1/c"
    assert layout.source("/a/x") == "/s/0/x"
    assert layout.source("/ab") == "/ab"


def test_generated_etc_names_only_the_sandbox_user() -> None:
    etc = generated_etc()
    assert "sandbox:x:1000:1000" in etc["/etc/passwd"] and "root:x:0:0" in etc["/etc/passwd"]
    assert "localhost" in etc["/etc/hosts"]


# --- limits -------------------------------------------------------------------------------------------


def test_rlimits_with_and_without_cgroup() -> None:
    with_cg = dict(rlimits(LIMITS, cgroup=True))
    assert with_cg == {
        resource.RLIMIT_FSIZE: 100 << 20,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NOFILE: 1024,  # unlinked-but-open files count as disk: few descriptors to look at
    }
    fallback = dict(rlimits(LIMITS, cgroup=False))
    assert fallback[resource.RLIMIT_AS] == 512 << 20 and fallback[resource.RLIMIT_NPROC] == 64


def test_cpu_set_rounds_up_and_rotates() -> None:
    assert len(cpu_set(1500, range(8), key=0)) == 2
    assert len(cpu_set(100, range(8), key=0)) == 1
    assert cpu_set(8000, range(2), key=5) == {0, 1}
    assert cpu_set(1000, range(4), key=1) == {1} and cpu_set(1000, range(4), key=6) == {2}


def test_job_host_ids_are_deterministic_and_unprivileged() -> None:
    uid, gid = job_host_ids("job-1")
    assert (uid, gid) == job_host_ids("job-1") and uid >= 200_000 and uid == gid
    assert job_host_ids("job-2") != (uid, gid)


def test_own_cgroups_parse_v1_and_v2_lines() -> None:
    text = "4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/user.slice/x.scope\n"
    own = _own_cgroups(text)
    assert own["memory"] == "/process_api/abc" and own["cpu"] == "/" and own["cpuacct"] == "/"
    assert own[""] == "/user.slice/x.scope"


def test_cgroup_v2_files_on_a_fake_hierarchy(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids io\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    assert cgroup_version(tmp_path) == 2
    group = create_cgroup("sbx-j", LIMITS, root=tmp_path, own={"": "/"})
    assert group.version == 2 and group.dirs[""] == tmp_path / "sbx-j"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "sbx-j" / "memory.max").read_text() == str(512 << 20)
    assert (tmp_path / "sbx-j" / "cpu.max").read_text() == "150000 100000"
    assert (tmp_path / "sbx-j" / "pids.max").read_text() == "64"
    (tmp_path / "sbx-j" / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    (tmp_path / "sbx-j" / "pids.events").write_text("max 0\n")
    assert group.oom_kills() == 1 and group.pids_refusals() == 0
    assert group.procs_files() == (tmp_path / "sbx-j" / "cgroup.procs",)
    assert group.enforced == ("cgroup-v2:memory", "cgroup-v2:cpu", "cgroup-v2:pids")


def test_cgroup_v1_files_on_a_fake_hierarchy(tmp_path: Path) -> None:
    for c in ("memory", "cpu", "pids"):
        (tmp_path / c / "outer").mkdir(parents=True)
        (tmp_path / c / "cgroup.procs").write_text("")
    assert cgroup_version(tmp_path) == 1
    group = create_cgroup(
        "sbx-j", LIMITS, root=tmp_path, own={"memory": "/outer", "cpu": "/outer", "pids": "/outer"}
    )
    memory = tmp_path / "memory" / "outer" / "sbx-j"
    assert (memory / "memory.limit_in_bytes").read_text() == str(512 << 20)
    assert (tmp_path / "cpu" / "outer" / "sbx-j" / "cpu.cfs_quota_us").read_text() == "150000"
    assert (tmp_path / "pids" / "outer" / "sbx-j" / "pids.max").read_text() == "64"
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert group.oom_kills() == 2
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")  # before 4.13
    (memory / "memory.failcnt").write_text("5\n")
    assert group.oom_kills() == 5
    assert len(Cgroup(1, group.dirs).procs_files()) == 3


def test_watchdog_interval_shrinks_as_a_fast_writer_nears_the_cap() -> None:
    assert next_interval(remaining=1 << 30, rate=0.0, scan_s=0.001) == 0.025
    assert next_interval(remaining=5 << 20, rate=1e9, scan_s=0.0001) == 0.005  # 1 GB/s, 5 MiB left
    assert 0.01 < next_interval(remaining=30 << 20, rate=1e9, scan_s=0.0001) < 0.02
    assert next_interval(remaining=1 << 20, rate=0.0, scan_s=0.005) == 0.05  # a slower scan runs less often
    # ...but never less often than every 100 ms: a flood of files cannot stretch the watch (red-team finding)
    assert next_interval(remaining=1 << 20, rate=1e9, scan_s=0.5) == 0.1


def test_stale_groups_of_dead_launchers_are_swept(tmp_path: Path) -> None:
    (tmp_path / "sbx-job-999999999").mkdir()  # no such pid: a launcher killed with SIGKILL
    (tmp_path / f"sbx-job-{os.getpid()}").mkdir()  # a live launcher's group
    busy = tmp_path / "sbx-busy-999999998"
    busy.mkdir()
    (busy / "cgroup.procs").write_text("123\n")
    assert sweep_stale(tmp_path) == [tmp_path / "sbx-job-999999999"]
    assert (tmp_path / f"sbx-job-{os.getpid()}").exists() and busy.exists()


def test_disk_usage_counts_each_inode_once_and_sparse_files_in_full(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10_000)
    (tmp_path / "hard").hardlink_to(tmp_path / "a")
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate(5 << 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to("/etc/passwd")
    used = disk_usage((str(tmp_path),))
    assert 10_000 + (5 << 20) <= used <= 10_000 + (5 << 20) + 64 * 1024


def _layout_fields() -> dict[str, object]:
    return {f: getattr(HOST, f) for f in HOST.__dataclass_fields__}


# --- the seccomp denylist -----------------------------------------------------------------------------


def run_bpf(program: bytes, nr: int, arch: int) -> int:
    """Interpret the classic-BPF ``program`` (the four opcodes it uses) on one system call."""
    ops = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    data = {0: nr, 4: arch}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == 0x20:
            acc, pc = data[k], pc + 1
        elif code in (0x15, 0x35):
            taken = acc == k if code == 0x15 else acc >= k
            pc += 1 + (jt if taken else jf)
        else:
            assert code == 0x06
            return k


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_denies_the_listed_calls_and_foreign_abis(machine: str) -> None:
    program = denylist_program(machine)
    assert program is not None and len(program) % 8 == 0
    arch, column = AUDIT_ARCH[machine], 0 if machine == "x86_64" else 1
    eperm = 0x00050000 | errno.EPERM
    for name, numbers in DENIED.items():
        if numbers[column] is not None:
            assert run_bpf(program, numbers[column], arch) == eperm, name  # type: ignore[arg-type]
    getpid = 39 if machine == "x86_64" else 172
    assert run_bpf(program, getpid, arch) == 0x7FFF0000
    assert run_bpf(program, getpid, 0x40000003) == eperm  # i386 (int 0x80): a foreign ABI
    if machine == "x86_64":
        assert run_bpf(program, 0x40000000 | getpid, arch) == eperm  # x32


def test_seccomp_has_no_table_for_other_machines() -> None:
    assert denylist_program("riscv64") is None


def test_seccomp_numbers_match_the_kernel_headers() -> None:
    headers = {
        0: Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        1: Path("/usr/include/asm-generic/unistd.h"),
    }
    if not all(h.exists() for h in headers.values()):
        pytest.skip("the kernel's syscall headers (linux-libc-dev) are not installed")
    for column, header in headers.items():
        text = header.read_text()
        for name, numbers in DENIED.items():
            match = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)", text)
            assert (int(match.group(1)) if match else None) == numbers[column], (name, header)
