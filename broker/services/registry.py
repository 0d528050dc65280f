"""All services of one broker, built over one container."""

from __future__ import annotations

from dataclasses import dataclass

from broker.container import Container
from broker.services.audit import AuditService
from broker.services.datasets import DatasetService
from broker.services.jobs import JobService
from broker.services.ledger import LedgerService
from broker.services.orgs import OrgService
from broker.services.reports import ReportService
from broker.services.tokens import TokenService
from broker.services.training import KIND as TRAINING_KIND
from broker.services.training import TrainingService
from broker.services.vouchers import VoucherService


@dataclass
class Services:
    """The service objects routes and the CLI call (one per domain)."""

    container: Container
    orgs: OrgService
    vouchers: VoucherService
    ledger: LedgerService
    audit: AuditService
    datasets: DatasetService
    jobs: JobService
    reports: ReportService
    training: TrainingService
    tokens: TokenService


def build_services(container: Container) -> Services:
    """Build every service over ``container``."""
    jobs = JobService(container)
    datasets = DatasetService(container)
    training = TrainingService(container, jobs, datasets)
    jobs.register_kind(TRAINING_KIND, training)
    return Services(
        container=container,
        orgs=OrgService(container),
        vouchers=VoucherService(container),
        ledger=LedgerService(container),
        audit=AuditService(container),
        datasets=datasets,
        jobs=jobs,
        training=training,
        reports=ReportService(container),
        tokens=TokenService(container),
    )
