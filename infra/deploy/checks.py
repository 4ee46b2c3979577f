"""Prove that PostgreSQL and Redis are fit for the application, without Pulumi.

Every check yields one :class:`Check` (name, pass/fail, observed, expected, latency).
The Redis checks exercise the ADR's uses (sessions, cache, rate limiting, queue, pub/sub)
on throwaway keys that are removed afterwards.
"""

from __future__ import annotations

import json
import time
import uuid

from pathlib import Path
from typing import Callable

import psycopg
import redis

from infra.core.errors import OperationFailed
from infra.deploy import migration_files, migrations
from infra.core.connect import AuthRejected, connect_postgres, connect_redis
from infra.core.report import Check, Report
from infra.core.targets import PostgresTarget, RedisTarget

# The ADR's schema: tables with their columns, and the four indexes.
EXPECTED_TABLES = {
    "services": ["id", "name", "category", "container_name", "ip_address", "port", "domain", "status",
                 "created_at", "updated_at"],
    "configurations": ["id", "service_id", "key", "value", "encrypted", "created_at", "updated_at"],
    "logs": ["id", "service_id", "level", "message", "metadata", "timestamp"],
    "audit_trail": ["id", "action", "actor", "resource_type", "resource_id", "changes", "timestamp"],
}
EXPECTED_INDEXES = ["idx_logs_service_timestamp", "idx_logs_level", "idx_audit_timestamp",
                    "idx_configurations_key"]

# The ADR's monitoring query for table sizes.
TABLE_SIZES_SQL = """
SELECT schemaname, tablename, pg_size_pretty(pg_total_relation_size(schemaname||'.'||tablename))
FROM pg_tables WHERE schemaname='public' ORDER BY tablename
"""


class VerificationFailed(OperationFailed):
    """At least one check failed; ``report`` holds all of them."""

    def __init__(self, report: "Report"):
        self.report = report
        super().__init__(f"verification failed: {', '.join(c.name for c in report.failed)}\n{report.table()}")


