"""The backup agent: one container per stack on its Docker host, started by `up`, removed by `destroy`.

Two loops share the process:
  - the WAL shipper moves every segment PostgreSQL archived (``archive_command`` copies it into
    a volume the agent shares) into every store, compressed and encrypted, then deletes it
    there; while a store is unreachable segments wait in the volume, and PostgreSQL keeps serving;
  - the scheduler takes a base backup of PostgreSQL (the low-level ``pg_backup_start`` /
    ``pg_backup_stop`` API over SQL, reading the data volume mounted read-only, so the official
    image needs nothing extra) and a Redis snapshot (BGSAVE, then the RDB file and the AOF
    directory), writes the manifest last, copies the backup into every store, and prunes by the
    retention policy, only after a run that succeeded.

What happened is written to ``status.json`` in the local backup volume; ``python -m infra status``
reads it. Layout in every store: see :mod:`.layout`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import psycopg
import redis

from . import BackupAgentError, layout
from .crypto import SCHEME, encrypt
from .schedule import Cron, select_kept
from .store import DirStore, S3Store, StoreError, file_digest, read_json

CONFIG_FILE = Path("/etc/sin-backup/agent.json")
SECRETS_DIR = Path("/run/secrets")
WAL_POLL_S = 2.0
# The longest a snapshot may hold Redis's writers (an INFO and a fork take milliseconds; see bgsave).
REDIS_WRITE_PAUSE_MS = 5000
# The agent starts beside PostgreSQL, whose first start (initdb) may not be over yet: without a
# base backup the archived WAL restores nothing, so the first one is retried, 5 s, 10 s, ... 5 min apart.
FIRST_BACKUP_RETRY_S = (5.0, 300.0)
# What pg_basebackup leaves out of a base backup too (PostgreSQL docs, "Making a Base Backup
# Using the Low Level API"): contents of these directories, and these files.
_SKIP_CONTENTS = {"pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
                  "pg_stat_tmp", "pg_subtrans"}
_SKIP_FILES = {"postmaster.pid", "postmaster.opts", "backup_label", "backup_label.old", "tablespace_map",
               "tablespace_map.old"}


class AgentError(BackupAgentError):
    """A backup run cannot complete; the run is recorded as failed and nothing is pruned."""


def log(message: str) -> None:
    print(f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} {message}", flush=True)


@dataclass(frozen=True)
class AgentConfig:
    """agent.json (written by the Pulumi component) plus the secret files next to it."""

    stack: str
    schedule: str
    keep_last: int
    keep_daily: int
    keep_weekly: int
    postgres_host: str
    postgres_port: int
    postgres_user: str
    postgres_database: str
    redis_host: str
    redis_port: int
    pgdata: Path
    archive: Path
    redis_data: Path
    local_root: Path
    s3: Optional[dict]
    replicated: bool = False
    """One agent per host of a replicated stack: the bucket is its only store (each host archives
    what its own member has; only the bucket holds all of it), and only the agent beside the leader
    of the moment takes the base backups."""

    @classmethod
    def load(cls, path: Path = CONFIG_FILE) -> "AgentConfig":
        raw = json.loads(Path(path).read_text())
        for key in ("pgdata", "archive", "redis_data", "local_root"):
            raw[key] = Path(raw[key])
        return cls(**raw)


def secret(name: str, directory: Path = SECRETS_DIR) -> str:
    return (directory / name).read_text().strip()


# ------------------------------------------------------------------ stores

def open_stores(config: AgentConfig, secrets_dir: Path = SECRETS_DIR) -> list:
    """The local copy first (always reachable), then the off-host one; replicated: the bucket only."""
    stores = [] if config.replicated else [DirStore(config.local_root / layout.LOCAL_STORE_DIR)]
    if config.s3:
        stores.append(S3Store(config.s3.get("endpoint") or None, config.s3["region"], config.s3["bucket"],
                              config.s3["prefix"], secret("s3-access-key-id", secrets_dir),
                              secret("s3-secret-access-key", secrets_dir)))
    return stores


# ------------------------------------------------------------------ status

class Status:
    """status.json, written atomically; both loops update their own section."""

    def __init__(self, path: Path, schedule: str):
        self.path = path
        self.lock = threading.Lock()
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data.update({"format": layout.STATUS_FORMAT, "schedule": schedule,
                          "agent_started_at": _iso(_now())})
        self.data.setdefault("wal", {})
        self.save()

    def update(self, section: str, **values) -> None:
        with self.lock:
            current = self.data.setdefault(section, {})
            if any(current.get(key, object()) != value for key, value in values.items()):
                current.update(values)
                self.save()

    def set(self, key: str, value) -> None:
        with self.lock:
            self.data[key] = value
            self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


# ------------------------------------------------------------------ WAL shipping

def system_identifier(pgdata: Path) -> str:
    """The cluster's id: the first 8 bytes of global/pg_control (readable while PostgreSQL is down)."""
    with open(pgdata / "global" / "pg_control", "rb") as handle:
        return str(int.from_bytes(handle.read(8), "little"))


