"""The replicated topology's declarations under mocks: per host its servers, on its own provider,
with host networking, secrets only in uploads; the step's target and the exported contract."""

from __future__ import annotations

import pytest
import yaml

from tests.unit.program_mocks import PG_PASSWORD, REDIS_PASSWORD, is_secret, output_value, run_program, unwrap

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
MEMBER = "sin-datastores:index:ClusterMember"
ADDRESSES = ("10.9.0.2", "10.9.0.3", "10.9.0.4")
CLUSTER_SECRETS = {"replicationPassword": "replication-unit-password-01", "patroniRestPassword":
                   "patroni-rest-unit-password-01", "sentinelPassword": "sentinel-unit-password-0123"}
PASSWORDS = (PG_PASSWORD, REDIS_PASSWORD, *CLUSTER_SECRETS.values())


@pytest.fixture(scope="module")
def replicated():
    return run_program({"topology": "replicated", "replicatedHosts": ",".join(f"ssh://root@{a}" for a in ADDRESSES),
                        "dockerSshKeyFile": "/keys/id", **CLUSTER_SECRETS}, stack="prod")


def test_each_host_gets_its_five_servers_on_its_own_provider(replicated):
    members = replicated.of_type(MEMBER)
    assert sorted(m.name for m in members) == ["member-m10_9_0_2", "member-m10_9_0_3", "member-m10_9_0_4"]
    containers = replicated.of_type(CONTAINER)
    assert len(containers) == 15
    for address in ADDRESSES:
        name = "m" + address.replace(".", "_")
        mine = [c for c in containers if c.name.startswith(f"member-{name}-")]
        assert sorted(c.inputs["name"] for c in mine) == ["prod-etcd", "prod-haproxy", "prod-patroni", "prod-redis",
                                                          "prod-sentinel"]
        assert all(f"pulumi:providers:docker::docker-{name}::" in c.provider for c in mine)
        assert all(c.inputs["networkMode"] == "host" for c in mine)
        assert all(replicated.options[c.name].delete_before_replace for c in mine)
    providers = {r.name: r.inputs for r in replicated.of_type("pulumi:providers:docker")}
    assert providers["docker-m10_9_0_3"]["host"] == "ssh://root@10.9.0.3"
    assert "/keys/id" in providers["docker-m10_9_0_3"]["sshOpts"]
    assert "docker-host" not in providers  # nothing goes to an implicit engine


def test_data_volumes_for_everything_but_haproxy(replicated):
    assert sorted({v.inputs["name"] for v in replicated.of_type(VOLUME)}) == [
        "prod-etcd-data", "prod-patroni-data", "prod-redis-data", "prod-sentinel-data"]
    assert len(replicated.of_type(VOLUME)) == 12


def test_passwords_go_only_into_secret_uploads(replicated):
    for container in replicated.of_type(CONTAINER):
        plain = repr({k: v for k, v in container.inputs.items() if k != "uploads"})
        assert not any(p in plain for p in PASSWORDS), container.name
        if "uploads" in container.inputs:
            assert is_secret(container.inputs["uploads"]), container.name
            assert all(u["permissions"] == "0400" for u in unwrap(container.inputs["uploads"])), container.name
    patroni = next(c for c in replicated.of_type(CONTAINER) if c.name == "member-m10_9_0_3-patroni")
    config = yaml.safe_load(unwrap(patroni.inputs["uploads"])[0]["content"])
    assert config["postgresql"]["authentication"]["replication"]["password"] == CLUSTER_SECRETS["replicationPassword"]
    assert config["postgresql"]["connect_address"] == "10.9.0.3:5432"


def test_the_contract_names_the_endpoints_the_sentinels_and_keeps_passwords_secret(replicated):
    exports = {name: output_value(out) for name, out in replicated.exports.items()}
    assert exports["topology"] == ("replicated", False)
    assert exports["postgresEndpoints"][0] == [f"{a}:5000" for a in ADDRESSES]
    assert exports["sentinels"][0] == [f"{a}:26379" for a in ADDRESSES]
    assert exports["sentinelMasterName"] == ("sin-redis", False)
    url, secret = exports["postgresUrl"]
    assert secret and url.endswith("@10.9.0.2:5000,10.9.0.3:5000,10.9.0.4:5000/sinsolver")
    connection, secret = exports["connection"]
    assert secret and list(connection["cluster"]["members"]) == list(ADDRESSES)
    for name, (value, secret) in exports.items():
        if not secret:
            assert not any(p in repr(value) for p in PASSWORDS), name


def test_the_step_waits_for_every_host_and_reruns_when_a_container_is_replaced(replicated):
    step = next(r for r in replicated.resources.values() if r.name == "post-deploy-step")
    target = unwrap(step.inputs["target"])
    assert (target["postgres"]["host"], target["postgres"]["port"]) == ("10.9.0.2", 5000)
    assert target["cluster"]["master_name"] == "sin-redis"
    assert len(unwrap(step.inputs["container_ids"])) == 15
    waits_for = replicated.dependencies["post-deploy-step"]
    assert sum("$docker:index/container:Container::" in urn for urn in waits_for) == 15


def test_the_single_host_stack_declares_no_cluster(dev):
    assert not dev.of_type(MEMBER)


def test_a_host_that_cannot_be_reached_stops_the_run_before_anything_is_declared(monkeypatch):
    """Every host is tried; the error names each one out of reach and why, and that nothing changed."""
    import contextlib
    from types import SimpleNamespace

    import pulumi

    from infra import program as program_module
    from infra.core import dockerhost
    from infra.core.config import ClusterHost
    from infra.core.targets import DockerHost

    tried = []

    @contextlib.contextmanager
    def session(host):
        tried.append(host.url)
        if host.url.endswith("10.9.0.3"):
            raise dockerhost.DockerHostError(f"{host.describe()}: SSH connection timed out")
        yield SimpleNamespace()

    monkeypatch.setattr(dockerhost, "session", session)
    hosts = tuple(ClusterHost(DockerHost(f"ssh://root@{a}"), a) for a in ADDRESSES)
    cfg = SimpleNamespace(stack="prod", cluster=SimpleNamespace(hosts=hosts))
    with pytest.raises(pulumi.RunError) as raised:
        program_module.look_at_host(cfg)
    assert sorted(tried) == [f"ssh://root@{a}" for a in ADDRESSES]
    message = str(raised.value)
    assert message.startswith("1 of the 3 hosts of the replicated cluster cannot be reached, so nothing was "
                              "previewed or changed on any host: ssh://root@10.9.0.3")
    assert "SSH connection timed out" in message and "python -m infra status --stack prod" in message
    tried.clear()
    monkeypatch.setattr(dockerhost, "session", lambda host: contextlib.nullcontext(tried.append(host.url)))
    program_module.look_at_host(cfg)  # every host reached: the run goes on
    assert len(tried) == 3
