"""Production's training requirement can be met here: secure DP-SGD is the default setting, the start-up gate
refuses only its absence, and the secure harness actually trains on this machine (no torchcsprng)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from broker.settings import Settings
from privacy.training import validate_spec
from privacy.training.dpsgd import secure_mode_available
from privacy.training.harness import train_dp

PRODUCTION_ENV = {
    "SBX_ENVIRONMENT": "production",
    "SBX_DATABASE_URL": "postgresql://broker@db/broker",
    "SBX_STORAGE": "s3",
    "SBX_S3_ENDPOINT": "s3.internal:9000",
    "SBX_S3_ACCESS_KEY": "a-real-key",
    "SBX_S3_SECRET_KEY": "a-real-secret-value",
    "SBX_COMPUTE": "kuberay",
    "SBX_HOST": "0.0.0.0",  # behind the ingress, as docs/deploy.md says
}


@pytest.fixture
def production_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Production settings from the environment, as the chart sets them, without SBX_TRAINING_SECURE_MODE."""
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SBX_TRAINING_SECURE_MODE", raising=False)
    monkeypatch.delenv("SBX_TRAINING_SEED", raising=False)
    return monkeypatch


def _training_problems(settings: Settings) -> list[str]:
    return [p for p in settings.production_problems() if "SBX_TRAINING" in p]


def test_secure_training_is_the_default_everywhere() -> None:
    assert Settings().training_secure_mode is True
    assert Settings().training_seed is None


def test_production_settings_pass_the_training_checks_by_default(production_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.environment == "production" and settings.training_secure_mode
    assert _training_problems(settings) == []
    assert secure_mode_available()  # what SBX_TRAINING_SECURE_MODE=true needs is installed here


def test_production_refuses_to_start_without_secure_training(production_env: pytest.MonkeyPatch) -> None:
    production_env.setenv("SBX_TRAINING_SECURE_MODE", "false")
    assert any("SBX_TRAINING_SECURE_MODE" in p for p in _training_problems(Settings()))
    production_env.setenv("SBX_TRAINING_SECURE_MODE", "true")
    production_env.setenv("SBX_TRAINING_SEED", "7")
    assert any("SBX_TRAINING_SEED" in p for p in _training_problems(Settings()))


def test_the_start_up_gate_names_the_secure_mode_problem(production_env: pytest.MonkeyPatch) -> None:
    from broker.server import run

    production_env.setenv("SBX_TRAINING_SECURE_MODE", "false")
    with pytest.raises(SystemExit, match="SBX_TRAINING_SECURE_MODE"):
        run()  # refuses before anything is built or contacted


def test_production_settings_train_with_secure_noise(production_env: pytest.MonkeyPatch) -> None:
    """What the harness entry does with production's settings: ``secure_mode`` on, no seed."""
    settings = Settings()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3_000, 3))
    y = (x @ np.array([1.5, -1.0, 0.5]) + rng.normal(size=3_000) > 0).astype(np.int64)
    frame = pl.DataFrame({"pid": np.arange(3_000), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    spec = validate_spec(
        {
            "task": "classification",
            "features": ["a", "b", "c"],
            "label": "y",
            "model": {"kind": "linear"},
            "epochs": 1,
            "batch_size": 64,
            "learning_rate": 0.5,
            "max_grad_norm": 1.0,
            "target_epsilon": 2,
        },
        dataset_columns={"pid": "unit", "a": "numeric", "b": "numeric", "c": "numeric", "y": "categorical"},
        label_categories=[0, 1],
        grant_epsilon_micro=2_000_000,
        policy_delta_e12=1_000_000,
        privacy_unit="pid",
    )
    result = train_dp(
        spec,
        frame,
        privacy_unit="pid",
        secure_mode=settings.training_secure_mode,
        seed=settings.training_seed,
    )
    assert result.steps > 0 and 0 < result.epsilon_spent_micro <= 2_000_000
    assert result.grad_sample_mode == "bookkeeping"
