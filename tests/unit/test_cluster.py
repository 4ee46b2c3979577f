"""The replicated topology's files, rendered from its members (infra.core.cluster)."""

from __future__ import annotations

import pytest
import yaml

from infra.core import cluster
from infra.core.cluster import ClusterSecrets, ClusterTiming, Member

SECRETS = ClusterSecrets(superuser="s" * 20, replication="r" * 20, patroni_rest="p" * 20,
                         redis="d" * 20, sentinel="t" * 20)
HOSTS = cluster.members(["10.9.0.2", "10.9.0.3", "10.9.0.4"])
FIRST, SECOND, THIRD = HOSTS


def test_member_names_follow_the_address_not_the_list_order():
    assert [m.name for m in HOSTS] == ["m10_9_0_2", "m10_9_0_3", "m10_9_0_4"]
    assert cluster.members(["10.9.0.4", "10.9.0.2"])[1].name == "m10_9_0_2"


def test_members_are_ipv4_addresses():
    with pytest.raises(ValueError):
        cluster.members(["10.9.0.2", "db1.example"])


def test_an_etcd_member_listens_and_announces_its_own_address_and_knows_every_peer():
    args = cluster.etcd_command(HOSTS, SECOND, token="stack-a")
    flags = dict(zip(args[::2], args[1::2]))
    assert flags["--name"] == "m10_9_0_3"
    assert flags["--initial-advertise-peer-urls"] == "http://10.9.0.3:2380"
    assert flags["--advertise-client-urls"] == "http://10.9.0.3:2379"
    assert flags["--listen-client-urls"] == "http://10.9.0.3:2379,http://127.0.0.1:2379"
    assert flags["--initial-cluster"] == ("m10_9_0_2=http://10.9.0.2:2380,m10_9_0_3=http://10.9.0.3:2380,"
                                          "m10_9_0_4=http://10.9.0.4:2380")
    assert (flags["--initial-cluster-state"], flags["--initial-cluster-token"]) == ("new", "stack-a")
    assert dict(zip(*[iter(cluster.etcd_command(HOSTS, SECOND, "t", "existing"))] * 2))[
        "--initial-cluster-state"] == "existing"


def test_patroni_runs_synchronous_with_rewind_on_etcd_and_announces_its_host():
    config = yaml.safe_load(cluster.patroni_config(HOSTS, THIRD, scope="prod", superuser="sinadmin",
                                                   secrets=SECRETS))
    assert (config["scope"], config["name"]) == ("prod", "m10_9_0_4")
    assert config["etcd3"]["hosts"] == ["10.9.0.2:2379", "10.9.0.3:2379", "10.9.0.4:2379"]
    assert config["postgresql"]["connect_address"] == "10.9.0.4:5432"
    assert config["restapi"]["connect_address"] == "10.9.0.4:8008"
    dcs = config["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["postgresql"]["use_pg_rewind"] is True
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 2, 5)
    assert config["postgresql"]["authentication"] == {
        "superuser": {"username": "sinadmin", "password": "s" * 20},
        "replication": {"username": "replicator", "password": "r" * 20}}
    assert config["restapi"]["authentication"] == {"username": "patroni", "password": "p" * 20}
    assert [line for line in config["postgresql"]["pg_hba"] if " replication " in line] == [
        f"host replication replicator {source} scram-sha-256"
        for source in ("127.0.0.1/32", "10.9.0.2/32", "10.9.0.3/32", "10.9.0.4/32")]
    assert not any(" trust" in line for line in config["postgresql"]["pg_hba"])


def test_timing_patroni_would_change_is_refused():
    """Patroni raises a ttl below 20 to 20 and shortens loop_wait to keep loop_wait + 2 x retry_timeout <= ttl,
    a warning in its log only: the timing rendered must be the timing that runs."""
    with pytest.raises(ValueError, match="exceeds ttl 20 s"):
        ClusterTiming(ttl_s=20, loop_wait_s=2, retry_timeout_s=10)
    for name, below in (("ttl_s", 19), ("loop_wait_s", 0), ("retry_timeout_s", 2)):
        with pytest.raises(ValueError, match=f"{name} {below} is below Patroni's minimum"):
            ClusterTiming(**{name: below})
    assert ClusterTiming(ttl_s=20, loop_wait_s=1, retry_timeout_s=3).ttl_s == 20


