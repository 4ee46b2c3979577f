"""The parts of `adopt` that need no Docker: reading passwords and ports from `docker inspect`
data, comparing schemas, and the plan the dry run prints."""

from __future__ import annotations

import pytest

from infra.ops import adopt
from infra.core.targets import PostgresTarget, RedisTarget

PG_SECRET = "pg-old-password-0123456789"
REDIS_SECRET = "redis-old-password-0123456789"


def container(name: str = "room-03-archiv-postgres", env=(), path: str = "docker-entrypoint.sh", args=(),
              ports=None) -> dict:
    return {"Name": f"/{name}", "Config": {"Env": list(env)}, "Path": path, "Args": list(args),
            "NetworkSettings": {"Ports": ports or {}}}


def never_read(path: str) -> str:
    raise AssertionError(f"read {path}")


def test_the_postgres_password_comes_from_the_environment():
    c = container(env=["POSTGRES_DB=sinsolver", f"POSTGRES_PASSWORD={PG_SECRET}", "PATH=/usr/bin"])
    assert adopt.postgres_password(c, never_read) == (PG_SECRET, "POSTGRES_PASSWORD")


def test_the_postgres_password_comes_from_the_file_postgres_password_file_names():
    read = []
    c = container(env=["POSTGRES_PASSWORD_FILE=/run/secrets/pg"])
    password, source = adopt.postgres_password(c, lambda path: read.append(path) or PG_SECRET + "\n")
    assert (password, read) == (PG_SECRET, ["/run/secrets/pg"])
    assert source == "the file /run/secrets/pg (POSTGRES_PASSWORD_FILE)"


@pytest.mark.parametrize("env, message", [
    ([], "has neither POSTGRES_PASSWORD nor POSTGRES_PASSWORD_FILE"),
    ([f"POSTGRES_PASSWORD={PG_SECRET}", "POSTGRES_PASSWORD_FILE=/run/secrets/pg"], "sets both"),
])
def test_an_unknown_or_ambiguous_postgres_password_is_refused_naming_the_container(env, message):
    with pytest.raises(adopt.AdoptRefused, match=message) as refused:
        adopt.postgres_password(container(env=env), never_read)
    assert "room-03-archiv-postgres" in str(refused.value) and PG_SECRET not in str(refused.value)


def test_the_redis_password_comes_from_requirepass_on_the_command_line():
    c = container("room-04-memory-redis", path="docker-entrypoint.sh",
                  args=["redis-server", "--appendonly", "yes", "--requirepass", REDIS_SECRET])
    assert adopt.redis_password(c) == REDIS_SECRET


def test_redis_without_requirepass_is_refused_showing_its_command():
    c = container("room-04-memory-redis", args=["redis-server", "/etc/redis.conf"])
    with pytest.raises(adopt.AdoptRefused, match=r"room-04-memory-redis has no --requirepass on its command line "
                                                 r"\(docker-entrypoint.sh redis-server /etc/redis.conf\)"):
        adopt.redis_password(c)


def test_a_command_shown_in_a_message_never_shows_the_password():
    assert adopt._shown_command(["redis-server", "--requirepass", REDIS_SECRET, "--port", "6379"]) == \
        "redis-server --requirepass '***' --port 6379"


@pytest.mark.parametrize("bindings, expected", [
    ([{"HostIp": "0.0.0.0", "HostPort": "5432"}, {"HostIp": "::", "HostPort": "5432"}], ("127.0.0.1", 5432)),
    ([{"HostIp": "127.0.0.1", "HostPort": "15432"}], ("127.0.0.1", 15432)),
    ([{"HostIp": "", "HostPort": "5433"}], ("127.0.0.1", 5433)),
    ([{"HostIp": "fe80::1", "HostPort": "5432"}], None),
    (None, None),
])
def test_the_published_port_is_reached_on_loopback_when_bound_to_every_address(bindings, expected):
    c = container(ports={"5432/tcp": bindings} if bindings is not None else {"5432/tcp": None})
    assert adopt.published(c, 5432) == expected


