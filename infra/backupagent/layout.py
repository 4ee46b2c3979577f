"""Names of everything the backups write, in one place: the agent, status and restore use them.

Every store (the local backup volume, the S3 prefix) holds the same keys:
  base/<YYYYmmddTHHMMSSZ>/postgres.tar.gz.enc   the data directory (low-level base backup)
  base/<stamp>/redis.tar.gz.enc                 dump.rdb and the AOF directory
  base/<stamp>/manifest.json                    written last: a backup with a manifest is complete
  wal/<system identifier>/<segment>.gz.enc      archived WAL, per cluster (a re-initialised or
                                                restored cluster gets a new identifier)
Objects ending in .enc are gzip'ed then encrypted (.crypto); the manifest holds no data, only
times, positions, sizes, checksums and how the objects are encrypted.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable, Optional

MANIFEST_FORMAT = 2
STATUS_FORMAT = 1
MANIFEST = "manifest.json"
POSTGRES_OBJECT = "postgres.tar.gz.enc"
REDIS_OBJECT = "redis.tar.gz.enc"
BACKUP_OBJECTS = (POSTGRES_OBJECT, REDIS_OBJECT)
REDIS_RDB_MEMBER = "dump.rdb"
REDIS_AOF_MEMBER = "appendonlydir"
STATUS_FILE = "status.json"
HEARTBEAT_FILE = "heartbeat"
LOCAL_STORE_DIR = "store"
WORK_DIR = ".work"
# The WAL archive volume is mounted on the data volume's parent in PostgreSQL's container (single
# host) and in Patroni's (replicated): the images own that directory (postgres:16-alpine and ours),
# so a new volume starts out writable by the postgres user. archive_command copies into a folder of it.
ARCHIVE_MOUNT = "/var/lib/postgresql"
ARCHIVE_SUBDIR = "wal-archive"
ARCHIVE_DIR = f"{ARCHIVE_MOUNT}/{ARCHIVE_SUBDIR}"
# Recovery point: with writes going on, a segment is archived at least this often (the agent
# ships it within seconds), so a dead host loses at most about this much.
ARCHIVE_TIMEOUT_S = 30
# Only sh, cp, mv, cmp: what the official image ships. Writes under a temporary name, so the
# agent never ships half a segment; a segment archived again after a crash must be identical.
ARCHIVE_COMMAND = (f"mkdir -p {ARCHIVE_DIR} && if [ -f {ARCHIVE_DIR}/%f ]; then cmp -s %p {ARCHIVE_DIR}/%f; "
                   f"else cp %p {ARCHIVE_DIR}/%f.tmp && mv {ARCHIVE_DIR}/%f.tmp {ARCHIVE_DIR}/%f; fi")
STAMP = "%Y%m%dT%H%M%SZ"
_BASE = re.compile(r"^base/(\d{8}T\d{6}Z)/")
_WAL = re.compile(r"^wal/(\d+)/([0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)\.gz\.enc$")


def backup_name(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime(STAMP)


def backup_time(name: str) -> datetime:
    return datetime.strptime(name, STAMP).replace(tzinfo=timezone.utc)


def backup_key(name: str, file: str) -> str:
    return f"base/{name}/{file}"


def backup_of(key: str) -> Optional[str]:
    match = _BASE.match(key)
    return match.group(1) if match else None


def backup_names(keys: Iterable[str]) -> list[str]:
    return sorted({name for key in keys if (name := backup_of(key))})


def wal_key(system_identifier: str, file: str) -> str:
    return f"wal/{system_identifier}/{file}.gz.enc"


def wal_of(key: str) -> Optional[tuple[str, str]]:
    """(system identifier, WAL file name) of a WAL key."""
    match = _WAL.match(key)
    return (match.group(1), match.group(2)) if match else None


def segment(file: str) -> str:
    """The position part of a WAL file name (log and segment number, without the timeline)."""
    return file[8:24]
