"""Verification and the whole post-deploy step against real PostgreSQL 16 and Redis 7."""

from __future__ import annotations

import dataclasses
import json

import pytest

from infra.core.connect import connect_postgres, connect_redis
from infra.components.postdeploy import StepFailed, _PostDeployProvider
from infra.deploy import migration_files, migrations
from infra.deploy import steps as postdeploy
from infra.deploy.checks import VerificationFailed, run_checks
from tests.servers import RedisServer


@pytest.fixture
def migrated(pg_target, migration_dir):
    migrations.migrate(pg_target, "tester", migration_dir)
    return pg_target


def test_healthy_services_pass_every_check(migrated, redis_target, migration_dir):
    report = run_checks(migrated, redis_target, migration_dir=migration_dir)

    assert report.ok, report.table()
    names = {c.name for c in report.checks}
    assert {"postgres.authenticated_select", "postgres.wrong_password_rejected", "postgres.major_version",
            "postgres.migrations", "postgres.tables", "postgres.indexes", "postgres.invalid_indexes",
            "postgres.connections", "postgres.table_sizes", "redis.major_version",
            "redis.unauthenticated_rejected", "redis.appendonly", "redis.persistence", "redis.session",
            "redis.cache", "redis.rate_limit", "redis.queue", "redis.pubsub", "redis.memory",
            "redis.clients"} == names
    assert report.get("postgres.major_version").observed == "16"
    assert report.get("redis.major_version").observed.startswith("7.")
    assert all(c.latency_ms >= 0 for c in report.checks)


def test_report_is_a_table_and_json(migrated, redis_target, migration_dir):
    report = run_checks(migrated, redis_target, migration_dir=migration_dir)

    data = json.loads(report.to_json())
    assert data["ok"] is True
    assert {"name", "ok", "observed", "expected", "latency_ms"} == set(data["checks"][0])
    table = report.table()
    assert table.splitlines()[0].split() == ["check", "result", "observed", "expected", "ms"]
    assert "redis.pubsub" in table


def test_throwaway_redis_keys_are_removed(migrated, redis_target, migration_dir):
    run_checks(migrated, redis_target, migration_dir=migration_dir)

    with connect_redis(redis_target) as client:
        assert [k for k in client.scan_iter("*sin-verify-*")] == []


def test_aof_off_is_caught(migrated, migration_dir):
    server = RedisServer.start(password="redis-test-password-0123456789", appendonly=False)
    try:
        report = run_checks(migrated, server.target(), migration_dir=migration_dir)
    finally:
        server.stop()

    assert not report.ok
    assert [c.name for c in report.failed] == ["redis.appendonly"]
    assert report.get("redis.appendonly").observed == "aof_enabled:0"


def test_redis_without_password_is_caught(migrated, migration_dir):
    server = RedisServer.start(password=None)
    try:
        report = run_checks(migrated, server.target(), migration_dir=migration_dir)
    finally:
        server.stop()

    check = report.get("redis.unauthenticated_rejected")
    assert not check.ok
    assert check.observed == "Redis answered a client without a password"


def test_wrong_postgres_password_is_caught(migrated, redis_target, migration_dir):
    wrong = dataclasses.replace(migrated, password="definitely-not-the-password")

    report = run_checks(wrong, redis_target, migration_dir=migration_dir)

    [failed] = report.failed
    assert failed.name == "postgres.reachable"
    assert "rejected the credentials" in failed.observed
    assert "definitely-not-the-password" not in report.table() + report.to_json()


def test_missing_index_is_caught(migrated, redis_target, migration_dir):
    with connect_postgres(migrated) as conn:
        conn.execute("DROP INDEX idx_logs_level")

    report = run_checks(migrated, redis_target, migration_dir=migration_dir)

    assert [c.name for c in report.failed] == ["postgres.indexes"]
    assert report.get("postgres.indexes").observed == "missing idx_logs_level"


def test_wrong_major_versions_are_caught(migrated, redis_target, migration_dir):
    report = run_checks(dataclasses.replace(migrated, major_version=15),
                    dataclasses.replace(redis_target, major_version=6), migration_dir=migration_dir)

    assert sorted(c.name for c in report.failed) == ["postgres.major_version", "redis.major_version"]
    assert report.get("postgres.major_version").expected == "15"
    assert report.get("postgres.major_version").observed == "16"


def test_unapplied_migration_is_caught(migrated, redis_target, migration_dir):
    (migration_dir / "V002__later.sql").write_text("SELECT 1;\n")

    report = run_checks(migrated, redis_target, migration_dir=migration_dir)

    assert report.get("postgres.migrations").observed == "V002__later.sql not applied"


