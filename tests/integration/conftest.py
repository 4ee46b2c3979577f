"""Fixtures over real servers: one PostgreSQL 16 cluster, one Redis 7 and one versitygw S3
server per session, a fresh database and a fresh bucket per test, and extra Redis servers
for misconfigurations."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.deploy import migration_files
from infra.core.targets import PostgresTarget, RedisTarget, Target
from tests.servers import PostgresServer, RedisServer, S3Server


@pytest.fixture(scope="session")
def pg_server():
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer.start(password="redis-test-password-0123456789")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A brand-new empty bucket in the session's S3 server, removed with its objects afterwards."""
    name = s3_server.create_bucket()
    try:
        yield name
    finally:
        s3_server.remove_bucket(name)


@pytest.fixture
def pg_target(pg_server) -> PostgresTarget:
    """A target pointing at a brand-new empty database."""
    name = pg_server.create_database()
    try:
        yield PostgresTarget(host="127.0.0.1", port=pg_server.port, database=name, user=pg_server.user,
                             password=pg_server.password, container_name="room-03-archiv-postgres",
                             container_ip="172.20.0.100", major_version=16)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def redis_target(redis_server) -> RedisTarget:
    return redis_server.target()


@pytest.fixture
def target(pg_target, redis_target) -> Target:
    return Target(stack="itest", postgres=pg_target, redis=redis_target)


@pytest.fixture
def migration_dir(tmp_path) -> Path:
    """A private copy of sql/ that a test may add files to or change."""
    directory = tmp_path / "sql"
    shutil.copytree(migration_files.DEFAULT_DIR, directory)
    return directory
