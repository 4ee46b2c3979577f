"""PostgreSQL's part of a backup: pg_dump in a snapshot with row counts and a schema digest, the
restore into a scratch database, and the switch of databases in one transaction."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import ContextManager, Iterator

import psycopg
from psycopg import sql

from infra.core import dockercli
from infra.core.connect import connect_postgres
from infra.core.report import Check
from infra.core.targets import POSTGRES_SOCKET_DIR, PostgresTarget
from infra.ops.backup import BackupFailed


# Objects the schema fingerprint covers: columns, constraints, indexes of non-system schemas.
SCHEMA_SQL = """
SELECT 'column', table_schema || '.' || table_name || '.' || column_name,
       data_type || ' null=' || is_nullable || ' default=' || coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'constraint', n.nspname || '.' || t.relname || '.' || c.conname, pg_get_constraintdef(c.oid)
FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'index', schemaname || '.' || indexname, indexdef
FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2
"""


# pg_restore writes the dump as SQL, psql runs it in one transaction. The SET line is
# dropped because client tools newer than the server (17 against 16, as in the local
# image) emit a setting a 16 server rejects; with matching tools it is a no-op. $4, when
# given, is a password file (Patroni's socket takes passwords too: socket_password_file).
RESTORE_SCRIPT = ('set -eu; set -o pipefail; if [ -n "${4:-}" ]; then export PGPASSFILE="$4"; fi; pg_restore --file=- '
                   '| grep -v "^SET transaction_timeout = " '
                   '| psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction '
                   '--host="$1" --username="$2" --dbname="$3" >/dev/null')


# Where socket_password_file puts the password file, in the live container (root's, 0600).
PASSWORD_FILE = "/run/sin-restore.pgpass"
_TABLES_SQL = """
SELECT schemaname, tablename FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2
"""


def maintenance(target: PostgresTarget) -> PostgresTarget:
    return replace(target, database="postgres")


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    counts = {}
    for schema, table in conn.execute(_TABLES_SQL).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    return counts


def schema_objects(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(kind, qualified name, definition) of every column, constraint and index the digest covers."""
    return conn.execute(SCHEMA_SQL).fetchall()


def schema_digest(conn: psycopg.Connection) -> str:
    rows = schema_objects(conn)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def pg_client(target: PostgresTarget, tool: str, *args: str) -> list[str]:
    """A client tool inside the container, on its Unix socket (trusted there; no password)."""
    return [tool, f"--host={POSTGRES_SOCKET_DIR}", f"--username={target.user}", *args]


def dump_postgres(target: PostgresTarget, dest: Path, socket_password: bool = False) -> dict:
    """pg_dump in the live container, in a snapshot whose figures go into the manifest.
    ``socket_password``: the live server's socket takes a password (:func:`socket_password_file`)."""
    conn = connect_postgres(target, autocommit=False)
    try:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        info = {
            "server_version": conn.execute("SHOW server_version").fetchone()[0],
            "major": int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000,
            "database": target.database,
            "tables": table_counts(conn),
            "schema_sha256": schema_digest(conn),
        }
        with password_file_if(target, socket_password) as password_file:
            dockercli.exec_to_file(target.container_name, [
                *(["env", f"PGPASSFILE={password_file}"] if password_file else []),
                *pg_client(target, "pg_dump", "--format=custom", f"--snapshot={snapshot}",
                           f"--dbname={target.database}")], dest)
        conn.rollback()
    finally:
        conn.close()
    info["dump_tool"] = dockercli.docker("exec", target.container_name, "pg_dump", "--version").strip()
    return info


@contextmanager
def socket_password_file(target: PostgresTarget) -> Iterator[str]:
    """A password file in the live container while a client tool runs there, for a server whose socket
    takes passwords (a replicated stack's Patroni): never in an environment or on a command line;
    removed afterwards."""
    escaped = target.password.replace("\\", "\\\\").replace(":", "\\:")
    dockercli.put_files(target.container_name, {PASSWORD_FILE: (f"*:*:*:{target.user}:{escaped}\n".encode(), 0o600)})
    try:
        yield PASSWORD_FILE
    finally:
        dockercli.docker("exec", target.container_name, "rm", "-f", PASSWORD_FILE, check=False)


