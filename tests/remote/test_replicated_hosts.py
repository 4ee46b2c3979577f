"""Growing and shrinking a replicated stack (issue #27): a fourth host added to the list gets a
PostgreSQL replica that catches up, a Redis replica of the master and a Sentinel the others count;
taken off again (while it leads PostgreSQL), it leaves Patroni, the Sentinels and its replication slot
cleanly, the others healthy; etcd keeps its three members on the first three hosts throughout. One of
the first three taken off the list leaves etcd too, and the fourth takes its etcd member; one lost for
good is forgotten, etcd's member with it, and the host listed in its place joins etcd. Under a writer,
no acknowledged commit or write is lost. A list that would move etcd otherwise is refused. A host after
the third lost for good is forgotten and `up` goes on with the others."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request

import pytest
import redis
from pulumi import automation as auto

from infra.core import cluster
from infra.driver import stacks
from tests import replicated_stacks
from tests.cluster_clients import leader_of, roles, whole
from tests.e2e.support import cli, resource_steps, volume_steps
from tests.polling import until
from tests.replicated_stacks import objects_on

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def four_hosts():
    with replicated_stacks.hosts_with_images(4) as group:
        yield group


def etcd_members(host, stack: str) -> list[str]:
    """The etcd members as the member on ``host`` lists them: their peer URLs."""
    listed = host.docker("exec", cluster.container_name(stack, "etcd"), "etcdctl", "--write-out=json",
                         f"--endpoints=http://127.0.0.1:{cluster.ETCD_CLIENT_PORT}", "member", "list")
    return sorted(url for member in json.loads(listed)["members"] for url in member["peerURLs"])


def sentinel_views(addresses: list[str], password: str) -> dict[str, tuple]:
    """Each Sentinel's master, how many other Sentinels and replicas it knows, and its quorum."""
    views = {}
    for address in addresses:
        with redis.Redis(host=address, port=cluster.SENTINEL_PORT, password=password, socket_timeout=2) as sentinel:
            master = sentinel.sentinel_master(cluster.SENTINEL_MASTER_NAME)
            views[address] = (master["ip"], master["num-other-sentinels"], master["num-slaves"], master["quorum"])
    return views


def settled_sentinels(addresses: list[str], password: str):
    """A check: the Sentinels of ``addresses`` agree on a master among them, each knowing all the others,
    every other host as a replica, and the majority's quorum."""
    def check():
        views = sentinel_views(addresses, password)
        size = len(addresses)
        wanted = {(views[addresses[0]][0], size - 1, size - 1, cluster.sentinel_quorum(size))}
        if set(views.values()) == wanted and views[addresses[0]][0] in addresses:
            return views
        raise AssertionError(f"Sentinels: {views}")
    return check


