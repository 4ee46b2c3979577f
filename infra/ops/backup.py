"""Back up, prove and restore a stack's data, without Pulumi (the ADR's backup strategy).

A backup is a folder ``<root>/<stack>/<UTC time>/`` with
  postgres.dump              ``pg_dump -Fc`` run inside the PostgreSQL container
  redis-dump.rdb             the RDB snapshot written by ``BGSAVE``
  redis-appendonlydir.tar    a copy of the AOF directory (kept for manual recovery)
  manifest.json              sizes, sha256, server versions, row and key counts
It is assembled in a hidden ``.partial-*`` folder and renamed into place only after the
manifest is written, so a folder with a manifest is always complete.

Row counts are taken in the snapshot pg_dump dumps (``--snapshot``), and key counts in
the same ``MULTI`` as ``BGSAVE``, so both describe exactly what the files hold.

Restore is all-or-nothing: everything is loaded and compared in scratch places first (a
scratch database in the live server, a scratch Redis container from the live image); only
then is the live data switched, PostgreSQL by renaming databases in one transaction (the
previous database is kept, renamed), Redis by one ``MULTI``/``EXEC``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

import psycopg
import redis
from psycopg import sql

from infra.core import dockercli, dockerhost
from infra.backupagent.agent import AgentError, bgsave
from infra.core.connect import connect_postgres, connect_redis
from infra.core.targets import POSTGRES_SOCKET_DIR, PostgresTarget, RedisTarget, Target
from infra.deploy.checks import Check, Report

FORMAT = 1
MANIFEST = "manifest.json"
PG_DUMP = "postgres.dump"
REDIS_RDB = "redis-dump.rdb"
REDIS_AOF = "redis-appendonlydir.tar"
FILES = (PG_DUMP, REDIS_RDB, REDIS_AOF)
SCRATCH_LABEL = "sin-datastores.role=scratch"
# Advisory lock key of restores and verifications ("sinrstr"), distinct from the migrations' key.
LOCK_KEY = 0x73696E72737472
_REQUIRED = {"postgres": ("major", "tables", "schema_sha256"), "redis": ("major", "keys"), "files": FILES}

# Objects the schema fingerprint covers: columns, constraints, indexes of non-system schemas.
_SCHEMA_SQL = """
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
# image) emit a setting a 16 server rejects; with matching tools it is a no-op.
_RESTORE_SCRIPT = ('set -eu; set -o pipefail; pg_restore --file=- '
                   '| grep -v "^SET transaction_timeout = " '
                   '| psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction '
                   '--host="$1" --username="$2" --dbname="$3" >/dev/null')
_TABLES_SQL = """
SELECT schemaname, tablename FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2
"""


class BackupError(RuntimeError):
    """The backup folder or the stack cannot be used as asked; nothing was changed."""


class BackupFailed(RuntimeError):
    """A backup, verification or restore step failed; the live data was left as it was."""


@dataclass(frozen=True)
class Outcome:
    """What a restore did."""

    report: Report
    previous_database: str


# ------------------------------------------------------------------ manifest and files

