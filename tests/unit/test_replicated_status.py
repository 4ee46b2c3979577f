"""`status` of a replicated stack (infra.ops.status.collect_replicated) on readings made up here: each
member as Patroni and its Sentinel see it, the cluster's problems, and the services read from the
leader and the master."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from infra.backupagent import layout
from infra.backupagent.store import DirStore, StoreError
from infra.deploy.etcd import EtcdMember
from infra.ops import status
from tests.unit.test_replicated_step import ADDRESSES, TARGET, whole


class Etcd:
    """etcd's member list as the first answering member gives it; ``asked``: the addresses asked."""

    def __init__(self):
        self.members: tuple[str, ...] = tuple(ADDRESSES)
        self.answers = True
        self.asked: list[tuple[str, ...]] = []

    def listed(self, addresses):
        self.asked.append(tuple(addresses))
        if not self.answers:
            return None, ()
        return addresses[0], tuple(EtcdMember(str(n), a) for n, a in enumerate(self.members))


@pytest.fixture
def etcd(monkeypatch):
    found = Etcd()
    monkeypatch.setattr(status.etcd, "listed", found.listed)
    return found


@pytest.fixture
def services(monkeypatch, etcd):
    """The targets the services' figures would be read from (no server here)."""
    seen = []
    monkeypatch.setattr(status, "_services", lambda target, result, *_a, **_k: seen.append(target))
    return seen


def test_a_whole_cluster_is_healthy_and_each_member_has_its_line(services):
    reading = whole(masters={a: "10.9.0.3" for a in ADDRESSES})
    result = status.collect_replicated(TARGET, read=lambda *_: reading)
    assert result.healthy and result.problems == []
    assert [(m.address, m.role, m.lag_bytes, m.sentinel_master, m.quorum) for m in result.members] == [
        ("10.9.0.2", "leader", None, "10.9.0.3", True), ("10.9.0.3", "sync_standby", 0, "10.9.0.3", True),
        ("10.9.0.4", "replica", 120, "10.9.0.3", True)]
    lines = result.table().splitlines()
    assert lines[0] == "stack prod: healthy"
    assert lines[2].split() == ["member", "patroni", "state", "lag", "its", "sentinel's", "master", "quorum"]
    assert lines[5].split() == ["10.9.0.4", "replica", "streaming", "120", "B", "10.9.0.3", "yes"]
    # PostgreSQL is read on the leader's host, Redis on the master the Sentinels agree on.
    (target,) = services
    assert (target.postgres.host, target.postgres.port, target.redis.host) == ("10.9.0.2", 5000, "10.9.0.3")


def test_a_lost_member_makes_it_unhealthy_and_is_named(services):
    reading = whole(patroni=[
        {"host": "10.9.0.3", "role": "leader", "state": "running"},
        {"host": "10.9.0.4", "role": "sync_standby", "state": "streaming", "lag": 0}],
        masters={"10.9.0.2": None, "10.9.0.3": "10.9.0.3", "10.9.0.4": "10.9.0.3"},
        quorum={"10.9.0.2": False, "10.9.0.3": True, "10.9.0.4": True}, master_replicas=1)
    result = status.collect_replicated(TARGET, read=lambda *_: reading)
    assert not result.healthy
    assert result.members[0] == status.Member("10.9.0.2", "absent", "-", None, None, False)
    assert "Patroni members: 2 of 3 (10.9.0.2 absent)" in result.problems
    assert "Sentinels without quorum: 10.9.0.2" in result.problems
    table = result.table()
    assert table.splitlines()[0] == "stack prod: UNHEALTHY"
    assert table.splitlines()[3].split() == ["10.9.0.2", "absent", "-", "-", "no", "answer", "no"]
    assert "problem: Patroni members: 2 of 3 (10.9.0.2 absent)" in table
    assert json.loads(result.to_json())["healthy"] is False
    assert services[0].postgres.host == "10.9.0.3"


def test_etcd_members_other_than_the_lists_first_hosts_are_a_problem(services, etcd):
    """After forget-host of an etcd host, before the `up` that adds the host taking its place."""
    assert status.collect_replicated(TARGET, read=lambda *_: whole()).healthy
    assert etcd.asked == [tuple(ADDRESSES)]
    etcd.members = ("10.9.0.4", "10.9.0.2")
    result = status.collect_replicated(TARGET, read=lambda *_: whole())
    assert result.problems == ["etcd members: 10.9.0.2, 10.9.0.4, the list's first hosts: 10.9.0.2, 10.9.0.3, "
                               "10.9.0.4; `up` moves them"]
    etcd.members = (*ADDRESSES, "10.9.0.9")
    assert status.collect_replicated(TARGET, read=lambda *_: whole()).problems[0].startswith(
        "etcd members: 10.9.0.2, 10.9.0.3, 10.9.0.4, 10.9.0.9,")
    etcd.answers = False
    assert status.collect_replicated(TARGET, read=lambda *_: whole()).problems == [
        "etcd: no member on 10.9.0.2, 10.9.0.3, 10.9.0.4 answers"]


