"""A planned change to a replicated stack (issue #27): one that replaces PostgreSQL's and Redis' containers on
every host goes one host at a time, the primaries' hosts last, each server healthy again before the next
stops, while the ADR's kind of clients write; every acknowledged write is kept. The same for every
password rotated. An etcd host swapped for another in one run is refused (hosts come and go one per run:
test_replicated_hosts.py)."""

from __future__ import annotations

import base64
import subprocess
import urllib.error
import urllib.request
import uuid

import psycopg
import pytest
import redis
from pulumi import automation as auto

from infra.core import cluster
from tests import replicated_stacks
from tests.cluster_clients import PostgresWriter, RedisWriter, Secret, leader_of, whole
from tests.polling import until
from tests.replicated_stacks import local_images, objects_on

pytestmark = pytest.mark.e2e


def rest_answer(address: str, password: str) -> int:
    """What Patroni's REST API answers to a request that needs its password (a reload of its file)."""
    request = urllib.request.Request(f"http://{address}:{cluster.PATRONI_REST_PORT}/reload", data=b"", method="POST",
                                     headers={"Authorization": "Basic " + base64.b64encode(
                                         f"{cluster.PATRONI_REST_USER}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def redis_takes(address: str, port: int, password: str) -> bool:
    try:
        redis.Redis(host=address, port=port, password=password, socket_connect_timeout=2).ping()
        return True
    except redis.AuthenticationError:
        return False


def rotates_every_password_under_load(hosts, stack, first_id: int) -> None:
    """Every password changed; the writers' application reads the new ones from its secret store as
    `up` starts. `up` sets them on the running servers, then rolls the containers; the previous ones are
    refused afterwards, and no acknowledged write is lost."""
    addresses = [h.address for h in hosts]
    keys = ("postgresPassword", "replicationPassword", "patroniRestPassword", "redisPassword", "sentinelPassword")
    old = {key: stack.get_config(f"sin-datastores:{key}").value for key in keys}
    new = {key: f"rotated-{key}-{uuid.uuid4().hex[:12]}" for key in keys}
    pg_password, redis_password, sentinel_password = (Secret(old[key]) for key in
                                                       ("postgresPassword", "redisPassword", "sentinelPassword"))
    connect = replicated_stacks.postgres_connector(pg_password)
    sentinels = replicated_stacks.sentinel_client(stack, addresses, sentinel_password)
    master_name = cluster.SENTINEL_MASTER_NAME
    pg_writer = PostgresWriter([(a, cluster.HAPROXY_PRIMARY_PORT) for a in addresses], connect, first_id)
    redis_writer = RedisWriter(replicated_stacks.redis_master(stack, sentinels, master_name, redis_password),
                               "rotation")
    for writer in (pg_writer, redis_writer):
        writer.start()
    until("both writers' first writes", lambda: min(len(pg_writer.acknowledged),
                                                     len(redis_writer.acknowledged)) >= 20, 30)
    for key, value in new.items():
        stack.set_config(f"sin-datastores:{key}", auto.ConfigValue(value, secret=True))
    previewed = stack.preview(color="never")
    assert previewed.change_summary.get("delete", 0) == 0, previewed.change_summary
    for secret, key in ((pg_password, "postgresPassword"), (redis_password, "redisPassword"),
                        (sentinel_password, "sentinelPassword")):
        secret.value = new[key]
    result, began, report = replicated_stacks.up_while_writing(stack, pg_writer, redis_writer, "rotation")
    said = result.stdout + result.stderr
    assert not any(value in said for value in (*old.values(), *new.values())), "a password in up's output"
    assert result.outputs["verificationChecks"].value == 26, report
    replicated_stacks.nothing_lost(connect, addresses[1], pg_writer, redis_writer, report)
    assert max(pg_writer.longest_gap(began), redis_writer.longest_gap(began)) < 10, report
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        replicated_stacks.postgres_connector(old["postgresPassword"])(addresses[0], cluster.HAPROXY_PRIMARY_PORT)
    for address in addresses:
        assert redis_takes(address, cluster.REDIS_PORT, new["redisPassword"]), address
        assert not redis_takes(address, cluster.REDIS_PORT, old["redisPassword"]), address
        assert redis_takes(address, cluster.SENTINEL_PORT, new["sentinelPassword"]), address
        assert not redis_takes(address, cluster.SENTINEL_PORT, old["sentinelPassword"]), address
        assert (rest_answer(address, new["patroniRestPassword"]),
                rest_answer(address, old["patroniRestPassword"])) == (202, 401), address
    # Every replica streams again after its Patroni restarted with the new replication password.
    until("a whole cluster after the rotation", whole(addresses), 60)
    assert set(stack.preview(color="never").change_summary) == {"same"}


def refuses_what_the_hosts_already_hold(hosts, stack) -> None:
    """Before a first `up`: a process listening on the third host's PostgreSQL port and a container with the
    second host's etcd name stop `preview` and `up`, each named with its host; nothing is created anywhere."""
    third, second = hosts[2], hosts[1]
    # It binds as servers do (SO_REUSEADDR): a test before this one may leave connections in TIME_WAIT there.
    listener = subprocess.Popen(["nsenter", f"--net={third.netns_path}", "--", "python3", "-c",
                                 f"import socket, time; s = socket.socket(); "
                                 f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                 f"s.bind(('{third.address}', 5432)); "
                                 f"s.listen(); print('listening', flush=True); time.sleep(600)"],
                                stdout=subprocess.PIPE, text=True)
    squatter = cluster.container_name(stack.name, "etcd")
    second.docker("create", "--name", squatter, local_images()["etcdImage"])
    before = {host.address: sorted(objects_on(host)) for host in hosts}
    try:
        assert listener.stdout.readline().strip() == "listening"
        for attempt in (stack.preview, stack.up):
            with pytest.raises(auto.CommandError) as refused:
                attempt(color="never")
            said = str(refused.value)
            assert "the hosts of the replicated cluster already have what its new members would take" in said, said
            assert (f"{third.docker_host}: port {third.address}:5432 (patroni): something on the host listens "
                    f"there") in said, said
            assert (f"{second.docker_host}: container name {squatter} (etcd): taken by a container not made by "
                    f"this stack") in said, said
        assert {host.address: sorted(objects_on(host)) for host in hosts} == before, \
            "the look left a container or a volume behind, or the run created one"
    finally:
        listener.kill()
        listener.wait()
        second.docker("rm", "-f", "-v", squatter)


def test_a_change_to_every_data_server_rolls_one_host_at_a_time_keeping_every_acknowledged_write(
        three_hosts, tmp_path):
    """First what the hosts already hold is refused; then a changed host list, before anything is
    touched; last, every password rotated under load."""
    addresses = [h.address for h in three_hosts]
    with replicated_stacks.replicated_stack(three_hosts, tmp_path, "e2e-ha-roll") as stack:
        refuses_what_the_hosts_already_hold(three_hosts, stack)
        stack.up(color="never")
        outputs = {k: v.value for k, v in stack.outputs().items()}
        connect = replicated_stacks.postgres_connector(stack.get_config("sin-datastores:postgresPassword").value)
        with connect(addresses[0], cluster.HAPROXY_PRIMARY_PORT) as conn:
            conn.execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        sentinels = replicated_stacks.sentinel_client(stack, addresses)
        master_name = outputs["sentinelMasterName"]
        # The first host bootstraps, so its primaries usually roll last: not in list order.
        leader = leader_of(until("a whole cluster", whole(addresses), 120))
        redis_master = sentinels.discover_master(master_name)[0]
        before = {(h.address, role): replicated_stacks.started(h, stack.name, role) for h in three_hosts
                  for role in ("patroni", "redis", "sentinel")}

        pg_writer, redis_writer = replicated_stacks.start_writers(stack, sentinels, addresses, connect, 1,
                                                                  "rolling")
        stack.set_config("sin-datastores:postgresMemoryMb", auto.ConfigValue("640"))
        stack.set_config("sin-datastores:redisMemoryMb", auto.ConfigValue("320"))
        result, began, report = replicated_stacks.up_while_writing(stack, pg_writer, redis_writer, "memory")
        assert result.outputs["verificationChecks"].value == 26, report
        replicated_stacks.nothing_lost(connect, addresses[1], pg_writer, redis_writer, report)

        # Every Redis runs with the new limit, though its own file (seeded at its first start) says the old.
        password = stack.get_config("sin-datastores:redisPassword").value
        for address in addresses:
            with redis.Redis(address, cluster.REDIS_PORT, password=password, socket_timeout=5) as member:
                assert member.config_get("maxmemory") == {"maxmemory": str(240 * 2**20)}, address

        # Both servers were replaced on every host (the Sentinels' settings did not change), one host after
        # the other, the primary's host last; no client waited as long as a failover takes (20 s and more).
        after = {(h.address, role): replicated_stacks.started(h, stack.name, role) for h in three_hosts
                 for role in ("patroni", "redis", "sentinel")}
        assert all(after[(a, role)] > before[(a, role)] for a in addresses for role in ("patroni", "redis")), after
        assert all(after[(a, "sentinel")] == before[(a, "sentinel")] for a in addresses), after
        assert max(pg_writer.longest_gap(began), redis_writer.longest_gap(began)) < 10, report
        for role, primary in (("patroni", leader), ("redis", redis_master)):
            order = sorted(addresses, key=lambda a: after[(a, role)])
            expected = [*(a for a in addresses if a != primary), primary]
            assert order == expected, f"{role} restarted in the order {order}, want {expected}; {report}"
        assert set(stack.preview(color="never").change_summary) == {"same"}
        until("a whole cluster after the change", whole(addresses), 60)

        # Lowered below what the master holds (60 MB of entries without a TTL): `preview` and `up` refuse it
        # before anything is declared, nothing touched.
        running = {h.address: h.docker("ps", "-q", "--no-trunc").split() for h in three_hosts}
        master = sentinels.discover_master(master_name)[0]
        with redis.Redis(master, cluster.REDIS_PORT, password=password, socket_timeout=30) as client:
            for batch in range(6):
                client.mset({f"rolling:queue:{batch}:{i}": b"q" * 10_000 for i in range(1_000)})
            stack.set_config("sin-datastores:redisMemoryMb", auto.ConfigValue("64"))
            for attempt in (stack.preview, stack.up):
                with pytest.raises(auto.CommandError) as refused:
                    attempt(color="never")
                assert f"redisMemoryMb 64: Redis {master}:{cluster.REDIS_PORT} holds 6" in str(refused.value)
            assert {h.address: h.docker("ps", "-q", "--no-trunc").split() for h in three_hosts} == running
            stack.set_config("sin-datastores:redisMemoryMb", auto.ConfigValue("320"))
            for batch in range(6):
                client.unlink(*(f"rolling:queue:{batch}:{i}" for i in range(1_000)))

        # An etcd host swapped for another (here one not set up, as such a host often is): refused, nothing touched.
        running = {h.address: h.docker("ps", "-q", "--no-trunc").split() for h in three_hosts}
        spare = addresses[2].rsplit(".", 1)[0] + ".250"
        hosts = [h.docker_host for h in three_hosts]
        stack.set_config("sin-datastores:replicatedHosts",
                         auto.ConfigValue(",".join([*hosts[:2], hosts[2].replace(addresses[2], spare)])))
        for attempt in (stack.preview, stack.up):
            with pytest.raises(auto.CommandError) as refused:
                attempt(color="never")
            assert (f"replicatedHosts adds {spare} and removes {addresses[2]} at once, so nothing was previewed "
                    f"or changed on any host: change one host per `up`") in str(refused.value)
        assert {h.address: h.docker("ps", "-q", "--no-trunc").split() for h in three_hosts} == running
        stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(",".join(hosts)))

        rotates_every_password_under_load(three_hosts, stack, pg_writer.next_id)
