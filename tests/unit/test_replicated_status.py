"""`status` of a replicated stack (infra.ops.status.collect_replicated) on readings made up here: each
member as Patroni and its Sentinel see it, the cluster's problems, and the services read from the
leader and the master."""

from __future__ import annotations

import json

import pytest

from infra.ops import status
from tests.unit.test_replicated_step import ADDRESSES, TARGET, whole


@pytest.fixture
def services(monkeypatch):
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


def test_without_a_leader_postgres_is_read_through_the_first_endpoint(services):
    reading = whole(patroni=[{"host": a, "role": "replica", "state": "streaming", "lag": 0} for a in ADDRESSES])
    result = status.collect_replicated(TARGET, read=lambda *_: reading)
    assert "Patroni leaders: none (one expected)" in result.problems
    assert services[0].postgres.host == TARGET.postgres.host