def test_a_patroni_member_on_a_host_off_the_list_is_a_problem_with_the_fix(services):
    """A forgotten host that came back: its engine restarted the stack's containers."""
    reading = whole()
    reading.patroni.append({"host": "10.9.0.9", "role": "replica", "state": "streaming", "lag": 0})
    result = status.collect_replicated(TARGET, read=lambda *_: reading)
    assert result.problems == [
        "Patroni member on a host off the list: 10.9.0.9; unless an `up` is taking it off, remove the stack's "
        "containers there (prod-*), then run forget-host"]
    assert [m.address for m in result.members] == list(ADDRESSES)


def test_without_a_leader_postgres_is_read_through_the_first_endpoint(services):
    reading = whole(patroni=[{"host": a, "role": "replica", "state": "streaming", "lag": 0} for a in ADDRESSES])
    result = status.collect_replicated(TARGET, read=lambda *_: reading)
    assert "Patroni leaders: none (one expected)" in result.problems
    assert services[0].postgres.host == TARGET.postgres.host


# ------------------------------------------------------------------ backups, as the bucket shows them

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
SYSID = "7312345678901234567"
SEGMENT = "000000020000000000000007"


def bucket_with(tmp_path, *names: str, wal: tuple[str, ...] = ()) -> DirStore:
    store = DirStore(tmp_path / "bucket")
    (tmp_path / "object").write_text("{}")
    for name in names:
        store.put(layout.backup_key(name, layout.MANIFEST), tmp_path / "object")
    store.put(layout.backup_key("20261207T115900Z", layout.POSTGRES_OBJECT), tmp_path / "object")  # being written
    for segment in wal:
        store.put(layout.wal_key(SYSID, segment), tmp_path / "object")
    return store


def test_backups_in_the_bucket_on_schedule_and_the_leaders_wal_there_are_healthy(services, tmp_path, monkeypatch):
    monkeypatch.setattr(status, "_last_archived", lambda target: (SYSID, SEGMENT, NOW - timedelta(minutes=5)))
    store = bucket_with(tmp_path, "20261206T030000Z", "20261207T030001Z", wal=(SEGMENT,))
    result = status.collect_replicated(TARGET, read=lambda *_: whole(), backups=(store, "0 3 * * *"), now=NOW)
    assert result.healthy, result.problems
    assert f"backups     schedule '0 3 * * *' UTC; newest base backup 20261207T030001Z in {store.describe()}; " \
           f"WAL archived last {SEGMENT}" in result.table()


def test_a_missed_base_backup_and_wal_that_does_not_reach_the_bucket_are_problems(services, tmp_path, monkeypatch):
    monkeypatch.setattr(status, "_last_archived", lambda target: (SYSID, SEGMENT, NOW - timedelta(minutes=3)))
    store = bucket_with(tmp_path, "20261206T030000Z")
    result = status.collect_replicated(TARGET, read=lambda *_: whole(), backups=(store, "0 3 * * *"), now=NOW)
    assert result.problems == [
        f"backups: the newest base backup in {store.describe()} is 20261206T030000Z, although schedule '0 3 * * *' "
        f"(UTC) called for one since; see `docker logs` of the backup container on the leader's host",
        f"backups: WAL segment {SEGMENT}, archived on the leader at 2026-12-07T11:57:00+00:00, is not in "
        f"{store.describe()}; see `docker logs` of the backup containers"]
    # Within two minutes of its archiving a segment is on its way, not missing.
    monkeypatch.setattr(status, "_last_archived", lambda target: (SYSID, SEGMENT, NOW - timedelta(seconds=110)))
    assert len(status.collect_replicated(TARGET, read=lambda *_: whole(), backups=(store, "0 3 * * *"),
                                         now=NOW).problems) == 1


def test_a_bucket_without_a_base_backup_or_out_of_reach_is_a_problem(services, tmp_path, monkeypatch):
    monkeypatch.setattr(status, "_last_archived", lambda target: None)
    empty = bucket_with(tmp_path)
    result = status.collect_replicated(TARGET, read=lambda *_: whole(), backups=(empty, "0 3 * * *"), now=NOW)
    assert result.problems == [
        f"backups: {empty.describe()} holds no complete base backup yet (the agent beside the leader takes one when "
        f"it starts); see `docker logs` of its backup container"]
    assert "newest base backup none" in result.table()

    class Away:
        def describe(self):
            return "s3://sin-backups/prod"

        def list(self, prefix=""):
            raise StoreError("connection refused")

    result = status.collect_replicated(TARGET, read=lambda *_: whole(), backups=(Away(), "0 3 * * *"), now=NOW)
    assert result.problems == ["backups: s3://sin-backups/prod cannot be read: connection refused"]


def test_without_scheduled_backups_the_bucket_is_not_asked(services):
    result = status.collect_replicated(TARGET, read=lambda *_: whole())
    assert result.backups == {}
    assert "backups     none scheduled (set backupSchedule and backupS3Bucket" in result.table()