class _Recorder:
    """Times each check; an exception inside a check is that check's failure, not the run's."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def run(self, name: str, expected: str, probe: Callable[[], tuple[bool, str]]) -> None:
        started = time.perf_counter()
        try:
            ok, observed = probe()
        except Exception as exc:  # a broken probe must fail its check, never hide the others
            ok, observed = False, f"{type(exc).__name__}: {_reason(exc)}"
        self.checks.append(Check(name, ok, observed, expected, (time.perf_counter() - started) * 1000))


def verify_postgres(target: PostgresTarget, conn: psycopg.Connection, rec: _Recorder,
                    migration_dir: Path = migration_files.DEFAULT_DIR) -> None:
    """Authentication, version, migrations, schema, indexes, connections, table sizes."""

    def select_one():
        value = conn.execute("SELECT 1").fetchone()[0]
        return value == 1, str(value)

    def wrong_password():
        try:
            connect_postgres(target, deadline_s=5, password=target.password + "-wrong").close()
        except AuthRejected:
            return True, "rejected"
        return False, "a wrong password was accepted (is pg_hba.conf set to trust?)"

    def major_version():
        number = int(conn.execute("SHOW server_version_num").fetchone()[0])
        return number // 10000 == target.major_version, str(number // 10000)

    def migrations_applied():
        files = migration_files.load(migration_dir)
        history = {row.version: row for row in migrations.read_history(conn)}
        problems = [f"{m.name} not applied" for m in files if m.version not in history]
        problems += [f"{m.name} checksum differs" for m in files
                     if m.version in history and history[m.version].kind == "SQL"
                     and history[m.version].checksum != m.checksum]
        problems += [f"V{v} failed" for v, row in history.items() if not row.success]
        return not problems, "; ".join(problems) or f"{len(files)}/{len(files)} applied, checksums match"

    def tables_and_columns():
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = ANY(%s)", (list(EXPECTED_TABLES),)).fetchall()
        found: dict[str, set] = {}
        for table, column in rows:
            found.setdefault(table, set()).add(column)
        missing = [t for t in EXPECTED_TABLES if t not in found]
        missing += [f"{t}.{c}" for t, cols in EXPECTED_TABLES.items() if t in found
                    for c in cols if c not in found[t]]
        return not missing, ("missing " + ", ".join(missing)) if missing else f"{len(EXPECTED_TABLES)} tables"

    def indexes():
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'").fetchall()
        missing = [i for i in EXPECTED_INDEXES if i not in {r[0] for r in rows}]
        return not missing, ("missing " + ", ".join(missing)) if missing else f"{len(EXPECTED_INDEXES)} present"

    def invalid_indexes():
        rows = conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall()
        return not rows, ", ".join(r[0] for r in rows) or "none"

    def connections():
        used = conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0]
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        return used < limit, f"{used}/{limit}"

    def table_sizes():
        rows = conn.execute(TABLE_SIZES_SQL).fetchall()
        return True, ", ".join(f"{table} {size}" for _, table, size in rows) or "no tables"

    rec.run("postgres.authenticated_select", "1", select_one)
    rec.run("postgres.wrong_password_rejected", "rejected", wrong_password)
    rec.run("postgres.major_version", str(target.major_version), major_version)
    rec.run("postgres.migrations", "all applied, checksums match", migrations_applied)
    rec.run("postgres.tables", "ADR tables and columns", tables_and_columns)
    rec.run("postgres.indexes", ", ".join(EXPECTED_INDEXES), indexes)
    rec.run("postgres.invalid_indexes", "none", invalid_indexes)
    rec.run("postgres.connections", "below max_connections", connections)
    rec.run("postgres.table_sizes", "reported", table_sizes)


def verify_redis(target: RedisTarget, client: redis.Redis, rec: _Recorder) -> None:
    """Version, authentication, persistence, the ADR's five uses, memory and clients."""
    token = f"sin-verify-{uuid.uuid4().hex[:12]}"
    keys = [f"session:{token}", f"cache:api:{token}", f"ratelimit:{token}", f"queue:{token}"]

    def major_version():
        version = client.info("server")["redis_version"]
        return int(version.split(".")[0]) == target.major_version, version

    def unauthenticated_rejected():
        try:
            connect_redis(target, deadline_s=5, password="").close()
        except AuthRejected:
            return True, "rejected"
        return False, "Redis answered a client without a password"

    def appendonly():
        enabled = client.info("persistence").get("aof_enabled")
        return enabled == 1, f"aof_enabled:{enabled}"

    def persistence_healthy():
        info = client.info("persistence")
        seen = {k: info.get(k) for k in ("aof_last_write_status", "rdb_last_bgsave_status", "loading")}
        ok = seen["aof_last_write_status"] == "ok" and seen["rdb_last_bgsave_status"] == "ok" and seen["loading"] == 0
        return ok, " ".join(f"{k}:{v}" for k, v in seen.items())

    def session():
        client.execute_command("SETEX", keys[0], 3600, json.dumps({"user": "verify"}))
        value, ttl = client.get(keys[0]), client.ttl(keys[0])
        return value is not None and 0 < ttl <= 3600, f"value stored, ttl {ttl}s"

    def cache():
        client.execute_command("SETEX", keys[1], 300, json.dumps({"response": "ok"}))
        ttl = client.ttl(keys[1])
        return client.exists(keys[1]) == 1 and 0 < ttl <= 300, f"ttl {ttl}s"

    def rate_limit():
        counts = []
        for _ in range(2):
            with client.pipeline(transaction=True) as pipe:  # MULTI: INCR and EXPIRE NX together
                counts.append(pipe.incr(keys[2]).expire(keys[2], 60, nx=True).execute()[0])
        ttl = client.ttl(keys[2])
        return counts == [1, 2] and 0 < ttl <= 60, f"counts {counts}, ttl {ttl}s"

    def queue():
        client.lpush(keys[3], json.dumps({"task": token}))
        popped = client.brpop([keys[3]], timeout=2)
        return popped is not None and token in popped[1], "popped" if popped else "nothing popped"

    def pubsub():
        channel = f"channel:{token}"
        with client.pubsub(ignore_subscribe_messages=True) as sub:
            sub.subscribe(channel)
            sub.get_message(timeout=1)  # the subscribe confirmation
            receivers = client.publish(channel, token)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                message = sub.get_message(timeout=0.2)
                if message and message.get("data") == token:
                    return receivers >= 1, f"received by {receivers} subscriber(s)"
        return False, "message not received within 2 s"

    def memory():
        info = client.info("memory")
        used, limit = info["used_memory"], info.get("maxmemory", 0)
        ok = limit == 0 or used < limit
        return ok, f"{info['used_memory_human']} used of {info['maxmemory_human'] if limit else 'unlimited'}"

    def clients():
        info = client.info("clients")
        return True, f"{info['connected_clients']} connected, {info.get('blocked_clients', 0)} blocked"

    rec.run("redis.major_version", str(target.major_version), major_version)
    rec.run("redis.unauthenticated_rejected", "rejected", unauthenticated_rejected)
    rec.run("redis.appendonly", "aof_enabled:1", appendonly)
    rec.run("redis.persistence", "aof_last_write_status:ok rdb_last_bgsave_status:ok loading:0",
            persistence_healthy)
    try:
        rec.run("redis.session", "SETEX with ttl <= 3600s", session)
        rec.run("redis.cache", "SETEX with ttl <= 300s", cache)
        rec.run("redis.rate_limit", "counts [1, 2], ttl <= 60s", rate_limit)
        rec.run("redis.queue", "LPUSH then BRPOP returns the task", queue)
        rec.run("redis.pubsub", "message received", pubsub)
    finally:
        client.delete(*keys)
    rec.run("redis.memory", "used below maxmemory", memory)
    rec.run("redis.clients", "reported", clients)


def run_checks(postgres: PostgresTarget, redis_target: RedisTarget, deadline_s: float = 30.0,
           migration_dir: Path = migration_files.DEFAULT_DIR) -> Report:
    """Run every check against both services; a service that cannot be reached fails its checks."""
    rec = _Recorder()
    try:
        with connect_postgres(postgres, deadline_s) as conn:
            verify_postgres(postgres, conn, rec, migration_dir)
    except Exception as exc:
        reason = _reason(exc)
        rec.run("postgres.reachable", postgres.describe(), lambda: (False, reason))
    try:
        client = connect_redis(redis_target, deadline_s)
    except Exception as exc:
        reason = _reason(exc)
        rec.run("redis.reachable", redis_target.describe(), lambda: (False, reason))
    else:
        with client:
            verify_redis(redis_target, client, rec)
    return Report(rec.checks)


def _reason(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
