"""Taking over the ADR's compose-style deployment: built first with plain `docker` commands
exactly as the ADR's YAML describes (compose's names and labels), with rows and keys in both
services, then brought under a stack with `python -m infra adopt`."""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as redis_lib

from infra.core import dockercli
from infra.driver import stacks, teststacks
from infra.components.common import labels
from infra.core.config import PROJECT, StackConfig
from infra.core.connect import AuthRejected, connect_postgres, connect_redis
from infra.deploy.migration_files import DEFAULT_DIR
from infra.core.targets import PostgresTarget, RedisTarget
from tests.e2e import conftest
from tests.e2e.support import cli, docker, inspect, objects_of

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ADR_TABLES = ("services", "configurations", "logs", "audit_trail")
COMPOSE_VERSION = "2.29.7"
PASSWORD_KEYS = ("postgresPassword", "redisPassword")




@dataclass
class Deployment:
    """The ADR's deployment under the names the test stack's config gives, in compose project ``project``."""

    stack: conftest.TestStack
    cfg: StackConfig
    project: str
    pg_password: str = field(repr=False)
    redis_password: str = field(repr=False)
    pg_port: int = 0
    redis_port: int = 0

    @property
    def volumes(self) -> tuple[str, str]:
        return f"{self.project}_postgres_data", f"{self.project}_redis_data"

    @property
    def containers(self) -> tuple[str, str]:
        return self.cfg.postgres.container_name, self.cfg.redis.container_name

    def postgres(self) -> PostgresTarget:
        return PostgresTarget("127.0.0.1", self.pg_port, "sinsolver", "sinadmin", self.pg_password,
                              self.cfg.postgres.container_name, self.cfg.postgres.ip, 16)

    def redis(self) -> RedisTarget:
        return RedisTarget("127.0.0.1", self.redis_port, self.redis_password,
                           self.cfg.redis.container_name, self.cfg.redis.ip, 7)

    def leaks(self, *texts: str) -> list[str]:
        """Which passwords appear in ``texts`` (by key, never the value)."""
        return [key for key, value in zip(PASSWORD_KEYS, (self.pg_password, self.redis_password))
                if any(value in text for text in texts)]


def compose_labels(project: str, **extra: str) -> list[str]:
    values = {"com.docker.compose.project": project, "com.docker.compose.version": COMPOSE_VERSION, **extra}
    return [arg for k, v in sorted(values.items()) for arg in ("--label", f"{k}={v}")]


