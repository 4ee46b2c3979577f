"""The post-deploy step: migrate, verify, register. Plain Python, no Pulumi.

Runs from ``pulumi up`` (through a thin adapter), from the command line and from tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.deploy import credentials, membership, migration_files, migrations, registry, replicated
from infra.core.connect import connect_postgres, wait_until_answering
from infra.core.targets import Target
from infra.deploy.checks import Report, VerificationFailed, run_checks


@dataclass(frozen=True)
class Result:
    """What the step did and what it found."""

    applied: list[str]
    already_applied: int
    report: Report
    timings_ms: dict[str, int] = field(default_factory=dict)
    """How long each phase took (ready, credentials, migrate, verify, register): where `up` spends its time."""
    converged: list[str] = field(default_factory=list)
    """What a replicated stack's running Sentinels and Redis replicas were set to, one line each
    (:func:`infra.deploy.membership.converge`); empty when they were as the program renders them."""

    def summary(self) -> dict:
        return {"applied": self.applied, "already_applied": self.already_applied,
                "checks": len(self.report.checks), "failed": [c.name for c in self.report.failed],
                "timings_ms": self.timings_ms, "converged": self.converged}


class _Phases:
    """Milliseconds per phase, in order."""

    def __init__(self) -> None:
        self.timings_ms: dict[str, int] = {}
        self._last = time.perf_counter()

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings_ms[phase] = round((now - self._last) * 1000)
        self._last = now


def verify(target: Target, deadline_s: float = 30.0, migration_dir: Path = migration_files.DEFAULT_DIR) -> Report:
    """Every check of both services; a replicated stack's on its leader and master (``target``
    resolved), and the cluster's own."""
    report = run_checks(target.postgres, target.redis, deadline_s=deadline_s, migration_dir=migration_dir)
    if target.cluster:
        report = Report(report.checks + replicated.checks(target, deadline_s))
    return report


def run(target: Target, actor: str | None = None, migration_dir: Path = migration_files.DEFAULT_DIR,
        deadline_s: float = 60.0) -> Result:
    """Wait for both services to answer, bring the stored PostgreSQL password in line with the
    configuration, apply pending migrations, verify both services, then record the deployment.
    ``deadline_s`` bounds each wait for a service.

    Raises :class:`infra.deploy.credentials.CredentialsMismatch`,
    :class:`infra.deploy.migration_files.MigrationError` or :class:`VerificationFailed`.
    """
    actor = actor or registry.default_actor()
    phases = _Phases()
    converged: list[str] = []
    if target.cluster:
        # Patroni set the passwords at bootstrap; the step migrates through HAProxy, on the leader.
        converged = membership.converge(target, deadline_s)
        target = replicated.resolve(target, replicated.wait_until_whole(target, deadline_s))
        replicated.ensure_database(target.postgres, deadline_s)
        wait_until_answering(target, deadline_s)
        phases.done("ready")
        reconciled = False
    else:
        wait_until_answering(target, deadline_s)
        phases.done("ready")
        reconciled = credentials.reconcile_postgres(target.postgres, deadline_s)
    phases.done("credentials")
    outcome = migrations.migrate(target.postgres, actor, migration_dir, deadline_s=deadline_s)
    phases.done("migrate")
    report = verify(target, deadline_s, migration_dir)
    phases.done("verify")
    if not report.ok:
        raise VerificationFailed(report)
    result = Result([m.name for m, _ in outcome.applied], outcome.already_applied, report, phases.timings_ms,
                    converged)
    with connect_postgres(target.postgres, deadline_s) as conn:
        registry.register(conn, target, actor, {
            "migrations_applied": result.applied,
            **({"cluster_converged": converged} if target.cluster else {}),
            "postgres_password_set_from_config": reconciled,
            "checks_passed": len(report.checks),
            "postgres": {"container": target.postgres.container_name, "ip": target.postgres.container_ip},
            "redis": {"container": target.redis.container_name, "ip": target.redis.container_ip},
        })
    phases.done("register")
    return result
