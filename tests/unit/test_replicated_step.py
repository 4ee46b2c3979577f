"""The post-deploy step's cluster part (infra.deploy.replicated) on readings made up here."""

from __future__ import annotations

import pytest

from infra.core.targets import ClusterTarget, PostgresTarget, RedisTarget, Target
from infra.deploy import replicated
from infra.deploy.replicated import ClusterState

ADDRESSES = ("10.9.0.2", "10.9.0.3", "10.9.0.4")
TARGET = Target(
    "prod",
    PostgresTarget("10.9.0.2", 5000, "sinsolver", "sinadmin", "p" * 20, "prod-patroni", "10.9.0.2", 16),
    RedisTarget("10.9.0.2", 6379, "r" * 20, "prod-redis", "10.9.0.2", 7),
    cluster=ClusterTarget(ADDRESSES, 8008, 26379, "s" * 20, "sin-redis"),
)


def whole(**changes) -> ClusterState:
    state = dict(
        patroni=[{"host": "10.9.0.2", "role": "leader", "state": "running"},
                 {"host": "10.9.0.3", "role": "sync_standby", "state": "streaming", "lag": 0},
                 {"host": "10.9.0.4", "role": "replica", "state": "streaming", "lag": 120}],
        masters={a: "10.9.0.2" for a in ADDRESSES}, quorum={a: True for a in ADDRESSES}, master_replicas=2)
    state.update(changes)
    return ClusterState(**state)


def test_a_whole_cluster_has_no_problems_and_passes_every_check():
    assert replicated.problems(whole(), ADDRESSES) == []
    checks = replicated.checks(TARGET, 0, read=lambda *_: whole())
    assert [c.name for c in checks] == ["cluster.leader", "cluster.replicas_streaming", "cluster.synchronous_standby",
                                        "cluster.replication_lag", "cluster.sentinels_agree", "cluster.redis_replicas"]
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert checks[0].observed == "10.9.0.2" and checks[2].observed == "10.9.0.3"


@pytest.mark.parametrize("changes, problem, failed", [
    ({"patroni": [{"host": "10.9.0.3", "role": "replica", "state": "streaming", "lag": 0}]},
     "Patroni leaders: none (one expected)", "cluster.leader"),
    ({"patroni": [{"host": "10.9.0.2", "role": "leader", "state": "running"},
                  {"host": "10.9.0.3", "role": "sync_standby", "state": "streaming", "lag": 0},
                  {"host": "10.9.0.4", "role": "replica", "state": "creating replica"}]},
     "replicas not streaming: 10.9.0.4", "cluster.replicas_streaming"),
    ({"patroni": [{"host": "10.9.0.2", "role": "leader", "state": "running"},
                  {"host": "10.9.0.3", "role": "replica", "state": "streaming", "lag": 0},
                  {"host": "10.9.0.4", "role": "replica", "state": "streaming", "lag": 0}]},
     "no synchronous standby", "cluster.synchronous_standby"),
    ({"masters": {"10.9.0.2": "10.9.0.2", "10.9.0.3": "10.9.0.3", "10.9.0.4": None}},
     "the Sentinels do not agree on a master", "cluster.sentinels_agree"),
    ({"quorum": {"10.9.0.2": True, "10.9.0.3": False, "10.9.0.4": True}},
     "Sentinels without quorum: 10.9.0.3", "cluster.sentinels_agree"),
    ({"master_replicas": 1}, "Redis master has 1 of 2 replicas online", "cluster.redis_replicas"),
    ({"patroni": [{"host": "10.9.0.2", "role": "leader", "state": "running"},
                  {"host": "10.9.0.3", "role": "sync_standby", "state": "streaming", "lag": 0}]},
     "Patroni members: 2 of 3 (10.9.0.4 absent)", "cluster.replicas_streaming"),
])
def test_each_missing_part_is_named_and_fails_its_check(changes, problem, failed):
    state = whole(**changes)
    assert any(p.startswith(problem) for p in replicated.problems(state, ADDRESSES)), replicated.problems(state, ADDRESSES)
    assert failed in [c.name for c in replicated.checks(TARGET, 0, read=lambda *_: state) if not c.ok]


def test_the_checks_wait_for_a_replica_to_catch_up_up_to_the_deadline(monkeypatch):
    monkeypatch.setattr(replicated, "POLL_S", 0)
    behind = whole(patroni=[{"host": "10.9.0.2", "role": "leader", "state": "running"},
                            {"host": "10.9.0.3", "role": "sync_standby", "state": "streaming", "lag": 0},
                            {"host": "10.9.0.4", "role": "replica", "state": "streaming", "lag": 4_332_864}])
    readings = iter([behind, behind, whole()])
    assert all(c.ok for c in replicated.checks(TARGET, 5, read=lambda *_: next(readings)))
    assert "replicas more than 1048576 bytes behind: 10.9.0.4" in replicated.problems(behind, ADDRESSES)


def test_a_lagging_replica_fails_the_lag_check_only():
    lagging = whole(patroni=[{"host": "10.9.0.2", "role": "leader", "state": "running"},
                             {"host": "10.9.0.3", "role": "sync_standby", "state": "streaming", "lag": 0},
                             {"host": "10.9.0.4", "role": "replica", "state": "streaming", "lag": (1 << 20) + 1}])
    assert [c.name for c in replicated.checks(TARGET, 0, read=lambda *_: lagging) if not c.ok] == [
        "cluster.replication_lag"]


