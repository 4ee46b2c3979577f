"""The post-deploy step's part for the replicated topology. Plain Python, no Pulumi.

Where the services are right now (the Patroni leader behind the first HAProxy that answers, the
Redis master the Sentinels name), the ADR's database (Patroni's bootstrap makes only
``postgres``), and the cluster's own checks: one leader, every replica streaming, a
synchronous standby, the lag, the Sentinels agreeing with quorum, the master's replicas.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from typing import Callable, Optional, Sequence

import redis
from psycopg import sql

from infra.core.cluster import REDIS_MIN_REPLICAS_MAX_LAG_S, Primaries
from infra.core.connect import connect_postgres, connect_redis
from infra.core.errors import OperationFailed
from infra.core.report import Check
from infra.core.targets import ClusterTarget, PostgresTarget, Target

MAINTENANCE_DB = "postgres"
# A replica further behind than this is reported (Patroni's maximum_lag_on_failover is the same).
MAX_LAG_BYTES = 1 << 20
REST_TIMEOUT_S = 2.0
POLL_S = 0.5


class ClusterNotReady(OperationFailed):
    """The cluster did not reach the state the step needs within its deadline; says what it saw."""


@dataclasses.dataclass(frozen=True)
class ClusterState:
    """What Patroni and the Sentinels say, read once."""

    patroni: list[dict]
    """Patroni's /cluster members (name, host, role, state, lag), as the first member that answers sees them."""
    masters: dict[str, Optional[str]]
    """Each Sentinel's master address (None: it did not answer)."""
    quorum: dict[str, bool]
    master_replicas: int
    """Replicas on the listed hosts of the master the first answering Sentinel names that it counts
    for taking writes (online, acknowledged within min-replicas-max-lag); -1: unknown."""

    def among(self, members: Sequence[str]) -> "ClusterState":
        """This reading with Patroni's members on the listed hosts only: a host taken off the list runs
        until the end of the `up` that removes it (its containers go last)."""
        return dataclasses.replace(self, patroni=[m for m in self.patroni if m.get("host") in members])

    @property
    def leaders(self) -> list[str]:
        return [m["host"] for m in self.patroni if m.get("role") == "leader"]

    @property
    def replicas(self) -> list[dict]:
        return [m for m in self.patroni if m.get("role") != "leader"]

    @property
    def master(self) -> Optional[str]:
        agreed = {address for address in self.masters.values() if address}
        return agreed.pop() if len(agreed) == 1 else None


def patroni_members(cluster: ClusterTarget) -> list[dict]:
    """Patroni's view of the cluster from the first member whose REST API answers."""
    last: Exception = OperationFailed("no member listed")
    for address in cluster.members:
        try:
            url = f"http://{address}:{cluster.patroni_rest_port}/cluster"
            with urllib.request.urlopen(url, timeout=REST_TIMEOUT_S) as reply:
                return json.load(reply).get("members") or []
        except (OSError, ValueError) as exc:
            last = exc
    raise OperationFailed(f"no Patroni REST API answered on {', '.join(cluster.members)}: {last}")


def sentinel(cluster: ClusterTarget, address: str) -> redis.Redis:
    """A client of the Sentinel on ``address``, with the step's short timeouts."""
    return redis.Redis(host=address, port=cluster.sentinel_port, password=cluster.sentinel_password,
                       socket_connect_timeout=REST_TIMEOUT_S, socket_timeout=REST_TIMEOUT_S, decode_responses=True)


def read_state(cluster: ClusterTarget, redis_port: int, redis_password: str) -> ClusterState:
    try:
        patroni = patroni_members(cluster)
    except OperationFailed:
        patroni = []
    masters: dict[str, Optional[str]] = {}
    quorum: dict[str, bool] = {}
    for address in cluster.members:
        try:
            with sentinel(cluster, address) as client:
                found = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", cluster.master_name)
                masters[address] = found[0] if found else None
                try:
                    quorum[address] = bool(client.execute_command("SENTINEL", "CKQUORUM", cluster.master_name))
                except redis.ResponseError:
                    quorum[address] = False
        except redis.RedisError:
            masters[address], quorum[address] = None, False
    replicas = -1
    master = next((m for m in masters.values() if m), None)
    if master:
        try:
            with redis.Redis(host=master, port=redis_port, password=redis_password,
                             socket_connect_timeout=REST_TIMEOUT_S, socket_timeout=REST_TIMEOUT_S) as client:
                replicas = good_replicas(client.info("replication"), cluster.members)
        except redis.RedisError:
            pass
    return ClusterState(patroni, masters, quorum, replicas)