def test_post_deploy_step_migrates_verifies_and_registers(target, migration_dir):
    result = postdeploy.run(target, actor="tester", migration_dir=migration_dir)

    assert result.applied == ["V001__adr006_schema.sql"]
    with connect_postgres(target.postgres) as conn:
        services = conn.execute(
            "SELECT name, category, container_name, host(ip_address), port, status FROM services ORDER BY id"
        ).fetchall()
        audit = conn.execute("SELECT action, actor, resource_type, resource_id, changes FROM audit_trail").fetchall()
    assert services == [
        ("room-03-archiv-postgres", "database", "room-03-archiv-postgres", "172.20.0.100", 5432, "active"),
        ("room-04-memory-redis", "cache", "room-04-memory-redis", "172.20.0.200", 6379, "active"),
    ]
    [(action, actor, kind, stack, changes)] = audit
    assert (action, actor, kind, stack) == ("deploy", "tester", "stack", "itest")
    assert changes["migrations_applied"] == ["V001__adr006_schema.sql"]
    assert "cluster_converged" not in changes  # only a replicated stack's step converges Sentinels


def test_second_post_deploy_upserts_services_and_appends_audit(target, migration_dir):
    postdeploy.run(target, actor="tester", migration_dir=migration_dir)
    result = postdeploy.run(target, actor="tester", migration_dir=migration_dir)

    assert result.applied == []
    with connect_postgres(target.postgres) as conn:
        assert conn.execute("SELECT count(*) FROM services").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM audit_trail").fetchone()[0] == 2


def test_failed_verification_fails_the_step_and_registers_nothing(target, migration_dir):
    broken = dataclasses.replace(target, redis=dataclasses.replace(target.redis, major_version=6))

    with pytest.raises(VerificationFailed, match="redis.major_version"):
        postdeploy.run(broken, actor="tester", migration_dir=migration_dir)
    with connect_postgres(target.postgres) as conn:
        assert conn.execute("SELECT count(*) FROM services").fetchone()[0] == 0


def test_pulumi_s_post_deploy_resource_runs_the_step_and_keeps_its_triggers(target):
    props = {"target": target.to_dict(), "migrations": migration_files.fingerprint(migration_files.load()),
             "container_ids": ["pg-1", "redis-1"], "actor": "tester", "ready_timeout_s": 30,
             "applied": None, "already_applied": None, "checks": None, "failed": None, "timings_ms": None,
             "converged": None}

    provider = _PostDeployProvider()
    created = provider.create(props)
    updated = provider.update(created.id, created.outs, {**created.outs, "container_ids": ["pg-2", "redis-1"]})

    assert created.id == target.stack
    created_outs, updated_outs = dict(created.outs), dict(updated.outs)
    checks = created_outs["checks"]
    assert checks >= 20, "every check of the verification ran"
    timings = created_outs.pop("timings_ms")
    assert list(timings) == ["ready", "credentials", "migrate", "verify", "register"]
    assert all(isinstance(ms, int) and ms >= 0 for ms in timings.values())
    assert created_outs == {"target": props["target"], "migrations": props["migrations"],
                            "container_ids": ["pg-1", "redis-1"], "actor": "tester", "ready_timeout_s": 30,
                            "applied": ["V001__adr006_schema.sql"], "already_applied": 0, "checks": checks,
                            "failed": [], "converged": []}  # a single host: no Sentinel to set
    updated_outs.pop("timings_ms")
    assert updated_outs == {**created_outs, "container_ids": ["pg-2", "redis-1"], "applied": [], "already_applied": 1}
    with connect_postgres(target.postgres) as conn:
        assert conn.execute("SELECT actor FROM audit_trail ORDER BY id").fetchall() == [("tester",), ("tester",)]


def test_a_failed_step_is_the_step_s_error_in_its_own_words_without_a_password(target):
    wrong = dataclasses.replace(target, redis=dataclasses.replace(target.redis, password="not-the-password"))
    props = {"target": wrong.to_dict(), "migrations": [], "container_ids": ["pg", "redis"], "actor": "tester",
             "ready_timeout_s": 5}
    with pytest.raises(StepFailed) as failed:
        _PostDeployProvider().create(props)
    message = str(failed.value)
    assert message.startswith("VerificationFailed: verification failed: redis.reachable\n"), message
    assert "rejected the credentials" in message and failed.value.__cause__ is None and failed.value.__suppress_context__
    assert "not-the-password" not in message and target.postgres.password not in message