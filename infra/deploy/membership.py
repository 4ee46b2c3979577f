"""Hosts joining and leaving a running replicated cluster: what their servers do not do by
themselves. Plain Python, no Pulumi: the post-deploy step runs :func:`converge`; the membership
resources run :func:`hand_over` before any container changes and :func:`leave` once the leaving
host's containers are gone.

A joining host's servers mostly join by themselves: Patroni copies the leader (``pg_basebackup``),
Redis replicates from its seeded master, the Sentinel learns the others through the master. What is
left to do:

- The Redis seed names the list's first host as master; when the master has moved since, the new
  replica copies a replica (a chain the Sentinels do not know): it is pointed to the master.
- Each Sentinel's quorum and timing are in its own file, which only seeds a new one: every Sentinel
  is set to the majority of the list and to the timing the program renders.
- A leaving host's containers are deleted at the end of the run, after the others rolled onto files
  without it: meanwhile its Patroni could lead (or be promoted when the leader restarts) with no
  HAProxy routing to it, its Redis could stay master. Its servers stop first, the primaries moving off.
- Sentinels never forget a Sentinel or a replica that is gone, and a gone Sentinel they remember
  still counts in the majority that must authorise a failover. Redis' documented way: once the servers
  are stopped, ``SENTINEL RESET`` on each other Sentinel, one at a time, each relearning the
  others before the next.
- etcd runs on the first hosts of the list: when one of them leaves, its member is removed from etcd
  and the host that takes its place is added (:func:`move_etcd`), before that host's etcd starts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Optional, Sequence

import redis

from infra.core import dockercli, dockerhost
from infra.core.cluster import container_name, etcd_addresses, sentinel_settings
from infra.core.targets import DockerHost, Target
from infra.deploy import etcd
from infra.deploy.replicated import POLL_S, REST_TIMEOUT_S, ClusterNotReady, patroni_members, read_state
from infra.deploy.replicated import sentinel as sentinel_client

# The order a leaving host's servers stop in: Patroni first (a leader hands over as it stops), etcd
# last (Patroni keeps its leader lock there until then); :func:`move_etcd` then removes its member.
LEAVING_ORDER = ("patroni", "redis", "sentinel", "haproxy", "etcd")


def _sentinel(target: Target, address: str) -> redis.Redis:
    return sentinel_client(target.cluster, address)


def _redis(target: Target, address: str) -> redis.Redis:
    return redis.Redis(host=address, port=target.redis.port, password=target.redis.password,
                       socket_connect_timeout=REST_TIMEOUT_S, socket_timeout=REST_TIMEOUT_S, decode_responses=True)


def agreed_master(target: Target, deadline_s: float) -> Optional[str]:
    """The Redis master every answering Sentinel of ``target`` names, once they agree (a new
    Sentinel learns it from the others within seconds); None at the deadline, or when none answers."""
    give_up = time.monotonic() + deadline_s
    while True:
        state = read_state(target.cluster, target.redis.port, target.redis.password)
        named = {address for address in state.masters.values() if address}
        if len(named) == 1 or not named or time.monotonic() >= give_up:
            return named.pop() if len(named) == 1 else None
        time.sleep(POLL_S)


def converge(target: Target, deadline_s: float) -> list[str]:
    """Every Sentinel watching as the program renders it (the list's majority as quorum, the
    timing), every Redis replica replicating from the master the Sentinels agree on. What it
    changed, one line each (empty: nothing)."""
    changed = []
    wanted = sentinel_settings(len(target.cluster.members))
    for address in target.cluster.members:
        with _sentinel(target, address) as sentinel:
            master = sentinel.sentinel_master(target.cluster.master_name)
            for setting, value in wanted.items():
                if master[setting] != value:
                    sentinel.execute_command("SENTINEL", "SET", target.cluster.master_name, setting, value)
                    changed.append(f"sentinel {address}: {setting} {master[setting]} -> {value}")
    master = agreed_master(target, deadline_s)
    if master is None:
        return changed  # the cluster's checks say the Sentinels disagree
    for address in target.cluster.members:
        if address == master:
            continue
        with _redis(target, address) as member:
            info = member.info("replication")
            if info.get("role") == "slave" and info.get("master_host") != master:
                member.execute_command("REPLICAOF", master, target.redis.port)
                member.execute_command("CONFIG", "REWRITE")
                changed.append(f"redis {address}: replicates from {master} (was {info.get('master_host')})")
    return changed


def hand_over(target: Target, leaving: Mapping[str, DockerHost], deadline_s: float) -> list[str]:
    """Before the hosts ``leaving`` (address -> how to reach its engine) lose their place in the files
    of those that stay, whose HAProxy stops routing to them: their servers stop, so that none of them
    leads or is promoted while the others roll. The Redis master moves off first (paused writes, so
    none is acknowledged on two masters); Patroni's leader hands over to the synchronous standby as
    its container stops, as in a rolling change. ``target`` is the cluster that stays. What it did."""
    done = []
    for address, docker in leaving.items():
        if agreed_master(target, deadline_s) == address:
            done.append(f"redis: master moved from {address} to {_redis_switchover(target, address, deadline_s)}")
        with dockerhost.session(docker) as current, dockerhost.using(current):
            for role in LEAVING_ORDER:
                name = container_name(target.stack, role)
                if dockercli.inspect("container", name) is None:
                    continue
                grace = dockercli.STOP_GRACE_S
                dockercli.docker("stop", "-t", str(grace), name, timeout_s=grace + 30)
                done.append(f"{role} on {address}: stopped")
                if role == "patroni":
                    _await(lambda: len([m for m in patroni_members(target.cluster) if m.get("role") == "leader"
                                        and m.get("host") in target.cluster.members]) == 1,
                           f"Patroni leader on the hosts that stay after {address}'s stopped", deadline_s)
    return done


def move_etcd(target: Target, deadline_s: float) -> list[str]:
    """etcd's members on the hosts that run etcd in ``target``'s list (the first ones): after one of
    them left the list (its servers stopped by :func:`hand_over`, or the host gone), its member is
    removed and the host that took its place added, whose etcd container then joins. What it changed."""
    return etcd.move(etcd_addresses(target.cluster.members), deadline_s)


def _redis_switchover(target: Target, master: str, deadline_s: float) -> str:
    """Sentinel's failover off ``master`` without losing a write: its clients' writes wait (CLIENT
    PAUSE) until the replicas have all it acknowledged and a Sentinel has promoted one; it then
    follows the new master at once (a Sentinel converts a former master only at its next INFO, up
    to 10 s later, a window in which it would take writes to lose), and the writes that waited are
    refused (READONLY), for their clients to find the new master. The new master's address."""
    with _redis(target, master) as old:
        old.execute_command("CLIENT", "PAUSE", int(deadline_s * 1000), "WRITE")
        try:
            acknowledged = old.info("replication")["master_repl_offset"]
            _await(lambda: _caught_up(old.info("replication"), target.cluster.members, acknowledged),
                   f"Redis replica on the hosts that stay with {master}'s writes", deadline_s)
            with _sentinel(target, target.cluster.members[0]) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", target.cluster.master_name)
            _await(lambda: agreed_master(target, 0) not in (None, master),
                   f"Redis master on another host than {master}", deadline_s)
            new = agreed_master(target, 0)
            old.execute_command("REPLICAOF", new, target.redis.port)
            return new
        finally:
            old.execute_command("CLIENT", "UNPAUSE")