def good_replicas(info: dict, members: Sequence[str]) -> int:
    """The replicas on ``members`` a master counts for ``min-replicas-to-write``, from its INFO
    replication: online (a replica still copying the master's data is connected but not online; the
    master refuses writes with NOREPLICAS meanwhile) and heard from within the lag it allows; -1 if
    not a master."""
    if info.get("role") != "master":
        return -1
    return sum(1 for key, replica in info.items()
               if key.startswith("slave") and isinstance(replica, dict) and replica.get("state") == "online"
               and replica.get("ip") in members and int(replica.get("lag", 0)) <= REDIS_MIN_REPLICAS_MAX_LAG_S)


def problems(state: ClusterState, members: Sequence[str]) -> list[str]:
    """Why the cluster of ``members`` is not whole; empty when it is."""
    state = state.among(members)
    found, size = [], len(members)
    if len(state.leaders) != 1:
        found.append(f"Patroni leaders: {state.leaders or 'none'} (one expected)")
    if len(state.patroni) != size:
        listed = {m.get("host") for m in state.patroni}
        absent = [a for a in members if a not in listed]
        found.append(f"Patroni members: {len(state.patroni)} of {size}"
                     + (f" ({', '.join(absent)} absent)" if absent else ""))
    not_streaming = [m["host"] for m in state.replicas if m.get("state") != "streaming"]
    if not_streaming:
        found.append(f"replicas not streaming: {', '.join(not_streaming)}")
    lagging = [m["host"] for m in state.replicas if not _caught_up(m)]
    if lagging:
        found.append(f"replicas more than {MAX_LAG_BYTES} bytes behind: {', '.join(lagging)}")
    if not any(m.get("role") == "sync_standby" for m in state.replicas):
        found.append("no synchronous standby")
    if state.master is None:
        found.append(f"the Sentinels do not agree on a master: {state.masters}")
    if not all(state.quorum.values()):
        found.append(f"Sentinels without quorum: {', '.join(a for a, ok in state.quorum.items() if not ok)}")
    if state.master_replicas != size - 1:
        found.append(f"Redis master has {state.master_replicas} of {size - 1} replicas online")
    return found


def _caught_up(member: dict) -> bool:
    return isinstance(member.get("lag"), int) and member["lag"] <= MAX_LAG_BYTES


Reader = Callable[[ClusterTarget, int, str], ClusterState]


def settled(target: Target, deadline_s: float, read: Reader = read_state) -> tuple[ClusterState, list[str]]:
    """The first reading of a whole cluster (a new one bootstraps and copies its replicas, a replica
    catches up after the migrations), or the last one at the deadline with what it lacks."""
    cluster = target.cluster
    give_up = time.monotonic() + deadline_s
    while True:
        state = read(cluster, target.redis.port, target.redis.password)
        missing = problems(state, cluster.members)
        if not missing or time.monotonic() >= give_up:
            return state, missing
        time.sleep(POLL_S)


def wait_until_whole(target: Target, deadline_s: float, read: Reader = read_state) -> ClusterState:
    """The state once every member is in place; :class:`ClusterNotReady` with what is missing at the deadline."""
    state, missing = settled(target, deadline_s, read)
    if missing:
        raise ClusterNotReady(f"the replicated cluster is not whole after {deadline_s:.0f} s: " + "; ".join(missing))
    return state