def test_the_rendered_timing_is_the_timing_patroni_runs():
    dcs = yaml.safe_load(cluster.patroni_config(HOSTS, FIRST, "s", "sinadmin", SECRETS))["bootstrap"]["dcs"]
    assert dcs["ttl"] >= 20 and dcs["loop_wait"] >= 1 and dcs["retry_timeout"] >= 3
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]


def test_haproxy_routes_to_whoever_answers_primary_and_cuts_a_demoted_leaders_sessions():
    text = cluster.haproxy_config(HOSTS, FIRST)
    assert "bind 10.9.0.2:5000" in text and "bind 127.0.0.1:5000" in text
    assert "http-check send meth OPTIONS uri /primary" in text and "http-check expect status 200" in text
    assert "on-marked-down shutdown-sessions" in text
    assert [line.split()[1:3] for line in text.splitlines() if line.strip().startswith("server ")] == [
        ["m10_9_0_2", "10.9.0.2:5432"], ["m10_9_0_3", "10.9.0.3:5432"], ["m10_9_0_4", "10.9.0.4:5432"]]


def test_redis_starts_the_first_member_as_master_and_the_others_as_its_replicas():
    first, second = (cluster.redis_config(HOSTS, m, SECRETS) for m in (FIRST, SECOND))
    assert "replicaof" not in first
    assert "replicaof 10.9.0.2 6379" in second
    for text in (first, second):
        assert f"requirepass {'d' * 20}" in text and f"masterauth {'d' * 20}" in text
        assert "min-replicas-to-write 1" in text and "appendonly yes" in text
        assert "repl-diskless-sync-delay 0" in text  # a new master takes writes once a replica is synced
    assert "bind 10.9.0.3 127.0.0.1" in second and "replica-announce-ip 10.9.0.3" in second


@pytest.mark.parametrize("count, quorum", [(3, 2), (5, 3)])
def test_sentinels_watch_the_first_member_with_a_majority_quorum(count, quorum):
    hosts = cluster.members([f"10.9.0.{n}" for n in range(2, 2 + count)])
    text = cluster.sentinel_config(hosts, hosts[1], SECRETS)
    assert f"sentinel monitor sin-redis 10.9.0.2 6379 {quorum}" in text.splitlines()
    assert f"sentinel auth-pass sin-redis {'d' * 20}" in text
    assert f"requirepass {'t' * 20}" in text and f"sentinel sentinel-pass {'t' * 20}" in text
    assert "sentinel announce-ip 10.9.0.3" in text
    # Sentinel refuses options for a master it does not monitor yet.
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("sentinel ") and "sin-redis" in line][2:] == [
        "sentinel down-after-milliseconds sin-redis 4000", "sentinel failover-timeout sin-redis 30000",
        "sentinel parallel-syncs sin-redis 1"]
    assert lines.index(next(l for l in lines if l.startswith("sentinel monitor"))) < lines.index(
        next(l for l in lines if l.startswith("sentinel auth-pass")))


def test_no_password_shows_in_the_reprs():
    assert "s" * 20 not in repr(SECRETS) and "t" * 20 not in repr(SECRETS)


