"""Restore and verify from the backup agent's stores (S3 or the local copies), to a point in time.

The chosen base backup and the WAL archived after it are fetched, checked against the
manifest's checksums and decrypted on this machine; a scratch PostgreSQL container from the
live image (no network) recovers them to the requested time (``recovery_target_time``) or to
the end of the archive. What it recovered is dumped and handed to :func:`infra.ops.backup.switch_to`,
which loads it next to the live data, compares, and switches all or nothing; Redis comes from
the same base backup's snapshot. Nothing live is touched before every object has been fetched,
decrypted and recovered.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from infra.ops.backup import BackupFailed, BackupRefused, commands, postgres_dump, redis_snapshot
from infra.ops.backup.commands import Outcome
from infra.core import dockercli


from infra.backupagent import layout
from infra.backupagent.crypto import DecryptError, decrypt
from infra.backupagent.store import DirStore, S3Store, StoreError, parse_s3_url, read_json
from infra.core.config import BackupConfig
from infra.core.targets import POSTGRES_SOCKET_DIR, Target
from infra.deploy.checks import Check, Report

WAL_DIR = "/var/lib/postgresql/restore-wal"
SCRATCH_DATA = "/var/lib/postgresql/data"
RECOVERY_DEADLINE_S = 3600
# Patroni's image runs any command but `patroni` as root, as given: the scratch server is started as
# the postgres user on what `docker cp` made root's. Its data directory's configuration names the
# member's pg_hba (passwords on the socket too) and synchronous standbys: the scratch container,
# without network, trusts its socket (a file of its own) and waits for no standby.
PATRONI_SCRATCH_HBA = "/var/lib/postgresql/scratch_hba.conf"
PATRONI_SCRATCH_START = (f"chown -R postgres:postgres {SCRATCH_DATA} {WAL_DIR} && chmod 700 {SCRATCH_DATA} && "
                         f"exec setpriv --reuid=postgres --regid=postgres --init-groups -- postgres -D {SCRATCH_DATA} "
                         f'"$@"')
# PostgreSQL refuses to start when two of them are set, and an empty value assigned from a file after
# another target counts (a base backup taken on a member Patroni had run as a replica: "multiple
# recovery targets specified"). Each is set on the command line, which the data directory's files
# cannot override: empty, but the one recovered to.
RECOVERY_TARGETS = ("recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time",
                    "recovery_target_xid")
PATRONI_SCRATCH_SETTINGS = (f"hba_file={PATRONI_SCRATCH_HBA}", f"ident_file={SCRATCH_DATA}/pg_ident.conf",
                            f"unix_socket_directories={POSTGRES_SOCKET_DIR}", "synchronous_standby_names=")
_COUNTS_SQL = """
SELECT schemaname || '.' || tablename,
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, tablename),
                                            false, true, '')))[1]::text
FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1
"""


def open_store(source: str, config: Optional[BackupConfig]):
    """``s3://bucket/prefix`` with the stack's S3 endpoint and keys, or a local directory."""
    if source.startswith("s3://"):
        if config is None or config.s3 is None:
            raise BackupRefused(f"restoring from {source} needs the S3 endpoint and keys in the stack's configuration; "
                              f"set backupSchedule, backupS3Bucket, backupS3AccessKeyId and backupS3SecretAccessKey "
                              f"(see docs/backups.md)")
        bucket, prefix = parse_s3_url(source)
        return S3Store(config.s3.endpoint or None, config.s3.region, bucket, prefix,
                       config.s3.access_key_id, config.s3.secret_access_key)
    return DirStore(Path(source))


def is_store(folder: Path) -> bool:
    """A copy of the agent's store (its ``base/`` and ``wal/``), not a folder written by `backup`."""
    return (folder / "base").is_dir()


def passphrase_of(config: Optional[BackupConfig]) -> str:
    if config is None or not config.passphrase:
        raise BackupRefused("the stack's configuration has no backupPassphrase; set the one the backups were taken "
                          "with: pulumi config set --secret backupPassphrase <passphrase>")
    return config.passphrase


@dataclass(frozen=True)
class Fetched:
    manifest: dict
    base_tar: Path
    redis_tar: Path
    wal_dir: Path