def resolve(target: Target, state: ClusterState) -> Target:
    """``target`` with PostgreSQL through the endpoint on the leader's host (a host that is up) and
    Redis on the master the Sentinels agree on; each stays where it was when ``state`` names none."""
    postgres, redis_target = target.postgres, target.redis
    if len(state.leaders) == 1:
        postgres = dataclasses.replace(postgres, host=state.leaders[0])
    if state.master:
        redis_target = dataclasses.replace(redis_target, host=state.master)
    return dataclasses.replace(target, postgres=postgres, redis=redis_target)


def with_redis_on(target: Target, address: str, deadline_s: float) -> Target:
    """``target`` with Redis read on the member at ``address`` (a command on that host copies its
    files), once it holds every write the master had acknowledged when this was called."""
    if address == target.redis.host:
        return target
    member = dataclasses.replace(target.redis, host=address)
    with connect_redis(target.redis) as master:
        acknowledged = int(master.info("replication")["master_repl_offset"])
    give_up = time.monotonic() + deadline_s
    with connect_redis(member) as replica:
        while int(replica.info("replication").get("slave_repl_offset", -1)) < acknowledged:
            if time.monotonic() >= give_up:
                raise ClusterNotReady(f"the Redis replica on {address} did not catch up with the master on "
                                      f"{target.redis.host} within {deadline_s:.0f} s")
            time.sleep(POLL_S)
    return dataclasses.replace(target, redis=member)


def ensure_database(target: PostgresTarget, deadline_s: float) -> bool:
    """Create the configured database on the leader when it is missing; True when it was created."""
    maintenance = dataclasses.replace(target, database=MAINTENANCE_DB)
    with connect_postgres(maintenance, deadline_s) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
        return True


def checks(target: Target, deadline_s: float, read: Reader = read_state) -> list[Check]:
    """The cluster's checks, from the reading :func:`settled` ends with."""
    started = time.perf_counter()
    state, _ = settled(target, deadline_s, read)
    state = state.among(target.cluster.members)
    size = len(target.cluster.members)
    latency_ms = (time.perf_counter() - started) * 1000

    def check(name: str, ok: bool, observed: str, expected: str) -> Check:
        return Check(name, ok, observed, expected, latency_ms)

    lags = {m["host"]: m.get("lag") for m in state.replicas}
    worst = max((lag for lag in lags.values() if isinstance(lag, int)), default=0)
    sync = [m["host"] for m in state.replicas if m.get("role") == "sync_standby"]
    return [
        check("cluster.leader", len(state.leaders) == 1, ", ".join(state.leaders) or "none", "one leader"),
        check("cluster.replicas_streaming", all(m.get("state") == "streaming" for m in state.replicas)
              and len(state.replicas) == size - 1,
              ", ".join(f"{m['host']} {m.get('state')}" for m in state.replicas), f"{size - 1} streaming"),
        check("cluster.synchronous_standby", bool(sync), ", ".join(sync) or "none", "at least one"),
        check("cluster.replication_lag", len(lags) == size - 1 and all(_caught_up(m) for m in state.replicas),
              f"{worst} bytes at most", f"<= {MAX_LAG_BYTES} bytes"),
        check("cluster.sentinels_agree", state.master is not None and all(state.quorum.values()),
              f"master {state.master or 'disputed'}, quorum on {sum(state.quorum.values())} of {size}",
              "one master, quorum on every Sentinel"),
        check("cluster.redis_replicas", state.master_replicas == size - 1, str(state.master_replicas),
              str(size - 1)),
    ]


def primaries(target: Target, read: Reader = read_state) -> Primaries:
    """Where the cluster takes writes now: the one Patroni leader (on a host the list no longer has,
    the synchronous standby, which the switchover off that host promotes) and the master the
    Sentinels agree on; None for each where there is no cluster yet or no single answer. And
    Patroni's members."""
    state = read(target.cluster, target.redis.port, target.redis.password)
    leader = state.leaders[0] if len(state.leaders) == 1 else None
    if leader not in (None, *target.cluster.members):
        leader = next((m["host"] for m in state.replicas if m.get("role") == "sync_standby"), None)
    return Primaries(leader, state.master, frozenset(m["host"] for m in state.patroni if m.get("host")))
