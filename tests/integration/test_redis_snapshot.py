"""A Redis snapshot's key counts against what its file holds, on real Redis 7 servers: the counts the
manifest records, and the check a restore makes after loading the file."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from infra.backupagent.agent import bgsave
from infra.ops.backup.redis_snapshot import compare_redis
from tests.servers import RedisServer

PASSWORD = "redis-snapshot-test-password-0123"


@pytest.fixture
def live():
    server = RedisServer.start(password=PASSWORD)
    try:
        yield server
    finally:
        server.stop()


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, password=PASSWORD)


def load(server: RedisServer, tmp_path: Path, name: str) -> RedisServer:
    """A second server started on a copy of ``server``'s snapshot."""
    snapshot = tmp_path / name
    shutil.copyfile(server.workdir / "dump.rdb", snapshot)
    return RedisServer.start(password=PASSWORD, rdb=snapshot)


def keys_in_file(server: RedisServer) -> int:
    info = client_of(server).info("persistence")
    return info["rdb_last_load_keys_loaded"] + info["rdb_last_load_keys_expired"]


@contextmanager
def writing(server: RedisServer) -> Iterator[None]:
    """A client writing new keys in two databases, some with a TTL, as fast as it goes."""
    stop = threading.Event()

    def write() -> None:
        writers = [redis.Redis(port=server.port, password=PASSWORD, db=db) for db in (0, 1)]
        n = 0
        while not stop.is_set():
            writers[n % 2].set(f"key:{n}", n, ex=3600 if n % 3 else None)
            n += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(0.2)
        yield
    finally:
        stop.set()
        writer.join(5)


def assert_counts_describe_the_file(server: RedisServer, counts: dict, tmp_path: Path, name: str) -> None:
    loaded = load(server, tmp_path, name)
    try:
        assert keys_in_file(loaded) == sum(counts.values()), counts
        assert {db: fields["keys"] for db, fields in client_of(loaded).info("keyspace").items()} == counts
    finally:
        loaded.stop()


def test_the_counts_describe_the_file_while_clients_write(live, tmp_path):
    with writing(live):
        for attempt in range(3):
            counts = bgsave(client_of(live), deadline_s=30)
            assert set(counts) == {"db0", "db1"}
            assert_counts_describe_the_file(live, counts, tmp_path, f"dump-{attempt}.rdb")
        impatient = redis.Redis(port=live.port, password=PASSWORD, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        assert impatient.set("written after the snapshots", 1), "writes are not left paused"


def test_a_snapshot_waits_for_an_aof_rewrite_and_then_counts_its_own_file(live, tmp_path):
    client = client_of(live)
    client.mset({f"old:{n}": n for n in range(200)})
    client.config_set("rdb-key-save-delay", 2000)  # µs per key: the rewrite's child runs about 0.4 s
    client.bgrewriteaof()
    assert client.info("persistence")["aof_rewrite_in_progress"] == 1
    client.config_set("rdb-key-save-delay", 0)  # the snapshot's own child goes at full speed
    with writing(live):
        counts = bgsave(client, deadline_s=30)
        assert counts["db0"] > 200
        assert_counts_describe_the_file(live, counts, tmp_path, "dump.rdb")


def test_a_restore_counts_keys_whose_ttl_ran_out_since_the_backup_and_nothing_else(live, tmp_path):
    client = client_of(live)
    client.set("persistent", 1)
    client.set("session", 1, ex=3600)
    client.set("rate-limit", 1, px=300)
    counts = bgsave(client, deadline_s=30)
    assert counts == {"db0": 3}
    time.sleep(0.5)
    loaded = load(live, tmp_path, "dump.rdb")
    try:
        restored = client_of(loaded)
        check = compare_redis(restored, {"redis": {"keys": counts}})
        assert check.ok, check
        assert check.observed == '{"db0": 2}, 1 expired since the backup'
        for wrong in ({"db0": 4}, {"db0": 2}, {"db1": 3}):
            assert not compare_redis(restored, {"redis": {"keys": wrong}}).ok, wrong
    finally:
        loaded.stop()
