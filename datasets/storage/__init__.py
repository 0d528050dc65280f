"""Object stores for dataset files: one interface, a local-directory store and an S3 (MinIO client) store."""

from datasets.storage.base import (
    InvalidKey,
    ObjectInfo,
    ObjectStore,
    StorageConflict,
    StorageError,
    StorageNotFound,
    dataset_key,
    validate_key,
)
from datasets.storage.local import LocalDirStore
from datasets.storage.s3 import S3Store

__all__ = [
    "InvalidKey",
    "LocalDirStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "StorageConflict",
    "StorageError",
    "StorageNotFound",
    "dataset_key",
    "validate_key",
]