def build_adr_deployment(dep: Deployment) -> None:
    """`docker compose up` of the ADR's YAML, by hand: the network named explicitly, volumes
    `<project>_postgres_data`/`<project>_redis_data`, the schema from docker-entrypoint-initdb.d.
    Deviations from the ADR: ports are published on 127.0.0.1 (the ADR: 0.0.0.0, which exposes
    them), and the stack's prefixed names, free subnet and free ports replace the dev ones."""
    cfg, config = dep.cfg, dep.stack.config
    docker("network", "create", "--driver", "bridge", "--subnet", cfg.network.subnet, "--gateway", cfg.network.gateway,
           *compose_labels(dep.project, **{"com.docker.compose.network": "sin-network"}), cfg.network.name)
    for volume in ("postgres_data", "redis_data"):
        docker("volume", "create", *compose_labels(dep.project, **{"com.docker.compose.volume": volume}),
               f"{dep.project}_{volume}")
    service_labels = {"com.docker.compose.container-number": "1", "com.docker.compose.oneoff": "False"}
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        init.mkdir()
        (init / "01-schema.sql").write_text((DEFAULT_DIR / "V001__adr006_schema.sql").read_text())
        os.chmod(tmp, 0o755)
        env_file = Path(tmp) / "postgres.env"  # compose's `environment:`; a file keeps the password off argv
        env_file.write_text(f"POSTGRES_DB=sinsolver\nPOSTGRES_USER=sinadmin\nPOSTGRES_PASSWORD={dep.pg_password}\n")
        docker("run", "-d", "--name", cfg.postgres.container_name,
               *compose_labels(dep.project, **service_labels, **{"com.docker.compose.service": "postgres"}),
               "--env-file", str(env_file),
               "-v", f"{dep.project}_postgres_data:/var/lib/postgresql/data",
               "-v", f"{init}:/docker-entrypoint-initdb.d:ro",
               "--network", cfg.network.name, "--ip", cfg.postgres.ip, "--network-alias", "postgres",
               "-p", f"127.0.0.1:{dep.pg_port}:5432", config["postgresImage"])
        with connect_postgres(dep.postgres(), deadline_s=90) as conn:  # TCP opens only after the init scripts
            assert conn.execute("SELECT count(*) FROM services").fetchone() == (0,)
    # The ADR's command line, password and all: what the takeover gets rid of. (It is on this
    # test's argv because that is where the ADR puts it.)
    docker("run", "-d", "--name", cfg.redis.container_name,
           *compose_labels(dep.project, **service_labels, **{"com.docker.compose.service": "redis"}),
           "-v", f"{dep.project}_redis_data:/data",
           "--network", cfg.network.name, "--ip", cfg.redis.ip, "--network-alias", "redis",
           "-p", f"127.0.0.1:{dep.redis_port}:6379",
           config["redisImage"], "redis-server", "--appendonly", "yes", "--requirepass", dep.redis_password)
    write_data(dep)


def write_data(dep: Deployment) -> None:
    """Rows in every ADR table, keys of several types (with and without TTL) in two databases."""
    with connect_postgres(dep.postgres(), deadline_s=30) as conn, conn.transaction():
        for i in range(50):
            conn.execute("INSERT INTO services (name, category, container_name, ip_address, port, status) "
                         "VALUES (%s, 'agent', %s, '172.20.1.1', %s, 'active')", (f"svc-{i}", f"room-{i}", 8000 + i))
        conn.execute("INSERT INTO configurations (service_id, key, value, encrypted) "
                     "SELECT id, 'limits', jsonb_build_object('rps', id), id % 2 = 0 FROM services")
        conn.execute("INSERT INTO logs (service_id, level, message, metadata) "
                     "SELECT (g % 50) + 1, 'info', 'line ' || g, '{\"ok\": true}' FROM generate_series(1, 300) g")
        conn.execute("INSERT INTO audit_trail (action, actor, resource_type, resource_id, changes) "
                     "SELECT 'update', 'ada', 'service', g::text, '{\"n\": 1}' FROM generate_series(1, 20) g")
    client = connect_redis(dep.redis(), deadline_s=60, decode=False)
    client.set("session:abc", b"\x00\xff binary \x80", ex=3600)
    client.set("cache:page:/", "<html>", ex=600)
    client.set("counter", 41)
    client.rpush("queue:jobs", "job-1", "job-2", "job-3")
    client.hset("user:1", mapping={"name": "ada", "role": "admin"})
    client.sadd("tags", "a", "b", "c")
    client.zadd("ratelimit:1.2.3.4", {"r1": 1.0, "r2": 2.0})
    client.select(2)
    client.set("db2:key", "in another database")
    client.close()