def file_digest(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def load_manifest(folder: Path) -> dict:
    """The manifest of a complete, untampered backup; BackupError naming every problem otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BackupError(f"backup folder {folder} does not exist; list backups with `ls {folder.parent}`")
    path = folder / MANIFEST
    if not path.is_file():
        raise BackupError(f"{folder} has no {MANIFEST}: the backup is incomplete (interrupted?); "
                          f"use another backup or take a new one with `backup --stack NAME`")
    try:
        manifest = json.loads(path.read_text())
        missing = [f"{section}.{key}" for section, keys in _REQUIRED.items() for key in keys
                   if key not in manifest[section]]
    except (ValueError, KeyError, TypeError) as exc:
        missing = [f"unreadable ({type(exc).__name__}: {exc})"]
    if missing:
        raise BackupError(f"{path} is not a sin-datastores manifest: {', '.join(missing)}; nothing was restored")
    files = manifest["files"]
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path} has format {manifest.get('format')!r}; this version reads format {FORMAT}")
    problems = []
    for name in FILES:
        want, file = files.get(name), folder / name
        if want is None:
            problems.append(f"{name} is not listed in the manifest")
        elif not file.is_file():
            problems.append(f"{name} is missing")
        elif (got := file_digest(file)) != {"size": want.get("size"), "sha256": want.get("sha256")}:
            problems.append(f"{name} does not match the manifest (size {got['size']} vs {want.get('size')}, "
                            f"sha256 {got['sha256'][:12]} vs {str(want.get('sha256'))[:12]})")
    if problems:
        raise BackupError(f"backup {folder} is incomplete or was modified: {'; '.join(problems)}; "
                          f"nothing was restored")
    return manifest


# ------------------------------------------------------------------ PostgreSQL

def _maintenance(target: PostgresTarget) -> PostgresTarget:
    return replace(target, database="postgres")


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    counts = {}
    for schema, table in conn.execute(_TABLES_SQL).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    return counts


def schema_objects(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(kind, qualified name, definition) of every column, constraint and index the digest covers."""
    return conn.execute(_SCHEMA_SQL).fetchall()


def schema_digest(conn: psycopg.Connection) -> str:
    rows = schema_objects(conn)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _pg_client(target: PostgresTarget, tool: str, *args: str) -> list[str]:
    """A client tool inside the container, on its Unix socket (trusted there; no password)."""
    return [tool, f"--host={POSTGRES_SOCKET_DIR}", f"--username={target.user}", *args]


def _dump_postgres(target: PostgresTarget, dest: Path) -> dict:
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
        dockercli.exec_to_file(target.container_name, _pg_client(
            target, "pg_dump", "--format=custom", f"--snapshot={snapshot}", f"--dbname={target.database}"), dest)
        conn.rollback()
    finally:
        conn.close()
    info["dump_tool"] = dockercli.docker("exec", target.container_name, "pg_dump", "--version").strip()
    return info


def _restore_into_scratch(target: PostgresTarget, dump: Path) -> str:
    """pg_restore the dump into a new scratch database in one transaction; return its name."""
    scratch = f"{target.database}_restore_{secrets.token_hex(4)}"
    with connect_postgres(_maintenance(target)) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch)))
    try:
        dockercli.exec_from_file(target.container_name,
                                 ["sh", "-c", _RESTORE_SCRIPT, "sh", POSTGRES_SOCKET_DIR, target.user, scratch], dump)
    except dockercli.DockerError as exc:
        _drop_database(target, scratch)
        raise BackupFailed(f"pg_restore into a scratch database failed; nothing live was touched: {exc}") from None
    return scratch


def _drop_database(target: PostgresTarget, name: str) -> None:
    with connect_postgres(_maintenance(target)) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _compare_postgres(target: PostgresTarget, database: str, manifest: dict) -> list[Check]:
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


def _swap_databases(target: PostgresTarget, replacement: str, stamp: str) -> str:
    """Make ``replacement`` the live database in one transaction; return the previous one's new name."""
    live, previous = target.database, f"{target.database}_pre_restore_{stamp}"
    with connect_postgres(_maintenance(target)) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(live)))
        try:
            for attempt in range(5):
                try:
                    _switch(admin, live, previous, replacement)
                    break
                except psycopg.errors.ObjectInUse:  # a client reconnected in between
                    if attempt == 4:
                        raise
                    time.sleep(0.2)
        finally:
            still_live = previous if _exists(admin, previous) else live
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(still_live)))
    return previous


def _swap_back(target: PostgresTarget, previous: str) -> None:
    """Undo :func:`_swap_databases` (the restored database is dropped)."""
    restored = f"{target.database}_failed_restore_{secrets.token_hex(4)}"
    with connect_postgres(_maintenance(target)) as admin:
        _switch(admin, target.database, restored, previous)
    _drop_database(target, restored)


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


# ------------------------------------------------------------------ Redis

def _keyspace(info: dict) -> dict[str, int]:
    return {db: fields["keys"] for db, fields in info.items() if db.startswith("db")}


def _extract_single(tar_path: Path, dest: Path) -> None:
    with tarfile.open(tar_path) as archive:
        member = next(m for m in archive.getmembers() if m.isfile())
        with archive.extractfile(member) as source, open(dest, "wb") as out:
            shutil.copyfileobj(source, out)


def _dump_redis(target: RedisTarget, folder: Path) -> dict:
    client = connect_redis(target)
    try:
        data_dir, rdb_name = client.config_get("dir")["dir"], client.config_get("dbfilename")["dbfilename"]
        aof_dir = client.config_get("appenddirname").get("appenddirname", "appendonlydir")
        version = client.info("server")["redis_version"]
        try:
            keys = bgsave(client, deadline_s=300)
        except AgentError as exc:
            raise BackupFailed(str(exc)) from None
    finally:
        client.close()
    with tempfile.TemporaryDirectory() as tmp:
        rdb_tar = Path(tmp) / "rdb.tar"
        dockercli.copy_out(target.container_name, f"{data_dir}/{rdb_name}", rdb_tar)
        _extract_single(rdb_tar, folder / REDIS_RDB)
    dockercli.copy_out(target.container_name, f"{data_dir}/{aof_dir}", folder / REDIS_AOF)
    return {"version": version, "major": int(version.split(".")[0]), "keys": keys}


