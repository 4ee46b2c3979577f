"""Versioned SQL migrations: plan, apply, baseline (the files: :mod:`infra.deploy.migration_files`).

Each applied file is recorded in ``sin_schema_history`` with the sha256 of its content,
who applied it, when, how long it took and whether it succeeded. A run takes a
session-level advisory lock on its own connection (waited for with a deadline), refuses
to start when an applied file was changed, deleted or a new one sorts before it, and
applies each pending file in its own transaction together with its history row, unless
the file asks to run outside one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from infra.core.connect import connect_postgres
from infra.deploy.migration_files import DEFAULT_DIR, Migration, MigrationError, load, split_statements
from infra.core.targets import PostgresTarget

HISTORY_TABLE = "sin_schema_history"
# Any 64-bit constant shared by every runner of this project; the ASCII of "sin-migr".
LOCK_KEY = 0x73696E2D6D696772


@dataclass(frozen=True)
class Applied:
    """One row of the history table."""

    version: int
    description: str
    checksum: str
    installed_by: str
    success: bool
    kind: str


@dataclass(frozen=True)
class Plan:
    """What a run would do: the files already applied and the ones it would apply."""

    applied: list[Applied]
    pending: list[Migration]


@dataclass(frozen=True)
class Outcome:
    """What a run did."""

    applied: list[tuple[Migration, int]]  # (migration, execution ms)
    already_applied: int


def _ensure_history(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {} (
            version       INTEGER PRIMARY KEY,
            description   TEXT NOT NULL,
            script        TEXT NOT NULL,
            checksum      CHAR(64) NOT NULL,
            kind          TEXT NOT NULL DEFAULT 'SQL',
            installed_by  TEXT NOT NULL,
            installed_on  TIMESTAMPTZ NOT NULL DEFAULT now(),
            execution_ms  INTEGER NOT NULL,
            success       BOOLEAN NOT NULL
        )""").format(sql.Identifier(HISTORY_TABLE)))