def ship_wal(config: AgentConfig, stores: list, passphrase: str, status: Status) -> int:
    """Move every archived segment into every store, oldest first; stop at the first failure
    (it stays in the archive and is tried again). Returns how many were shipped."""
    archive = config.archive / layout.ARCHIVE_SUBDIR
    if not archive.is_dir():
        return 0
    names = sorted(p.name for p in archive.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    status.update("wal", pending=len(names))
    if not names:
        return 0
    sysid = system_identifier(config.pgdata)
    work = config.local_root / layout.WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    shipped = 0
    for name in names:
        key = layout.wal_key(sysid, name)
        sealed = work / f"{name}.gz.enc"
        try:
            if not all(store.exists(key) for store in stores):
                with open(archive / name, "rb") as source, open(sealed, "wb") as out:
                    _seal(lambda sink: _gzip_copy(source, sink), out, passphrase)
                for store in stores:
                    if not store.exists(key):
                        store.put(key, sealed)
        except (StoreError, OSError) as exc:
            status.update("wal", last_error=str(exc), last_error_at=_iso(_now()), pending=len(names) - shipped)
            return shipped
        finally:
            sealed.unlink(missing_ok=True)
        (archive / name).unlink()
        shipped += 1
        status.update("wal", last_shipped=name, last_shipped_at=_iso(_now()), pending=len(names) - shipped,
                      last_error=None, system_identifier=sysid)
    return shipped


def _gzip_copy(source: BinaryIO, sink: BinaryIO) -> None:
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0) as gz:
        while block := source.read(1 << 20):
            gz.write(block)


def _seal(produce: Callable[[BinaryIO], None], out: BinaryIO, passphrase: str) -> None:
    """Encrypt what ``produce`` writes, streaming through a pipe (constant memory)."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with os.fdopen(write_fd, "wb") as sink:
                produce(sink)
        except BaseException as exc:  # re-raised in the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb") as source:
        encrypt(source, out, passphrase)
    thread.join()
    if failure:
        raise failure[0]


# ------------------------------------------------------------------ base backup

class _Sized:
    """Exactly ``size`` bytes of a file that may shrink or grow while it is read (WAL replay
    repairs what a live data directory changes under a low-level backup)."""

    def __init__(self, handle: BinaryIO, size: int):
        self.handle, self.left = handle, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n)
        data += b"\0" * (n - len(data))
        self.left -= n
        return data


def _add_tree(tar: tarfile.TarFile, root: Path) -> None:
    for directory, subdirs, files in os.walk(root):
        rel = Path(directory).relative_to(root)
        subdirs.sort()
        info = tarfile.TarInfo("." if rel == Path(".") else str(rel))
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(info)
        if rel.parts and rel.parts[0] in _SKIP_CONTENTS:
            subdirs[:] = [d for d in subdirs if rel == Path("pg_wal") and d == "archive_status"]
            continue
        for name in sorted(files):
            if (rel == Path(".") and name in _SKIP_FILES) or name.startswith("pgsql_tmp"):
                continue
            _add_file(tar, Path(directory) / name, str(rel / name))


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """One file as it is now; a file removed meanwhile is left out (WAL replay drops it too;
    an AOF rewrite replaces its files)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        size = os.fstat(handle.fileno()).st_size
        member = tarfile.TarInfo(arcname)
        member.size, member.mode = size, 0o600
        tar.addfile(member, _Sized(handle, size))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o600
    tar.addfile(info, io.BytesIO(data))


def connect_postgres(config: AgentConfig, password: str) -> psycopg.Connection:
    """The PostgreSQL beside this agent, as the agent (autocommit)."""
    return psycopg.connect(host=config.postgres_host, port=config.postgres_port, user=config.postgres_user,
                           password=password, dbname=config.postgres_database, autocommit=True,
                           connect_timeout=10, application_name="sin-backup-agent")


