"""Hosts joining and leaving a running cluster (infra.deploy.membership) against stand-ins for the
Sentinels, the Redis members and Patroni's REST API: what is sent to which server, in which order.
The real servers: tests/remote/test_replicated_hosts.py."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import redis

from infra.core.targets import DockerHost, Target
from infra.deploy import membership
from infra.deploy.replicated import ClusterNotReady, ClusterState
from tests.unit.replicated_target import TARGET

STAYING = ("10.9.0.2", "10.9.0.3", "10.9.0.4")
GROWN = Target.from_dict({**TARGET, "cluster": {**TARGET["cluster"], "members": [*STAYING, "10.9.0.5"]}})
THREE = Target.from_dict(TARGET)
# A Sentinel as its seed for three hosts starts it (SENTINEL MASTER's figures, as redis-py parses them).
SEEDED = {"quorum": 2, "down-after-milliseconds": 4000, "failover-timeout": 30000, "parallel-syncs": 1}


class Cluster:
    """What the stand-ins answer: each Sentinel's view, each member's replication, Patroni's members;
    ``sent`` records every command, ``down`` the hosts that do not answer."""

    def __init__(self, members, master="10.9.0.2", leader="10.9.0.2"):
        self.sentinels = {a: {"ip": master, **SEEDED, "num-other-sentinels": len(members) - 1,
                              "num-slaves": len(members) - 1} for a in members}
        self.replication = {a: ({"role": "master"} if a == master else {"role": "slave", "master_host": master})
                            for a in members}
        self.patroni = [{"name": "m" + a.replace(".", "_"), "host": a,
                         "role": "leader" if a == leader else "replica"} for a in members]
        self.sent: list[tuple] = []
        self.down: set[str] = set()
        self.relearn = True
        self.remembers: dict[str, set[str]] = {a: set() for a in members}
        """Per Sentinel, the gone hosts it still lists among its Sentinels and replicas, until reset."""

    def sentinel(self, _target, address):
        if address in self.down:
            raise redis.ConnectionError(f"{address} refused")
        view = self.sentinels[address]
        cluster = self

        class Sentinel:
            def ping(self):
                return True

            def sentinel_master(self, name):
                return dict(view)

            def sentinel_sentinels(self, name):
                return [{"ip": a} for a in [*cluster.sentinels, *cluster.remembers[address]] if a != address]

            def sentinel_slaves(self, name):
                return [{"ip": a} for a in [*cluster.sentinels, *cluster.remembers[address]] if a != view["ip"]]

            def execute_command(self, *args):
                cluster.sent.append((address, *args))
                if args[:2] == ("SENTINEL", "SET"):
                    view[args[3]] = args[4]
                if args[:2] == ("SENTINEL", "RESET"):
                    cluster.remembers[address].clear()
                    view["num-other-sentinels"] = view["num-slaves"] = 0
                    if cluster.relearn:  # as the others' hellos and the master's INFO arrive
                        others = len([a for a in cluster.sentinels if a not in cluster.down]) - 1
                        view["num-other-sentinels"] = view["num-slaves"] = others
                if args[:2] == ("SENTINEL", "FAILOVER"):
                    for other in cluster.sentinels.values():
                        other["ip"] = "10.9.0.3"

        return contextlib.nullcontext(Sentinel())

    def redis(self, _target, address):
        cluster = self

        class Member:
            def info(self, section):
                return dict(cluster.replication[address])

            def execute_command(self, *args):
                cluster.sent.append((address, *args))
                if args[0] == "REPLICAOF":
                    cluster.replication[address]["master_host"] = args[1]

        return contextlib.nullcontext(Member())

    def state(self, cluster_target, port, password):
        masters = {a: (None if a in self.down else self.sentinels[a]["ip"]) for a in cluster_target.members}
        return ClusterState(self.patroni, masters, {a: True for a in masters}, 2)


@pytest.fixture
def cluster(monkeypatch):
    def make(members=STAYING, **kwargs):
        found = Cluster(members, **kwargs)
        monkeypatch.setattr(membership, "_sentinel", found.sentinel)
        monkeypatch.setattr(membership, "_redis", found.redis)
        monkeypatch.setattr(membership, "read_state", found.state)
        monkeypatch.setattr(membership, "patroni_members", lambda cluster_target: found.patroni)
        monkeypatch.setattr(membership, "POLL_S", 0.001)
        return found
    return make


def test_converge_sets_the_majoritys_quorum_and_points_a_chained_replica_to_the_master(cluster):
    """A fourth host seeded with the first as master, after the master moved to the second."""
    found = cluster((*STAYING, "10.9.0.5"), master="10.9.0.3")
    found.replication["10.9.0.5"] = {"role": "slave", "master_host": "10.9.0.2"}
    found.sentinels["10.9.0.5"]["quorum"] = 3
    assert membership.converge(GROWN, 5) == [
        "sentinel 10.9.0.2: quorum 2 -> 3", "sentinel 10.9.0.3: quorum 2 -> 3", "sentinel 10.9.0.4: quorum 2 -> 3",
        "redis 10.9.0.5: replicates from 10.9.0.3 (was 10.9.0.2)"]
    assert [s for s in found.sent if s[0] == "10.9.0.5"] == [
        ("10.9.0.5", "REPLICAOF", "10.9.0.3", 6379), ("10.9.0.5", "CONFIG", "REWRITE")]
    assert membership.converge(GROWN, 5) == [], "a second run finds nothing to do"


def test_converge_sets_running_sentinels_to_the_timing_their_seed_no_longer_gives(cluster):
    """Sentinels of a stack made when down-after was 5 s: their own files say 5 s, whatever the new seed."""
    found = cluster()
    for view in found.sentinels.values():
        view["down-after-milliseconds"] = 5000
    found.sentinels["10.9.0.3"]["failover-timeout"] = 180000
    assert membership.converge(THREE, 5) == [
        "sentinel 10.9.0.2: down-after-milliseconds 5000 -> 4000",
        "sentinel 10.9.0.3: down-after-milliseconds 5000 -> 4000",
        "sentinel 10.9.0.3: failover-timeout 180000 -> 30000",
        "sentinel 10.9.0.4: down-after-milliseconds 5000 -> 4000"]
    assert ("10.9.0.2", "SENTINEL", "SET", "sin-redis", "down-after-milliseconds", 4000) in found.sent
    assert membership.converge(THREE, 5) == [], "a second run finds nothing to do"


def test_converge_points_no_replica_anywhere_while_the_sentinels_disagree(cluster):
    found = cluster(master="10.9.0.2")
    found.sentinels["10.9.0.4"]["ip"] = "10.9.0.3"
    found.replication["10.9.0.4"] = {"role": "slave", "master_host": "10.9.0.3"}
    assert membership.converge(THREE, 0.05) == []
    assert not [s for s in found.sent if "REPLICAOF" in s]


def test_leave_resets_the_staying_sentinels_one_at_a_time(cluster):
    found = cluster((*STAYING, "10.9.0.5"))
    found.down.add("10.9.0.5")  # its containers are gone
    assert membership.leave(GROWN, "10.9.0.5", 5) == list(STAYING)
    assert found.sent == [(a, "SENTINEL", "RESET", "sin-redis") for a in STAYING]


def test_leave_waits_for_each_sentinel_to_relearn_the_others_then_says_which_did_not(cluster):
    found = cluster((*STAYING, "10.9.0.5"))
    found.down.add("10.9.0.5")
    found.relearn = False
    with pytest.raises(ClusterNotReady, match=r"^the Sentinel on 10.9.0.2 did not learn the other 2 Sentinels "
                                              r"and replicas again within 0 s of its reset"):
        membership.leave(GROWN, "10.9.0.5", 0.05)
    assert found.sent == [("10.9.0.2", "SENTINEL", "RESET", "sin-redis")], "the next is reset only after"


def test_leave_resets_nothing_while_the_master_is_still_on_the_leaving_host(cluster):
    found = cluster((*STAYING, "10.9.0.5"), master="10.9.0.5")
    found.down.add("10.9.0.5")
    with pytest.raises(ClusterNotReady, match="did not agree on a master on another host than 10.9.0.5"):
        membership.leave(GROWN, "10.9.0.5", 0.05)
    assert found.sent == []


def test_leave_of_a_destroyed_cluster_reaches_nothing_and_is_done(cluster):
    found = cluster((*STAYING, "10.9.0.5"))
    found.down.update(found.sentinels)
    assert membership.leave(GROWN, "10.9.0.5", 5) == []


def test_the_sentinels_that_still_know_a_gone_host_are_named_as_a_sentinel_a_replica_or_the_master(cluster):
    found = cluster(STAYING)
    found.remembers["10.9.0.3"].add("10.9.0.5")
    found.down.add("10.9.0.4")  # passed over
    assert membership.remembered_by(THREE, "10.9.0.5") == ["10.9.0.3"]
    membership.leave(THREE, "10.9.0.5", 5)
    assert membership.remembered_by(THREE, "10.9.0.5") == []
    assert membership.remembered_by(THREE, "10.9.0.2") == ["10.9.0.3"]  # the master: others list it as such
    found.sentinels["10.9.0.3"]["ip"] = "10.9.0.5"
    assert membership.remembered_by(THREE, "10.9.0.5") == ["10.9.0.3"]


@pytest.fixture
def engine(monkeypatch):
    """The leaving host's engine: which containers it has, each stop recorded (``on_stop`` runs then)."""
    from infra.core import dockercli, dockerhost

    state = SimpleNamespace(containers={"prod-patroni", "prod-redis", "prod-sentinel", "prod-haproxy"},
                            stopped=[], reached=[], on_stop={})
    monkeypatch.setattr(dockerhost, "session", lambda host: (state.reached.append(host.url),
                                                             contextlib.nullcontext(host))[1])
    monkeypatch.setattr(dockerhost, "using", lambda current: contextlib.nullcontext(current))
    monkeypatch.setattr(dockercli, "inspect", lambda kind, name: {"Name": name} if name in state.containers else None)

    def docker(*args, timeout_s=None):
        assert args[:3] == ("stop", "-t", "60") and timeout_s == 90, args
        state.stopped.append(args[3])
        state.on_stop.get(args[3], lambda: None)()
        return ""

    monkeypatch.setattr(dockercli, "docker", docker)
    return state