def test_waiting_ends_once_whole_and_names_what_is_missing_at_the_deadline(monkeypatch):
    monkeypatch.setattr(replicated, "POLL_S", 0)
    readings = iter([whole(master_replicas=0), whole(master_replicas=1), whole()])
    assert replicated.wait_until_whole(TARGET, 5, read=lambda *_: next(readings)).master_replicas == 2
    with pytest.raises(replicated.ClusterNotReady, match=r"not whole after 0 s: no synchronous standby$"):
        replicated.wait_until_whole(TARGET, 0, read=lambda *_: whole(patroni=[
            {"host": "10.9.0.2", "role": "leader", "state": "running"},
            {"host": "10.9.0.3", "role": "replica", "state": "streaming", "lag": 0},
            {"host": "10.9.0.4", "role": "replica", "state": "streaming", "lag": 0}]))


def test_redis_is_resolved_to_the_master_the_sentinels_agree_on_postgres_to_the_leader_s_endpoint():
    moved = replicated.resolve(TARGET, whole(masters={a: "10.9.0.4" for a in ADDRESSES}, patroni=[
        {"host": "10.9.0.2", "role": "replica"}, {"host": "10.9.0.3", "role": "leader"}]))
    assert (moved.redis.host, moved.redis.port, moved.postgres.host, moved.postgres.port) == (
        "10.9.0.4", 6379, "10.9.0.3", 5000)


@pytest.mark.parametrize("state", [
    pytest.param(whole(patroni=[], masters={a: None for a in ADDRESSES}), id="nothing answers"),
    pytest.param(whole(patroni=[{"host": a, "role": "leader"} for a in ADDRESSES[:2]],
                       masters={"10.9.0.2": "10.9.0.2", "10.9.0.3": "10.9.0.3", "10.9.0.4": None}), id="disputed"),
])
def test_without_one_leader_or_an_agreed_master_the_target_stays_where_it_was(state):
    assert replicated.resolve(TARGET, state) == TARGET


def test_the_target_survives_the_wire():
    again = Target.from_dict({**TARGET.to_dict(), "cluster": {**TARGET.to_dict()["cluster"],
                                                               "members": list(ADDRESSES), "sentinel_port": 26379.0}})
    assert again == TARGET


def test_a_replica_counts_for_the_masters_writes_only_once_online_and_recently_heard_from():
    """A replica still copying the master's data is connected but not online: the master refuses
    writes (NOREPLICAS) until it is; the step must wait for that, not for the connection."""
    def replica(state: str, lag: int) -> dict:
        return {"ip": "10.9.0.3", "port": 6379, "state": state, "offset": 1, "lag": lag}

    assert replicated.good_replicas({"role": "master", "connected_slaves": 2, "slave0": replica("online", 0),
                                     "slave1": replica("online", 1)}, ADDRESSES) == 2
    assert replicated.good_replicas({"role": "master", "connected_slaves": 2, "slave0": replica("online", 0),
                                     "slave1": replica("wait_bgsave", 0)}, ADDRESSES) == 1
    assert replicated.good_replicas({"role": "master", "connected_slaves": 1, "slave0": replica("online", 11)},
                                    ADDRESSES) == 0
    assert replicated.good_replicas({"role": "master", "connected_slaves": 1, "slave0": replica("online", 10)},
                                    ADDRESSES) == 1
    assert replicated.good_replicas({"role": "slave", "master_host": "10.9.0.2"}, ADDRESSES) == -1
    # A host taken off the list still replicates until the end of the run that removes it: not counted.
    assert replicated.good_replicas({"role": "master", "connected_slaves": 2, "slave0": replica("online", 0),
                                     "slave1": {**replica("online", 0), "ip": "10.9.0.5"}}, ADDRESSES) == 1


def test_a_member_on_a_host_taken_off_the_list_is_neither_missing_nor_counted():
    leaving = {"host": "10.9.0.5", "role": "replica", "state": "streaming", "lag": 0}
    state = whole(patroni=[*whole().patroni, leaving])
    assert replicated.problems(state, ADDRESSES) == []
    assert all(c.ok for c in replicated.checks(TARGET, 0, read=lambda *_: state))
    assert state.among(ADDRESSES).patroni == whole().patroni


def test_where_the_cluster_takes_writes_is_the_one_leader_and_the_agreed_master_or_none():
    from infra.core.cluster import Primaries

    def read(state):
        return lambda cluster, port, password: state

    assert replicated.primaries(TARGET, read(whole())) == Primaries("10.9.0.2", "10.9.0.2",
                                                                    frozenset({"10.9.0.2", "10.9.0.3", "10.9.0.4"}))
    two_leaders = [{**m, "role": "leader"} for m in whole().patroni]
    assert replicated.primaries(TARGET, read(whole(patroni=two_leaders))).postgres is None
    disputed = {"10.9.0.2": "10.9.0.2", "10.9.0.3": "10.9.0.3", "10.9.0.4": None}
    leaving = [{"host": "10.9.0.5", "role": "leader", "state": "running"},
               {"host": "10.9.0.2", "role": "replica", "state": "streaming", "lag": 0},
               *whole().patroni[1:]]
    assert replicated.primaries(TARGET, read(whole(patroni=leaving))).postgres == "10.9.0.3", \
        "a leader on a host off the list: the synchronous standby it hands over to"
    disputed_master = replicated.primaries(TARGET, read(whole(masters=disputed)))
    assert (disputed_master.postgres, disputed_master.redis) == ("10.9.0.2", None)
    assert replicated.primaries(TARGET, read(whole(patroni=[], masters={}))) == Primaries(None, None)
