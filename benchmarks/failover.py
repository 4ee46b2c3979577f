"""How long a replicated stack's clients wait when the leader's host dies, beside a planned switchover.

Three SSH-only Docker hosts on one LAN (the tests' remote-host harness), a replicated stack on them,
a PostgreSQL writer through the HAProxy endpoints (each acknowledged commit recorded) and a Redis
writer through Sentinel (each acknowledged RPUSH recorded). ROUNDS rounds (env SIN_BENCH_ROUNDS,
at least 5 for the issue's figures):
  baseline   when PostgreSQL's leader and Redis' master are on different hosts, a planned Patroni
             switchover moves the leader to the Redis master's host (so the next fault takes both);
             the writers' outage is timed: what a leader change costs without any timeout.
  power cut  that host's link cut and its engine killed at once (no process is told anything); timed
             until each writer is acknowledged again; then every acknowledged commit is looked for
             on the new leader and every acknowledged Redis write on the new master. The host is
             then powered back and the cluster waited for until whole (the old leader a replica).
Targets (issue #27): PostgreSQL back within 15 s median, 30 s worst, 0 acknowledged commits lost;
Redis back within 10 s, the writes lost stated.
Run: scripts/bench failover
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from infra.core import cluster
from tests import replicated_stacks
from tests.cluster_clients import PostgresWriter, RedisWriter, leader_of, roles, whole
from tests.polling import until

ROUNDS = int(os.environ.get("SIN_BENCH_ROUNDS", "5"))
WRITES_BEFORE_FAULT = 50


def member_name(address: str) -> str:
    return cluster.members([address])[0].name


def start_writers(stack, addresses, connect, sentinels, master_name: str, round_no: int):
    with connect(addresses[0], cluster.HAPROXY_PRIMARY_PORT) as conn:
        (first_id,) = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM acked").fetchone()
    pg = PostgresWriter([(a, cluster.HAPROXY_PRIMARY_PORT) for a in addresses], connect, first_id)
    rd = RedisWriter(replicated_stacks.redis_master(stack, sentinels, master_name), f"sin:bench:failover:{round_no}")
    for writer in (pg, rd):
        writer.start()
    until("both writers' first writes",
          lambda: min(len(pg.acknowledged), len(rd.acknowledged)) >= WRITES_BEFORE_FAULT, 60)
    return pg, rd


def stop(*writers) -> None:
    for writer in writers:
        writer.stop.set()
        writer.join(30)


def switchover(hosts, addresses, stack, leader: str, candidate: str) -> None:
    """A planned switchover as an operator runs it (patronictl reads its REST password from the config)."""
    hosts[addresses.index(leader)].docker(
        "exec", f"{stack.name}-patroni", "patronictl", "-c", "/run/patroni/patroni.yml", "switchover",
        "--leader", member_name(leader), "--candidate", member_name(candidate), "--force")


def one_round(round_no: int, hosts, addresses, stack, connect, sentinels, master_name: str) -> dict:
    until("the cluster whole", whole(addresses), 240)
    figures: dict = {}
    pg, rd = start_writers(stack, addresses, connect, sentinels, master_name, round_no)
    leader, redis_host = leader_of(roles(addresses[0])), sentinels.discover_master(master_name)[0]
    if leader != redis_host:
        moment = time.monotonic()
        switchover(hosts, addresses, stack, leader, redis_host)
        until("writes after the switchover", lambda: pg.writing_again(moment), 60)
        figures["switchover_pg_s"] = pg.back_after(moment)
        leader = redis_host
        stop(pg, rd)
        until("the cluster whole after the switchover", whole(addresses), 120)
        pg, rd = start_writers(stack, addresses, connect, sentinels, master_name, round_no)
    host = hosts[addresses.index(leader)]
    moment = time.monotonic()
    host.cut_link()
    host.stop_engine()
    until("PostgreSQL writes after the power cut", lambda: pg.writing_again(moment), 120)
    until("Redis writes after the power cut", lambda: rd.writing_again(moment), 120)
    stop(pg, rd)
    figures["pg_s"], figures["redis_s"] = pg.back_after(moment), rd.back_after(moment)
    figures["pg_outage"], figures["redis_outage"] = pg.outage(moment), rd.outage(moment)
    new_leader = leader_of(roles(next(a for a in addresses if a != leader)))
    with connect(new_leader, cluster.POSTGRES_PORT) as conn:
        stored = {row for (row,) in conn.execute("SELECT id FROM acked WHERE id >= %s", (min(pg.ids()),))}
    figures["pg_lost"] = len(pg.ids() - stored)
    figures["redis_lost"], figures["redis_acked"] = len(rd.lost()), len(rd.acknowledged)
    host.start_engine()
    host.restore_link()
    started = time.monotonic()
    until("the cluster whole after the power is back", whole(addresses, via=new_leader), 300)
    figures["rejoin_s"] = time.monotonic() - started
    base = f" (switchover before it: writes back after {figures['switchover_pg_s']:.1f} s)" \
        if "switchover_pg_s" in figures else ""
    print(f"round {round_no}: power cut of {leader}: PostgreSQL writes back after {figures['pg_s']:.1f} s on "
          f"{new_leader}, {figures['pg_lost']} acknowledged commits lost; Redis back after {figures['redis_s']:.1f} s, "
          f"{figures['redis_lost']} of {figures['redis_acked']} acknowledged writes lost; whole again "
          f"{figures['rejoin_s']:.0f} s after power back{base}\n  PostgreSQL failures: {figures['pg_outage']}\n"
          f"  Redis failures: {figures['redis_outage']}", flush=True)
    return figures


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s, min {min(values):.1f}, max {max(values):.1f} (n={len(values)})"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sin-bench-failover-") as state, \
            replicated_stacks.hosts_with_images(3) as hosts, \
            replicated_stacks.replicated_stack(hosts, Path(state), "bench-ha") as stack:
        addresses = [h.address for h in hosts]
        started = time.monotonic()
        outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
        print(f"replicated stack up in {time.monotonic() - started:.1f} s; timing {cluster.ClusterTiming()}",
              flush=True)
        connect = replicated_stacks.postgres_connector(stack.get_config("sin-datastores:postgresPassword").value)
        with connect(addresses[0], cluster.HAPROXY_PRIMARY_PORT) as conn:
            conn.execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        sentinels = replicated_stacks.sentinel_client(stack, addresses)
        rounds = [one_round(n, hosts, addresses, stack, connect, sentinels, outputs["sentinelMasterName"])
                  for n in range(1, ROUNDS + 1)]
    switchovers = [r["switchover_pg_s"] for r in rounds if "switchover_pg_s" in r]
    print(f"\nPostgreSQL writes back after a power cut of the leader's host: {spread([r['pg_s'] for r in rounds])}"
          f" (target: median <= 15 s, max <= 30 s)")
    if switchovers:
        print(f"  baseline, a planned switchover: {spread(switchovers)}")
    print(f"  acknowledged commits lost: {sum(r['pg_lost'] for r in rounds)} (target 0)")
    print(f"Redis writes back after the same power cuts: {spread([r['redis_s'] for r in rounds])} (target <= 10 s)")
    print(f"  acknowledged writes lost: {[r['redis_lost'] for r in rounds]} per round, of "
          f"{[r['redis_acked'] for r in rounds]} acknowledged")
    print(f"Whole again after the power is back: {spread([r['rejoin_s'] for r in rounds])}")


if __name__ == "__main__":
    main()