class ScratchRedis:
    """A Redis container from the live image, loaded from an RDB file, removed on exit;
    yields a binary-safe client."""

    def __init__(self, live: RedisTarget, stack: str, rdb: Path):
        self.live, self.stack, self.rdb = live, stack, rdb
        self.name = f"sin-scratch-{stack}-redis-{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(24)

    def __enter__(self) -> redis.Redis:
        image = dockercli.inspect("container", self.live.container_name)["Image"]
        dockercli.docker("create", "--name", self.name, "--label", SCRATCH_LABEL,
                         "--label", f"{dockercli.STACK_LABEL}={self.stack}",
                         "--publish", "127.0.0.1::6379", image, "/usr/local/etc/redis/scratch.conf")
        try:
            conf = "\n".join(["port 6379", "bind * -::*", "dir /data", "dbfilename dump.rdb", "appendonly no",
                              'save ""', f"requirepass {self.password}", ""]).encode()
            dockercli.put_files(self.name, {"/usr/local/etc/redis/scratch.conf": (conf, 0o444),
                                            "/data/dump.rdb": (self.rdb, 0o600)})
            dockercli.docker("start", self.name)
            published = int(dockercli.docker("port", self.name, "6379/tcp").split()[0].rsplit(":", 1)[1])
            host, port = dockerhost.endpoint("127.0.0.1", published)  # on a remote host: through the tunnel
            self.client = connect_redis(RedisTarget(host, port, self.password, self.name, "",
                                                    self.live.major_version), deadline_s=60, decode=False)
            return self.client
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        dockercli.docker("rm", "-f", "-v", self.name, check=False)


def compare_redis(client: redis.Redis, manifest: dict) -> Check:
    started = time.perf_counter()
    keys = _keyspace(client.info("keyspace"))
    want = manifest["redis"]["keys"]
    return Check("redis restored keys", keys == want, json.dumps(keys, sort_keys=True) or "{}",
                 json.dumps(want, sort_keys=True), (time.perf_counter() - started) * 1000)


def _dump_all(client: redis.Redis) -> Iterator[tuple[int, bytes, int, bytes]]:
    """(db, key, pttl, DUMP payload) of every key; ``client`` must be binary-safe."""
    for db in sorted(int(name[2:]) for name in _keyspace(client.info("keyspace"))):
        client.execute_command("SELECT", db)
        for key in client.scan_iter(count=1000):
            pipe = client.pipeline(transaction=False)
            pipe.pttl(key).dump(key)
            pttl, payload = pipe.execute()
            if payload is not None:
                yield db, key, max(pttl, 0), payload


def _replace_redis(target: RedisTarget, entries: list[tuple[int, bytes, int, bytes]]) -> None:
    """Replace all live keys with ``entries`` in one MULTI/EXEC: all or nothing."""
    live = connect_redis(target, decode=False)
    try:
        pipe = live.pipeline(transaction=True)
        pipe.flushall()
        current = None
        for db, key, pttl, payload in entries:
            if db != current:
                pipe.execute_command("SELECT", db)
                current = db
            pipe.restore(key, pttl, payload, replace=True)
        pipe.execute_command("SELECT", 0)
        pipe.execute()
    finally:
        live.close()


# ------------------------------------------------------------------ commands

@contextmanager
def _exclusive(target: Target) -> Iterator[None]:
    """One restore or verification per stack at a time; clears what a crashed one left."""
    holder = connect_postgres(_maintenance(target.postgres))
    try:
        if not holder.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            raise BackupError(f"another restore or backup verification is running on stack '{target.stack}'; "
                              f"wait for it to finish")
        stale = [row[0] for row in holder.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s",
            (f"^{re.escape(target.postgres.database)}_restore_[0-9a-f]{{8}}$",))]
        for name in stale:
            _drop_database(target.postgres, name)
        leftovers = _scratch_containers(target.stack)
        if leftovers:
            dockercli.docker("rm", "-f", "-v", *leftovers, check=False)
        yield
    finally:
        holder.close()


def _scratch_containers(stack: str) -> list[str]:
    return dockercli.docker("ps", "-aq", "--filter", f"label={SCRATCH_LABEL}",
                            "--filter", f"label={dockercli.STACK_LABEL}={stack}").split()



def require_containers(target: Target) -> None:
    for service in (target.postgres, target.redis):
        state = (dockercli.inspect("container", service.container_name) or {}).get("State") or {}
        if not state.get("Running"):
            raise BackupError(f"container {service.container_name} of stack '{target.stack}' is "
                              f"{state.get('Status', 'missing')}; bring the stack up with "
                              f"`python -m infra up --stack {target.stack}`")


