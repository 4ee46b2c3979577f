"""Declarations of the Pulumi program under mocks: no Docker, no engine, seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from infra.components.common import go_duration
from infra.core import conflicts
from infra.components.redis import render_config

from tests.unit.program_mocks import (PG_PASSWORD, REDIS_PASSWORD, RecordingMocks, is_secret, output_value,
                                 run_program, unwrap)

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/remoteImage:RemoteImage"


def labels_of(resource) -> dict[str, str]:
    return {entry["label"]: entry["value"] for entry in resource.inputs["labels"]}


STACK = "pulumi:pulumi:Stack"
SIN_NETWORK = "sin-datastores:index:SinNetwork"
POSTGRES = "sin-datastores:index:PostgresService"
REDIS = "sin-datastores:index:RedisService"
POST_DEPLOY = "sin-datastores:index:PostDeploy"


def test_declares_the_adr_resources_under_their_components(dev):
    # Policy: one component per concern, each owning its Docker resources (the parent is part of the URN).
    declared = sorted((r.name, r.typ, dev.parent_type(r.name)) for r in dev.resources.values())
    assert declared == sorted([
        ("docker-host", "pulumi:providers:docker", STACK),
        ("sin-network", SIN_NETWORK, STACK),
        ("sin-network-network", NETWORK, SIN_NETWORK),
        ("postgres", POSTGRES, STACK),
        ("postgres-image", IMAGE, POSTGRES), ("postgres-data", VOLUME, POSTGRES),
        ("postgres-container", CONTAINER, POSTGRES),
        ("redis", REDIS, STACK),
        ("redis-image", IMAGE, REDIS), ("redis-data", VOLUME, REDIS), ("redis-container", CONTAINER, REDIS),
        ("post-deploy", POST_DEPLOY, STACK),
        ("post-deploy-provider", "pulumi:providers:pulumi-python", POST_DEPLOY),
        ("post-deploy-step", "pulumi-python:dynamic:Resource", POST_DEPLOY),
    ])


def test_every_docker_resource_goes_to_the_stack_s_docker_host_provider(dev):
    # Policy: preview and up talk to the engine the stack names, never an implicit default one.
    docker_resources = [r for r in dev.resources.values() if r.typ.startswith("docker:index/")]
    assert len(docker_resources) == 7
    for resource in docker_resources:
        assert "pulumi:providers:docker::docker-host::" in resource.provider, (resource.name, resource.provider)
    host = dev.resources["docker-host"].inputs
    assert "sshOpts" not in host


def test_an_ssh_docker_host_gives_the_provider_its_host_and_ssh_options():
    mocks = run_program({"dockerHost": "ssh://deploy@db-1:2222", "dockerSshKeyFile": "/keys/deploy",
                         "dockerSshKnownHostsFile": "/keys/known_hosts"})
    provider = mocks.resources["docker-host"].inputs
    assert provider["host"] == "ssh://deploy@db-1:2222"
    opts = json.loads(provider["sshOpts"])  # provider config travels as JSON text
    for pair in (["-i", "/keys/deploy"], ["-o", "UserKnownHostsFile=/keys/known_hosts"],
                 ["-o", "StrictHostKeyChecking=yes"], ["-o", "BatchMode=yes"], ["-p", "2222"]):
        assert any(opts[i:i + 2] == pair for i in range(len(opts))), (pair, opts)


def test_network_is_a_bridge_with_subnet_gateway_and_ip_range_away_from_fixed_ips(dev):
    network = dev.resources["sin-network-network"]
    assert network.inputs["name"] == "sin-network"
    assert network.inputs["driver"] == "bridge"
    assert network.inputs["ipamConfigs"] == [
        {"subnet": "172.20.0.0/16", "gateway": "172.20.0.1", "ipRange": "172.20.128.0/17"}]


@pytest.mark.parametrize("name, container_name, ip, alias, port", [
    ("postgres", "room-03-archiv-postgres", "172.20.0.100", "postgres", 5432),
    ("redis", "room-04-memory-redis", "172.20.0.200", "redis", 6379),
])
def test_containers_have_fixed_ip_alias_and_loopback_port(dev, name, container_name, ip, alias, port):
    container = dev.resources[f"{name}-container"].inputs
    assert container["name"] == container_name
    assert container["networksAdvanced"] == [{"name": "sin-network", "ipv4Address": ip, "aliases": [alias]}]
    assert container["ports"] == [{"internal": port, "external": port, "ip": "127.0.0.1"}], \
        "published ports must bind to 127.0.0.1 by default"
    assert container["image"] == f"sha256:{name}-image", "the container must follow the image id"


@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_containers_are_hardened_stop_gracefully_and_up_does_not_wait_for_docker_health(dev, name):
    container = dev.resources[f"{name}-container"].inputs
    assert container["restart"] == "unless-stopped"
    assert "wait" not in container, "up waits for the services themselves (post-deploy), not for Docker's checks"
    assert container["destroyGraceSeconds"] == 60, "PostgreSQL must shut down cleanly on destroy and replacement"
    assert container["securityOpts"] == ["no-new-privileges:true"]
    assert container["logDriver"] == "json-file"
    assert container["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert container["memory"] == {"postgres": 512, "redis": 256}[name]
    assert container["memorySwap"] == container["memory"], "no swap, and no drift on the next up"
    health = container["healthcheck"]
    assert health["tests"][0] == "CMD-SHELL"
    assert (health["interval"], health["timeout"], health["retries"]) == ("10s", "5s", 3)
    assert health["startPeriod"] == "2m0s", "a (re)start may take healthTimeoutSeconds before failures count"
    assert labels_of(dev.resources[f"{name}-container"]) == {
        "sin-datastores.project": "sin-datastores", "sin-datastores.stack": "dev", "sin-datastores.role": name}


def test_postgres_healthcheck_asks_tcp_readiness_without_the_password(dev):
    # TCP, because the init server listens on the socket only; no password, so a data volume that
    # holds another password still becomes healthy and the post-deploy step can set it.
    test = dev.resources["postgres-container"].inputs["healthcheck"]["tests"][1]
    assert "pg_isready -q -h 127.0.0.1 -p 5432" in test
    assert "PASSWORD" not in test and "password" not in test


def test_redis_healthcheck_authenticates_without_a_command_line_password(dev):
    test = dev.resources["redis-container"].inputs["healthcheck"]["tests"][1]
    assert "REDISCLI_AUTH=" in test and "ping" in test
    assert " -a " not in test


def test_the_health_start_period_follows_health_timeout_seconds():
    health = run_program({"healthTimeoutSeconds": "3599"}).resources["postgres-container"].inputs["healthcheck"]
    assert health["startPeriod"] == "59m59s"


@pytest.mark.parametrize("seconds, printed", [(5, "5s"), (59, "59s"), (60, "1m0s"), (120, "2m0s"), (3600, "1h0m0s"),
                                              (7322, "2h2m2s")])
def test_durations_are_written_as_docker_reads_them_back(seconds, printed):
    # The provider reads a healthcheck back as Go's time.Duration prints it; anything else is a
    # diff on every refresh, and a healthcheck diff replaces the container.
    assert go_duration(seconds) == printed


def test_the_post_deploy_step_waits_health_timeout_seconds_for_the_services():
    step = run_program({"healthTimeoutSeconds": "300"}).of_type("pulumi-python:dynamic:Resource")[0]
    assert step.inputs["ready_timeout_s"] == 300


def test_the_program_loads_no_database_client():
    """Every `up` and `preview` starts the program; only the post-deploy step needs the clients."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, infra.program; "
                             "print(sorted(m for m in ('psycopg', 'redis') if m in sys.modules))"],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_postgres_password_comes_from_a_secret_file(dev):
    container = dev.resources["postgres-container"].inputs
    assert container["envs"] == ["POSTGRES_DB=sinsolver", "POSTGRES_USER=sinadmin",
                                 "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password"]
    assert is_secret(container["uploads"]), "the upload carrying the password must be a Pulumi secret"
    assert unwrap(container["uploads"]) == [
        {"file": "/run/secrets/postgres-password", "content": PG_PASSWORD, "permissions": "0400"}]


