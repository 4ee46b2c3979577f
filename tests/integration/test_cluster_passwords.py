"""Rotating a replicated cluster's passwords on its running servers (issue #27), against real
PostgreSQL 16, Redis 7 and a Redis 7 Sentinel watching it: each changed password set, the previous
one refused afterwards, both kept across a restart from the files the servers rewrote; a password
the servers refuse, or a server out of reach, changes nothing."""

from __future__ import annotations

import dataclasses
import time

import psycopg
import pytest
import redis

from infra.core.cluster import REPLICATION_USER, ClusterSecrets
from infra.core.targets import ClusterTarget, Target
from infra.deploy.rotation import RotationRefused, rotate
from infra.driver.teststacks import free_port
from tests.servers import RedisServer

MASTER = "sin-redis"
OLD = ClusterSecrets(superuser="superuser-old-password-01", replication="replication-old-password-1",
                     patroni_rest="patroni-rest-old-password", redis="redis-old-password-012345",
                     sentinel="sentinel-old-password-0123")
NEW = ClusterSecrets(superuser="superuser-new-password-01", replication="replication-new-password-1",
                     patroni_rest="patroni-rest-new-password", redis="redis-new-password-012345",
                     sentinel="sentinel-new-password-0123")
ADMIN = "rotation_admin"


@pytest.fixture
def servers(pg_server, pg_target):
    """A superuser and the replication role with the old passwords in the session's PostgreSQL (dropped
    afterwards), a Redis and a Sentinel watching it, both with the old passwords."""
    with pg_server.admin() as admin:
        admin.execute(f"CREATE ROLE {ADMIN} SUPERUSER LOGIN PASSWORD '{OLD.superuser}'")
        admin.execute(f"CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN PASSWORD '{OLD.replication}'")
    started = []
    try:
        master = RedisServer.start(password=OLD.redis, extra=[f"masterauth {OLD.redis}"])
        started.append(master)
        sentinel = RedisServer.start(password=OLD.sentinel, appendonly=False, sentinel=True, extra=[
            f"sentinel sentinel-pass {OLD.sentinel}", f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1",
            f"sentinel auth-pass {MASTER} {OLD.redis}"])
        started.append(sentinel)
        target = Target("itest", dataclasses.replace(pg_target, user=ADMIN, password=OLD.superuser),
                        master.target(),
                        cluster=ClusterTarget(("127.0.0.1",), 8008, sentinel.port, OLD.sentinel, MASTER))
        yield target, master, sentinel
    finally:
        for server in started:
            server.stop()
        with pg_server.admin() as admin:
            admin.execute(f"DROP ROLE IF EXISTS {ADMIN}")
            admin.execute(f"DROP ROLE IF EXISTS {REPLICATION_USER}")


def takes(target: Target, port: int, password: str, user: str = "") -> bool:
    """Whether the server on ``port`` (PostgreSQL: as ``user``) takes ``password``."""
    try:
        if user:
            psycopg.connect(host="127.0.0.1", port=port, dbname=target.postgres.database, user=user,
                            password=password, connect_timeout=3).close()
        else:
            redis.Redis(port=port, password=password, socket_connect_timeout=3).ping()
        return True
    except (psycopg.OperationalError, redis.AuthenticationError):
        return False


def accepted(target: Target, master: RedisServer, sentinel: RedisServer, secrets: ClusterSecrets) -> list[bool]:
    return [takes(target, target.postgres.port, secrets.superuser, ADMIN),
            takes(target, target.postgres.port, secrets.replication, REPLICATION_USER),
            takes(target, master.port, secrets.redis), takes(target, sentinel.port, secrets.sentinel)]


def sentinel_sees_master(sentinel: RedisServer, password: str) -> bool:
    """The Sentinel's pings of the master are answered (with a refused auth-pass they get NOAUTH, which
    does not count), asked after more than a ping interval (1 s)."""
    time.sleep(2)
    master = redis.Redis(port=sentinel.port, password=password, decode_responses=True).execute_command(
        "SENTINEL", "MASTER", MASTER)
    return int(master["last-ok-ping-reply"]) < 1500