def patroni_rest(address: str, path: str, body: dict, password: str, method: str = "POST") -> None:
    """A request to Patroni's REST API that needs its password."""
    request = urllib.request.Request(
        f"http://{address}:{cluster.PATRONI_REST_PORT}/{path}", data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(
            f"{cluster.PATRONI_REST_USER}:{password}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200, reply.read()


def switchover_to(address: str, addresses: list[str], password: str) -> None:
    """A switchover to ``address``, whichever member is the synchronous standby: Patroni takes only that
    one as candidate in synchronous mode, so the mode is off for the switchover."""
    leader = leader_of(whole(addresses)())
    patroni_rest(leader, "config", {"synchronous_mode": False}, password, "PATCH")
    try:
        until("no synchronous standby", lambda: "sync_standby" not in {r for r, _ in roles(leader).values()}, 60)
        patroni_rest(leader, "switchover", {"leader": "m" + leader.replace(".", "_"),
                                            "candidate": "m" + address.replace(".", "_")}, password)
    finally:
        patroni_rest(address, "config", {"synchronous_mode": True}, password, "PATCH")
    until(f"{address} leading a whole cluster", lambda: leader_of(whole(addresses)()) == address, 60)


def fail_redis_over_to(address: str, addresses: list[str], password: str, sentinel_password: str) -> None:
    """A Sentinel failover that promotes ``address``: the other replicas are made unpromotable for it."""
    def client(host: str, port: int, secret: str) -> redis.Redis:
        return redis.Redis(host=host, port=port, password=secret, socket_timeout=5, decode_responses=True)

    def master() -> str:
        return client(addresses[0], cluster.SENTINEL_PORT, sentinel_password).sentinel_get_master_addr_by_name(
            cluster.SENTINEL_MASTER_NAME)[0]

    if master() == address:
        return
    others = [a for a in addresses if a not in (address, master())]
    sentinel = client(addresses[0], cluster.SENTINEL_PORT, sentinel_password)
    for other in others:
        client(other, cluster.REDIS_PORT, password).config_set("replica-priority", 0)
    try:
        # The Sentinel reads the priorities at its replicas' next INFO (every 10 s).
        until("the Sentinel seeing the priorities", lambda: {
            r["ip"]: r["slave-priority"] for r in sentinel.sentinel_slaves(cluster.SENTINEL_MASTER_NAME)
            if r["ip"] != master()} == {**{a: 0 for a in others}, address: 100}, 60)
        sentinel.execute_command("SENTINEL", "FAILOVER", cluster.SENTINEL_MASTER_NAME)
        until(f"the Redis master on {address}", lambda: master() == address, 60)
    finally:
        for other in others:
            client(other, cluster.REDIS_PORT, password).config_set("replica-priority", 100)
    # A forced failover leaves the former master taking writes until a Sentinel converts it (its next
    # INFO, up to 10 s): settled, every other server replicates from the new master, online.
    def settled():
        info = client(address, cluster.REDIS_PORT, password).info("replication")
        online = [k for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                  and v.get("state") == "online"]
        return len(online) == len(addresses) - 1
    until(f"every replica online with the master on {address}", settled, 60)
    until("the Sentinels settled", settled_sentinels(addresses, sentinel_password), 60)


def test_a_host_is_added_and_removed_under_load_keeping_every_acknowledged_write(four_hosts, tmp_path):
    hosts = list(four_hosts)
    addresses = [h.address for h in hosts]
    three, fourth = addresses[:3], addresses[3]
    urls = [h.docker_host for h in hosts]
    with replicated_stacks.replicated_stack(four_hosts, tmp_path, "e2e-ha-grow") as stack:
        stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(",".join(urls[:3])))
        stack.up(color="never")
        assert objects_on(hosts[3], stack.name) == [], "the fourth host is not in the list yet"
        secrets = {key: stack.get_config(f"sin-datastores:{key}").value
                   for key in ("postgresPassword", "redisPassword", "sentinelPassword", "patroniRestPassword")}
        connect = replicated_stacks.postgres_connector(secrets["postgresPassword"])
        with connect(three[0], cluster.HAPROXY_PRIMARY_PORT) as conn:
            conn.execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
            conn.execute("INSERT INTO acked SELECT generate_series(-5000, -1)")  # for the new replica to copy
        peers = etcd_members(hosts[0], stack.name)
        assert peers == sorted(f"http://{a}:{cluster.ETCD_PEER_PORT}" for a in three)
        sentinels = replicated_stacks.sentinel_client(stack, three)

        # Added: preview shows the fourth host's servers created and no volume replaced or deleted.
        stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(",".join(urls)))
        previewed = stack.preview(color="never")
        assert previewed.change_summary.get("delete", 0) == 0, previewed.change_summary
        assert previewed.change_summary.get("create", 0) >= 4 + 4 + 1, previewed.change_summary
        pg_writer, redis_writer = replicated_stacks.start_writers(stack, sentinels, three, connect, 1, "grow")
        result, began, report = replicated_stacks.up_while_writing(stack, pg_writer, redis_writer, "a host added")
        assert result.outputs["verificationChecks"].value == 26, report
        replicated_stacks.nothing_lost(connect, fourth, pg_writer, redis_writer, report)
        members = until("four members", whole(addresses), 60)
        assert members[fourth][1] == "streaming", members
        assert sorted(objects_on(hosts[3], stack.name)) == sorted(
            [cluster.container_name(stack.name, r) for r in ("patroni", "haproxy", "redis", "sentinel")]
            + [f"{cluster.container_name(stack.name, r)}-data" for r in ("patroni", "redis", "sentinel")]), \
            "etcd runs on the first three hosts only"
        assert etcd_members(hosts[0], stack.name) == peers
        with connect(fourth, 5432) as replica:  # the new replica, read directly: it has the old rows
            assert replica.execute("SELECT count(*) FROM acked WHERE id < 0").fetchone()[0] == 5000
        until("four Sentinels settled", settled_sentinels(addresses, secrets["sentinelPassword"]), 60)
        assert result.outputs["sentinels"].value == [f"{a}:{cluster.SENTINEL_PORT}" for a in addresses]
        assert set(stack.preview(color="never").change_summary) == {"same"}

        # Removed while it leads PostgreSQL and holds the Redis master: `up` moves both off it first.
        if leader_of(members) != fourth:
            switchover_to(fourth, addresses, secrets["patroniRestPassword"])
        fail_redis_over_to(fourth, addresses, secrets["redisPassword"], secrets["sentinelPassword"])
        pg_writer, redis_writer = replicated_stacks.start_writers(stack, sentinels, three, connect,
                                                                  pg_writer.next_id, "shrink")
        stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(",".join(urls[:3])))
        result, began, report = replicated_stacks.up_while_writing(stack, pg_writer, redis_writer, "a host removed")
        assert result.outputs["verificationChecks"].value == 26, report
        replicated_stacks.nothing_lost(connect, three[1], pg_writer, redis_writer, report)
        assert objects_on(hosts[3], stack.name) == [], "the removed host keeps a container or volume"
        members = until("three members", whole(three), 60)
        with connect(leader_of(members), 5432) as conn:
            slots = dict(conn.execute("SELECT slot_name, active FROM pg_replication_slots").fetchall())
        # Patroni 4 keeps a departed member's slot, inactive, for member_slots_ttl (30 min), then drops it.
        assert {name for name, active in slots.items() if active} == {
            "m" + a.replace(".", "_") for a in three if a != leader_of(members)}, slots
        assert set(slots) - {name for name, active in slots.items() if active} <= {"m" + fourth.replace(".", "_")}
        # Forgotten by the Sentinels at once (reset one at a time), not after Sentinel's own hours.
        views = settled_sentinels(three, secrets["sentinelPassword"])()
        assert views[three[0]][0] != fourth, views
        assert etcd_members(hosts[0], stack.name) == peers
        assert set(stack.preview(color="never").change_summary) == {"same"}

        # A list that would move etcd otherwise (a host added before the third, which stays on the list):
        # refused before anything is touched.
        running = {h.address: h.docker("ps", "-q", "--no-trunc").split() for h in hosts}
        stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(
            ",".join([urls[0], urls[3], urls[1], urls[2]])))
        with pytest.raises(auto.CommandError) as refused:
            stack.preview(color="never")
        assert (f"whose first 3 would run etcd, but etcd's members are on {', '.join(sorted(three))}, so nothing "
                f"was previewed or changed on any host: etcd moves one host per `up`") in str(refused.value)
        assert {h.address: h.docker("ps", "-q", "--no-trunc").split() for h in hosts} == running
        stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(",".join(urls[:3])))