def _postgres_base(config: AgentConfig, password: str, out: BinaryIO, passphrase: str, label: str) -> dict:
    conn = connect_postgres(config, password)
    try:
        info = {
            "server_version": conn.execute("SHOW server_version").fetchone()[0],
            "major": int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000,
            "system_identifier": str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]),
        }
        start_lsn = conn.execute("SELECT pg_backup_start(%s, true)", (label,)).fetchone()[0]
        info["start_lsn"] = str(start_lsn)
        info["start_wal"] = conn.execute("SELECT pg_walfile_name(%s)", (start_lsn,)).fetchone()[0]
        info["timeline"] = int(info["start_wal"][:8], 16)
        stop = {}

        def produce(sink: BinaryIO) -> None:
            with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    _add_tree(tar, config.pgdata)
                    lsn, labelfile, spcmap = conn.execute(
                        "SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(true)").fetchone()
                    stop["lsn"] = str(lsn)
                    _add_bytes(tar, "backup_label", labelfile.encode())
                    if spcmap:
                        _add_bytes(tar, "tablespace_map", spcmap.encode())

        _seal(produce, out, passphrase)
        info["stop_lsn"] = stop["lsn"]
        info["stop_wal"] = conn.execute("SELECT pg_walfile_name(%s)", (stop["lsn"],)).fetchone()[0]
        return info
    finally:
        conn.close()


def _redis_snapshot(config: AgentConfig, password: str, out: BinaryIO, passphrase: str) -> dict:
    client = redis.Redis(host=config.redis_host, port=config.redis_port, password=password,
                         socket_timeout=30, socket_connect_timeout=10)
    try:
        rdb_name = client.config_get("dbfilename")["dbfilename"]
        aof_dir = client.config_get("appenddirname").get("appenddirname", "appendonlydir")
        version = client.info("server")["redis_version"]
        keys = bgsave(client)
    finally:
        client.close()

    def produce(sink: BinaryIO) -> None:
        with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_file(tar, config.redis_data / rdb_name, layout.REDIS_RDB_MEMBER)
                if (config.redis_data / aof_dir).is_dir():
                    for path in sorted((config.redis_data / aof_dir).iterdir()):
                        _add_file(tar, path, f"{layout.REDIS_AOF_MEMBER}/{path.name}")

    _seal(produce, out, passphrase)
    return {"version": version, "major": int(version.split(".")[0]), "keys": keys}


def bgsave(client: redis.Redis, deadline_s: float = 600) -> dict:
    """BGSAVE and wait for it; returns the key count of each database in the file.

    The count is read with writes (and key expiry) paused until the fork, so it describes the file:
    inside MULTI, Redis 7 only schedules a BGSAVE and forks up to a cron tick later, after other
    clients' writes. The pause lasts one INFO and one fork, bounded by REDIS_WRITE_PAUSE_MS should
    this process die in between."""
    give_up = time.monotonic() + deadline_s
    while True:
        client.client_pause(REDIS_WRITE_PAUSE_MS, all=False)  # WRITE mode: readers go on
        try:
            keyspace = client.info("keyspace")
            before = client.info("persistence")
            client.bgsave(schedule=False)  # SCHEDULE (redis-py's default) would not fork now either
            break
        except redis.ResponseError as exc:  # a save or an AOF rewrite is running: wait for it
            if not _another_child(exc) or time.monotonic() > give_up:
                raise AgentError(f"Redis refused BGSAVE: {exc}") from None
        finally:
            client.client_unpause()
        time.sleep(0.2)
    # rdb_saves (Redis >= 7.0) counts saves; LASTSAVE has one-second resolution.
    progress = "rdb_saves" if "rdb_saves" in before else "rdb_last_save_time"
    while True:
        now = client.info("persistence")
        if not now["rdb_bgsave_in_progress"] and now[progress] > before[progress]:
            break
        if time.monotonic() > give_up:
            raise AgentError(f"Redis BGSAVE did not finish within {deadline_s:g} s")
        time.sleep(0.05)
    if now["rdb_last_bgsave_status"] != "ok":
        raise AgentError("Redis BGSAVE failed (rdb_last_bgsave_status="
                         f"{now['rdb_last_bgsave_status']}); see the Redis container's log")
    return {db: fields["keys"] for db, fields in keyspace.items() if db.startswith("db")}