def test_each_member_runs_five_servers_and_redis_and_sentinel_seed_a_writable_file_once():
    servers = {s.role: s for s in cluster.servers(HOSTS, SECOND, "prod", "sinadmin", SECRETS, 512, 256)}
    assert list(servers) == ["etcd", "patroni", "haproxy", "redis", "sentinel"]
    assert servers["sentinel"].image == "redis" and servers["patroni"].image == "patroni"
    assert (servers["patroni"].memory_mb, servers["redis"].memory_mb) == (512, 256)
    assert servers["haproxy"].data_path is None and servers["redis"].data_path == "/data"
    sh, flag, script, name, *args = servers["sentinel"].command
    assert (sh, flag, name, args) == ("sh", "-c", "sh", ["/data/sentinel.conf", "--sentinel"])
    assert script == ('test -f /data/sentinel.conf || install -m 600 /run/secrets/sentinel.conf /data/sentinel.conf; '
                      'exec docker-entrypoint.sh "$@"')
    assert list(servers["sentinel"].files) == ["/run/secrets/sentinel.conf"]
    for server in servers.values():
        assert not any(secret in " ".join(server.command) for secret in ("s" * 20, "d" * 20, "t" * 20))


def test_redis_takes_maxmemory_from_its_command_line_at_every_start_not_from_the_file_seeded_once():
    """A changed redisMemoryMb replaces the containers, whose Redis reads the file of its first start:
    only the command line tells it the new limit (three quarters of the container's)."""
    for memory_mb, maxmemory in ((256, "192mb"), (320, "240mb")):
        servers = cluster.servers(HOSTS, SECOND, "prod", "sinadmin", SECRETS, 512, memory_mb)
        redis = next(s for s in servers if s.role == "redis")
        assert redis.command[-4:] == ("sh", "/data/redis.conf", "--maxmemory", maxmemory)
        assert redis.memory_mb == memory_mb
        assert "maxmemory " not in redis.files["/run/secrets/redis.conf"]
        assert "maxmemory-policy noeviction" in redis.files["/run/secrets/redis.conf"]


def test_a_change_reaches_the_primary_last_and_a_new_cluster_goes_in_list_order():
    assert cluster.rolling_order(HOSTS, "10.9.0.2") == (SECOND, THIRD, FIRST)
    assert cluster.rolling_order(HOSTS, "10.9.0.3") == (FIRST, THIRD, SECOND)
    assert cluster.rolling_order(HOSTS, None) == HOSTS
    assert cluster.rolling_order(HOSTS, "10.9.0.99") == HOSTS, "a primary outside the list changes nothing"


def test_hosts_joining_a_running_cluster_come_after_the_primary():
    fourth = Member("10.9.0.5")
    grown = (*HOSTS, fourth)
    assert cluster.rolling_order(grown, "10.9.0.2", frozenset({"10.9.0.5"})) == (SECOND, THIRD, FIRST, fourth)
    assert cluster.rolling_order(grown, "10.9.0.5", frozenset()) == (FIRST, SECOND, THIRD, fourth)
    assert cluster.rolling_order((FIRST, fourth, SECOND), None, frozenset({"10.9.0.5"})) == (FIRST, SECOND, fourth)


def test_etcd_runs_on_the_first_three_hosts_and_every_member_knows_those_three():
    """A fourth and fifth host run Patroni, HAProxy, Redis and Sentinel, and no etcd; the files name
    the three etcd hosts, and every host for replication and the Sentinels' majority."""
    grown = cluster.members(["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"])
    assert cluster.etcd_hosts(grown) == HOSTS
    for me in grown:
        servers = {s.role: s for s in cluster.servers(grown, me, "prod", "sinadmin", SECRETS, 512, 256)}
        assert ("etcd" in servers) == (me in HOSTS), me
        patroni = yaml.safe_load(servers["patroni"].files[cluster.PATRONI_CONFIG_FILE])
        assert patroni["etcd3"]["hosts"] == ["10.9.0.2:2379", "10.9.0.3:2379", "10.9.0.4:2379"]
        assert f"host replication replicator {me.address}/32 scram-sha-256" in patroni["postgresql"]["pg_hba"]
        assert "host replication replicator 10.9.0.6/32 scram-sha-256" in patroni["postgresql"]["pg_hba"]
        assert "sentinel monitor sin-redis 10.9.0.2 6379 3\n" in servers["sentinel"].files[cluster.SENTINEL_SEED_FILE]
    flags = dict(zip(*[iter(cluster.etcd_command(grown, SECOND, "prod"))] * 2))
    assert flags["--initial-cluster"] == cluster.etcd_command(HOSTS, SECOND, "prod")[13]
    assert [cluster.sentinel_quorum(n) for n in (3, 4, 5)] == [2, 3, 3]
    assert cluster.etcd_hosts(HOSTS[:2]) == HOSTS[:2]


