"""The backup agent's pieces that need no server: the data directory as a base backup sees it,
the cluster id, the retention pass over a store, WAL shipping into stores, and its status."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infra.backupagent import agent, layout
from infra.backupagent.crypto import decrypt
from infra.backupagent.store import DirStore, StoreError

PASSPHRASE = "unit-test-passphrase-0123"
SYSID = "7312345678901234567"


def config(tmp_path: Path, **overrides) -> agent.AgentConfig:
    values = dict(stack="unit", schedule="0 3 * * *", keep_last=2, keep_daily=0, keep_weekly=0,
                  postgres_host="127.0.0.1", postgres_port=5432, postgres_user="sinadmin",
                  postgres_database="sinsolver", redis_host="127.0.0.1", redis_port=6379,
                  pgdata=tmp_path / "pgdata", archive=tmp_path / "archive", redis_data=tmp_path / "redis",
                  local_root=tmp_path / "backups", s3=None)
    values.update(overrides)
    for key in ("pgdata", "archive", "redis_data", "local_root"):
        values[key].mkdir(parents=True, exist_ok=True)
    return agent.AgentConfig(**values)


def pg_control(pgdata: Path, sysid: int = int(SYSID)) -> None:
    (pgdata / "global").mkdir(parents=True, exist_ok=True)
    (pgdata / "global" / "pg_control").write_bytes(sysid.to_bytes(8, "little") + b"\0" * 100)


def test_the_cluster_id_is_read_from_pg_control(tmp_path):
    pg_control(tmp_path)
    assert agent.system_identifier(tmp_path) == SYSID


def test_a_base_backup_leaves_out_what_postgresql_rebuilds_and_keeps_empty_directories(tmp_path):
    root = tmp_path / "data"
    for rel in ("PG_VERSION", "base/1/1259", "global/pg_control", "pg_wal/000000010000000000000001",
                "pg_wal/archive_status/000000010000000000000001.done", "postmaster.pid", "pg_stat_tmp/x",
                "pg_replslot/slot/state", "base/1/pgsql_tmp123"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 10)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|") as tar:
        agent._add_tree(tar, root)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        names = set(tar.getnames())
    assert {"PG_VERSION", "base/1/1259", "global/pg_control", "pg_wal", "pg_wal/archive_status",
            "pg_stat_tmp", "pg_replslot"} <= names
    assert not names & {"postmaster.pid", "pg_wal/000000010000000000000001", "pg_stat_tmp/x",
                        "pg_replslot/slot", "base/1/pgsql_tmp123",
                        "pg_wal/archive_status/000000010000000000000001.done"}


def test_a_file_that_shrinks_while_it_is_read_is_padded_to_its_size():
    sized = agent._Sized(io.BytesIO(b"abc"), 5)
    assert sized.read(4) == b"abc\0" and sized.read() == b"\0"


def manifest(name: str, start_wal: str, sysid: str = SYSID) -> dict:
    return {"name": name, "postgres": {"system_identifier": sysid, "start_wal": start_wal}}


def put_backup(store: DirStore, tmp_path: Path, name: str, start_wal: str, complete: bool = True,
               sysid: str = SYSID) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"sealed")
    for file in layout.BACKUP_OBJECTS:
        store.put(layout.backup_key(name, file), blob)
    if complete:
        blob.write_text(json.dumps(manifest(name, start_wal, sysid)))
        store.put(layout.backup_key(name, layout.MANIFEST), blob)


def put_wal(store: DirStore, tmp_path: Path, sysid: str, file: str) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"sealed")
    store.put(layout.wal_key(sysid, file), blob)


def wal_file(n: int) -> str:
    return f"00000001{0:08X}{n:08X}"


def test_retention_keeps_the_newest_and_the_wal_they_need_and_drops_the_rest(tmp_path):
    cfg = config(tmp_path)
    store = DirStore(tmp_path / "store")
    stamps = ["20261120T030000Z", "20261121T030000Z", "20261122T030000Z", "20261123T030000Z"]
    for i, stamp in enumerate(stamps):
        put_backup(store, tmp_path, stamp, wal_file(10 * i + 2))
    for n in range(1, 40):
        put_wal(store, tmp_path, SYSID, wal_file(n))
    put_wal(store, tmp_path, SYSID, "00000002.history")
    put_wal(store, tmp_path, "999", wal_file(5))  # a cluster no kept backup belongs to
    removed = agent.prune(cfg, [store], current_sysid=SYSID)
    left = store.list()
    assert layout.backup_names(left) == stamps[2:]
    wal = sorted(f for s, f in filter(None, map(layout.wal_of, left)) if s == SYSID and not f.endswith("history"))
    assert wal[0] == wal_file(22) and wal[-1] == wal_file(39)
    assert layout.wal_key(SYSID, "00000002.history") in left
    assert layout.wal_key("999", wal_file(5)) not in left
    assert len(removed) == 2 * 3 + 21 + 1


def test_retention_never_removes_the_newest_backup_and_spares_one_still_being_written(tmp_path):
    cfg = config(tmp_path, keep_last=0)
    store = DirStore(tmp_path / "store")
    put_backup(store, tmp_path, "20261120T030000Z", wal_file(2))
    put_backup(store, tmp_path, "20261121T030000Z", wal_file(4))
    put_backup(store, tmp_path, "20261119T030000Z", wal_file(1), complete=False)  # older, never finished
    put_backup(store, tmp_path, "20261122T030000Z", wal_file(6), complete=False)  # being written now
    agent.prune(cfg, [store], current_sysid=SYSID)
    assert layout.backup_names(store.list()) == ["20261121T030000Z", "20261122T030000Z"]


class DeadStore(DirStore):
    """Refuses the oldest segment (as an endpoint that went away would); would take later ones."""

    def put(self, key, source):
        if key == layout.wal_key(SYSID, wal_file(1)):
            raise StoreError("s3://bucket/prefix: endpoint refused the connection; check backupS3Endpoint")
        return super().put(key, source)


def test_wal_waits_in_the_archive_in_order_while_a_store_is_away_then_ships_encrypted(tmp_path):
    cfg = config(tmp_path)
    pg_control(cfg.pgdata)
    archive = cfg.archive / layout.ARCHIVE_SUBDIR
    archive.mkdir()
    segment = b"WAL RECORD row-marker " * 1000
    for n in (1, 2):
        (archive / wal_file(n)).write_bytes(segment)
    (archive / f"{wal_file(3)}.tmp").write_bytes(b"half")
    local, away = DirStore(tmp_path / "local"), DeadStore(tmp_path / "remote")
    status = agent.Status(cfg.local_root / layout.STATUS_FILE, cfg.schedule)
    assert agent.ship_wal(cfg, [local, away], PASSPHRASE, status) == 0
    assert sorted(p.name for p in archive.iterdir()) == [wal_file(1), wal_file(2), f"{wal_file(3)}.tmp"]
    saved = json.loads((cfg.local_root / layout.STATUS_FILE).read_text())["wal"]
    assert saved["pending"] == 2 and "endpoint refused" in saved["last_error"]
    remote = DirStore(tmp_path / "remote")
    assert agent.ship_wal(cfg, [local, remote], PASSPHRASE, status) == 2
    assert sorted(p.name for p in archive.iterdir()) == [f"{wal_file(3)}.tmp"]
    sealed = tmp_path / "sealed"
    remote.get(layout.wal_key(SYSID, wal_file(2)), sealed)
    assert b"row-marker" not in sealed.read_bytes()
    plain = io.BytesIO()
    with open(sealed, "rb") as source:
        decrypt(source, plain, PASSPHRASE)
    assert gzip.decompress(plain.getvalue()) == segment
    saved = json.loads((cfg.local_root / layout.STATUS_FILE).read_text())["wal"]
    assert (saved["pending"], saved["last_shipped"], saved["last_error"]) == (0, wal_file(2), None)


def test_layout_names_round_trip():
    t = datetime(2026, 11, 26, 10, 42, 7, tzinfo=timezone.utc)
    assert layout.backup_time(layout.backup_name(t)) == t
    assert layout.backup_of("base/20261126T104207Z/manifest.json") == "20261126T104207Z"
    assert layout.wal_of(layout.wal_key(SYSID, "00000001000000000000000A")) == (SYSID, "00000001000000000000000A")
    assert layout.wal_of("wal/1/garbage.gz.enc") is None
    assert layout.segment("00000002000000010000000A") == "000000010000000A"


NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def agent_state(**sections) -> dict:
    return {"agent_started_at": "2026-11-26T00:00:00+00:00", "wal": {}, **sections}


def run(started: str, result: str = "ok", **extra) -> dict:
    return {"name": "x", "started_at": started, "finished_at": started, "result": result, **extra}


def test_status_is_clean_after_a_good_backup_on_schedule():
    from infra.ops.agentstatus import problems
    good = run("2026-11-26T03:00:00+00:00")
    assert problems(agent_state(last_run=good, last_success=good), "0 3 * * *", NOW) == []


def test_status_names_a_failed_last_backup_and_a_missed_schedule():
    from infra.ops.agentstatus import problems
    good, bad = run("2026-11-25T03:00:00+00:00"), run("2026-11-26T03:00:00+00:00", "failed", error="StoreError: away")
    found = problems(agent_state(last_run=bad, last_success=good), "0 3 * * *", NOW)
    assert len(found) == 2
    assert "the last backup (x, 2026-11-26T03:00:00+00:00) failed: StoreError: away" in found[0]
    assert "no successful backup since 2026-11-25T03:00:00+00:00" in found[1]
    # Within the grace after the scheduled time, nothing is missed yet.
    assert problems(agent_state(last_run=good, last_success=good), "0 3 * * *",
                    datetime(2026, 11, 26, 3, 5, tzinfo=timezone.utc)) == []


def test_status_names_wal_that_waits_too_long_and_an_agent_without_status():
    from infra.ops.agentstatus import problems
    good = run("2026-11-26T03:00:00+00:00")
    stuck = {"pending": 4, "last_error": "StoreError: refused", "last_shipped_at": "2026-11-26T11:50:00+00:00"}
    found = problems(agent_state(last_run=good, last_success=good, wal=stuck), "0 3 * * *", NOW)
    assert found == ["backups: 4 WAL segments wait to be shipped since 2026-11-26T11:50:00+00:00: StoreError: refused"]
    recent = {**stuck, "last_shipped_at": "2026-11-26T11:59:30+00:00"}
    assert problems(agent_state(last_run=good, last_success=good, wal=recent), "0 3 * * *", NOW) == []
    assert "status.json cannot be read" in problems(None, "0 3 * * *", NOW)[0]


def test_the_first_base_backup_is_tried_again_backing_off_until_one_is_in_the_local_store(tmp_path, monkeypatch):
    """The agent starts beside PostgreSQL's first start: a failed first backup must not wait for the schedule."""
    the_agent = agent.Agent(config(tmp_path, schedule="0 0 1 1 *"))
    attempts, waits = [], []

    def take_backup(cfg, stores, secrets_dir, started):
        attempts.append(started)
        if len(attempts) < 4:
            raise agent.AgentError("connection refused")
        name = layout.backup_name(started)
        (tmp_path / "manifest.json").write_text("{}")
        stores[0].put(layout.backup_key(name, layout.MANIFEST), tmp_path / "manifest.json")
        return {"postgres": {"system_identifier": SYSID}}

    monkeypatch.setattr(agent, "take_backup", take_backup)
    monkeypatch.setattr(agent, "prune", lambda *args: [])
    monkeypatch.setattr(agent.Agent, "wait_until", lambda self, due: waits.append((due - agent._now()).total_seconds()))
    the_agent.first_backup()
    assert len(attempts) == 4
    assert [round(w) for w in waits] == [5, 10, 20]
    assert the_agent.status.data["last_run"]["result"] == "ok"
    the_agent.first_backup()  # a base backup is there: nothing to do
    assert len(attempts) == 4


