"""The migration that introduced the subsidy roll-up fills it with exactly today's rebuild SQL (a frozen copy:
migrations never import code that may change after them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from broker.db import subsidy


def test_the_migration_fills_the_roll_up_with_the_same_sql_as_rebuild() -> None:
    path = Path(subsidy.__file__).parent / "migrations" / "versions" / "0004_subsidy_roll_up.py"
    spec = importlib.util.spec_from_file_location("migration_0004", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert subsidy.REBUILD.text.replace("% 900000", "% 86400000") == migration.BACKFILL  # 0004: UTC days


def test_the_quarter_hour_migration_refills_the_roll_up_with_the_same_sql_as_rebuild() -> None:
    path = Path(subsidy.__file__).parent / "migrations" / "versions" / "0010_identity_money_time.py"
    spec = importlib.util.spec_from_file_location("migration_0010", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert subsidy.REBUILD.text == migration.BACKFILL