def test_patroni_follows_the_leader_redis_and_sentinel_the_master_the_rest_nothing():
    primaries = cluster.Primaries(postgres="10.9.0.3", redis="10.9.0.4")
    assert [primaries.of(role) for role in cluster.ROLES] == [None, "10.9.0.3", None, "10.9.0.4", "10.9.0.4"]


def test_the_data_servers_health_reads_the_password_from_the_upload_and_names_none():
    """Redis and Sentinel read the password from their uploaded seed file (the copy in the volume is
    rewritten with it quoted); Patroni's REST API and etcd read without one. HAProxy has no health
    check (it keeps nothing, restarts at once): `up` does not wait for it."""
    servers = {s.role: s for s in cluster.servers(HOSTS, SECOND, "prod", "sinadmin", SECRETS, 512, 256)}
    assert servers["haproxy"].health is None
    assert servers["etcd"].health.startswith("etcdctl --endpoints=http://127.0.0.1:2379 ")
    assert servers["etcd"].health.endswith(" endpoint health")
    assert "http://10.9.0.3:8008/patroni" in servers["patroni"].health
    assert "sed -n 's/^requirepass //p' /run/secrets/redis.conf" in servers["redis"].health
    assert "sed -n 's/^requirepass //p' /run/secrets/sentinel.conf" in servers["sentinel"].health
    assert "-p 26379 ping" in servers["sentinel"].health
    for server in servers.values():
        assert not any(secret in (server.health or "") for secret in ("s" * 20, "p" * 20, "d" * 20, "t" * 20))


def test_an_etcd_member_created_beside_a_running_etcd_joins_it_and_its_arguments_only_seed_it():
    """Its data directory holds the members once it started: a later list (an etcd host moved) must not
    replace the running members' containers, and a member created while etcd runs joins the cluster."""
    def etcd(running):
        return {s.role: s for s in cluster.servers(HOSTS, THIRD, "prod", "sinadmin", SECRETS, 512, 256,
                                                   etcd_running=running)}["etcd"]

    new, joining = etcd(False), etcd(True)
    assert dict(zip(new.command[::2], new.command[1::2]))["--initial-cluster-state"] == "new"
    assert dict(zip(joining.command[::2], joining.command[1::2]))["--initial-cluster-state"] == "existing"
    assert new.command_at_creation_only and joining.command_at_creation_only
    others = cluster.servers(HOSTS, THIRD, "prod", "sinadmin", SECRETS, 512, 256, etcd_running=True)
    assert [s.role for s in others if s.command_at_creation_only] == ["etcd"]


class ProbedEngine:
    """An engine whose host holds ``held`` (address:port): answers the bind probe's container as Docker would."""

    def __init__(self, containers=(), volumes=(), held=(), image=True):
        self._containers, self._volumes, self.held, self.image = list(containers), list(volumes), held, image
        self.calls: list[tuple[str, str, object]] = []

    def containers(self):
        return self._containers

    def volumes(self):
        return self._volumes

    def has_image(self, name):
        return self.image

    def request(self, method, path, body=None):
        self.calls.append((method, path, body))
        if path.startswith("/containers/create"):
            self.probe = body
            return 201, {"Id": "probe"}
        if path.endswith("/logs?stdout=1"):
            return 200, "".join(f"\x01\x00\x00\x00\x00\x00\x00\x30taken {w} Address already in use\n"
                                for w in self.probe["Cmd"] if w in self.held)
        return 204, None


