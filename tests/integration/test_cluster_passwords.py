"""The look before a replicated run names the password settings the running cluster refuses (issue #27):
against real PostgreSQL 16 and Redis 7 servers (a second Redis stands in for a Sentinel, which answers
AUTH the same way)."""

from __future__ import annotations

import dataclasses

import pytest

from infra.core.targets import ClusterTarget, Target
from infra.driver.teststacks import free_port
from infra.deploy.replicated import refused_passwords
from tests.servers import RedisServer

SENTINEL_PASSWORD = "sentinel-test-password-0123"


@pytest.fixture(scope="module")
def sentinel():
    server = RedisServer.start(password=SENTINEL_PASSWORD, appendonly=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster_target(pg_target, redis_target, sentinel) -> Target:
    return Target("itest", pg_target, redis_target,
                  cluster=ClusterTarget(("127.0.0.1",), 8008, sentinel.port, SENTINEL_PASSWORD, "sin-redis"))


def test_the_passwords_the_servers_take_are_not_named(cluster_target):
    assert refused_passwords(cluster_target) == []


def test_each_password_a_server_refuses_is_named_by_its_setting(cluster_target):
    wrong = dataclasses.replace(
        cluster_target, postgres=dataclasses.replace(cluster_target.postgres, password="p" * 20),
        redis=dataclasses.replace(cluster_target.redis, password="r" * 20),
        cluster=dataclasses.replace(cluster_target.cluster, sentinel_password="s" * 20))
    assert refused_passwords(wrong) == ["postgresPassword", "redisPassword", "sentinelPassword"]
    only_redis = dataclasses.replace(cluster_target, redis=wrong.redis)
    assert refused_passwords(only_redis) == ["redisPassword"]


def test_servers_that_do_not_answer_yet_are_a_new_cluster_not_a_refusal(cluster_target):
    unused_port = free_port()
    silent = dataclasses.replace(
        cluster_target, postgres=dataclasses.replace(cluster_target.postgres, port=unused_port, password="p" * 20),
        redis=dataclasses.replace(cluster_target.redis, port=unused_port, password="r" * 20),
        cluster=dataclasses.replace(cluster_target.cluster, sentinel_port=unused_port, sentinel_password="s" * 20))
    assert refused_passwords(silent) == []