LEAVING = {"10.9.0.5": DockerHost("ssh://root@10.9.0.5")}


def test_hand_over_moves_the_master_without_a_write_on_two_then_stops_the_leaving_servers(cluster, engine):
    found = cluster((*STAYING, "10.9.0.5"), master="10.9.0.5", leader="10.9.0.5")
    found.replication["10.9.0.5"] = {"role": "master", "master_repl_offset": 100,
                                     **{f"slave{i}": {"ip": a, "offset": 100} for i, a in enumerate(STAYING)}}

    def leader_moves():
        for member in found.patroni:
            member["role"] = "leader" if member["host"] == "10.9.0.3" else "replica"

    engine.on_stop["prod-patroni"] = leader_moves
    assert membership.hand_over(THREE, LEAVING, 5) == [
        "redis: master moved from 10.9.0.5 to 10.9.0.3", "patroni on 10.9.0.5: stopped", "redis on 10.9.0.5: stopped",
        "sentinel on 10.9.0.5: stopped", "haproxy on 10.9.0.5: stopped"]
    assert found.sent == [("10.9.0.5", "CLIENT", "PAUSE", 5000, "WRITE"),
                          ("10.9.0.2", "SENTINEL", "FAILOVER", "sin-redis"),
                          ("10.9.0.5", "REPLICAOF", "10.9.0.3", 6379), ("10.9.0.5", "CLIENT", "UNPAUSE")]
    assert engine.reached == ["ssh://root@10.9.0.5"]
    assert engine.stopped == ["prod-patroni", "prod-redis", "prod-sentinel", "prod-haproxy"]