def test_a_new_member_is_refused_what_its_host_already_holds_and_the_probe_is_removed():
    from infra.core import conflicts

    engine = ProbedEngine(
        containers=[{"Names": ["/prod-etcd"], "Labels": {}}, {"Names": ["/other"], "Labels": {}}],
        volumes=[{"Name": "prod-redis-data", "Labels": {"sin-datastores.stack": "staging"}},
                 {"Name": "prod-patroni-data", "Labels": {"sin-datastores.stack": "prod"}}],
        held={"10.9.0.3:5432", "127.0.0.1:6379"})
    found = conflicts.member_conflicts(engine, "prod", "sin-datastores", SECOND, "patroni:x", True)
    assert found == [
        "container name prod-etcd (etcd): taken by a container not made by this stack",
        "volume name prod-redis-data (redis): taken by a volume made by stack 'staging' of sin-datastores",
        "port 10.9.0.3:5432 (patroni): something on the host listens there (`ss -ltnp 'sport = :5432'` on that "
        "host names it)",
        "port 127.0.0.1:6379 (redis): something on the host listens there (`ss -ltnp 'sport = :6379'` on that "
        "host names it)"]
    assert engine.probe["HostConfig"] == {"NetworkMode": "host"} and engine.probe["Image"] == "patroni:x"
    assert sorted(engine.probe["Cmd"]) == sorted(f"{a}:{p}" for _, a, p in cluster.listening(SECOND))
    assert engine.calls[-1][0] == "DELETE" and "force=1&v=1" in engine.calls[-1][1]


def test_a_new_member_after_the_third_host_is_refused_nothing_of_etcd_it_will_not_run():
    from infra.core import conflicts

    fourth = Member("10.9.0.5")
    engine = ProbedEngine(containers=[{"Names": ["/prod-etcd"], "Labels": {}}],
                          volumes=[{"Name": "prod-etcd-data", "Labels": {}}], held={"10.9.0.5:2379", "10.9.0.5:8008"})
    found = conflicts.member_conflicts(engine, "prod", "sin-datastores", fourth, "patroni:x", False)
    assert found == ["port 10.9.0.5:8008 (patroni): something on the host listens there (`ss -ltnp 'sport = :8008'` "
                     "on that host names it)"]
    assert sorted(engine.probe["Cmd"]) == sorted(f"{a}:{p}" for _, a, p in cluster.listening(fourth, False))
    assert not any(role == "etcd" for role, _, _ in cluster.listening(fourth, False))


def test_the_volumes_a_departed_member_left_are_the_stacks_own_on_a_host_without_its_containers():
    from infra.core import conflicts

    volumes = [{"Name": "prod-redis-data", "Labels": {"sin-datastores.stack": "prod"}},
               {"Name": "prod-patroni-data", "Labels": {"sin-datastores.stack": "prod"}},
               {"Name": "prod-etcd-data", "Labels": {"sin-datastores.stack": "staging"}}, {"Name": "other"}]
    assert conflicts.left_volumes(ProbedEngine(volumes=volumes), "prod") == ["prod-patroni-data", "prod-redis-data"]
    running = ProbedEngine(containers=[{"Names": ["/prod-redis"], "Labels": {"sin-datastores.stack": "prod"}}],
                           volumes=volumes)
    assert conflicts.left_volumes(running, "prod") == [], "a member there holds its own volumes"


def test_a_host_where_the_stack_runs_or_without_the_probe_image_is_not_probed():
    from infra.core import conflicts

    running = ProbedEngine(containers=[{"Names": [f"/prod-{role}"], "Labels": {"sin-datastores.stack": "prod"}}
                                       for role in cluster.ROLES], held={"10.9.0.3:5432"})
    assert conflicts.member_conflicts(running, "prod", "sin-datastores", SECOND, "patroni:x", True) == []
    assert not any(path.startswith("/containers/create") for _, path, _ in running.calls)
    bare = ProbedEngine(held={"10.9.0.3:5432"}, image=False)
    assert conflicts.member_conflicts(bare, "prod", "sin-datastores", SECOND, "patroni:x", True) == []
    assert not any(path.startswith("/containers/create") for _, path, _ in bare.calls)