def forget_leftovers(host, stack: str) -> None:
    """What a stack left on a host it forgot (its engine back): removed, so that nothing of it rejoins."""
    host.heal()
    left = objects_on(host, stack)
    containers = [name for name in left if not name.endswith(("-data", "-archive"))]
    if containers:
        host.docker("rm", "-f", *containers)
    if len(left) > len(containers):
        host.docker("volume", "rm", *[name for name in left if name not in containers])


def test_etcd_moves_off_an_etcd_host_taken_off_the_list_and_off_one_lost_for_good(four_hosts, tmp_path):
    """Four hosts. The third, which runs etcd, is taken off the list under a writer: its servers stop, its
    etcd member is removed and the fourth host's added before that host's etcd starts; the first two's etcd
    containers are kept (their arguments only seeded them). The moved member counts: with the first host's
    etcd stopped, etcd still takes a write through it. Then the first host is lost for good: `forget-host`
    removes its etcd member too, and the third host, listed again in its place, joins with etcd."""
    hosts = list(four_hosts)
    addresses = [h.address for h in hosts]
    staying = [addresses[0], addresses[1], addresses[3]]
    leaving = addresses[2]
    settings = replicated_stacks.settings(tmp_path)
    with replicated_stacks.replicated_stack(four_hosts, tmp_path, "e2e-ha-etcd") as stack:
        stack.up(color="never")
        secrets = {key: stack.get_config(f"sin-datastores:{key}").value
                   for key in ("postgresPassword", "redisPassword", "sentinelPassword", "patroniRestPassword",
                               "replicationPassword")}
        connect = replicated_stacks.postgres_connector(secrets["postgresPassword"])
        until("four members", whole(addresses), 120)
        assert etcd_members(hosts[0], stack.name) == sorted(
            f"http://{a}:{cluster.ETCD_PEER_PORT}" for a in addresses[:3])
        with connect(addresses[0], cluster.HAPROXY_PRIMARY_PORT) as conn:
            conn.execute("CREATE TABLE acked (id bigint PRIMARY KEY)")

        stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(
            ",".join(hosts[i].docker_host for i in (0, 1, 3))))
        events: list = []
        stack.preview(color="never", on_event=events.append)
        containers = {name: op for (_, name), op in resource_steps(events, {"docker:index/container:Container"}).items()
                      if name.endswith("-etcd")}
        member = {a: f"member-m{a.replace('.', '_')}" for a in addresses}
        assert containers == {f"{member[addresses[0]]}-etcd": "same", f"{member[addresses[1]]}-etcd": "same",
                              f"{member[leaving]}-etcd": "delete", f"{member[addresses[3]]}-etcd": "create"}
        kept = {name: op for name, op in volume_steps(events).items() if not name.startswith(member[leaving])}
        assert kept == {**{f"{member[a]}-{role}-data": "same" for a in staying for role in (
            "patroni", "redis", "sentinel")}, **{f"{member[a]}-etcd-data": "same" for a in staying[:2]},
            f"{member[addresses[3]]}-etcd-data": "create"}

        sentinels = replicated_stacks.sentinel_client(stack, staying)
        pg_writer, redis_writer = replicated_stacks.start_writers(stack, sentinels, staying[:2], connect, 1, "etcd")
        result, began, report = replicated_stacks.up_while_writing(stack, pg_writer, redis_writer, "etcd moved")
        assert result.outputs["verificationChecks"].value == 26, report
        replicated_stacks.nothing_lost(connect, staying[0], pg_writer, redis_writer, report)
        assert objects_on(hosts[2], stack.name) == [], "the removed host keeps a container or volume"
        peers = sorted(f"http://{a}:{cluster.ETCD_PEER_PORT}" for a in staying)
        assert etcd_members(hosts[0], stack.name) == peers
        assert etcd_members(hosts[3], stack.name) == peers
        until("three members", whole(staying), 60)
        until("three Sentinels settled", settled_sentinels(staying, secrets["sentinelPassword"]), 60)
        assert set(stack.preview(color="never").change_summary) == {"same"}

        # The moved member counts in etcd's majority: the first host's etcd stopped, a write still commits.
        etcd = cluster.container_name(stack.name, "etcd")
        hosts[0].docker("stop", etcd)
        try:
            hosts[3].docker("exec", etcd, "etcdctl", f"--endpoints=http://127.0.0.1:{cluster.ETCD_CLIENT_PORT}",
                            "--command-timeout=10s", "put", "/e2e/moved", "counted")
        finally:
            hosts[0].docker("start", etcd)
        shown = cli(settings, "status", "--stack", stack.name, timeout_s=120)
        assert shown.returncode == 0, shown.stdout + shown.stderr

        # The first host lost for good (link, then engine): the others fail over; it is taken off the list and
        # forgotten, the third host listed in its place (an etcd host again), and `up` has it join.
        with connect(staying[0], cluster.HAPROXY_PRIMARY_PORT) as conn:
            rows = conn.execute("SELECT count(*) FROM acked").fetchone()[0]
        try:
            hosts[0].cut_link()
            hosts[0].stop_engine()
            survivors = staying[1:]
            until("a leader and a replica on the two others", whole(survivors), 120)
            replaced = [addresses[1], addresses[3], addresses[2]]
            stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(
                ",".join(hosts[i].docker_host for i in (1, 3, 2))))
            forgotten = cli(settings, "forget-host", "--stack", stack.name, "--host", addresses[0], timeout_s=600)
            assert forgotten.returncode == 0, forgotten.stdout + forgotten.stderr
            assert not [v for v in secrets.values() if v in forgotten.stdout + forgotten.stderr], "a secret printed"
            print(f"forget-host said:\n{forgotten.stderr}")
            assert f"etcd: the member on {addresses[0]} removed" in forgotten.stderr
            assert etcd_members(hosts[1], stack.name) == sorted(
                f"http://{a}:{cluster.ETCD_PEER_PORT}" for a in survivors)
            # `status` (on the members of the last `up`) names etcd's two members until `up` adds the third.
            shown = cli(settings, "status", "--stack", stack.name, timeout_s=120)
            assert shown.returncode == 1, shown.stdout + shown.stderr
            assert f"problem: etcd members: {', '.join(sorted(survivors))}, the list's first hosts: " in shown.stdout
            result = stack.up(color="never")
            assert result.outputs["verificationChecks"].value == 26
            assert result.outputs["sentinels"].value == [f"{a}:{cluster.SENTINEL_PORT}" for a in replaced]
            peers = sorted(f"http://{a}:{cluster.ETCD_PEER_PORT}" for a in replaced)
            assert etcd_members(hosts[2], stack.name) == peers
            members = until("three members", whole(replaced), 60)
            with connect(leader_of(members), cluster.HAPROXY_PRIMARY_PORT) as conn:
                assert conn.execute("SELECT count(*) FROM acked").fetchone()[0] == rows
            until("three Sentinels settled", settled_sentinels(replaced, secrets["sentinelPassword"]), 60)
            shown = cli(settings, "status", "--stack", stack.name, timeout_s=120)
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert set(stack.preview(color="never").change_summary) == {"same"}
        finally:
            forget_leftovers(hosts[0], stack.name)