def test_schema_differences_name_missing_unexpected_and_changed_objects():
    expected = [("column", "public.services.name", "character varying null=NO default="),
                ("index", "public.idx_logs_level", "CREATE INDEX idx_logs_level ON public.logs USING btree (level)")]
    found = [("column", "public.services.name", "text null=NO default="),
             ("column", "public.services.owner", "text null=YES default=")]
    assert adopt.schema_differences(expected, found) == [
        "missing index public.idx_logs_level",
        "unexpected column public.services.owner",
        "column public.services.name is 'text null=NO default=', expected 'character varying null=NO default='"]
    assert adopt.schema_differences(expected, expected) == []
    many = [("column", f"public.t.c{i}", "int") for i in range(8)]
    assert adopt.schema_differences([], many, limit=5)[-1] == "and 3 more"


def found(rotate_source: str = "POSTGRES_PASSWORD") -> adopt.Found:
    def service(role, container_name, volume, target, image, version, kb, contents):
        return adopt.OldService(role, container_name, image, volume, target, "/data", kb, "unless-stopped",
                                "172.20.0.100", (role,), version, rotate_source, contents)

    return adopt.Found(
        stack="dev",
        postgres=service("postgres", "room-03-archiv-postgres", "sin_postgres_data", "postgres_data",
                         "postgres:16-alpine", "16", 48_128, {"public.services": 3, "public.logs": 10}),
        redis=service("redis", "room-04-memory-redis", "sin_redis_data", "redis_data", "redis:7-alpine",
                      "7.2.4", 96, {"db0": 5}),
        network=adopt.OldNetwork("sin-network", "bridge", "172.20.0.0/16", "172.20.0.1", "", {}),
        postgres_target=PostgresTarget("127.0.0.1", 5432, "sinsolver", "sinadmin", PG_SECRET,
                                       "room-03-archiv-postgres", "172.20.0.100", 16),
        redis_target=RedisTarget("127.0.0.1", 6379, REDIS_SECRET, "room-04-memory-redis", "172.20.0.200", 7),
    )


def test_the_plan_names_every_step_with_names_and_sizes_in_order():
    lines = adopt.plan_lines(found(), rotate=False)
    text = "\n".join(lines)
    assert lines[0].startswith("found postgres: container room-03-archiv-postgres (postgres:16-alpine), "
                               "PostgreSQL 16 data in volume sin_postgres_data (47.0 MB), database sinsolver: "
                               "rows logs 10, services 3")
    assert "Redis 7.2.4, data in volume sin_redis_data (96 kB), keys db0 5" in lines[1]
    steps = [line for line in lines if line[:3].strip().rstrip(".").isdigit()]
    assert [s.split(". ", 1)[1].split(" ")[0] for s in steps] == [
        "store", "baseline", "stop", "stop", "copy", "copy", "remove", "up:"]
    assert "(from POSTGRES_PASSWORD of room-03-archiv-postgres)" in steps[0]
    assert "set its restart policy to no (was unless-stopped), disconnect it from sin-network, rename it " \
           "room-03-archiv-postgres-pre-adopt" in steps[2]
    assert "copy volume sin_postgres_data (47.0 MB) into a new volume postgres_data labelled for stack dev" in steps[4]
    assert lines[-1] == ("kept as fallbacks: containers room-03-archiv-postgres-pre-adopt, "
                         "room-04-memory-redis-pre-adopt (stopped), volumes sin_postgres_data, sin_redis_data "
                         "(not written to after the stop)")
    assert PG_SECRET not in text and REDIS_SECRET not in text and PG_SECRET not in repr(found())


def test_the_plan_with_rotation_generates_passwords_instead_of_storing_the_old_ones():
    first_step = adopt.plan_lines(found(), rotate=True)[3]
    assert first_step.startswith(" 1. generate new passwords and store them as Pulumi secrets")
    assert "`up` sets the new PostgreSQL password in the data" in first_step


def test_the_fallbacks_are_removed_with_one_command():
    assert adopt.fallback_cleanup(found()) == (
        "docker rm room-03-archiv-postgres-pre-adopt room-04-memory-redis-pre-adopt && "
        "docker volume rm sin_postgres_data sin_redis_data")