def backup(target: Target, root: Path, now: Optional[datetime] = None) -> tuple[Path, dict]:
    """Take a backup of both services into ``<root>/<stack>/<UTC time>/``; return the folder and its manifest."""
    require_containers(target)
    now = now or datetime.now(timezone.utc)
    name = now.strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / target.stack
    final = base / name
    if final.exists():
        raise BackupError(f"{final} already exists; wait a second and run the backup again")
    base.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{name}-", dir=base))
    try:
        manifest = {"format": FORMAT, "stack": target.stack, "created_at": now.isoformat(timespec="seconds")}
        manifest["postgres"] = _dump_postgres(target.postgres, partial / PG_DUMP)
        manifest["redis"] = _dump_redis(target.redis, partial)
        manifest["files"] = {f: file_digest(partial / f) for f in FILES}
        with open(partial / MANIFEST, "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, 0o700)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final, manifest


def verify_backup(target: Target, folder: Path) -> Report:
    """Restore the backup into scratch places next to the live stack and compare with its manifest."""
    manifest = _usable_manifest(target, folder)
    with _exclusive(target):
        loaded = _load_in_scratch(target, Path(folder) / PG_DUMP, Path(folder) / REDIS_RDB, manifest,
                                  read_keys=False)
        _drop_database(target.postgres, loaded.database)
    return loaded.report


def restore(target: Target, folder: Path, say: Callable[[str], None] = lambda _: None) -> Outcome:
    """Replace the stack's data with the backup's, all or nothing."""
    manifest = _usable_manifest(target, folder)
    return switch_to(target, Path(folder) / PG_DUMP, Path(folder) / REDIS_RDB, manifest, say)


def switch_to(target: Target, dump: Path, rdb: Path, expected: dict, say: Callable[[str], None]) -> Outcome:
    """Load a pg_dump file and an RDB file in scratch places, compare them with ``expected``
    (tables, schema_sha256, keys as in a manifest), then switch the live data, all or nothing."""
    with _exclusive(target):
        loaded = _load_in_scratch(target, dump, rdb, expected, read_keys=True)
        if not loaded.report.ok:
            _drop_database(target.postgres, loaded.database)
            raise BackupFailed(f"the backup does not load as its manifest says; nothing live was touched\n"
                               f"{loaded.report.table()}")
        say(f"backup loaded and checked in scratch places ({len(loaded.entries)} Redis keys); switching live data")
        previous = _swap_databases(target.postgres, loaded.database,
                                   datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
        try:
            _replace_redis(target.redis, loaded.entries)
        except BaseException as exc:
            _swap_back(target.postgres, previous)
            raise BackupFailed(f"replacing the Redis data failed ({exc}); PostgreSQL was switched back, "
                               f"nothing live changed") from None
        return Outcome(loaded.report, previous)


@dataclass(frozen=True)
class _Loaded:
    report: Report
    database: str
    """The scratch database holding the dump; the caller drops or promotes it."""
    entries: list[tuple[int, bytes, int, bytes]]


def _usable_manifest(target: Target, folder: Path) -> dict:
    """Everything that can refuse a backup, checked before anything is touched."""
    manifest = load_manifest(folder)
    require_containers(target)
    check_versions(target, manifest)
    return manifest


def _load_in_scratch(target: Target, dump: Path, rdb: Path, manifest: dict, read_keys: bool) -> _Loaded:
    scratch = _restore_into_scratch(target.postgres, dump)
    try:
        checks = _compare_postgres(target.postgres, scratch, manifest)
        entries = []
        with ScratchRedis(target.redis, target.stack, rdb) as client:
            checks.append(compare_redis(client, manifest))
            if read_keys:
                entries = list(_dump_all(client))
    except BaseException:
        _drop_database(target.postgres, scratch)
        raise
    return _Loaded(Report(checks), scratch, entries)


def check_versions(target: Target, manifest: dict) -> None:
    """Refuse a backup the live servers cannot take, before anything is touched."""
    with connect_postgres(target.postgres) as conn:
        pg_major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000
    client = connect_redis(target.redis)
    try:
        redis_major = int(client.info("server")["redis_version"].split(".")[0])
    finally:
        client.close()
    backup_pg = manifest["postgres"]["major"]
    if pg_major != backup_pg:
        raise BackupError(f"the backup is of PostgreSQL {backup_pg} ({manifest['postgres'].get('server_version')}) "
                          f"but stack '{target.stack}' runs PostgreSQL {pg_major}; restore it into a stack with "
                          f"postgresImage of major {backup_pg}, or upgrade it with pg_upgrade first")
    if redis_major < manifest["redis"]["major"]:
        raise BackupError(f"the backup is of Redis {manifest['redis'].get('version')} but stack '{target.stack}' "
                          f"runs Redis {redis_major}, which cannot read newer snapshots")