def test_passwords_the_servers_take_change_nothing(servers):
    target, master, sentinel = servers
    assert rotate(target, OLD, None) == []
    assert rotate(target, OLD, OLD) == []
    assert accepted(target, master, sentinel, OLD) == [True] * 4


def test_every_changed_password_is_set_on_the_running_servers_and_kept_across_a_restart(servers):
    target, master, sentinel = servers
    assert rotate(target, NEW, OLD) == ["postgresPassword", "replicationPassword", "patroniRestPassword",
                                        "redisPassword", "sentinelPassword"]
    assert accepted(target, master, sentinel, NEW) == [True] * 4
    assert accepted(target, master, sentinel, OLD) == [False] * 4
    assert sentinel_sees_master(sentinel, NEW.sentinel)
    master.restart(NEW.redis)
    sentinel.restart(NEW.sentinel)
    assert accepted(target, master, sentinel, NEW)[2:] == [True, True]
    assert accepted(target, master, sentinel, OLD)[2:] == [False, False]
    assert sentinel_sees_master(sentinel, NEW.sentinel)
    # A run cut short after this leaves the state with the previous passwords: the next one finishes.
    assert rotate(target, NEW, OLD) == ["postgresPassword", "replicationPassword", "patroniRestPassword",
                                        "redisPassword", "sentinelPassword"]
    assert accepted(target, master, sentinel, NEW) == [True] * 4


@pytest.mark.parametrize("field, setting", [("redis", "redisPassword"), ("sentinel", "sentinelPassword")])
def test_one_changed_password_leaves_the_others_as_they_are(servers, field, setting):
    target, master, sentinel = servers
    one = dataclasses.replace(OLD, **{field: getattr(NEW, field)})
    assert rotate(target, one, OLD) == [setting]
    server = master if field == "redis" else sentinel
    server.restart(getattr(one, field))
    assert accepted(target, master, sentinel, one) == [True] * 4
    assert not takes(target, server.port, getattr(OLD, field))
    assert sentinel_sees_master(sentinel, one.sentinel)


@pytest.mark.parametrize("field, setting", [("superuser", "postgresPassword"), ("redis", "redisPassword"),
                                            ("sentinel", "sentinelPassword")])
def test_a_password_the_running_servers_refuse_changes_nothing(servers, field, setting):
    """Without a previous value (a new resource on a running cluster), or with one the servers do not
    take either (changed by hand): refused, naming the setting and never a password."""
    target, master, sentinel = servers
    wrong = dataclasses.replace(OLD, **{field: "not-the-clusters-password"})
    with pytest.raises(RotationRefused) as refused:
        rotate(target, wrong, None)
    assert f"refuses the configured {setting}, so nothing was changed on any host" in str(refused.value)
    assert f"set {setting} back to the cluster's" in str(refused.value)
    with pytest.raises(RotationRefused) as refused:
        rotate(target, NEW, wrong)
    assert f"refuses the configured {setting} and the previous one" in str(refused.value)
    for secrets in (OLD, NEW, wrong):
        assert not any(getattr(secrets, f.name) in str(refused.value) for f in dataclasses.fields(ClusterSecrets))
    assert accepted(target, master, sentinel, OLD) == [True] * 4


def test_servers_that_do_not_answer_are_a_new_cluster_but_stop_a_rotation(servers):
    target, master, sentinel = servers
    silent = dataclasses.replace(target, redis=dataclasses.replace(target.redis, port=free_port()))
    assert rotate(silent, OLD, None) == []
    with pytest.raises(RotationRefused) as refused:
        rotate(silent, dataclasses.replace(OLD, redis=NEW.redis), OLD)
    assert "does not answer, and changing redisPassword needs every one: nothing was changed" in str(refused.value)
    assert accepted(target, master, sentinel, OLD) == [True] * 4