def read_history(conn: psycopg.Connection) -> list[Applied]:
    """The history rows, or nothing when the table does not exist yet."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (HISTORY_TABLE,)).fetchone()[0]
    if not exists:
        return []
    rows = conn.execute(sql.SQL(
        "SELECT version, description, checksum, installed_by, success, kind FROM {} ORDER BY version"
    ).format(sql.Identifier(HISTORY_TABLE))).fetchall()
    return [Applied(*row) for row in rows]


def check(files: list[Migration], history: list[Applied]) -> Plan:
    """Compare files with the history; refuse changed, missing, failed or out-of-order files."""
    by_version = {m.version: m for m in files}
    for row in history:
        migration = by_version.get(row.version)
        if not row.success:
            raise MigrationError(
                f"V{row.version} ({row.description}) failed outside a transaction in an earlier run; "
                f"undo what it left behind by hand, then DELETE FROM {HISTORY_TABLE} WHERE version = {row.version}")
        if migration is None:
            raise MigrationError(
                f"V{row.version} ({row.description}) was applied but its file is missing from sql/; restore it")
        if row.kind == "SQL" and migration.checksum != row.checksum:
            raise MigrationError(
                f"{migration.name} was changed after it was applied (applied sha256 {row.checksum[:12]}, "
                f"file now {migration.checksum[:12]}); restore the applied content and put the change "
                f"in a new migration file")
    applied_versions = {row.version for row in history}
    newest = max(applied_versions, default=0)
    pending = [m for m in files if m.version not in applied_versions]
    for migration in pending:
        if migration.version < newest:
            raise MigrationError(
                f"{migration.name} sorts before V{newest}, which is already applied; "
                f"renumber it above V{newest}")
    return Plan(applied=history, pending=pending)


def plan(target: PostgresTarget, directory: Path = DEFAULT_DIR, deadline_s: float = 30.0) -> Plan:
    """What a run would apply; reads the history and changes nothing."""
    files = load(directory)
    with connect_postgres(target, deadline_s) as conn:
        return check(files, read_history(conn))


def _lock(conn: psycopg.Connection, wait_s: float) -> None:
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(wait_s * 1000)}ms")))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise MigrationError(
            f"another migration run held the lock for more than {wait_s:g} s; "
            f"wait for it to finish or raise the lock wait") from None
    conn.execute("SET lock_timeout = 0")


def migrate(target: PostgresTarget, actor: str, directory: Path = DEFAULT_DIR, deadline_s: float = 30.0,
            lock_wait_s: float = 60.0, lock_timeout_s: float = 10.0, statement_timeout_s: float = 300.0) -> Outcome:
    """Apply every pending migration exactly once, under the advisory lock."""
    files = load(directory)
    with connect_postgres(target, deadline_s) as lock_conn, connect_postgres(target, deadline_s) as conn:
        _lock(lock_conn, lock_wait_s)
        try:
            _ensure_history(conn)
            current = check(files, read_history(conn))
            done = []
            for migration in current.pending:
                elapsed = _apply(conn, migration, actor, lock_timeout_s, statement_timeout_s)
                done.append((migration, elapsed))
            return Outcome(applied=done, already_applied=len(current.applied))
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _set_timeouts(conn: psycopg.Connection, scope: str, lock_timeout_s: float, statement_timeout_s: float) -> None:
    for name, seconds in (("lock_timeout", lock_timeout_s), ("statement_timeout", statement_timeout_s)):
        conn.execute(sql.SQL("SET {} {} = {}").format(
            sql.SQL(scope), sql.SQL(name), sql.Literal(f"{int(seconds * 1000)}ms")))


def _apply(conn: psycopg.Connection, migration: Migration, actor: str,
           lock_timeout_s: float, statement_timeout_s: float) -> int:
    """Run one file; its history row commits with it, or (outside a transaction) records the failure."""
    started = time.monotonic()
    if migration.transactional:
        with conn.transaction():
            _set_timeouts(conn, "LOCAL", lock_timeout_s, statement_timeout_s)
            _run_statements(conn, migration)
            elapsed = int((time.monotonic() - started) * 1000)
            _record(conn, migration, actor, elapsed, True)
        return elapsed
    _set_timeouts(conn, "SESSION", lock_timeout_s, statement_timeout_s)
    try:
        _run_statements(conn, migration)
    except MigrationError:
        _record(conn, migration, actor, int((time.monotonic() - started) * 1000), False)
        raise
    finally:
        conn.execute("RESET lock_timeout")
        conn.execute("RESET statement_timeout")
    elapsed = int((time.monotonic() - started) * 1000)
    _record(conn, migration, actor, elapsed, True)
    return elapsed


def _run_statements(conn: psycopg.Connection, migration: Migration) -> None:
    for line, statement in split_statements(migration.sql_text):
        try:
            conn.execute(statement, prepare=False)
        except psycopg.Error as exc:
            first = statement.splitlines()[0] + (" ..." if "\n" in statement else "")
            consequence = (f"nothing of {migration.name} was applied" if migration.transactional else
                           f"{migration.name} runs outside a transaction: statements before line {line} stay applied")
            raise MigrationError(f"{migration.name}, line {line}: statement failed: {_error_text(exc)}\n"
                                 f"    {first}\n{consequence}") from None


def _error_text(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).splitlines()[0]
    return f"{text} (SQLSTATE {diag.sqlstate})" if diag.sqlstate else text


def _record(conn: psycopg.Connection, migration: Migration, actor: str, elapsed_ms: int, success: bool,
            kind: str = "SQL") -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {} (version, description, script, checksum, kind, installed_by, execution_ms, success) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    ).format(sql.Identifier(HISTORY_TABLE)),
        (migration.version, migration.description, migration.name, migration.checksum, kind, actor,
         elapsed_ms, success))


def baseline(target: PostgresTarget, actor: str, version: int, directory: Path = DEFAULT_DIR,
             deadline_s: float = 30.0, lock_wait_s: float = 60.0) -> list[Migration]:
    """Mark the files up to ``version`` as applied without running them (schema already there)."""
    files = load(directory)
    chosen = [m for m in files if m.version <= version]
    if not chosen or chosen[-1].version != version:
        raise MigrationError(f"no migration file has version {version}; pick one of "
                             f"{', '.join(str(m.version) for m in files) or '(none)'}")
    with connect_postgres(target, deadline_s) as lock_conn, connect_postgres(target, deadline_s) as conn:
        _lock(lock_conn, lock_wait_s)
        try:
            _ensure_history(conn)
            if read_history(conn):
                raise MigrationError(f"{HISTORY_TABLE} already has rows; a baseline is only for a database "
                                     f"that has never been migrated by this tool")
            with conn.transaction():
                for migration in chosen:
                    _record(conn, migration, actor, 0, True, kind="BASELINE")
            return chosen
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
