"""Redis's part of a backup: BGSAVE with its key counts, the RDB file, a scratch Redis to load it,
and the switch of every key in one MULTI/EXEC."""

from __future__ import annotations

import json
import secrets
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator

import redis

from infra.backupagent.agent import AgentError, bgsave
from infra.core import dockercli, dockerhost
from infra.core.connect import connect_redis
from infra.core.report import Check
from infra.core.targets import REDIS_CONFIG_DIR, REDIS_PORT, RedisTarget
from infra.ops.backup import BackupFailed
from infra.ops.backup.manifest import REDIS_AOF, REDIS_RDB

SCRATCH_CONFIG = f"{REDIS_CONFIG_DIR}/scratch.conf"


def keyspace(info: dict) -> dict[str, int]:
    return {db: fields["keys"] for db, fields in info.items() if db.startswith("db")}


def _extract_single(tar_path: Path, dest: Path) -> None:
    with tarfile.open(tar_path) as archive:
        member = next(m for m in archive.getmembers() if m.isfile())
        with archive.extractfile(member) as source, open(dest, "wb") as out:
            shutil.copyfileobj(source, out)


def dump_redis(target: RedisTarget, folder: Path) -> dict:
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
        dockercli.docker("create", "--name", self.name, "--label", dockercli.SCRATCH_LABEL,
                         "--label", f"{dockercli.STACK_LABEL}={self.stack}",
                         "--publish", f"127.0.0.1::{REDIS_PORT}", image, SCRATCH_CONFIG)
        try:
            conf = "\n".join([f"port {REDIS_PORT}", "bind * -::*", "dir /data", "dbfilename dump.rdb", "appendonly no",
                              'save ""', f"requirepass {self.password}", ""]).encode()
            dockercli.put_files(self.name, {SCRATCH_CONFIG: (conf, 0o444),
                                            "/data/dump.rdb": (self.rdb, 0o600)})
            dockercli.docker("start", self.name)
            published = int(dockercli.docker("port", self.name, f"{REDIS_PORT}/tcp").split()[0].rsplit(":", 1)[1])
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
    """The keys Redis read from the file (loaded, and dropped on load because their TTL has run out since
    the backup) against the manifest's count: an old backup of TTL'd keys (sessions, caches) restores
    with fewer keys, never with others."""
    started = time.perf_counter()
    keys = keyspace(client.info("keyspace"))
    load = client.info("persistence")
    read, expired = load["rdb_last_load_keys_loaded"], load["rdb_last_load_keys_expired"]
    want = manifest["redis"]["keys"]
    ok = read + expired == sum(want.values()) and all(n <= want.get(db, 0) for db, n in keys.items())
    observed = json.dumps(keys, sort_keys=True) + (f", {expired} expired since the backup" if expired else "")
    return Check("redis restored keys", ok, observed, json.dumps(want, sort_keys=True) + " less those expired",
                 (time.perf_counter() - started) * 1000)


def dump_all(client: redis.Redis) -> Iterator[tuple[int, bytes, int, bytes]]:
    """(db, key, pttl, DUMP payload) of every key; ``client`` must be binary-safe."""
    for db in sorted(int(name[2:]) for name in keyspace(client.info("keyspace"))):
        client.execute_command("SELECT", db)
        for key in client.scan_iter(count=1000):
            pipe = client.pipeline(transaction=False)
            pipe.pttl(key).dump(key)
            pttl, payload = pipe.execute()
            if payload is not None:
                yield db, key, max(pttl, 0), payload


def replace_redis(target: RedisTarget, entries: list[tuple[int, bytes, int, bytes]]) -> None:
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