def test_hand_over_with_the_primaries_elsewhere_only_stops_the_leaving_servers(cluster, engine):
    found = cluster((*STAYING, "10.9.0.5"), master="10.9.0.3", leader="10.9.0.4")
    assert membership.hand_over(THREE, LEAVING, 5)[0] == "patroni on 10.9.0.5: stopped"
    assert found.sent == []
    assert engine.stopped == ["prod-patroni", "prod-redis", "prod-sentinel", "prod-haproxy"]


def test_a_master_whose_replicas_do_not_catch_up_is_not_failed_over_and_its_writes_go_on(cluster, engine):
    found = cluster((*STAYING, "10.9.0.5"), master="10.9.0.5")
    found.replication["10.9.0.5"] = {"role": "master", "master_repl_offset": 100,
                                     "slave0": {"ip": "10.9.0.2", "offset": 100}, "slave1": {"ip": "10.9.0.3",
                                                                                             "offset": 90}}
    with pytest.raises(ClusterNotReady, match="^no Redis replica on the hosts that stay with 10.9.0.5's writes"):
        membership.hand_over(THREE, LEAVING, 0.05)
    assert found.sent == [("10.9.0.5", "CLIENT", "PAUSE", 50, "WRITE"), ("10.9.0.5", "CLIENT", "UNPAUSE")]
    assert engine.stopped == []


def test_hand_over_says_when_no_leader_came_after_the_leaving_patroni_stopped(cluster, engine):
    cluster((*STAYING, "10.9.0.5"), leader="10.9.0.5")
    with pytest.raises(ClusterNotReady, match="^no Patroni leader on the hosts that stay after 10.9.0.5's stopped "
                                              "within 0 s"):
        membership.hand_over(THREE, LEAVING, 0.05)
    assert engine.stopped == ["prod-patroni"]