def test_redis_config_file_has_aof_password_and_memory_cap(dev):
    container = dev.resources["redis-container"].inputs
    assert container["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert is_secret(container["uploads"])
    [upload] = unwrap(container["uploads"])
    lines = upload["content"].splitlines()
    assert upload["file"] == "/usr/local/etc/redis/redis.conf"
    assert {"appendonly yes", f"requirepass {REDIS_PASSWORD}", "maxmemory 192mb", "dir /data"} <= set(lines)


def test_redis_config_file_is_written_whole_with_three_quarters_of_the_memory_limit():
    assert render_config("redis-password-0123456789", 1000) == (
        "# Written by sin-datastores; changes are replaced on the next `pulumi up`.\n"
        "bind * -::*\n"
        "protected-mode yes\n"
        "port 6379\n"
        "dir /data\n"
        "appendonly yes\n"
        "appendfsync everysec\n"
        "maxmemory 750mb\n"
        "maxmemory-policy volatile-lru\n"
        "requirepass redis-password-0123456789\n")


@pytest.mark.parametrize("password", [PG_PASSWORD, REDIS_PASSWORD])
def test_no_password_in_env_command_labels_or_healthcheck(dev, password):
    for container in dev.of_type(CONTAINER):
        visible = {k: container.inputs.get(k) for k in ("envs", "command", "labels", "healthcheck", "name")}
        assert password not in json.dumps(visible), f"{container.name} exposes a password"


def test_every_input_carrying_a_password_is_secret(dev):
    carriers = {(resource.name, key): is_secret(value)
                for resource in dev.resources.values() for key, value in resource.inputs.items()
                if PG_PASSWORD in json.dumps(unwrap(value), default=str)
                or REDIS_PASSWORD in json.dumps(unwrap(value), default=str)}
    assert carriers == {("postgres-container", "uploads"): True, ("redis-container", "uploads"): True,
                        ("post-deploy-step", "target"): True}


def test_volumes_are_named_mounted_and_retained_by_default(dev):
    assert dev.resources["postgres-data"].inputs["name"] == "postgres_data"
    assert dev.resources["redis-data"].inputs["name"] == "redis_data"
    assert dev.resources["postgres-container"].inputs["volumes"] == [
        {"volumeName": "postgres_data", "containerPath": "/var/lib/postgresql/data"}]
    assert dev.resources["redis-container"].inputs["volumes"] == [
        {"volumeName": "redis_data", "containerPath": "/data"}]


def test_images_are_kept_locally(dev):
    assert dev.resources["postgres-image"].inputs == {"name": "postgres:16-alpine", "keepLocally": True}
    assert dev.resources["redis-image"].inputs == {"name": "redis:7-alpine", "keepLocally": True}


def test_post_deploy_step_gets_migration_checksums_containers_and_a_secret_target(dev):
    step = dev.resources["post-deploy-step"].inputs
    assert [m["file"] for m in step["migrations"]] == ["V001__adr006_schema.sql"]
    assert len(step["migrations"][0]["sha256"]) == 64
    assert step["container_ids"] == ["postgres-container-id", "redis-container-id"]
    assert is_secret(step["target"])
    target = unwrap(step["target"])
    assert (target["postgres"]["host"], target["postgres"]["port"]) == ("127.0.0.1", 5432)
    assert (target["redis"]["host"], target["redis"]["port"]) == ("127.0.0.1", 6379)


def test_stack_outputs_are_the_contract_and_urls_are_secret(dev):
    values = {name: output_value(out) for name, out in dev.exports.items()}
    assert values["networkName"] == ("sin-network", False)
    assert values["networkId"] == ("sin-network-network-id", False)
    assert values["postgresContainerName"] == ("room-03-archiv-postgres", False)
    assert values["postgresIp"] == ("172.20.0.100", False)
    assert values["postgresHostPort"] == (5432, False)
    assert values["redisContainerName"] == ("room-04-memory-redis", False)
    assert values["redisIp"] == ("172.20.0.200", False)
    assert values["redisHostPort"] == (6379, False)
    assert values["postgresUrl"] == (f"postgresql://sinadmin:{PG_PASSWORD}@172.20.0.100:5432/sinsolver", True)
    assert values["redisUrl"] == (f"redis://:{REDIS_PASSWORD}@172.20.0.200:6379/0", True)
    assert values["clientSettings"][0]["postgres"] == {
        "poolMax": 20, "idleTimeoutMillis": 30000, "connectionTimeoutMillis": 2000}
    assert values["clientSettings"][0]["redis"]["retryMaxDelayMillis"] == 2000
    carrying_a_password = {name for name, (value, _) in values.items()
                           if PG_PASSWORD in json.dumps(value) or REDIS_PASSWORD in json.dumps(value)}
    assert carrying_a_password == {"postgresUrl", "redisUrl", "postgresHostUrl", "redisHostUrl", "connection"}
    connection = values["connection"][0]
    assert (connection["postgres"]["password"], connection["redis"]["password"]) == (PG_PASSWORD, REDIS_PASSWORD)
    assert (connection["postgres"]["port"], connection["redis"]["port"]) == (5432, 6379)
    assert all(values[name][1] for name in carrying_a_password), "outputs carrying a password must be secret"


def test_non_dev_stack_prefixes_names_unless_pinned():
    mocks = run_program({"networkSubnet": "172.30.0.0/16", "networkGateway": "172.30.0.1",
                         "networkIpRange": "172.30.128.0/17", "postgresIp": "172.30.0.100",
                         "redisIp": "172.30.0.200", "postgresHostPort": 15432, "redisHostPort": 16379,
                         "redisContainerName": "pinned-redis"}, stack="ci-7")
    assert mocks.resources["sin-network-network"].inputs["name"] == "ci-7-sin-network"
    assert mocks.resources["postgres-container"].inputs["name"] == "ci-7-room-03-archiv-postgres"
    assert mocks.resources["postgres-data"].inputs["name"] == "ci-7-postgres_data"
    assert mocks.resources["redis-data"].inputs["name"] == "ci-7-redis_data"
    assert mocks.resources["redis-container"].inputs["name"] == "pinned-redis"
    assert mocks.resources["postgres-container"].inputs["ports"][0]["external"] == 15432
    assert labels_of(mocks.resources["postgres-data"])["sin-datastores.stack"] == "ci-7"


def test_bind_address_and_memory_limits_come_from_config():
    mocks = run_program({"bindAddress": "0.0.0.0", "postgresMemoryMb": 1024, "redisMemoryMb": 128})
    assert mocks.resources["postgres-container"].inputs["ports"][0]["ip"] == "0.0.0.0"
    assert mocks.resources["postgres-container"].inputs["memory"] == 1024
    [upload] = unwrap(mocks.resources["redis-container"].inputs["uploads"])
    assert "maxmemory 96mb" in upload["content"].splitlines()
    # The post-deploy step still connects through loopback when the bind is a wildcard.
    assert unwrap(mocks.resources["post-deploy-step"].inputs["target"])["postgres"]["host"] == "127.0.0.1"


def test_invalid_configuration_declares_nothing():
    mocks = RecordingMocks()
    with pytest.raises(Exception, match="postgresHostPort: 0 is outside 1-65535"):
        run_program({"postgresHostPort": 0}, mocks=mocks)
    assert mocks.resources == {}


def test_the_program_looks_at_the_docker_host_with_the_parsed_configuration_before_declaring_anything():
    mocks = RecordingMocks()
    run_program({"postgresHostPort": 15432}, mocks=mocks)
    assert [cfg.postgres.host_port for cfg in mocks.looked] == [15432]

    def held(cfg):
        raise conflicts.HostConflicts("the local Docker Engine", [conflicts.Conflict(
            "postgresHostPort", "127.0.0.1:5432", "container 'legacy-db' publishes it", "stop it")])

    mocks = RecordingMocks()
    with pytest.raises(Exception, match="postgresHostPort 127.0.0.1:5432: container 'legacy-db' publishes it"):
        run_program(mocks=mocks, look=held)
    assert mocks.resources == {}


def test_a_conflict_on_the_host_is_the_programs_error_without_a_traceback(monkeypatch):
    import pulumi

    from infra import program as program_module

    def conflicted(cfg):
        raise conflicts.HostConflicts("h", [conflicts.Conflict("networkName", "sin-network", "held", "rename")])

    monkeypatch.setattr(conflicts, "check_host", conflicted)
    cfg = SimpleNamespace(stack="dev", cluster=None)
    with pytest.raises(pulumi.RunError, match="networkName sin-network: held; rename"):
        program_module.look_at_host(cfg)
    # `python -m infra` looked already (knowing the state's names): the program does not look again.
    monkeypatch.setenv(conflicts.LOOKED_ENV, "dev")
    program_module.look_at_host(cfg)
    monkeypatch.setenv(conflicts.LOOKED_ENV, "staging")
    with pytest.raises(pulumi.RunError):
        program_module.look_at_host(cfg)


def test_containers_are_deleted_before_replacement_and_wait_for_their_dependencies(dev):
    # A replacement needs the fixed IP and host port the old container holds.
    # A new healthcheck needs a new container: the provider would report an update it never applies.
    for name in ("postgres-container", "redis-container"):
        assert dev.options[name].delete_before_replace is True, name
        assert dev.options[name].replace_on_changes == ["healthcheck"], name
    assert {r._name for r in dev.options["post-deploy-step"].depends_on} == {"postgres", "redis"}
    # Nothing holds back the component and its provider: the provider process starts early.
    assert not dev.options["post-deploy"].depends_on and not dev.options["post-deploy-provider"].depends_on
    assert "pulumi:providers:pulumi-python::post-deploy-provider::" in dev.resources["post-deploy-step"].provider
    # Images and volumes do not wait for the network; the containers do, through their input.
    assert not dev.options["postgres"].depends_on and not dev.options["redis"].depends_on
    for name in ("postgres-container", "redis-container"):
        assert dev.urns["sin-network-network"] in dev.dependencies[name], name
    for name in ("postgres-image", "postgres-data", "redis-image", "redis-data"):
        assert dev.urns["sin-network-network"] not in dev.dependencies[name], name


def test_volumes_are_retained_on_delete_unless_released():
    assert run_program().options["postgres-data"].retain_on_delete is True
    released = run_program({"retainVolumes": "false"})
    assert released.options["postgres-data"].retain_on_delete is False
    assert released.options["redis-data"].retain_on_delete is False


def test_a_password_stored_in_plain_text_declares_nothing():
    mocks = RecordingMocks()
    with pytest.raises(Exception, match="postgresPassword: is stored in plain text in the stack configuration"):
        run_program(plain=("postgresPassword",), mocks=mocks)
    assert mocks.resources == {}


def test_the_project_name_comes_from_pulumi_and_labels_every_object():
    mocks = run_program(project="other-project")
    assert labels_of(mocks.resources["postgres-data"])["sin-datastores.project"] == "other-project"
    assert labels_of(mocks.resources["sin-network-network"])["sin-datastores.project"] == "other-project"
