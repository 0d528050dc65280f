"""Turn a custodian's raw table into the *bounded version*, the only version any query or training reads.

Bounding rules (applied once, at registration, so queries never regroup by person):

* rows whose privacy unit is null are dropped (a null identifies nobody, so it cannot be bounded);
* each privacy unit keeps at most ``max_rows_per_unit`` rows, a uniformly random subset chosen by a
  random permutation from a cryptographically seeded generator (seeds are for tests only); the stored rows
  are left in that shuffled order, so row order carries nothing from the source;
* a version whose fixed-point sums could leave the 64-bit range is refused (``policy.check_sum_range``);
* numeric columns are clamped to their declared bounds and stored as **Int64 fixed-point units**
  (value times 10^decimals, rounded half-to-even, then clamped again so rounding never leaves the
  bounds); nulls and NaN are imputed with the lower bound (a public constant); read them as floats
  with :func:`natural_units`;
* categorical columns become a Polars ``Enum`` over the public key set (declared categories, then
  ``OTHER_CATEGORY``); values outside the declared set, and nulls, become ``OTHER_CATEGORY`` (kept, not
  dropped, so counts stay counts of rows).

Error messages name columns and types, never data values.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from common.errors import InvalidInput
from datasets.policy import (
    OTHER_CATEGORY,
    ColumnKind,
    ColumnSpec,
    DatasetPolicy,
    check_sum_range,
    validate_against_schema,
)

TableFormat = Literal["parquet", "csv"]


class DatasetFormatError(InvalidInput):
    """The uploaded bytes are not a readable Parquet or CSV table."""

    code = "invalid_dataset"


def secure_rng() -> np.random.Generator:
    """A NumPy generator seeded with 128 bits from the OS CSPRNG (``secrets``): the production default."""
    return np.random.default_rng(secrets.randbits(128))


def read_table(source: bytes | Path, fmt: TableFormat) -> pl.DataFrame:
    """Read a Parquet or CSV table from bytes or a file; unreadable input raises DatasetFormatError."""
    handle: io.BytesIO | Path = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        if fmt == "parquet":
            return pl.read_parquet(handle)
        if fmt == "csv":
            return pl.read_csv(handle, infer_schema_length=10_000)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        # The third-party message may quote cell values: keep only the error's type.
        raise DatasetFormatError(f"could not read the {fmt} table ({type(exc).__name__})") from exc
    raise DatasetFormatError(f"unknown table format {fmt!r}; use parquet or csv")


def _schema_type(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if isinstance(dtype, pl.Decimal):
        return "decimal"
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "string"
    if isinstance(dtype, pl.Boolean):
        return "bool"
    return "other"


def schema_of(df: pl.DataFrame) -> dict[str, str]:
    """Describe a frame's schema in the policy's dtype vocabulary (see ``datasets.policy.SCHEMA_TYPES``)."""
    return {name: _schema_type(dtype) for name, dtype in df.schema.items()}


def _bound_numeric(col: ColumnSpec) -> pl.Expr:
    """Clamp in natural units (so x scale cannot overflow), scale, round, clamp exactly in units, impute."""
    lo, hi = col.lo_units, col.hi_units
    value = pl.col(col.name).cast(pl.Float64).fill_nan(None)
    units = (value.clip(lo / col.scale, hi / col.scale) * col.scale).round(0).clip(float(lo), float(hi))
    return units.fill_null(float(lo)).cast(pl.Int64).alias(col.name)


def _bound_categorical(col: ColumnSpec) -> pl.Expr:
    text = pl.col(col.name).cast(pl.String)
    known = pl.when(text.is_in(list(col.categories))).then(text).otherwise(pl.lit(OTHER_CATEGORY))
    return known.cast(pl.Enum(list(col.key_set))).alias(col.name)


def _bound_expr(col: ColumnSpec) -> pl.Expr:
    if col.kind is ColumnKind.NUMERIC:
        return _bound_numeric(col)
    if col.kind is ColumnKind.CATEGORICAL:
        return _bound_categorical(col)
    return pl.col(col.name)


def bound_contributions(
    df: pl.DataFrame, policy: DatasetPolicy, rng: np.random.Generator | None = None
) -> pl.DataFrame:
    """Build the bounded version of ``df`` under ``policy`` (rules in the module docstring).

    ``rng`` defaults to :func:`secure_rng`; pass a seeded generator only in tests.
    """
    validate_against_schema(policy, schema_of(df))
    gen = rng if rng is not None else secure_rng()
    unit = policy.privacy_unit
    kept = df.filter(pl.col(unit).is_not_null())
    shuffled = kept[gen.permutation(kept.height)]
    capped = shuffled.filter(pl.int_range(pl.len()).over(unit) < policy.max_rows_per_unit)
    check_sum_range(policy, capped.height)
    return capped.select([_bound_expr(c) for c in policy.columns])


def natural_units(bounded: pl.DataFrame, policy: DatasetPolicy) -> pl.DataFrame:
    """Return the bounded frame with numeric columns as Float64 in their natural units (for training)."""
    return bounded.with_columns(
        (pl.col(c.name).cast(pl.Float64) / c.scale).alias(c.name)
        for c in policy.columns_of(ColumnKind.NUMERIC)
    )


def to_parquet_bytes(df: pl.DataFrame) -> bytes:
    """Serialise a frame to Parquet bytes (zstd), the storage format of bounded versions."""
    buffer = io.BytesIO()
    df.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def read_bounded(data: bytes, policy: DatasetPolicy) -> pl.DataFrame:
    """Read a stored bounded version back, with categoricals as Enums over their public key sets."""
    df = read_table(data, "parquet")
    return df.with_columns(
        pl.col(c.name).cast(pl.String).cast(pl.Enum(list(c.key_set)))
        for c in policy.columns_of(ColumnKind.CATEGORICAL)
    )


def content_hash(data: bytes) -> str:
    """SHA-256 of the bytes, hex: the identity of a dataset version (what approvals bind to)."""
    return hashlib.sha256(data).hexdigest()


def prepare_bounded(
    source: bytes | Path, fmt: TableFormat, policy: DatasetPolicy, rng: np.random.Generator | None = None
) -> tuple[bytes, str]:
    """Read, bound and serialise a raw table; return the bounded Parquet bytes and their content hash."""
    bounded = bound_contributions(read_table(source, fmt), policy, rng)
    data = to_parquet_bytes(bounded)
    return data, content_hash(data)
