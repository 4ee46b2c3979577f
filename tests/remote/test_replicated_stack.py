"""The replicated topology end to end (issue #27): a stack on three SSH-only Docker hosts on one LAN,
brought up by the real Pulumi engine, used by the ADR's kind of clients, and losing the leader's host
under a writer that records every acknowledged commit."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import psycopg
import pytest
from redis.sentinel import Sentinel

from infra.core import cluster
from infra.driver import stacks, teststacks
from tests.cluster_clients import Writer, leader_of, roles, whole
from tests.polling import until
from tests.remote_host import RemoteHostGroup

pytestmark = pytest.mark.e2e
IMAGE_ENV = {"patroniImage": "SIN_LOCAL_PATRONI_IMAGE", "etcdImage": "SIN_LOCAL_ETCD_IMAGE",
             "haproxyImage": "SIN_LOCAL_HAPROXY_IMAGE", "redisImage": "SIN_LOCAL_REDIS_IMAGE"}


def images() -> dict[str, str]:
    found = {key: os.environ.get(env, "") for key, env in IMAGE_ENV.items()}
    for key, image in found.items():
        if not image or subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            pytest.fail(f"{IMAGE_ENV[key]} names no local image: run the tests through scripts/test", pytrace=False)
    return found


@pytest.fixture(scope="module")
def three_hosts():
    group = RemoteHostGroup(3)
    try:
        group.start()
        for image in set(images().values()):
            group.load_image(image)
        yield group
    finally:
        group.close()


@pytest.fixture
def replicated_stack(three_hosts, tmp_path):
    """A replicated stack over the three hosts; destroyed and removed afterwards, failing or not."""
    settings = stacks.Settings(backend_url=f"file://{tmp_path / 'state'}", passphrase_file=tmp_path / "passphrase")
    config = {"topology": "replicated", "replicatedHosts": ",".join(h.docker_host for h in three_hosts),
              "dockerSshKeyFile": str(three_hosts.identity_file),
              "dockerSshKnownHostsFile": str(three_hosts.known_hosts_file),
              "retainVolumes": "false", "healthTimeoutSeconds": "240", **images()}
    stack = teststacks.create(settings, f"e2e-ha-{uuid.uuid4().hex[:6]}", config)
    try:
        yield stack
    finally:
        try:
            stack.destroy(color="never")
        finally:
            stack.workspace.remove_stack(stack.name, force=True)
            stacks.config_file(stack.name).unlink(missing_ok=True)
            teststacks.release(stack.name)


def connect_url(url: str) -> psycopg.Connection:
    """The multi-host URL as a client uses it; a failure without psycopg's frames (their arguments hold the URL)."""
    try:
        return psycopg.connect(url, connect_timeout=3, target_session_attrs="read-write", autocommit=True)
    except psycopg.Error as exc:
        raise psycopg.OperationalError(str(exc).strip().splitlines()[0]) from None


def patroni_log(host, stack: str) -> str:
    """The end of a member's Patroni and PostgreSQL log (both on its stderr), for a failure's report."""
    logs = subprocess.run(["docker", "logs", "--tail", "60", f"{stack}-patroni"], env=host.env, capture_output=True,
                          text=True, timeout=30)
    return logs.stdout + logs.stderr


def objects_on(host, stack: str) -> list[str]:
    found = []
    for listing in (["ps", "-a"], ["volume", "ls"]):
        found += host.docker(*listing, "--filter", f"label=sin-datastores.stack={stack}",
                             "--format", "{{.Names}}" if listing[0] == "ps" else "{{.Name}}").split()
    return found


# A client on the cut-off host: one INSERT on the leader's own address, its password on stdin.
LOCAL_INSERT = """
import sys, psycopg
try:
    with psycopg.connect(host=sys.argv[1], port=5432, user="sinadmin", dbname="sinsolver", password=sys.stdin.read(),
                         connect_timeout=3, autocommit=True) as conn:
        conn.execute("INSERT INTO acked (id) VALUES (-1)")
    print("acknowledged")
except psycopg.Error as exc:
    print("refused:", type(exc).__name__)
"""


