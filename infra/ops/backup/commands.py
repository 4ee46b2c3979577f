"""The backup commands: take a backup into a folder, verify it, restore it all or nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

from infra.core import dockercli
from infra.core.connect import connect_postgres, connect_redis
from infra.core.report import Report
from infra.core.targets import Target
from infra.deploy import replicated
from infra.ops.backup import BackupFailed, BackupRefused
from infra.ops.backup.manifest import FILES, FORMAT, MANIFEST, PG_DUMP, REDIS_RDB, file_digest, load_manifest
from infra.ops.backup.postgres_dump import (compare_postgres, drop_database, dump_postgres, maintenance,
                                            restore_into_scratch, swap_back, swap_databases)
from infra.ops.backup.redis_snapshot import ScratchRedis, compare_redis, dump_all, dump_redis, replace_redis




@dataclass(frozen=True)
class Outcome:
    """What a restore did."""

    report: Report
    previous_database: str


# How long a backup of a replicated stack waits for the Redis replica beside the leader to catch up.
REDIS_CATCH_UP_S = 60

# Advisory lock key of restores and verifications ("sinrstr"), distinct from the migrations' key.
LOCK_KEY = 0x73696E72737472


@contextmanager
def _exclusive(target: Target) -> Iterator[None]:
    """One restore or verification per stack at a time; clears what a crashed one left."""
    holder = connect_postgres(maintenance(target.postgres))
    try:
        if not holder.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            raise BackupRefused(f"another restore or backup verification is running on stack '{target.stack}'; "
                              f"wait for it to finish")
        stale = [row[0] for row in holder.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s",
            (f"^{re.escape(target.postgres.database)}_restore_[0-9a-f]{{8}}$",))]
        for name in stale:
            drop_database(target.postgres, name)
        leftovers = _scratch_containers(target.stack)
        if leftovers:
            dockercli.docker("rm", "-f", "-v", *leftovers, check=False)
        yield
    finally:
        holder.close()


def _scratch_containers(stack: str) -> list[str]:
    return dockercli.docker("ps", "-aq", "--filter", f"label={dockercli.SCRATCH_LABEL}",
                            "--filter", f"label={dockercli.STACK_LABEL}={stack}").split()


def require_containers(target: Target) -> None:
    for service in (target.postgres, target.redis):
        state = (dockercli.inspect("container", service.container_name) or {}).get("State") or {}
        if not state.get("Running"):
            raise BackupRefused(f"container {service.container_name} of stack '{target.stack}' is "
                              f"{state.get('Status', 'missing')}; bring the stack up with "
                              f"`python -m infra up --stack {target.stack}`")


def take(target: Target, root: Path, now: Optional[datetime] = None) -> tuple[Path, dict]:
    """Take a backup of both services into ``<root>/<stack>/<UTC time>/``; return the folder and its manifest.
    A replicated stack's, on its leader's host (:func:`infra.driver.stacks.reached` with its engine):
    pg_dump in the leader's container; Redis saved by the member there once it has the master's writes."""
    if target.cluster:
        target = replicated.with_redis_on(target, target.postgres.host, REDIS_CATCH_UP_S)
    require_containers(target)
    now = now or datetime.now(timezone.utc)
    name = now.strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / target.stack
    final = base / name
    if final.exists():
        raise BackupRefused(f"{final} already exists; wait a second and run the backup again")
    base.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{name}-", dir=base))
    try:
        manifest = {"format": FORMAT, "stack": target.stack, "created_at": now.isoformat(timespec="seconds")}
        manifest["postgres"] = dump_postgres(target.postgres, partial / PG_DUMP,
                                             socket_password=target.cluster is not None)
        manifest["redis"] = dump_redis(target.redis, partial)
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


def verify(target: Target, folder: Path) -> Report:
    """Restore the backup into scratch places next to the live stack and compare with its manifest."""
    manifest = _usable_manifest(target, folder)
    with _exclusive(target):
        loaded = _load_in_scratch(target, Path(folder) / PG_DUMP, Path(folder) / REDIS_RDB, manifest,
                                  read_keys=False)
        drop_database(target.postgres, loaded.database)
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
            drop_database(target.postgres, loaded.database)
            raise BackupFailed(f"the backup does not load as its manifest says; nothing live was touched\n"
                               f"{loaded.report.table()}")
        say(f"backup loaded and checked in scratch places ({len(loaded.entries)} Redis keys); switching live data")
        previous = swap_databases(target.postgres, loaded.database,
                                   datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
        try:
            replace_redis(target.redis, loaded.entries)
        except Exception as exc:
            swap_back(target.postgres, previous)
            raise BackupFailed(f"replacing the Redis data failed ({exc}); PostgreSQL was switched back, "
                               f"nothing live changed") from None
        except BaseException:  # Ctrl-C: PostgreSQL goes back too, then the interrupt goes on
            swap_back(target.postgres, previous)
            raise
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
    scratch = restore_into_scratch(target.postgres, dump, socket_password=target.cluster is not None)
    try:
        checks = compare_postgres(target.postgres, scratch, manifest)
        entries = []
        with ScratchRedis(target.redis, target.stack, rdb) as client:
            checks.append(compare_redis(client, manifest))
            if read_keys:
                entries = list(dump_all(client))
    except BaseException:
        drop_database(target.postgres, scratch)
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
        raise BackupRefused(f"the backup is of PostgreSQL {backup_pg} ({manifest['postgres'].get('server_version')}) "
                          f"but stack '{target.stack}' runs PostgreSQL {pg_major}; restore it into a stack with "
                          f"postgresImage of major {backup_pg}, or upgrade it with pg_upgrade first")
    if redis_major < manifest["redis"]["major"]:
        raise BackupRefused(f"the backup is of Redis {manifest['redis'].get('version')} but stack '{target.stack}' "
                          f"runs Redis {redis_major}, which cannot read newer snapshots")