def test_a_host_gone_for_good_is_forgotten_without_reaching_it_and_up_goes_on_with_the_others(four_hosts, tmp_path):
    """The fourth host, leading PostgreSQL and holding the Redis master, is lost for good (engine and link):
    taken off the list, `pulumi preview` cannot get past its refresh; `forget-host` drops it from the state
    without reaching it and the Sentinels forget it; `up` then changes the other three only, keeping their
    volumes and data."""
    hosts = list(four_hosts)
    addresses = [h.address for h in hosts]
    three, gone = addresses[:3], addresses[3]
    settings = replicated_stacks.settings(tmp_path)
    with replicated_stacks.replicated_stack(four_hosts, tmp_path, "e2e-ha-gone") as stack:
        try:
            stack.up(color="never")
            secrets = {key: stack.get_config(f"sin-datastores:{key}").value for key in (
                "postgresPassword", "redisPassword", "sentinelPassword", "patroniRestPassword", "replicationPassword")}
            connect = replicated_stacks.postgres_connector(secrets["postgresPassword"])
            until("four members", whole(addresses), 120)
            switchover_to(gone, addresses, secrets["patroniRestPassword"])
            fail_redis_over_to(gone, addresses, secrets["redisPassword"], secrets["sentinelPassword"])
            with connect(gone, cluster.HAPROXY_PRIMARY_PORT) as conn:
                conn.execute("CREATE TABLE kept (id bigint PRIMARY KEY)")
                conn.execute("INSERT INTO kept SELECT generate_series(1, 1000)")
            with redis.Redis(host=gone, port=cluster.REDIS_PORT, password=secrets["redisPassword"]) as master:
                master.set("kept", "before the loss")
                assert master.wait(3, 10_000) == 3

            def forget() -> subprocess.CompletedProcess:
                done = cli(settings, "forget-host", "--stack", stack.name, "--host", gone, timeout_s=600)
                assert not [s for s in secrets.values() if s in done.stdout + done.stderr], "a secret was printed"
                return done

            # Refused while it is in the list, and while it answers with the stack's containers: nothing changed.
            refused = forget()
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert f"{gone} is still in replicatedHosts of stack '{stack.name}'" in refused.stderr
            stack.set_config("sin-datastores:replicatedHosts", auto.ConfigValue(
                ",".join(h.docker_host for h in hosts[:3])))
            state = stacks.exported_deployment(stack)
            refused = forget()
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert f"{gone} answers and runs the stack's {stack.name}-haproxy" in refused.stderr
            assert stacks.exported_deployment(stack) == state

            # Lost for good: the others fail over; the refresh of its resources cannot reach it.
            hosts[3].stop_engine()
            hosts[3].cut_link()
            until("a leader and two members on the three", whole(three), 120)
            with pytest.raises(auto.CommandError) as blocked:
                stack.preview(color="never")
            assert gone in str(blocked.value)
            forgotten = forget()
            assert forgotten.returncode == 0, forgotten.stdout + forgotten.stderr
            print(f"forget-host said:\n{forgotten.stderr}")
            dropped = [r["urn"] for r in state["resources"] if f"m{gone.replace('.', '_')}" in r["urn"]]
            assert f"dropped {len(dropped)} resources of {gone} from the state of stack '{stack.name}' (nothing " \
                   f"was done on the host: its engine cannot be reached)" in forgotten.stderr, forgotten.stderr
            assert not [r for r in stacks.exported_deployment(stack)["resources"] if r["urn"] in dropped]
            until("three Sentinels settled", settled_sentinels(three, secrets["sentinelPassword"]), 60)

            # `up` goes on with the three: nothing deleted, their data volumes and data kept.
            events: list = []
            previewed = stack.preview(color="never", on_event=events.append)
            assert previewed.change_summary.get("delete", 0) == 0, previewed.change_summary
            kept = {f"member-m{a.replace('.', '_')}-{role}-data": "same" for a in three for role in (
                "patroni", "redis", "sentinel")} | {f"member-m{a.replace('.', '_')}-etcd-data": "same" for a in three}
            assert volume_steps(events) == kept
            events.clear()
            result = stack.up(color="never", on_event=events.append)
            assert result.outputs["verificationChecks"].value == 26
            assert result.outputs["sentinels"].value == [f"{a}:{cluster.SENTINEL_PORT}" for a in three]
            assert volume_steps(events) == kept
            members = until("three members", whole(three), 60)
            with connect(leader_of(members), cluster.HAPROXY_PRIMARY_PORT) as conn:
                assert conn.execute("SELECT count(*) FROM kept").fetchone()[0] == 1000
            master_address = settled_sentinels(three, secrets["sentinelPassword"])()[three[0]][0]
            with redis.Redis(host=master_address, port=cluster.REDIS_PORT, password=secrets["redisPassword"]) as m:
                assert m.get("kept") == b"before the loss"
            shown = cli(settings, "status", "--stack", stack.name, timeout_s=120)
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert set(stack.preview(color="never").change_summary) == {"same"}
        finally:
            forget_leftovers(hosts[3], stack.name)
