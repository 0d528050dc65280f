"""The DP-SGD harness end to end, in-process, on small generated data with a real signal."""

from __future__ import annotations

import json
import math
import struct
import traceback
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load as load_safetensors

from privacy.training import (
    SecureModeUnavailable,
    SpecError,
    SpecOverGrant,
    TrainingFailed,
    harness,
    planned_cost,
    validate_spec,
)
from privacy.training.dpsgd import build_model, make_private_trainer, secure_mode_available
from privacy.training.harness import TrainingResult, _check_accounting, train_dp
from privacy.training.sampling import RandomKeys, one_row_per_unit, split_holdout
from privacy.training.spec import ModelSpec

N_FEATURES = 10
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
COLUMNS = {"pid": "unit", **dict.fromkeys(FEATURES, "numeric"), "y": "categorical", "v": "numeric"}
BOUNDS = dict.fromkeys(FEATURES, (-4.0, 4.0))
GRANT = 4_000_000
POLICY_DELTA = 1_000_000  # 1e-6
CANARY_FLOAT = 31337.73313
CANARY_TEXT = "canary-7f3a9c"


def logistic_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels from a fixed logistic truth (weights do not depend on ``seed``), and targets."""
    truth = np.random.default_rng(0).normal(size=N_FEATURES) * 1.5
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    p = 1.0 / (1.0 + np.exp(-(x @ truth + 1.0)))  # intercept: classes are unbalanced
    y = (rng.random(n) < p).astype(np.int64)
    return x, y, x @ truth


def frame(x: np.ndarray, y: np.ndarray, unit: np.ndarray | None = None) -> pl.DataFrame:
    units = np.arange(len(y)) if unit is None else unit
    data: dict[str, Any] = {"pid": units, **{f: x[:, i] for i, f in enumerate(FEATURES)}, "y": y}
    data["v"] = x[:, 0] * 2.0 + 1.0
    return pl.DataFrame(data)


def spec(**overrides: Any) -> Any:
    body: dict[str, Any] = {
        "task": "classification",
        "features": FEATURES,
        "label": "y",
        "model": {"kind": "linear"},
        "epochs": 3,
        "batch_size": 256,
        "learning_rate": 1.0,
        "max_grad_norm": 1.0,
        "target_epsilon": 3,
    }
    body.update(overrides)
    return validate_spec(
        body,
        dataset_columns=COLUMNS,
        label_categories=[0, 1],
        grant_epsilon_micro=GRANT,
        policy_delta_e12=POLICY_DELTA,
        privacy_unit="pid",
    )


def with_canaries(df: pl.DataFrame) -> pl.DataFrame:
    """Plant a unique value in a feature and in the unit column: neither may ever come out."""
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 17).then(CANARY_FLOAT).otherwise(pl.col("f3")).alias("f3"),
        pl.col("pid").cast(pl.String),
    )
    return df.with_columns(
        pl.when(pl.col("pid") == "42").then(pl.lit(CANARY_TEXT)).otherwise("pid").alias("pid")
    )


@pytest.fixture(scope="module")
def trained() -> TrainingResult:
    """A run in the default (secure) mode: CSPRNG noise, masks and unit sampling, no seed."""
    x, y, _ = logistic_data(20_000, seed=1)
    df = with_canaries(frame(x, y))
    return train_dp(spec(), df, privacy_unit="pid", feature_bounds=BOUNDS)


def load_model(result: TrainingResult) -> torch.nn.Module:
    net = build_model(result.spec.model, len(result.spec.features), result.spec.n_outputs)
    net.load_state_dict(load_safetensors(result.weights))
    return net.eval()


def test_model_at_epsilon_3_beats_the_majority_baseline(trained: TrainingResult) -> None:
    x, y, _ = logistic_data(10_000, seed=99)  # fresh held-out rows, judged with the non-private truth
    scaled = np.clip(x, -4.0, 4.0) / 4.0  # the harness's public-bounds scaling
    with torch.no_grad():
        pred = load_model(trained)(torch.tensor(scaled, dtype=torch.float32)).argmax(dim=1).numpy()
    accuracy = float((pred == y).mean())
    majority = max(float(y.mean()), 1.0 - float(y.mean()))
    assert majority < 0.75
    assert accuracy > majority + 0.08, (accuracy, majority)
    assert 0.0 <= trained.dp_metrics["accuracy"] <= 1.0
    assert abs(trained.dp_metrics["accuracy"] - accuracy) < 0.1  # the noisy metric is informative


def test_accountant_epsilon_within_plan_within_grant(trained: TrainingResult) -> None:
    planned_eps, planned_delta = planned_cost(trained.spec)
    training_share = trained.spec.training_epsilon_micro
    spent_training = (
        trained.epsilon_spent_micro - trained.spec.eval_epsilon_micro - trained.spec.size_epsilon_micro
    )
    assert 0 < spent_training <= training_share
    assert trained.epsilon_spent_micro <= planned_eps <= GRANT
    assert training_share + trained.spec.eval_epsilon_micro + trained.spec.size_epsilon_micro == planned_eps
    assert trained.delta_e12 == planned_delta <= POLICY_DELTA
    assert trained.steps > 0
    assert trained.noise_multiplier > 0
    assert trained.grad_sample_mode == "bookkeeping"  # exact per-sample clipping, one backward pass


def test_accounting_fails_closed_above_the_plan() -> None:
    s = spec()  # training share 3 - 0.3 - 0.03 = 2.67
    assert s.training_epsilon_micro == 2_670_000
    assert _check_accounting(s, 2.6699989) == 2_669_999  # rounded up to the micro-ε
    with pytest.raises(TrainingFailed, match="accounting"):
        _check_accounting(s, 2.670001)
    assert _check_accounting(s, 2.67) == 2_670_000  # the float 2.67 is a hair below 267/100
    with pytest.raises(TrainingFailed, match="accounting"):
        _check_accounting(s, math.nextafter(2.67, 3.0))  # one ulp above: exact arithmetic refuses it


def test_weights_are_safetensors_holding_only_tensors(trained: TrainingResult) -> None:
    raw = trained.weights
    assert not raw.startswith(b"\x80")  # no pickle protocol header
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header.pop("__metadata__")) == {"format"}
    assert all(set(entry) == {"dtype", "shape", "data_offsets"} for entry in header.values())
    loaded = load_safetensors(raw)
    assert set(loaded) == {"0.weight", "0.bias"}
    assert all(isinstance(t, torch.Tensor) for t in loaded.values())
    assert loaded["0.weight"].shape == (2, N_FEATURES)


def test_result_carries_no_loss_curve_or_raw_metric(trained: TrainingResult) -> None:
    summary = trained.to_dict()
    assert set(summary) == {
        "weights",
        "spec",
        "epsilon_spent_micro",
        "delta_e12",
        "dp_metrics",
        "steps",
        "noise_multiplier",
        "grad_sample_mode",
    }
    assert set(trained.dp_metrics) == {"accuracy", "holdout_rows"}
    json.dumps(summary)


def assert_no_canary(text: str) -> None:
    assert CANARY_TEXT not in text
    assert "31337" not in text


def test_no_raw_value_in_result_repr_or_json(trained: TrainingResult) -> None:
    assert_no_canary(repr(trained))
    assert_no_canary(json.dumps(trained.to_dict()))
    assert_no_canary(str(trained.dp_metrics))


def test_failure_after_reading_data_is_generic() -> None:
    # Every label is an undeclared category: the training set ends up empty and Opacus fails inside.
    x, y, _ = logistic_data(500, seed=5)
    df = with_canaries(frame(x, y)).with_columns(pl.lit(CANARY_TEXT).alias("y"))
    with pytest.raises(TrainingFailed) as info:
        train_dp(spec(), df, privacy_unit="pid")
    err = info.value
    assert err.code == "training_failed"
    assert err.__cause__ is None and err.__suppress_context__
    assert_no_canary(str(err) + repr(err) + "".join(traceback.format_exception(err)))


class Untouchable:
    """A stand-in for a protected frame: its schema is public, reading any value fails the test."""

    columns = list(COLUMNS)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"data was touched via .{name}")


def test_over_grant_is_refused_before_any_data() -> None:
    with pytest.raises(SpecOverGrant):
        spec(target_epsilon=4.000001)


def test_missing_column_is_refused_before_any_data() -> None:
    class NoLabel(Untouchable):
        columns = [c for c in COLUMNS if c != "y"]

    with pytest.raises(SpecError, match="'y' is not in the dataset"):
        train_dp(spec(), NoLabel(), privacy_unit="pid")  # type: ignore[arg-type]


def test_unit_column_as_label_is_refused_before_any_data() -> None:
    with pytest.raises(SpecError, match="privacy unit"):
        train_dp(spec(), Untouchable(), privacy_unit="y")  # type: ignore[arg-type]


def test_secure_mode_is_available_here() -> None:
    assert secure_mode_available()  # the AES-CTR CSPRNG (randomgen): no torchcsprng needed


def test_secure_mode_without_csprng_is_refused_before_any_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "secure_mode_available", lambda: False)
    with pytest.raises(SecureModeUnavailable) as info:
        train_dp(spec(), Untouchable(), privacy_unit="pid", secure_mode=True)  # type: ignore[arg-type]
    assert info.value.code == "secure_rng_unavailable"


def test_secure_mode_takes_no_seed() -> None:
    with pytest.raises(ValueError, match="seed is for tests only"):
        train_dp(spec(), Untouchable(), privacy_unit="pid", secure_mode=True, seed=1)  # type: ignore[arg-type]


def test_a_seed_reproduces_a_test_run_and_secure_runs_differ() -> None:
    # The DP size count is OpenDP's (its own CSPRNG, never seeded); it sets the steps per epoch, so the
    # training set (~1,600 rows) sits far from a rounding boundary of steps = round(noisy_n / 512) = 3.
    x, y, _ = logistic_data(2_000, seed=6)
    df = frame(x, y)
    s = spec(epochs=1, batch_size=512, target_epsilon=4)
    seeded = [train_dp(s, df, privacy_unit="pid", secure_mode=False, seed=5).weights for _ in range(2)]
    assert seeded[0] == seeded[1]  # the test-only path: torch's generator, reproducible
    secure = [train_dp(s, df, privacy_unit="pid").weights for _ in range(2)]
    assert secure[0] != secure[1]  # CSPRNG keyed from the OS: fresh noise, masks and units every run


def test_secure_mode_refuses_a_device_that_is_not_there_before_any_data() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no GPU"):
        train_dp(spec(), Untouchable(), privacy_unit="pid", device="cuda")  # type: ignore[arg-type]


def test_one_row_per_unit_keeps_exactly_one_row_each() -> None:
    counts = np.arange(1, 301) % 5 + 1  # units with 1..5 rows
    units = np.repeat(np.arange(300), counts)
    rows = pl.DataFrame({"pid": units, "row": np.arange(len(units))})
    picked_first = 0
    for seed in range(5):
        kept = one_row_per_unit(rows, "pid", RandomKeys(seed))
        assert kept.height == 300
        assert kept.get_column("pid").n_unique() == 300
        assert kept.join(rows, on=["pid", "row"], how="anti").height == 0  # real rows only
        firsts = rows.group_by("pid").agg(pl.col("row").min())
        picked_first += kept.join(firsts, on=["pid", "row"]).height
    assert picked_first < 5 * 300 * 0.7  # not "always the first row": a random pick


def test_secure_keys_also_keep_one_row_per_unit() -> None:
    rows = pl.DataFrame({"pid": [1, 1, 1, 2, 2, None], "row": [0, 1, 2, 3, 4, 5]})
    kept = one_row_per_unit(rows, "pid", RandomKeys(None))
    assert sorted(kept.get_column("pid").to_list()) == [1, 2]


def test_holdout_split_partitions_the_units() -> None:
    rows = pl.DataFrame({"pid": np.arange(10_000)})
    train, hold = split_holdout(rows, 200_000, RandomKeys(4))
    assert train.height + hold.height == 10_000
    assert set(train.get_column("pid")).isdisjoint(set(hold.get_column("pid")))
    assert 1_700 < hold.height < 2_300
    _, none = split_holdout(rows, 0, RandomKeys(4))
    assert none.height == 0


def test_regression_mlp_reports_a_noisy_mse() -> None:
    x, y, _ = logistic_data(4_000, seed=8)
    s = spec(
        task="regression",
        label="v",
        model={"kind": "mlp", "hidden": [16]},
        epochs=2,
        batch_size=128,
        learning_rate=0.1,
        mse_clip=25,
        target_epsilon=2,
    )
    result = train_dp(s, frame(x, y), privacy_unit="pid", feature_bounds=BOUNDS)
    assert set(result.dp_metrics) == {"mse", "holdout_rows"}
    assert 0.0 <= result.dp_metrics["mse"] <= 25.0
    assert result.epsilon_spent_micro <= planned_cost(s)[0]
    assert set(load_safetensors(result.weights)) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("clipping", ["bookkeeping", "ghost"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_empty_poisson_batches_are_harmless(task: str, clipping: str) -> None:
    # Poisson sampling can draw an empty batch, first or later; the step must keep the weights finite.
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = torch.randint(0, 2, (64,)) if task == "classification" else torch.randn(64, 1)
    net = build_model(ModelSpec("mlp", (4,)), 3, 2 if task == "classification" else 1)
    trainer = make_private_trainer(
        net,
        x,
        y,
        task=task,  # type: ignore[arg-type]
        epochs=1,
        batch_size=8,
        learning_rate=0.1,
        optimizer="sgd",
        max_grad_norm=1.0,
        target_epsilon=1.0,
        delta=1e-5,
        steps_per_epoch=8,
        clipping=clipping,  # type: ignore[arg-type]
    )
    loader = trainer._loader
    for index in ([], [1, 2, 3], []):
        xb, yb = loader.collate_fn(loader.dataset.__getitems__(index))
        assert xb.shape[0] == yb.shape[0] == len(index)
        trainer._opt.zero_grad()
        trainer._loss(trainer._model(xb), yb).backward()
        trainer._opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_sampling_rate_steps_and_noise_do_not_depend_on_the_row_count() -> None:
    seen = set()
    for n in (1_000, 1_337):
        trainer = make_private_trainer(
            build_model(ModelSpec("linear"), 3, 2),
            torch.randn(n, 3),
            torch.randint(0, 2, (n,)),
            task="classification",
            epochs=1,
            batch_size=100,
            learning_rate=0.1,
            optimizer="sgd",
            max_grad_norm=1.0,
            target_epsilon=1.0,
            delta=1e-5,
            steps_per_epoch=10,
        )
        loader = trainer._loader
        seen.add(
            (len(loader), loader.sample_rate, trainer.noise_multiplier, trainer._opt.expected_batch_size)
        )
    assert seen == {(10, 0.1, next(iter(seen))[2], 100)}