def test_a_member_taking_an_etcd_hosts_place_is_refused_what_would_keep_its_new_etcd_from_starting():
    """Its other servers run and hold their own names and ports; etcd's are probed. The stack's own volume
    is no conflict (a run that failed after the container's delete keeps it for the next)."""
    from infra.core import conflicts

    engine = ProbedEngine(
        containers=[{"Names": [f"/prod-{role}"], "Labels": {"sin-datastores.stack": "prod"}}
                    for role in ("patroni", "haproxy", "redis", "sentinel")],
        volumes=[{"Name": "prod-etcd-data", "Labels": {"sin-datastores.stack": "staging"}},
                 {"Name": "prod-patroni-data", "Labels": {"sin-datastores.stack": "prod"}}],
        held={"10.9.0.4:2380", "10.9.0.4:5432"})
    found = conflicts.member_conflicts(engine, "prod", "sin-datastores", THIRD, "patroni:x", True)
    assert found == [
        "volume name prod-etcd-data (etcd): taken by a volume made by stack 'staging' of sin-datastores",
        "port 10.9.0.4:2380 (etcd): something on the host listens there (`ss -ltnp 'sport = :2380'` on that "
        "host names it)"]
    engine._volumes[0]["Labels"] = {"sin-datastores.stack": "prod"}
    assert conflicts.member_conflicts(engine, "prod", "sin-datastores", THIRD, "patroni:x", True) == [
        found[1]]
    assert sorted(engine.probe["Cmd"]) == sorted(f"{a}:{p}" for role, a, p in cluster.listening(THIRD)
                                                 if role == "etcd")
    assert conflicts.member_conflicts(engine, "prod", "sin-datastores", THIRD, "patroni:x", False) == []


def test_every_socket_a_member_listens_on_is_in_what_the_probe_binds():
    """The rendered files and arguments against :func:`cluster.listening`."""
    sockets = {(a, p) for _, a, p in cluster.listening(SECOND)}
    servers = {s.role: s for s in cluster.servers(HOSTS, SECOND, "prod", "sinadmin", SECRETS, 512, 256)}
    patroni = yaml.safe_load(servers["patroni"].files[cluster.PATRONI_CONFIG_FILE])
    assert ("10.9.0.3", 8008) in sockets and patroni["restapi"]["listen"] == "10.9.0.3:8008"
    assert {(a, 5432) for a in patroni["postgresql"]["listen"].split(":")[0].split(",")} <= sockets
    flags = dict(zip(servers["etcd"].command[::2], servers["etcd"].command[1::2]))
    for url in flags["--listen-client-urls"].split(",") + [flags["--listen-peer-urls"]]:
        host, port = url.removeprefix("http://").split(":")
        assert (host, int(port)) in sockets, url
    for role, port in (("redis", 6379), ("sentinel", 26379)):
        text = next(iter(servers[role].files.values()))
        bound = next(line for line in text.splitlines() if line.startswith("bind ")).split()[1:]
        assert {(a, port) for a in bound} <= sockets, role
    haproxy = servers["haproxy"].files[cluster.HAPROXY_CONFIG_FILE]
    for line in haproxy.splitlines():
        if line.strip().startswith("bind "):
            host, port = line.split()[1].split(":")
            assert (host, int(port)) in sockets, line


def test_etcd_and_haproxy_roll_only_on_a_running_cluster():
    """A member of a new etcd cluster is healthy only once a majority has started: they start together.
    HAProxy's endpoints are replaced one after the other once clients use them."""
    servers = {s.role: s for s in cluster.servers(HOSTS, SECOND, "prod", "sinadmin", SECRETS, 512, 256)}
    running, new = cluster.Primaries("10.9.0.2", "10.9.0.2"), cluster.Primaries()
    assert [cluster.one_at_a_time(servers[r], running) for r in cluster.ROLES] == [True, True, True, True, True]
    assert [cluster.one_at_a_time(servers[r], new) for r in cluster.ROLES] == [False, True, False, True, True]