def manifests(store) -> list[dict]:
    """Manifests of the complete backups in ``store``, oldest first."""
    keys = store.list()
    return [read_json(store, layout.backup_key(name, layout.MANIFEST)) for name in layout.backup_names(keys)
            if layout.backup_key(name, layout.MANIFEST) in keys]


def choose(found: list[dict], to_time: Optional[datetime], where: str, name: Optional[str] = None) -> dict:
    """The newest backup finished by ``to_time`` (or the named one, or the newest)."""
    if not found:
        raise BackupRefused(f"{where} holds no complete backup (no base/<time>/manifest.json); check the bucket and "
                          f"prefix, or whether the agent ran (`python -m infra status`)")
    if name:
        match = [m for m in found if m["name"] == name]
        if not match:
            raise BackupRefused(f"{where} has no backup named {name}; it has {', '.join(m['name'] for m in found)}")
        return match[0]
    if to_time is None:
        return found[-1]
    usable = [m for m in found if datetime.fromisoformat(m["finished_at"]) <= to_time]
    if not usable:
        raise BackupRefused(f"no backup in {where} finished by {to_time.isoformat()}; the earliest finished at "
                          f"{found[0]['finished_at']}: pick a later --to-time")
    return usable[-1]


def fetch(store, manifest: dict, passphrase: str, into: Path, with_wal: bool, say: Callable[[str], None]) -> Fetched:
    """Download, check and decrypt one backup (and the WAL after it) into ``into``."""
    name, where = manifest["name"], store.describe()
    plain = {}
    for file, (suffix) in ((layout.REDIS_OBJECT, "redis.tar.gz"), (layout.POSTGRES_OBJECT, "postgres.tar.gz")):
        sealed = into / file
        got = store.get(layout.backup_key(name, file), sealed)
        want = manifest["files"][file]
        if got["sha256"] != want["sha256"] or got["size"] != want["size"]:
            raise BackupRefused(f"{where}/base/{name}/{file} does not match its manifest (sha256 {got['sha256'][:12]} vs "
                              f"{want['sha256'][:12]}): the object was modified or damaged; use another backup")
        plain[file] = into / suffix
        _decrypt(sealed, plain[file], passphrase, f"{where}/base/{name}/{file}")
        sealed.unlink()
    wal_dir = into / "wal"
    wal_dir.mkdir()
    if with_wal:
        count = _fetch_wal(store, manifest, passphrase, wal_dir)
        say(f"fetched base backup {name} and {count} WAL files from {where}")
    return Fetched(manifest, plain[layout.POSTGRES_OBJECT], plain[layout.REDIS_OBJECT], wal_dir)


def _decrypt(sealed: Path, plain: Path, passphrase: str, name: str) -> None:
    try:
        with open(sealed, "rb") as source, open(plain, "wb") as out:
            decrypt(source, out, passphrase, name=name)
    except DecryptError as exc:
        plain.unlink(missing_ok=True)
        raise BackupRefused(f"{exc}; nothing was restored") from None


def _fetch_wal(store, manifest: dict, passphrase: str, wal_dir: Path) -> int:
    sysid, start = manifest["postgres"]["system_identifier"], manifest["postgres"]["start_wal"]
    count = 0
    for key in sorted(store.list(f"wal/{sysid}/")):
        wal = layout.wal_of(key)
        if wal is None or (not wal[1].endswith(".history") and layout.segment(wal[1]) < layout.segment(start)):
            continue
        sealed = wal_dir / f".{wal[1]}.enc"
        store.get(key, sealed)
        packed = wal_dir / f".{wal[1]}.gz"
        _decrypt(sealed, packed, passphrase, f"{store.describe()}/{key}")
        with gzip.open(packed, "rb") as source, open(wal_dir / wal[1], "wb") as out:
            shutil.copyfileobj(source, out)
        sealed.unlink()
        packed.unlink()
        count += 1
    end = manifest["postgres"].get("stop_wal")
    if end and not (wal_dir / end).exists():
        raise BackupRefused(f"the WAL up to the end of base backup {manifest['name']} ({end}) is not in "
                            f"{store.describe()} yet: its agent ships it within a minute of the backup; run this "
                            f"again then. Nothing was changed")
    return count


