"""Benchmark of the post-deploy step against local PostgreSQL 16 / Redis 7 on loopback.

Prints, each beside `psql -f` of the same schema measured in the same run:
  full step  = fresh database: migrate + verify every check + register
  no-op run  = migrate with nothing pending (lock, history check, unlock)
Targets (issue 3): full step < 1 s, no-op < 0.3 s.
Run: scripts/bench-postdeploy  (or python -m benchmarks.postdeploy with the setup env)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time

from infra.deploy import migration_files, migrations, steps as postdeploy
from infra.core.targets import PostgresTarget, RedisTarget, Target
from tests.servers import PostgresServer, RedisServer

ROUNDS = 7


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def psql_schema(server: PostgresServer, database: str) -> None:
    subprocess.run([shutil.which("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                    "-p", str(server.port), "-U", server.user, "-d", database,
                    "-f", str(migration_files.DEFAULT_DIR / "V001__adr006_schema.sql")],
                   check=True, env={**os.environ, "PGPASSWORD": server.password}, capture_output=True)


def main() -> None:
    if not shutil.which("psql"):
        raise SystemExit("psql is needed for the baseline (Debian: postgresql-client)")
    pg, rd = PostgresServer.start(), RedisServer.start(password="bench-password-0123456789")
    try:
        def target(database: str) -> Target:
            return Target("bench",
                          PostgresTarget("127.0.0.1", pg.port, database, pg.user, pg.password, "pg", "10.0.0.1", 16),
                          RedisTarget("127.0.0.1", rd.port, rd.password, "redis", "10.0.0.2", 7))

        full, noop, psql = [], [], []
        for _ in range(ROUNDS):
            db = pg.create_database()
            full.append(timed(lambda: postdeploy.run(target(db), actor="bench")))
            noop.append(timed(lambda: migrations.migrate(target(db).postgres, "bench")))
            baseline_db = pg.create_database()
            psql.append(timed(lambda: psql_schema(pg, baseline_db)))
        row = "{:<34} {:>9} {:>9}   {}"
        print(row.format("operation", "median", "min", f"(ms, {ROUNDS} rounds)"))
        for name, values, target_s in (("full step (migrate+verify+register)", full, 1.0),
                                       ("no-op run (nothing pending)", noop, 0.3),
                                       ("psql -f same schema (baseline)", psql, None)):
            median = statistics.median(values)
            verdict = "" if target_s is None else ("  target < %d ms: %s" % (target_s * 1000, "met" if median < target_s else "MISSED"))
            print(row.format(name, f"{median * 1000:.1f}", f"{min(values) * 1000:.1f}", verdict))
        print(f"ratio full step / psql -f: {statistics.median(full) / statistics.median(psql):.1f}x")
    finally:
        pg.stop()
        rd.stop()


if __name__ == "__main__":
    main()
