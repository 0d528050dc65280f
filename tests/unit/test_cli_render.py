"""The CLI's readable values and tables (broker/cli/render.py)."""

from __future__ import annotations

import pytest

from broker.cli.render import print_list, value_text


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("created_ms", 1_796_349_852_644, "2026-12-04 02:04:12 UTC"),
        ("epsilon_micro", 250_000, "ε 0.25"),
        ("spent_epsilon_micro", 3_000_000, "ε 3"),
        ("delta_e12", 10_000_000, "δ 1.00e-05"),
        ("delta_e12", 0, "δ 0"),
        ("amount", 1, "1 credit"),
        ("cost", 1_234_567, "1,234,567 credits"),
        ("held", None, "-"),
        ("name", "能源", "能源"),
        ("ok", True, "True"),
        ("holdout_fraction", "0.2", "0.2"),
    ],
)
def test_values_read_by_their_unit(key: str, value: object, text: str) -> None:
    assert value_text(key, value) == text


def test_a_list_is_one_unwrapped_table(capsys: pytest.CaptureFixture[str]) -> None:
    long_id = "job_" + "x" * 150
    print_list(
        [{"id": long_id, "state": "queued", "created_ms": 0}, {"id": "job_b", "cost": 2, "extra": [1]}]
    )
    out = capsys.readouterr().out
    assert long_id in out and "1970-01-01 00:00:00 UTC" in out and "2 credits" in out
    header = out.splitlines()[0].split()
    assert header == ["id", "state", "created_ms", "cost"]
    print_list([])
    assert capsys.readouterr().out == "(none)\n"
