"""Production refuses unsafe settings; JSON logs are one object per line."""

from __future__ import annotations

import json
import logging

from broker.server import JsonFormatter
from broker.settings import Settings


def test_embedded_default_has_no_production_problems() -> None:
    assert Settings().production_problems() == []


def test_production_refuses_defaults_and_names_each_problem() -> None:
    problems = Settings(environment="production", s3_access_key="minioadmin").production_problems()
    joined = "\n".join(problems)
    for needle in ("SBX_DATABASE_URL", "SBX_STORAGE", "SBX_COMPUTE", "SBX_HOST"):
        assert needle in joined


def test_production_accepts_a_complete_configuration() -> None:
    settings = Settings(
        environment="production",
        database_url="postgresql://broker@db/broker",
        storage="s3",
        s3_endpoint="minio:9000",
        s3_access_key="a-real-key",
        s3_secret_key="a-real-secret-value",
        compute="kuberay",
        training_secure_mode=True,
        host="0.0.0.0",
        kek_file="/var/run/sbx-kek/kek",
    )
    assert settings.production_problems() == []


def test_json_log_lines() -> None:
    record = logging.LogRecord("sbx.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world" and line["level"] == "WARNING" and line["logger"] == "sbx.test"


def test_a_ray_address_selects_the_existing_cluster(tmp_path: object) -> None:
    from broker.compute.ray_jobs import RayJobsBackend
    from broker.container import build_compute
    from common.clock import SystemClock

    backend = build_compute(Settings(ray_address="http://127.0.0.1:8265", ray_token="t"), SystemClock())
    assert isinstance(backend, RayJobsBackend)  # no local head is started; nothing is contacted yet
    backend.close()