def _another_child(exc: redis.ResponseError) -> bool:
    """Redis's refusals while a save ("already in progress") or an AOF rewrite ("Another child process
    is active") runs."""
    return "in progress" in str(exc) or "child process is active" in str(exc)


def is_replica(config: AgentConfig, secrets_dir: Path = SECRETS_DIR) -> bool:
    """Whether the PostgreSQL beside this agent is a replica (a replicated stack's base backups come
    from the leader, whose timeline the WAL of its time is on)."""
    with connect_postgres(config, secret("postgres-password", secrets_dir)) as conn:
        return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])


def take_backup(config: AgentConfig, stores: list, secrets_dir: Path = SECRETS_DIR,
                now: Optional[datetime] = None) -> dict:
    """One base backup of both services into every store; returns its manifest."""
    now = now or _now()
    name = layout.backup_name(now)
    passphrase = secret("backup-passphrase", secrets_dir)
    work = config.local_root / layout.WORK_DIR / name
    work.mkdir(parents=True, exist_ok=True)
    try:
        manifest = {"format": layout.MANIFEST_FORMAT, "kind": "base", "stack": config.stack, "name": name,
                    "created_at": _iso(now), "encryption": SCHEME}
        with open(work / layout.POSTGRES_OBJECT, "wb") as out:
            manifest["postgres"] = _postgres_base(config, secret("postgres-password", secrets_dir), out,
                                                  passphrase, f"sin-datastores {config.stack} {name}")
        with open(work / layout.REDIS_OBJECT, "wb") as out:
            manifest["redis"] = _redis_snapshot(config, secret("redis-password", secrets_dir), out, passphrase)
        manifest["finished_at"] = _iso(_now())
        manifest["files"] = {f: file_digest(work / f) for f in layout.BACKUP_OBJECTS}
        (work / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for store in stores:
            for file in (*layout.BACKUP_OBJECTS, layout.MANIFEST):  # the manifest last: it marks completion
                store.put(layout.backup_key(name, file), work / file)
        return manifest
    finally:
        for file in work.iterdir():
            file.unlink()
        work.rmdir()


# ------------------------------------------------------------------ retention

def prune(config: AgentConfig, stores: list, current_sysid: str) -> list[str]:
    """Apply the retention policy in every store; returns what was removed (keys)."""
    removed = []
    for store in stores:
        keys = store.list()
        manifests = {}
        for name in layout.backup_names(keys):
            if layout.backup_key(name, layout.MANIFEST) in keys:
                manifests[name] = read_json(store, layout.backup_key(name, layout.MANIFEST))
        if not manifests:
            continue
        dated = [(name, layout.backup_time(name)) for name in manifests]
        kept = select_kept(dated, config.keep_last, config.keep_daily, config.keep_weekly)
        newest = max(manifests)
        doomed = [k for k in keys if layout.backup_of(k) and layout.backup_of(k) not in kept
                  # one without manifest (failed, or being written) only once a newer one is complete
                  and (layout.backup_of(k) in manifests or layout.backup_of(k) < newest)]
        oldest_needed: dict[str, str] = {}
        for name in kept:
            pg = manifests[name]["postgres"]
            sysid, start = pg["system_identifier"], pg["start_wal"]
            if sysid not in oldest_needed or layout.segment(start) < layout.segment(oldest_needed[sysid]):
                oldest_needed[sysid] = start
        for key in keys:
            wal = layout.wal_of(key)
            if wal is None:
                continue
            sysid, file = wal
            if file.endswith(".history"):
                if sysid not in oldest_needed and sysid != current_sysid:
                    doomed.append(key)
                continue
            if sysid in oldest_needed:
                if layout.segment(file) < layout.segment(oldest_needed[sysid]):
                    doomed.append(key)
            elif sysid != current_sysid:
                doomed.append(key)
        store.delete(doomed)
        removed += [f"{store.describe()}/{k}" for k in doomed]
    return removed


# ------------------------------------------------------------------ loops

class Agent:
    def __init__(self, config: AgentConfig, secrets_dir: Path = SECRETS_DIR):
        self.config, self.secrets_dir = config, secrets_dir
        self.cron = Cron.parse(config.schedule)
        self.stores = open_stores(config, secrets_dir)
        self.status = Status(config.local_root / layout.STATUS_FILE, config.schedule)
        self.stop = threading.Event()
        self.run_now = threading.Event()

    def ship_forever(self) -> None:
        passphrase = secret("backup-passphrase", self.secrets_dir)
        heartbeat = self.config.local_root / layout.HEARTBEAT_FILE
        while not self.stop.is_set():
            try:
                ship_wal(self.config, self.stores, passphrase, self.status)
            except Exception as exc:  # keep shipping; the status shows the error
                self.status.update("wal", last_error=f"{type(exc).__name__}: {exc}", last_error_at=_iso(_now()))
            heartbeat.touch()  # the container's healthcheck: this loop is alive
            self.stop.wait(WAL_POLL_S)

    def run_once(self) -> bool:
        """One base backup (replicated: only beside the leader); whether one was taken."""
        started = _now()
        name = layout.backup_name(started)
        try:
            if self.config.replicated and is_replica(self.config, self.secrets_dir):
                log(f"backup {name}: skipped, PostgreSQL here is a replica (the leader's agent takes it)")
                self.status.set("last_skipped", {"name": name, "at": _iso(started), "reason": "replica"})
                return False
        except psycopg.Error as exc:  # down or starting: the first-backup loop or the schedule tries again
            self.status.set("last_skipped", {"name": name, "at": _iso(started), "reason": type(exc).__name__})
            log(f"backup {name}: skipped, PostgreSQL here does not answer: {exc}")
            return False
        self.status.set("running", {"name": name, "started_at": _iso(started)})
        log(f"backup {name}: started")
        try:
            manifest = take_backup(self.config, self.stores, self.secrets_dir, started)
            removed = prune(self.config, self.stores, manifest["postgres"]["system_identifier"])
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"backup {name}: FAILED: {error}")
            traceback.print_exc()
            self.status.set("last_run", {"name": name, "started_at": _iso(started), "finished_at": _iso(_now()),
                                         "result": "failed", "error": error})
            self.status.set("running", None)
            return False
        record = {"name": name, "started_at": _iso(started), "finished_at": _iso(_now()), "result": "ok",
                  "pruned": len(removed), "stores": [s.describe() for s in self.stores]}
        log(f"backup {name}: ok in {(_now() - started).total_seconds():.1f} s; pruned {len(removed)} objects")
        self.status.set("last_run", record)
        self.status.set("last_success", record)
        self.status.set("running", None)
        return True

    def has_base_backup(self) -> bool:
        try:
            keys = self.stores[0].list()
        except StoreError:  # the bucket out of reach (replicated): a run tries, and records why it fails
            return False
        return any(layout.backup_key(n, layout.MANIFEST) in keys for n in layout.backup_names(keys))

    def first_backup(self) -> None:
        """Until the first store (the local one; replicated: the bucket) holds a base backup (point-in-time
        recovery starts from one), try again after each failure, backing off; a backup whose off-host
        copy failed is local already, and the schedule's next run copies a newer one. Replicated, the
        agents beside replicas keep looking until the leader's has taken it."""
        delay, longest = FIRST_BACKUP_RETRY_S
        while not self.stop.is_set() and not self.has_base_backup():
            if self.run_once():
                return
            log(f"no base backup yet: next try in {delay:g} s")
            self.wait_until(_now() + timedelta(seconds=delay))
            self.run_now.clear()  # a `backup --now` meanwhile is this loop's next try
            delay = min(delay * 2, longest)

    def wait_until(self, due: datetime) -> None:
        """Until ``due``, a stop, or a ``backup --now`` (which is left set for the caller)."""
        self.status.set("next_run_at", _iso(due))
        while not self.stop.is_set() and _now() < due and not self.run_now.is_set():
            self.stop.wait(min(1.0, max(0.0, (due - _now()).total_seconds())))

    def schedule_forever(self) -> None:
        self.first_backup()
        while not self.stop.is_set():
            self.wait_until(self.cron.next_after(_now()))
            if self.stop.is_set():
                return
            self.run_now.clear()
            self.run_once()


def main() -> int:
    config = AgentConfig.load()
    agent = Agent(config)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: agent.run_now.set())
    log(f"agent for stack {config.stack}: schedule '{config.schedule}' (UTC), stores: "
        f"{', '.join(s.describe() for s in agent.stores)}")
    shipper = threading.Thread(target=agent.ship_forever, name="wal-shipper", daemon=True)
    shipper.start()
    agent.schedule_forever()
    shipper.join(timeout=30)
    return 0