def test_retries_of_the_first_backup_wait_at_most_five_minutes_and_stop_with_the_agent(tmp_path, monkeypatch):
    the_agent = agent.Agent(config(tmp_path))
    waits = []

    def wait_until(self, due):
        waits.append(round((due - agent._now()).total_seconds()))
        self.run_now.set()  # a `backup --now` while waiting is that wait's try, not one more
        if len(waits) == 9:
            self.stop.set()

    monkeypatch.setattr(agent, "take_backup", lambda *args: (_ for _ in ()).throw(agent.AgentError("refused")))
    monkeypatch.setattr(agent.Agent, "wait_until", wait_until)
    the_agent.first_backup()
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert the_agent.status.data["last_run"]["result"] == "failed"
    assert not the_agent.run_now.is_set()


# ------------------------------------------------------------------ replicated: one agent per host

S3 = {"bucket": "sin-backups", "prefix": "unit", "endpoint": "http://127.0.0.1:9", "region": "us-east-1"}


def replicated_agent(tmp_path: Path, monkeypatch, replica: bool) -> agent.Agent:
    """An agent of a replicated stack whose PostgreSQL is a replica or the leader; its store a folder."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(parents=True)
    for name in ("s3-access-key-id", "s3-secret-access-key", "postgres-password", "backup-passphrase"):
        (secrets / name).write_text(f"{name}-value")
    the_agent = agent.Agent(config(tmp_path, schedule="0 0 1 1 *", s3=S3, replicated=True), secrets)
    monkeypatch.setattr(agent, "is_replica", lambda cfg, secrets_dir: replica)
    return the_agent


def test_a_replicated_agent_keeps_no_local_copy_the_bucket_is_its_only_store(tmp_path, monkeypatch):
    """Each host archives what its own member has: a host's copy would hold a part of the history."""
    stores = replicated_agent(tmp_path, monkeypatch, replica=True).stores
    assert [store.describe() for store in stores] == ["s3://sin-backups/unit (endpoint http://127.0.0.1:9)"]
    assert len(agent.open_stores(config(tmp_path, s3=None))) == 1  # a single host: its local copy


