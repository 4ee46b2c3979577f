"""The post-deploy step: migrate, verify, register. Plain Python, no Pulumi.

Runs from ``pulumi up`` (through a thin adapter), from the command line and from tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.deploy import credentials, migration_files, migrations, registry
from infra.core.connect import connect_postgres
from infra.core.targets import Target
from infra.deploy.checks import Report, VerificationFailed, run_checks


@dataclass(frozen=True)
class Result:
    """What the step did and what it found."""

    applied: list[str]
    already_applied: int
    report: Report

    def summary(self) -> dict:
        return {"applied": self.applied, "already_applied": self.already_applied,
                "checks": len(self.report.checks), "failed": [c.name for c in self.report.failed]}


def run(target: Target, actor: str | None = None, migration_dir: Path = migration_files.DEFAULT_DIR,
        deadline_s: float = 60.0) -> Result:
    """Bring the stored PostgreSQL password in line with the configuration, apply pending
    migrations, verify both services, then record the deployment.

    Raises :class:`infra.deploy.credentials.CredentialsMismatch`,
    :class:`infra.deploy.migration_files.MigrationError` or :class:`VerificationFailed`.
    """
    actor = actor or registry.default_actor()
    reconciled = credentials.reconcile_postgres(target.postgres, deadline_s)
    outcome = migrations.migrate(target.postgres, actor, migration_dir, deadline_s=deadline_s)
    report = run_checks(target.postgres, target.redis, deadline_s=deadline_s, migration_dir=migration_dir)
    if not report.ok:
        raise VerificationFailed(report)
    result = Result([m.name for m, _ in outcome.applied], outcome.already_applied, report)
    with connect_postgres(target.postgres, deadline_s) as conn:
        registry.register(conn, target, actor, {
            "migrations_applied": result.applied,
            "postgres_password_set_from_config": reconciled,
            "checks_passed": len(report.checks),
            "postgres": {"container": target.postgres.container_name, "ip": target.postgres.container_ip},
            "redis": {"container": target.redis.container_name, "ip": target.redis.container_ip},
        })
    return result