def password_file_if(target: PostgresTarget, needed: bool) -> ContextManager[str]:
    """:func:`socket_password_file` when ``needed``; else no file (an empty path)."""
    return socket_password_file(target) if needed else nullcontext("")


def restore_into_scratch(target: PostgresTarget, dump: Path, socket_password: bool = False) -> str:
    """pg_restore the dump into a new scratch database in one transaction; return its name.
    ``socket_password``: the live server's socket takes a password (:func:`socket_password_file`)."""
    scratch = f"{target.database}_restore_{secrets.token_hex(4)}"
    with connect_postgres(maintenance(target)) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch)))
    try:
        argv = ["sh", "-c", RESTORE_SCRIPT, "sh", POSTGRES_SOCKET_DIR, target.user, scratch]
        with password_file_if(target, socket_password) as password_file:
            dockercli.exec_from_file(target.container_name, [*argv, password_file], dump)
    except dockercli.DockerError as exc:
        drop_database(target, scratch)
        raise BackupFailed(f"pg_restore into a scratch database failed; nothing live was touched: {exc}; check the "
                           f"backup with `backup --verify`, or restore another one") from None
    return scratch


def drop_database(target: PostgresTarget, name: str) -> None:
    with connect_postgres(maintenance(target)) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def compare_postgres(target: PostgresTarget, database: str, manifest: dict) -> list[Check]:
    started = time.perf_counter()
    with connect_postgres(replace(target, database=database)) as conn:
        counts, schema = table_counts(conn), schema_digest(conn)
    ms = (time.perf_counter() - started) * 1000
    want = manifest["postgres"]
    tables = want["tables"]
    differing = [f"{t} {counts.get(t)} vs {tables.get(t)}"
                 for t in sorted(set(counts) | set(tables)) if counts.get(t) != tables.get(t)]
    return [
        Check("postgres restored rows", not differing,
              f"{sum(counts.values())} rows in {len(counts)} tables"
              + (f"; differ: {', '.join(differing)}" if differing else ""),
              f"{sum(tables.values())} rows in {len(tables)} tables", ms),
        Check("postgres restored schema", schema == want["schema_sha256"], schema[:16],
              want["schema_sha256"][:16], ms),
    ]


def swap_databases(target: PostgresTarget, replacement: str, stamp: str) -> str:
    """Make ``replacement`` the live database in one transaction; return the previous one's new name."""
    live, previous = target.database, f"{target.database}_pre_restore_{stamp}"
    with connect_postgres(maintenance(target)) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(live)))
        try:
            for attempt in range(5):
                try:
                    _switch(admin, live, previous, replacement)
                    break
                except psycopg.errors.ObjectInUse:  # a client reconnected in between
                    if attempt == 4:
                        raise BackupFailed(f"database {live} stayed in use by clients that reconnect at once (5 tries "
                                           f"to switch it); nothing live was changed: stop those clients, or run "
                                           f"the restore again") from None
                    time.sleep(0.2)
        finally:
            still_live = previous if _exists(admin, previous) else live
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(still_live)))
    return previous


def swap_back(target: PostgresTarget, previous: str) -> None:
    """Undo :func:`swap_databases` (the restored database is dropped)."""
    restored = f"{target.database}_failed_restore_{secrets.token_hex(4)}"
    with connect_postgres(maintenance(target)) as admin:
        _switch(admin, target.database, restored, previous)
    drop_database(target, restored)


def _switch(admin: psycopg.Connection, live: str, aside: str, incoming: str) -> None:
    """Disconnect ``live``'s clients, then rename it to ``aside`` and ``incoming`` to ``live``, atomically."""
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = %s AND pid <> pg_backend_pid()", (live,))
    with admin.transaction():
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(live), sql.Identifier(aside)))
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(incoming),
                                                                      sql.Identifier(live)))


def _exists(admin: psycopg.Connection, database: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None