def test_a_replicated_stack_comes_up_serves_its_clients_and_survives_losing_or_cutting_off_the_leader(
        three_hosts, replicated_stack):
    stack, addresses = replicated_stack, [h.address for h in three_hosts]
    started = time.monotonic()
    result = stack.up(color="never")
    took = time.monotonic() - started
    outputs = {k: v.value for k, v in result.outputs.items()}
    assert outputs["verificationChecks"] == 26, outputs["verificationChecks"]
    assert outputs["postgresEndpoints"] == [f"{a}:{cluster.HAPROXY_PRIMARY_PORT}" for a in addresses]
    assert outputs["sentinels"] == [f"{a}:{cluster.SENTINEL_PORT}" for a in addresses]
    for host in three_hosts:
        assert sorted(objects_on(host, stack.name)) == sorted(
            [f"{stack.name}-{role}" for role in cluster.ROLES]
            + [f"{stack.name}-{role}-data" for role in cluster.ROLES if role != "haproxy"])
    print(f"replicated stack up in {took:.1f} s")

    # The ADR's clients: PostgreSQL through an endpoint (psycopg also takes all three), Redis through Sentinel.
    config = stack.get_all_config()
    pg_password = config["sin-datastores:postgresPassword"].value
    with connect_url(outputs["postgresUrl"]) as conn:
        assert conn.execute("SELECT count(*) FROM services").fetchone() is not None
        conn.execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
    sentinels = Sentinel([(a, cluster.SENTINEL_PORT) for a in addresses], socket_timeout=2, sentinel_kwargs={
        "password": config["sin-datastores:sentinelPassword"].value, "socket_timeout": 2})
    master = sentinels.master_for(outputs["sentinelMasterName"], password=config["sin-datastores:redisPassword"].value,
                                  socket_timeout=2)
    master.set("sin:e2e", "1")
    assert master.get("sin:e2e") == b"1"

    # A second `up` with nothing changed changes nothing.
    assert set(stack.preview(color="never").change_summary) == {"same"}

    def connect(address: str, port: int) -> psycopg.Connection:
        """A client connection; a failure says where and why, without psycopg's frames (their
        arguments, which a test report shows, hold the password)."""
        try:
            return psycopg.connect(host=address, port=port, user="sinadmin", password=pg_password,
                                   dbname="sinsolver", connect_timeout=2, tcp_user_timeout=5000, autocommit=True)
        except psycopg.Error as exc:
            raise psycopg.OperationalError(f"{address}:{port}: {str(exc).strip().splitlines()[0]}") from None

    def fail_the_leader(fault: str) -> None:
        """The leader's host lost (its engine gone, every container at once) or cut off (its link
        down, everything on it running), under a writer; the writes come back on another member,
        no acknowledged commit is lost, and once the host is back it rejoins as a replica."""
        writer = Writer([(a, cluster.HAPROXY_PRIMARY_PORT) for a in addresses], connect)
        writer.start()
        until("the writer's first commits", lambda: len(writer.acknowledged) >= 20, 30)
        leader = leader_of(roles(addresses[0]))
        host = three_hosts[addresses.index(leader)]
        survivor = next(a for a in addresses if a != leader)
        failed_at = time.monotonic()
        local = None
        if fault == "lost":
            host.stop_engine()
        else:
            host.cut_link()
            local = host.run_in_namespace(["python", "-c", LOCAL_INSERT, leader], timeout_s=90, input=pg_password)
            print(f"local client on the cut-off leader: {local.stdout.strip()} after {time.monotonic() - failed_at:.1f} s")
        new_leader = until("a new leader", lambda: next(
            (a for a, (role, _) in roles(survivor).items() if role == "leader" and a != leader), None), 90)
        try:
            until("writes after the fault", lambda: writer.writing_again(failed_at), 90)
        except BaseException:
            now = time.monotonic()
            print(f"writer: {len(writer.acknowledged)} acknowledged, last {now - writer.acknowledged[-1][1]:.1f} s ago; "
                  f"{len(writer.failed_at)} failed, last {now - writer.failed_at[-1]:.1f} s ago; alive "
                  f"{writer.is_alive()}; next id {writer.next_id}; members {roles(survivor)}")
            for a in addresses:
                if a != leader:
                    print(a, patroni_log(three_hosts[addresses.index(a)], stack.name))
            raise
        redis_master = until("a new Redis master", lambda: (lambda found: found if found[0] != leader else None)(
            sentinels.discover_master(outputs["sentinelMasterName"])), 60)
        writer.stop.set()
        writer.join(30)
        print(f"leader {leader} {fault}: PostgreSQL writes back after {writer.back_after(failed_at):.1f} s on "
              f"{new_leader}; Redis master now {redis_master[0]}")
        if local is not None:
            assert local.stdout.startswith("refused:"), f"the cut-off leader acknowledged a write: {local.stdout!r}"
        with connect(new_leader, cluster.POSTGRES_PORT) as conn:
            stored = {row for (row,) in conn.execute("SELECT id FROM acked")}
        missing = writer.ids() - stored
        assert not missing, f"{len(missing)} acknowledged commits lost: {sorted(missing)[:10]}"

        host.start_engine() if fault == "lost" else host.restore_link()

        def rejoined() -> bool:
            """The old leader a replica again (after pg_rewind, when it had diverged), with every
            acknowledged commit and without the write its own client was refused."""
            with connect(leader, cluster.POSTGRES_PORT) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
                rows = {row for (row,) in conn.execute("SELECT id FROM acked")}
            return in_recovery and writer.ids() <= rows and -1 not in rows

        try:
            until("the old leader back as a replica with every acknowledged commit", rejoined, 180)
            found = until("the cluster whole again", whole(addresses, via=survivor), 60)
        except BaseException:
            print(patroni_log(host, stack.name))
            raise
        assert found[leader][0] in ("replica", "sync_standby")

    fail_the_leader("cut off")
    fail_the_leader("lost")

    stack.destroy(color="never")
    for host in three_hosts:
        assert objects_on(host, stack.name) == [], host.address