class ScratchRecovery:
    """A PostgreSQL container from the live image (a replicated stack's: Patroni's, on the leader's
    host), without network, recovering a base backup and WAL to a target; removed on exit."""

    def __init__(self, target: Target, fetched: Fetched, settings: list[str]):
        self.target, self.fetched, self.settings = target, fetched, settings
        self.name = f"sin-scratch-{target.stack}-pitr-{secrets.token_hex(4)}"

    def __enter__(self) -> "ScratchRecovery":
        live = self.target.postgres
        image = dockercli.inspect("container", live.container_name)["Image"]
        chosen = {setting.split("=", 1)[0] for setting in self.settings}
        settings = ["listen_addresses=", "archive_mode=off", f"restore_command=cp {WAL_DIR}/%f %p",
                    *(f"{name}=" for name in RECOVERY_TARGETS if name not in chosen), *self.settings]
        if self.target.cluster:
            settings += PATRONI_SCRATCH_SETTINGS
        options = [part for setting in settings for part in ("-c", setting)]
        command = ["sh", "-c", PATRONI_SCRATCH_START, "sh", *options] if self.target.cluster else ["postgres", *options]
        dockercli.docker("create", "--name", self.name, "--label", dockercli.SCRATCH_LABEL,
                         "--label", f"{dockercli.STACK_LABEL}={self.target.stack}", "--network", "none",
                         image, *command)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                data_tar = Path(tmp) / "data.tar"
                with gzip.open(self.fetched.base_tar, "rb") as source, open(data_tar, "wb") as out:
                    shutil.copyfileobj(source, out)
                dockercli.copy_in(self.name, data_tar, SCRATCH_DATA)
                data_tar.unlink()
                wal_tar = Path(tmp) / "wal.tar"
                with tarfile.open(wal_tar, "w") as tar:
                    tar.add(self.fetched.wal_dir, arcname=Path(WAL_DIR).name,
                            filter=lambda info: _readable(info) if not info.name.split("/")[-1].startswith(".") else None)
                dockercli.copy_in(self.name, wal_tar, str(Path(WAL_DIR).parent))
            files = {f"{SCRATCH_DATA}/recovery.signal": (b"", 0o600)}
            if self.target.cluster:
                files[PATRONI_SCRATCH_HBA] = (b"local all all trust\n", 0o644)
            dockercli.put_files(self.name, files)
            dockercli.docker("start", self.name)
            self._wait_promoted()
            return self
        except BaseException:
            self.__exit__()
            raise

    def _wait_promoted(self) -> None:
        give_up = time.monotonic() + RECOVERY_DEADLINE_S
        while time.monotonic() < give_up:
            state = (dockercli.inspect("container", self.name) or {}).get("State") or {}
            if not state.get("Running"):
                log = dockercli.logs(self.name, 15).strip()
                raise BackupFailed(_recovery_failure(log))
            out = dockercli.docker("exec", self.name, "psql", f"--host={POSTGRES_SOCKET_DIR}",
                                   f"--username={self.target.postgres.user}", "--dbname=postgres", "-Atc",
                                   "SELECT pg_is_in_recovery()", check=False).strip()
            if out == "f":
                return
            time.sleep(0.2)
        raise BackupFailed(f"recovery in {self.name} did not finish within {RECOVERY_DEADLINE_S} s")

    def rows(self, database: str, query: str) -> list[tuple[str, ...]]:
        out = dockercli.docker("exec", self.name, "psql", f"--host={POSTGRES_SOCKET_DIR}",
                               f"--username={self.target.postgres.user}", f"--dbname={database}", "--no-psqlrc",
                               "-At", "-F", "\x1f", "-R", "\x1e", "-c", query)
        return [tuple(line.split("\x1f")) for line in out.rstrip("\n").split("\x1e") if line]

    def facts(self) -> dict:
        """What the recovered database holds, in a manifest's terms."""
        database = self.target.postgres.database
        tables = {name: int(count) for name, count in self.rows(database, _COUNTS_SQL)}
        schema = [list(row) for row in self.rows(database, postgres_dump.SCHEMA_SQL)]
        recovered_to = self.rows("postgres", "SELECT coalesce(pg_last_xact_replay_timestamp()::text, '')")
        return {"tables": tables, "schema_sha256": hashlib.sha256(json.dumps(schema).encode()).hexdigest(),
                "last_transaction": recovered_to[0][0] if recovered_to else ""}

    def dump(self, path: Path) -> None:
        dockercli.exec_to_file(self.name, postgres_dump.pg_client(self.target.postgres, "pg_dump", "--format=custom",
                                                            f"--dbname={self.target.postgres.database}"), path)

    def __exit__(self, *exc) -> None:
        dockercli.docker("rm", "-f", "-v", self.name, check=False)