def rows(target: PostgresTarget) -> dict[str, list[tuple]]:
    with connect_postgres(target, deadline_s=60) as conn:
        return {table: [tuple(map(str, r)) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
                for table in ADR_TABLES}


def keys(target: RedisTarget) -> dict:
    """Every key of every database: (type, value, whether it has a TTL)."""
    data = {}
    for db in range(16):
        client = redis_lib.Redis(host=target.host, port=target.port, password=target.password, db=db)
        for key in client.scan_iter():
            kind = client.type(key)
            read = {b"string": client.get, b"list": lambda k: client.lrange(k, 0, -1), b"hash": client.hgetall,
                    b"set": lambda k: sorted(client.smembers(k)),
                    b"zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind]
            data[(db, key)] = (kind, read(key), client.ttl(key) > 0)
        client.close()
    return data


def host_state(dep: Deployment) -> dict:
    """Everything a refusal or a dry run must leave as it was."""
    state: dict = {}
    for name in (*dep.containers, *(c + "-pre-adopt" for c in dep.containers)):
        c = dockercli.inspect("container", name)
        state[name] = c and (c["Id"], c["State"]["Running"], c["HostConfig"]["RestartPolicy"]["Name"],
                             {net: (e["IPAddress"], sorted(e["Aliases"] or [])) for net, e in
                              c["NetworkSettings"]["Networks"].items()})
    network = dockercli.inspect("network", dep.cfg.network.name)
    state["network"] = network and (network["Labels"], network["IPAM"]["Config"], network["Id"])
    for volume in (*dep.volumes, dep.cfg.postgres.volume_name, dep.cfg.redis.volume_name):
        v = dockercli.inspect("volume", volume)
        state[volume] = v and v["Labels"]
    state["stack objects"] = objects_of(dep.stack.name)
    state["stack config"] = stacks.config_file(dep.stack.name).read_bytes()
    state["stack resources"] = len(dep.stack.stack.export_stack().deployment.get("resources") or [])
    state["rows"] = rows(dep.postgres())
    with connect_postgres(dep.postgres()) as conn:
        state["databases"] = conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()
        state["history table"] = conn.execute("SELECT to_regclass('sin_schema_history')").fetchone()
    state["keys"] = keys(dep.redis())
    return state


@pytest.fixture
def adr_deployment(make_stack):
    """Build the ADR's deployment beside a fresh test stack; remove both afterwards, even on failure."""
    made: list[Deployment] = []

    def build(old_ports: tuple[int, int] | None = None, **stack_overrides: str) -> Deployment:
        """``old_ports``: where the ADR's containers publish (default: the stack's own host ports)."""
        test_stack = make_stack(**stack_overrides)
        cfg = stacks.validate(test_stack.name, test_stack.stack.get_all_config())
        dep = Deployment(test_stack, cfg, f"adopt{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(24),
                         secrets.token_urlsafe(24), *(old_ports or (cfg.postgres.host_port, cfg.redis.host_port)))
        made.append(dep)
        build_adr_deployment(dep)
        return dep

    try:
        yield build
    finally:
        for dep in made:
            try:
                dep.stack.destroy_and_remove()
            finally:
                name = dep.stack.name
                ours = [*dep.containers, *(c + "-pre-adopt" for c in dep.containers),
                        f"{name}-adopt-copy-postgres", f"{name}-adopt-copy-redis", f"{name}-volume-user",
                        f"{name}-network-user"]
                dockercli.docker("rm", "-f", "-v", *ours, check=False)
                dockercli.docker("network", "rm", dep.cfg.network.name, check=False)
                dockercli.docker("volume", "rm", "-f", *dep.volumes, check=False)


def test_dry_run_changes_nothing_then_adopt_keeps_every_row_and_key_under_the_stack(adr_deployment, settings):
    dep = adr_deployment()
    name, cfg = dep.stack.name, dep.cfg
    pg_container, redis_container = dep.containers
    before = host_state(dep)

    dry = cli(settings, "adopt", "--stack", name, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for step in (f"PostgreSQL 16 data in volume {dep.volumes[0]} (",
                 "rows audit_trail 20, configurations 50, logs 300, services 50", "keys db0 7, db2 1",
                 "store the PostgreSQL password (from POSTGRES_PASSWORD of",
                 "baseline V001__adr006_schema.sql in database sinsolver",
                 f"stop {pg_container} (docker stop -t 60), set its restart policy to no (was no), disconnect it "
                 f"from {cfg.network.name}, rename it {pg_container}-pre-adopt",
                 f"copy volume {dep.volumes[1]} (", f"into a new volume {cfg.redis.volume_name} labelled",
                 f"remove network {cfg.network.name}", f"containers {pg_container}-pre-adopt, "):
        assert step in dry.stdout, dry.stdout
    assert "dry run: nothing was changed" in dry.stderr
    assert host_state(dep) == before

    done = cli(settings, "adopt", "--stack", name)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert dep.leaks(dry.stdout, dry.stderr, done.stdout, done.stderr) == []
    assert f"docker rm {pg_container}-pre-adopt {redis_container}-pre-adopt && docker volume rm " \
           f"{dep.volumes[0]} {dep.volumes[1]}" in done.stdout

    target = stacks.target_from_outputs(name, dep.stack.stack.outputs())
    after = rows(target.postgres)
    assert after["configurations"] == before["rows"]["configurations"]
    assert after["logs"] == before["rows"]["logs"]
    for table in ("services", "audit_trail"):  # the post-deploy step registers the services and adds an audit row
        assert set(before["rows"][table]) <= set(after[table]) and len(after[table]) > len(before["rows"][table])
    assert keys(target.redis) == before["keys"]
    with connect_postgres(target.postgres) as conn:
        assert conn.execute("SELECT version, script, kind, success FROM sin_schema_history").fetchall() == [
            (1, "V001__adr006_schema.sql", "BASELINE", True)]

    config = dep.stack.stack.get_all_config()
    stored = [config[f"{PROJECT}:{key}"] for key in PASSWORD_KEYS]
    assert [value.secret for value in stored] == [True, True]
    kept_the_old_passwords = [value.value for value in stored] == [dep.pg_password, dep.redis_password]
    assert kept_the_old_passwords, "the stack's secrets are not the passwords the old containers used"
    assert dep.leaks(stacks.config_file(name).read_text()) == []

    for container, role in ((pg_container, "postgres"), (redis_container, "redis")):
        new = inspect("container", container)
        assert new["Config"]["Labels"]["sin-datastores.stack"] == name
        assert dep.leaks(json.dumps(new)) == [], f"a password is in `docker inspect {container}`"
        old = inspect("container", container + "-pre-adopt")
        assert (old["State"]["Running"], old["HostConfig"]["RestartPolicy"]["Name"],
                old["NetworkSettings"]["Networks"]) == (False, "no", {})
        volume = inspect("volume", getattr(cfg, role).volume_name)
        assert volume["Labels"] == labels(PROJECT, name, role)
    for volume, compose_name in zip(dep.volumes, ("postgres_data", "redis_data")):
        assert inspect("volume", volume)["Labels"]["com.docker.compose.volume"] == compose_name
    assert "POSTGRES_PASSWORD=" not in " ".join(inspect("container", pg_container)["Config"]["Env"])
    assert "--requirepass" not in inspect("container", redis_container)["Args"]
    assert inspect("network", cfg.network.name)["Labels"] == labels(PROJECT, name, "network")

    preview = dep.stack.stack.preview(color="never")
    assert set(preview.change_summary) == {"same"}, preview.change_summary


def test_adopt_with_rotated_passwords_keeps_the_data_and_retires_the_old_passwords(adr_deployment, settings):
    dep = adr_deployment()
    before_rows, before_keys = rows(dep.postgres()), keys(dep.redis())

    done = cli(settings, "adopt", "--stack", dep.stack.name, "--rotate-passwords")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "generate new passwords" in done.stdout

    target = stacks.target_from_outputs(dep.stack.name, dep.stack.stack.outputs())
    rotated = target.postgres.password != dep.pg_password and target.redis.password != dep.redis_password
    assert rotated, "the stack kept an old password"
    after = rows(target.postgres)
    assert after["logs"] == before_rows["logs"] and after["configurations"] == before_rows["configurations"]
    assert keys(target.redis) == before_keys
    with pytest.raises(AuthRejected):
        connect_postgres(PostgresTarget(**{**target.postgres.__dict__, "password": dep.pg_password}), 5)
    with pytest.raises(AuthRejected):
        connect_redis(RedisTarget(**{**target.redis.__dict__, "password": dep.redis_password}), 5)


def refuse_major(dep: Deployment) -> str:
    return (f"container {dep.containers[0]}: the data in /var/lib/postgresql/data is PostgreSQL 16, "
            f"the stack expects 17 (postgresMajorVersion)")


def another_user_of_the_volume(dep: Deployment) -> str:
    user = f"{dep.stack.name}-volume-user"
    docker("create", "--name", user, "-v", f"{dep.volumes[0]}:/backup:ro", dep.stack.config["postgresImage"], "true")
    return f"volume {dep.volumes[0]} (mounted by {dep.containers[0]}) is also used by {user}"


def another_container_on_the_network(dep: Deployment) -> str:
    user = f"{dep.stack.name}-network-user"
    docker("create", "--name", user, "--network", dep.cfg.network.name, dep.stack.config["redisImage"], "true")
    return (f"network {dep.cfg.network.name} is removed and created again by the takeover, and other containers "
            f"are attached to it: {user}; detach them first (docker network disconnect {dep.cfg.network.name} {user})")


def a_column_beyond_v001(dep: Deployment) -> str:
    with connect_postgres(dep.postgres()) as conn:
        conn.execute("ALTER TABLE services ADD COLUMN owner TEXT")
    return (f"database sinsolver in {dep.containers[0]} does not hold exactly the schema of "
            f"V001__adr006_schema.sql: unexpected column public.services.owner; bring it to")


@pytest.mark.parametrize("stack_overrides, make_mismatch", [
    ({"postgresMajorVersion": "17"}, refuse_major),
    ({}, another_user_of_the_volume),
    ({}, another_container_on_the_network),
    ({}, a_column_beyond_v001),
], ids=["different postgres major", "volume used by another container", "another container on the network",
        "schema differs from V001"])
def test_adopt_refuses_a_deployment_it_does_not_expect_and_changes_nothing(adr_deployment, settings,
                                                                           stack_overrides, make_mismatch):
    dep = adr_deployment(**stack_overrides)
    message = make_mismatch(dep)
    before = host_state(dep)
    for dry_run in (("--dry-run",), ()):
        refused = cli(settings, "adopt", "--stack", dep.stack.name, *dry_run)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert message in refused.stderr and "nothing was changed" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and dep.leaks(refused.stdout, refused.stderr) == []
        assert host_state(dep) == before


def test_a_takeover_whose_up_fails_is_undone_and_the_old_deployment_runs_as_before(adr_deployment, settings):
    with socket.socket() as squatter:  # another process took the stack's PostgreSQL port meanwhile
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        dep = adr_deployment(old_ports=(teststacks.free_port(), teststacks.free_port()),
                             postgresHostPort=str(squatter.getsockname()[1]))
        before = host_state(dep)

        failed = cli(settings, "adopt", "--stack", dep.stack.name)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "error: up failed" in failed.stderr and "every step before it was undone" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and dep.leaks(failed.stdout, failed.stderr) == []
    after = host_state(dep)
    # The compose network was removed and created again: same name, labels and addresses, a new id.
    assert after.pop("network")[:2] == before.pop("network")[:2]
    assert after == before


def test_adopt_into_a_stack_that_does_not_exist_yet_refuses_and_leaves_no_stack_behind(settings):
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    for dry_run in (("--dry-run",), ()):
        refused = cli(settings, "adopt", "--stack", name, *dry_run)
        assert refused.returncode == 2, refused.stderr
        assert f"no container {name}-room-03-archiv-postgres (postgres) on this Docker host" in refused.stderr
        assert not stacks.config_file(name).exists()
        assert name not in [s.name for s in stacks.workspace(settings).list_stacks()]