def test_beside_a_replica_no_base_backup_is_taken_beside_the_leader_it_is(tmp_path, monkeypatch):
    taken = []
    monkeypatch.setattr(agent, "take_backup", lambda cfg, stores, secrets_dir, started: taken.append(started) or
                        {"postgres": {"system_identifier": SYSID}})
    monkeypatch.setattr(agent, "prune", lambda *args: [])
    replica = replicated_agent(tmp_path / "a", monkeypatch, replica=True)
    assert replica.run_once() is False
    assert taken == [] and replica.status.data["last_skipped"]["reason"] == "replica"
    assert "last_run" not in replica.status.data
    leader = replicated_agent(tmp_path / "b", monkeypatch, replica=False)
    assert leader.run_once() is True
    assert len(taken) == 1 and leader.status.data["last_run"]["result"] == "ok"


def test_a_postgresql_that_does_not_answer_skips_the_run_to_be_tried_again(tmp_path, monkeypatch):
    the_agent = replicated_agent(tmp_path, monkeypatch, replica=False)

    def refused(cfg, secrets_dir):
        raise agent.psycopg.OperationalError("connection refused")

    monkeypatch.setattr(agent, "is_replica", refused)
    monkeypatch.setattr(agent, "take_backup", lambda *args: pytest.fail("a backup without knowing the role"))
    assert the_agent.run_once() is False
    assert the_agent.status.data["last_skipped"]["reason"] == "OperationalError"


def test_agents_beside_replicas_look_for_the_leaders_first_backup_in_the_bucket_until_it_is_there(
        tmp_path, monkeypatch):
    the_agent = replicated_agent(tmp_path, monkeypatch, replica=True)
    bucket = DirStore(tmp_path / "bucket")
    the_agent.stores = [bucket]
    waits = []

    def wait_until(self, due):  # the leader's agent puts its backup in while this one waits
        waits.append(round((due - agent._now()).total_seconds()))
        if len(waits) == 3:
            (tmp_path / "manifest.json").write_text("{}")
            bucket.put(layout.backup_key("20261207T080000Z", layout.MANIFEST), tmp_path / "manifest.json")

    monkeypatch.setattr(agent.Agent, "wait_until", wait_until)
    the_agent.first_backup()
    assert waits == [5, 10, 20]


def test_an_unreachable_bucket_counts_as_no_base_backup_yet(tmp_path, monkeypatch):
    the_agent = replicated_agent(tmp_path, monkeypatch, replica=True)

    class Away:
        def list(self, prefix=""):
            raise StoreError("s3://sin-backups/unit: connection refused")

    the_agent.stores = [Away()]
    assert the_agent.has_base_backup() is False