def _caught_up(info: dict, members: Sequence[str], offset: int) -> bool:
    """Whether every replica of the master whose INFO replication is ``info`` on ``members`` has ``offset``."""
    replicas = [r for key, r in info.items() if key.startswith("slave") and isinstance(r, dict)
                and r.get("ip") in members]
    return bool(replicas) and all(int(r.get("offset", -1)) >= offset for r in replicas)


def _await(done: Callable[[], bool], what: str, deadline_s: float) -> None:
    give_up = time.monotonic() + deadline_s
    while not done():
        if time.monotonic() >= give_up:
            raise ClusterNotReady(f"no {what} within {deadline_s:.0f} s")
        time.sleep(POLL_S)


def leave(target: Target, address: str, deadline_s: float) -> list[str]:
    """``address`` has left the cluster of ``target`` (its servers are gone): once the Sentinels of the
    other hosts agree on a master (after a failover, when the master was there), reset each, one at a
    time, until it knows the others and the master's replicas again. Sentinels that do not answer
    are passed over (a cluster being destroyed answers nowhere). The Sentinels reset."""
    others = [a for a in target.cluster.members if a != address]
    answering = [a for a in others if _answers(target, a)]
    if not answering:
        return []
    give_up = time.monotonic() + deadline_s
    staying = dataclasses.replace(target, cluster=dataclasses.replace(target.cluster, members=tuple(answering)))
    master = agreed_master(staying, deadline_s)
    if master is None or master == address:
        raise ClusterNotReady(f"the Sentinels on {', '.join(answering)} did not agree on a master on another host "
                              f"than {address} within {deadline_s:.0f} s; nothing was reset")
    for sentinel_address in answering:
        with _sentinel(target, sentinel_address) as sentinel:
            sentinel.execute_command("SENTINEL", "RESET", target.cluster.master_name)
            while not _knows(sentinel, target.cluster.master_name, len(answering) - 1):
                if time.monotonic() >= give_up:
                    raise ClusterNotReady(f"the Sentinel on {sentinel_address} did not learn the other "
                                          f"{len(answering) - 1} Sentinels and replicas again within "
                                          f"{deadline_s:.0f} s of its reset")
                time.sleep(POLL_S)
    return answering


def remembered_by(target: Target, address: str) -> list[str]:
    """The answering Sentinels of ``target``'s other hosts that still know ``address``: as a Sentinel,
    a replica or the master (a host that left without :func:`leave`, or came back after it)."""
    knowing = []
    for sentinel_address in (a for a in target.cluster.members if a != address and _answers(target, a)):
        with _sentinel(target, sentinel_address) as sentinel:
            name = target.cluster.master_name
            known = [sentinel.sentinel_master(name), *sentinel.sentinel_sentinels(name),
                     *sentinel.sentinel_slaves(name)]
            if any(entry.get("ip") == address for entry in known):
                knowing.append(sentinel_address)
    return knowing


def _answers(target: Target, address: str) -> bool:
    try:
        with _sentinel(target, address) as sentinel:
            return bool(sentinel.ping())
    except redis.ConnectionError:
        return False


def _knows(sentinel: redis.Redis, name: str, others: int) -> bool:
    master = sentinel.sentinel_master(name)
    return master["num-other-sentinels"] == others and master["num-slaves"] == others