def _readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _recovery_failure(log: str) -> str:
    if "recovery ended before configured recovery target was reached" in log:
        return ("the archived WAL ends before the requested --to-time: the archive holds no later writes; choose an "
                "earlier time, or leave --to-time out to restore everything archived. Nothing live was touched")
    return f"PostgreSQL could not recover the backup; nothing live was touched. Its last log lines:\n{log}"


def _extract_rdb(redis_tar: Path, dest: Path) -> None:
    with tarfile.open(redis_tar, "r:gz") as archive:
        with archive.extractfile(layout.REDIS_RDB_MEMBER) as source, open(dest, "wb") as out:
            shutil.copyfileobj(source, out)


def _recovery_settings(to_time: Optional[datetime]) -> list[str]:
    settings = ["recovery_target_action=promote"]
    if to_time is not None:
        settings.append(f"recovery_target_time={to_time.astimezone(timezone.utc).isoformat()}")
    return settings


def restore(target: Target, source: str, config: Optional[BackupConfig], to_time: Optional[datetime],
            say: Callable[[str], None] = lambda _: None) -> Outcome:
    """Bring the stack's data back to ``to_time`` (None: everything archived) from ``source``."""
    store, passphrase = open_store(source, config), passphrase_of(config)
    commands.require_containers(target)
    try:
        manifest = choose(manifests(store), to_time, store.describe())
        commands.check_versions(target, manifest)
        with tempfile.TemporaryDirectory(prefix="sin-pitr-") as tmp:
            fetched = fetch(store, manifest, passphrase, Path(tmp), with_wal=True, say=say)
            with ScratchRecovery(target, fetched, _recovery_settings(to_time)) as scratch:
                facts = scratch.facts()
                say(f"recovered in a scratch container to {facts['last_transaction'] or 'the end of the backup'}; "
                    f"{sum(facts['tables'].values())} rows in {len(facts['tables'])} tables")
                scratch.dump(Path(tmp) / "recovered.dump")
            _extract_rdb(fetched.redis_tar, Path(tmp) / "dump.rdb")
            expected = {"postgres": facts, "redis": manifest["redis"]}
            return commands.switch_to(target, Path(tmp) / "recovered.dump", Path(tmp) / "dump.rdb", expected, say)
    except StoreError as exc:
        raise BackupRefused(f"{exc}; nothing was restored") from None


def verify(target: Target, source: str, config: Optional[BackupConfig], name: Optional[str] = None,
           say: Callable[[str], None] = lambda _: None) -> Report:
    """Recover a backup (the newest, or ``name``) in scratch places and compare it with its manifest."""
    store, passphrase = open_store(source, config), passphrase_of(config)
    commands.require_containers(target)
    try:
        manifest = choose(manifests(store), None, store.describe(), name)
        commands.check_versions(target, manifest)
        with tempfile.TemporaryDirectory(prefix="sin-verify-") as tmp:
            fetched = fetch(store, manifest, passphrase, Path(tmp), with_wal=True, say=say)
            started = time.perf_counter()
            with ScratchRecovery(target, fetched, ["recovery_target=immediate", "recovery_target_action=promote"]) \
                    as scratch:
                facts = scratch.facts()
            ms = (time.perf_counter() - started) * 1000
            _extract_rdb(fetched.redis_tar, Path(tmp) / "dump.rdb")
            checks = [Check(f"postgres base backup {manifest['name']} recovers", True,
                            f"{sum(facts['tables'].values())} rows in {len(facts['tables'])} tables",
                            "consistent at its stop position", ms)]
            with redis_snapshot.ScratchRedis(target.redis, target.stack, Path(tmp) / "dump.rdb") as client:
                checks.append(redis_snapshot.compare_redis(client, manifest))
        return Report(checks)
    except StoreError as exc:
        raise BackupRefused(f"{exc}; nothing was verified") from None
