"""The replicated topology's declarations under mocks: per host its servers, on its own provider,
with host networking, secrets only in uploads; the step's target and the exported contract."""

from __future__ import annotations

import base64
import json

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
    assert "clusterConverged" in exports
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


def test_every_container_waits_for_the_passwords_to_be_set_on_the_running_servers(replicated):
    """The rotation runs before any container is replaced: the new ones start with the new passwords."""
    step = next(r for r in replicated.resources.values() if r.name == "passwords-step")
    assert is_secret(step.inputs["secrets"]) and is_secret(step.inputs["target"])
    assert unwrap(step.inputs["secrets"]) == {
        "superuser": PG_PASSWORD, "replication": CLUSTER_SECRETS["replicationPassword"],
        "patroni_rest": CLUSTER_SECRETS["patroniRestPassword"], "redis": REDIS_PASSWORD,
        "sentinel": CLUSTER_SECRETS["sentinelPassword"]}
    assert list(unwrap(step.inputs["target"])["cluster"]["members"]) == list(ADDRESSES)
    assert replicated.options["passwords-step"].additional_secret_outputs == ["target", "secrets"]
    # Its provider is in the state by module and class name (no instance state): keep both.
    assert step.typ == "pulumi-python:dynamic:Resource" and is_secret(step.inputs["__provider"])
    pickled = base64.b64decode(unwrap(step.inputs["__provider"]))
    assert b"infra.components.rotation" in pickled and b"_RotationProvider" in pickled and len(pickled) < 200
    assert [r.name for r in replicated.of_type("sin-datastores:index:PasswordRotation")] == ["passwords"]
    for container in replicated.of_type(CONTAINER):
        assert any(urn.endswith("::passwords-step") for urn in replicated.dependencies[container.name]), container.name


def test_the_single_host_stack_declares_no_cluster(dev):
    assert not dev.of_type(MEMBER)


@pytest.fixture
def cluster_hosts(monkeypatch):
    """The look at the cluster's hosts with stand-ins: ``hosts`` (address -> a DockerHostError: out of reach),
    ``conflicts`` (address -> what a new member there collides with), ``etcd`` (the hosts in etcd's member
    list, read from the first listed host that answers, in ``asked``); ``tried`` records the hosts reached,
    ``cfg`` is the stack's; where the cluster takes writes is read through a stand-in too."""
    import contextlib
    from types import SimpleNamespace

    from infra import program as program_module
    from infra.core import conflicts, dockerhost
    from infra.core.cluster import Primaries
    from infra.core.config import ClusterHost
    from infra.core.targets import DockerHost
    from infra.deploy import etcd, replicated

    state = SimpleNamespace(tried=[], hosts={}, program=program_module, etcd=frozenset(), asked=[])

    @contextlib.contextmanager
    def session(host):
        address = host.url.rsplit("@", 1)[1]
        state.tried.append(host.url)
        if isinstance(state.hosts.get(address), Exception):
            raise state.hosts[address]
        yield SimpleNamespace(docker_env={"DOCKER_HOST": f"tcp://{address}:2375"})

    monkeypatch.setattr(dockerhost, "session", session)
    monkeypatch.setattr(etcd, "listed", lambda addresses: (
        state.asked.append(tuple(addresses)),
        ("10.9.0.2", tuple(etcd.EtcdMember(str(n), a) for n, a in enumerate(sorted(state.etcd))))
        if state.etcd else (None, ()))[1])
    state.conflicts = {}
    state.runs_etcd = {}
    monkeypatch.setattr(conflicts, "member_conflicts", lambda engine, stack, project, me, image, runs_etcd: (
        state.runs_etcd.__setitem__(me.address, runs_etcd) or state.conflicts.get(me.address, [])))
    monkeypatch.setattr(program_module, "cluster_target", lambda given: ("target of", given))
    state.masters = []
    monkeypatch.setattr(program_module, "refuse_redis_too_full", lambda cfg, master: state.masters.append(master))
    state.left = {}
    monkeypatch.setattr(conflicts, "left_volumes", lambda engine, stack: state.left.get(engine.address[6:-5], []))
    state.members = frozenset()
    monkeypatch.setattr(replicated, "primaries", lambda target: Primaries(
        "read through", repr(target), state.members))
    hosts = tuple(ClusterHost(DockerHost(f"ssh://root@{a}"), a) for a in ADDRESSES)
    state.cfg = SimpleNamespace(stack="prod", project="sin-datastores",
                                cluster=SimpleNamespace(hosts=hosts, addresses=ADDRESSES, patroni_image="patroni:x"))
    state.error = dockerhost.DockerHostError
    return state


def test_a_host_that_cannot_be_reached_stops_the_run_before_anything_is_declared(cluster_hosts):
    """Every host is tried; the error names each one out of reach and why, and that nothing changed."""
    import pulumi

    cluster_hosts.hosts["10.9.0.3"] = cluster_hosts.error("ssh://root@10.9.0.3: SSH connection timed out")
    with pytest.raises(pulumi.RunError) as raised:
        cluster_hosts.program.look_at_host(cluster_hosts.cfg)
    assert sorted(cluster_hosts.tried) == [f"ssh://root@{a}" for a in ADDRESSES]
    message = str(raised.value)
    assert message.startswith("1 of the 3 hosts of the replicated cluster cannot be reached, so nothing was "
                              "previewed or changed on any host: ssh://root@10.9.0.3")
    assert "SSH connection timed out" in message and "python -m infra status --stack prod" in message
    assert "take it off replicatedHosts, run `python -m infra forget-host --stack prod --host <address>`" in message


def test_every_host_reached_the_run_goes_on_knowing_where_the_cluster_takes_writes(cluster_hosts):
    from infra.core.cluster import Primaries

    cfg = cluster_hosts.cfg
    cluster_hosts.etcd = frozenset(ADDRESSES)
    cluster_hosts.members = frozenset(ADDRESSES)
    assert cluster_hosts.program.look_at_host(cfg) == Primaries("read through", repr(("target of", cfg)),
                                                                frozenset(ADDRESSES), frozenset(ADDRESSES))
    assert len(cluster_hosts.tried) == 3 and cluster_hosts.runs_etcd == {a: True for a in ADDRESSES}
    assert cluster_hosts.asked == [ADDRESSES], "etcd's members asked of the listed hosts"
    assert cluster_hosts.masters == [repr(("target of", cfg))], "what the Redis master holds is read before declaring"
    cluster_hosts.etcd = frozenset()  # a new cluster: no member runs anywhere yet
    cluster_hosts.members = frozenset()
    assert cluster_hosts.program.look_at_host(cfg) == Primaries("read through", repr(("target of", cfg)))


def grow(cluster_hosts, *addresses):
    """The stack's list set to ``addresses``, etcd's members on the first three of ADDRESSES."""
    from types import SimpleNamespace

    from infra.core.config import ClusterHost
    from infra.core.targets import DockerHost

    hosts = tuple(ClusterHost(DockerHost(f"ssh://root@{a}"), a) for a in addresses)
    cluster_hosts.cfg.cluster = SimpleNamespace(hosts=hosts, addresses=addresses, patroni_image="patroni:x")
    cluster_hosts.etcd = frozenset(ADDRESSES)


@pytest.mark.parametrize("members, listed", [
    pytest.param(ADDRESSES, (*ADDRESSES, "10.9.0.5"), id="a host added"),
    pytest.param((*ADDRESSES, "10.9.0.5"), ADDRESSES, id="a host removed"),
    pytest.param((), (*ADDRESSES, "10.9.0.5"), id="a new cluster of four"),
])
def test_one_host_after_the_etcd_hosts_joins_or_leaves_per_run(cluster_hosts, members, listed):
    grow(cluster_hosts, *listed)
    cluster_hosts.members = frozenset(members)
    assert cluster_hosts.program.look_at_host(cluster_hosts.cfg).members == frozenset(members)
    assert cluster_hosts.runs_etcd == {a: a in ADDRESSES for a in listed}, "etcd on the first three only"


@pytest.mark.parametrize("members, listed, said", [
    pytest.param(ADDRESSES, (*ADDRESSES, "10.9.0.5", "10.9.0.6"), "adds 10.9.0.5, 10.9.0.6 and removes no host",
                 id="two hosts added"),
    pytest.param((*ADDRESSES, "10.9.0.5", "10.9.0.6"), ADDRESSES, "adds no host and removes 10.9.0.5, 10.9.0.6",
                 id="two hosts removed"),
    pytest.param((*ADDRESSES, "10.9.0.5"), (*ADDRESSES, "10.9.0.6"), "adds 10.9.0.6 and removes 10.9.0.5",
                 id="a host swapped"),
])
def test_a_host_list_changed_by_more_than_one_host_is_refused_before_anything_is_declared(
        cluster_hosts, members, listed, said):
    import pulumi

    grow(cluster_hosts, *listed)
    cluster_hosts.members = frozenset(members)
    with pytest.raises(pulumi.RunError) as raised:
        cluster_hosts.program.look_at_host(cluster_hosts.cfg)
    assert str(raised.value) == (
        f"replicatedHosts {said} at once, so nothing was previewed or changed on any host: change one host per "
        "`up` (`pulumi config set replicatedHosts ssh://<user>@<address>,... --stack prod`, then `pulumi up`, for "
        "each).")
    assert cluster_hosts.tried == [], "refused before any host is reached (a host swapped in may not be set up)"


def test_a_host_joining_with_the_volumes_a_departed_member_left_is_refused_and_they_are_kept(cluster_hosts):
    """Its PostgreSQL and Redis would start on their old data beside the cluster's; volumes are retained by
    default, and nothing deletes data to make a run succeed."""
    import pulumi

    grow(cluster_hosts, *ADDRESSES, "10.9.0.5")
    cluster_hosts.members = frozenset(ADDRESSES)
    cluster_hosts.left["10.9.0.5"] = ["prod-patroni-data", "prod-redis-data"]
    with pytest.raises(pulumi.RunError) as raised:
        cluster_hosts.program.look_at_host(cluster_hosts.cfg)
    assert str(raised.value) == (
        "ssh://root@10.9.0.5 joins the running cluster but still has the data volumes a member of this stack left "
        "there when the host was taken off the list (prod-patroni-data, prod-redis-data), so nothing was previewed "
        "or changed on any host: a joining member starts empty and copies the cluster. Keep what you need from them, "
        "remove them on that host (`docker volume rm prod-patroni-data prod-redis-data`), then run again.")
    cluster_hosts.members = frozenset()  # no cluster running: a destroyed stack's retained volumes come back
    assert cluster_hosts.program.look_at_host(cluster_hosts.cfg).members == frozenset()


@pytest.mark.parametrize("members, listed, etcd", [
    pytest.param((*ADDRESSES, "10.9.0.5"), ("10.9.0.2", "10.9.0.3", "10.9.0.5"), ADDRESSES,
                 id="the third host removed, the fourth takes its place"),
    pytest.param((*ADDRESSES, "10.9.0.5"), ("10.9.0.3", "10.9.0.4", "10.9.0.5"), ADDRESSES,
                 id="the first host removed"),
    pytest.param((*ADDRESSES, "10.9.0.5"), ("10.9.0.2", "10.9.0.3", "10.9.0.5"), ADDRESSES[:2],
                 id="run again after the member was removed"),
    pytest.param((*ADDRESSES, "10.9.0.5"), ("10.9.0.2", "10.9.0.3", "10.9.0.5"),
                 ("10.9.0.2", "10.9.0.3", "10.9.0.5"), id="run again after the member was added"),
    pytest.param(ADDRESSES, ("10.9.0.4", "10.9.0.2", "10.9.0.3"), ADDRESSES, id="reordered"),
])
def test_etcd_moves_off_a_host_taken_off_the_list_to_the_host_that_takes_its_place(
        cluster_hosts, members, listed, etcd):
    grow(cluster_hosts, *listed)
    cluster_hosts.members, cluster_hosts.etcd = frozenset(members), frozenset(etcd)
    looked = cluster_hosts.program.look_at_host(cluster_hosts.cfg)
    assert looked.etcd == frozenset(etcd), "a member created now joins the running etcd"
    assert cluster_hosts.runs_etcd == {a: a in listed[:3] for a in listed}


@pytest.mark.parametrize("listed, etcd", [
    pytest.param(("10.9.0.2", "10.9.0.5", "10.9.0.3", "10.9.0.4"), ADDRESSES, id="a host added before the third"),
    pytest.param(("10.9.0.2", "10.9.0.5", "10.9.0.6"), ADDRESSES, id="two etcd hosts removed"),
    pytest.param(("10.9.0.2", "10.9.0.5", "10.9.0.6", "10.9.0.3"), ADDRESSES[:2], id="two etcd hosts added"),
])
def test_a_list_that_would_move_etcd_otherwise_is_refused_before_any_host_is_reached(cluster_hosts, listed, etcd):
    """Kept on the list but after the first three, a host's member would be removed with its data in
    place; two at once would leave etcd without a majority of its members while they move."""
    import pulumi

    grow(cluster_hosts, *listed)
    cluster_hosts.etcd = frozenset(etcd)
    # A host swapped in may not be set up yet: the changed list is what the operator hears of.
    cluster_hosts.hosts.setdefault("10.9.0.5", cluster_hosts.error("ssh://root@10.9.0.5: No route to host"))
    with pytest.raises(pulumi.RunError) as raised:
        cluster_hosts.program.look_at_host(cluster_hosts.cfg)
    assert str(raised.value) == (
        f"replicatedHosts lists {', '.join(listed)}, whose first 3 would run etcd, but etcd's members are on "
        f"{', '.join(sorted(etcd))}, so nothing was previewed or changed on any host: etcd moves one host per `up`, "
        "and only off a host taken off the list (the next host takes its place). Keep the hosts that run etcd first, "
        "in any order; to move etcd off one of them, take that host off the list (`pulumi config set "
        "replicatedHosts ssh://<user>@<address>,... --stack prod`).")
    assert cluster_hosts.tried == [], "no host reached"


def test_what_a_new_member_would_collide_with_is_refused_naming_each_host_before_anything_is_declared(
        cluster_hosts):
    import pulumi

    cluster_hosts.conflicts["10.9.0.4"] = ["port 10.9.0.4:5432 (patroni): something on the host listens there",
                                           "container name prod-etcd (etcd): taken by a container not made by "
                                           "this stack"]
    cluster_hosts.hosts["10.9.0.3"] = cluster_hosts.error("ssh://root@10.9.0.3: No route to host")
    with pytest.raises(pulumi.RunError) as raised:
        cluster_hosts.program.look_at_host(cluster_hosts.cfg)
    assert str(raised.value).splitlines() == [
        "the hosts of the replicated cluster already have what its new members would take, so nothing was "
        "previewed or changed on any host (2 conflicts):",
        "  - ssh://root@10.9.0.4: port 10.9.0.4:5432 (patroni): something on the host listens there",
        "  - ssh://root@10.9.0.4: container name prod-etcd (etcd): taken by a container not made by this stack",
        "Free them on those hosts (stop the process or remove the object), then run again."]


def rolled(primaries):
    from infra.core.cluster import Primaries
    return run_program({"topology": "replicated", "replicatedHosts": ",".join(f"ssh://root@{a}" for a in ADDRESSES),
                        "dockerSshKeyFile": "/keys/id", "healthTimeoutSeconds": "240", **CLUSTER_SECRETS},
                       stack="prod", look=lambda cfg: Primaries(*primaries))


def chain(mocks, role: str) -> list[str]:
    """The hosts of ``role``'s containers in the order their dependencies force, each after the one before."""
    containers = {c.name: c for c in mocks.of_type(CONTAINER) if c.name.endswith(f"-{role}")}
    urns = {mocks.urns[name]: name for name in containers}
    waits = {name: [urns[d] for d in mocks.dependencies[name] if d in urns] for name in containers}
    first = [name for name, before in waits.items() if not before]
    assert len(first) == 1, f"{role}: {waits}"
    order = first
    while len(order) < len(containers):
        order.append(next(name for name, before in waits.items() if before == [order[-1]]))
    return [name.split("-")[1] for name in order]


def test_a_change_reaches_the_primaries_hosts_last_one_host_at_a_time():
    """Patroni's containers follow the leader, Redis' and the Sentinels' the master: the others in list
    order first, each waiting for the one before to be healthy."""
    mocks = rolled(("10.9.0.2", "10.9.0.3"))
    assert chain(mocks, "patroni") == ["m10_9_0_3", "m10_9_0_4", "m10_9_0_2"]
    assert chain(mocks, "redis") == ["m10_9_0_2", "m10_9_0_4", "m10_9_0_3"]
    assert chain(mocks, "sentinel") == ["m10_9_0_2", "m10_9_0_4", "m10_9_0_3"]


def test_a_new_cluster_comes_up_in_list_order_the_first_host_first_etcd_all_at_once():
    mocks = rolled((None, None))
    for role in ("patroni", "redis", "sentinel"):
        assert chain(mocks, role) == ["m10_9_0_2", "m10_9_0_3", "m10_9_0_4"], role
    for container in mocks.of_type(CONTAINER):
        if container.name.endswith("-etcd"):
            assert not [d for d in mocks.dependencies[container.name] if d.endswith("-etcd")], container.name


def test_etcd_of_a_running_cluster_rolls_in_list_order():
    assert chain(rolled(("10.9.0.3", "10.9.0.3")), "etcd") == ["m10_9_0_2", "m10_9_0_3", "m10_9_0_4"]


def test_up_waits_for_each_server_to_be_healthy_but_haproxy():
    """HAProxy keeps nothing and restarts at once: on a running cluster each waits only for the one
    before it to be started, one endpoint at a time."""
    mocks = rolled(("10.9.0.4", "10.9.0.4"))
    for container in mocks.of_type(CONTAINER):
        role = container.name.rsplit("-", 1)[1]
        if role != "haproxy":
            assert container.inputs["wait"] is True and container.inputs["waitTimeout"] == 240, container.name
            check = container.inputs["healthcheck"]
            assert check["interval"] == "2s" and check["startPeriod"] == "4m0s", container.name
            assert "startInterval" not in check, "Docker before 25 (API 1.44) refuses it"
            assert not any(p in repr(check) for p in PASSWORDS), container.name
            assert "healthcheck" in mocks.options[container.name].replace_on_changes
        else:
            assert "wait" not in container.inputs and "healthcheck" not in container.inputs, container.name
    assert chain(mocks, "haproxy") == ["m10_9_0_2", "m10_9_0_3", "m10_9_0_4"]
    new = rolled((None, None))
    for container in new.of_type(CONTAINER):
        if container.name.endswith("-haproxy"):
            assert not [d for d in new.dependencies[container.name] if d.endswith("-haproxy")], \
                "a new cluster's endpoints start together"


def test_each_member_is_its_images_volumes_and_containers_as_the_plain_servers_say(replicated):
    """What each container runs (command, uploads, mounts, health, memory) is the member's servers of
    infra.core.cluster, under the member; its images are kept on the host, its volumes retained as set."""
    from infra.core import cluster
    from infra.core.config import ClusterSecrets

    me = cluster.members(ADDRESSES)[1]
    secrets = ClusterSecrets(superuser=PG_PASSWORD, replication=CLUSTER_SECRETS["replicationPassword"],
                             patroni_rest=CLUSTER_SECRETS["patroniRestPassword"], redis=REDIS_PASSWORD,
                             sentinel=CLUSTER_SECRETS["sentinelPassword"])
    servers = {s.role: s for s in cluster.servers(cluster.members(ADDRESSES), me, "prod", "sinadmin", secrets,
                                                  512, 256)}
    images = [r for r in replicated.of_type("docker:index/remoteImage:RemoteImage")
              if r.name.startswith(f"member-{me.name}-")]
    assert sorted(r.name.split("-")[2] for r in images) == ["etcd", "haproxy", "patroni", "redis"]
    assert all(r.inputs["keepLocally"] is True for r in images)
    volumes = [v for v in replicated.of_type(VOLUME) if v.name.startswith(f"member-{me.name}-")]
    for resource in [*images, *volumes]:
        assert replicated.parent_type(resource.name) == MEMBER, resource.name
    assert all(replicated.options[v.name].retain_on_delete for v in volumes), "a stack keeps its volumes by default"
    for role, server in servers.items():
        container = next(c for c in replicated.of_type(CONTAINER) if c.name == f"member-{me.name}-{role}")
        inputs = container.inputs
        assert replicated.parent_type(container.name) == MEMBER
        assert inputs.get("command") == (list(server.command) or None), role
        assert inputs["memory"] == server.memory_mb and inputs["memorySwap"] == server.memory_mb, role
        uploads = unwrap(inputs.get("uploads")) or []
        assert {u["file"]: u["content"] for u in uploads} == server.files, role
        mounts = inputs.get("volumes")
        if server.data_path:
            assert mounts == [{"volumeName": f"prod-{role}-data", "containerPath": server.data_path}], role
        else:
            assert mounts is None, role
        if server.health:
            assert inputs["healthcheck"]["tests"] == ["CMD-SHELL", server.health], role
    assert {k: len(v) for k, v in replicated.component_outputs[f"member-{me.name}"].items()} == {"container_ids": 5}


FOUR = (*ADDRESSES, "10.9.0.5")
MEMBERSHIP = "pulumi-python:dynamic:Resource"


@pytest.fixture(scope="module")
def four_hosts():
    return run_program({"topology": "replicated", "replicatedHosts": ",".join(f"ssh://root@{a}" for a in FOUR),
                        "dockerSshKeyFile": "/keys/id", **CLUSTER_SECRETS}, stack="prod")


def test_a_fourth_host_runs_every_server_but_etcd(four_hosts):
    mine = {c.inputs["name"] for c in four_hosts.of_type(CONTAINER) if c.name.startswith("member-m10_9_0_5-")}
    assert mine == {"prod-patroni", "prod-haproxy", "prod-redis", "prod-sentinel"}
    assert len(four_hosts.of_type(CONTAINER)) == 3 * 5 + 4
    assert not [r for r in [*four_hosts.of_type(VOLUME), *four_hosts.of_type("docker:index/remoteImage:RemoteImage")]
                if r.name.startswith("member-m10_9_0_5-etcd")], "nor its volume or image"
    patroni = next(c for c in four_hosts.of_type(CONTAINER) if c.name == "member-m10_9_0_5-patroni")
    config = yaml.safe_load(next(u["content"] for u in unwrap(patroni.inputs["uploads"])))
    assert config["etcd3"]["hosts"] == [f"{a}:2379" for a in ADDRESSES]


def test_every_container_goes_before_every_membership_which_waits_for_the_first_hosts(four_hosts):
    """A membership is deleted after the containers (its delete makes the others forget the host; when
    the stack is destroyed, no server is left to forget it); the first host's, which stops a leaving
    host's servers, comes before every other."""
    seats = {r.name: r for r in four_hosts.of_type(MEMBERSHIP) if r.name.endswith("-membership")}
    assert sorted(seats) == sorted(f"member-m{a.replace('.', '_')}-membership" for a in FOUR)
    first = four_hosts.urns["member-m10_9_0_2-membership"]
    for name, seat in seats.items():
        member = name.removesuffix("-membership")
        assert four_hosts.parent_type(name) == MEMBER
        assert seat.inputs["address"] == member[len("member-m"):].replace("_", ".")
        assert is_secret(seat.inputs["target"])
        assert unwrap(seat.inputs["target"])["cluster"]["members"] == list(FOUR)
        assert seat.inputs["hosts"] == {a: {"url": f"ssh://root@{a}", "ssh_key_file": "/keys/id",
                                            "ssh_known_hosts_file": ""} for a in FOUR}
        assert four_hosts.options[name].additional_secret_outputs == ["target"]
        assert seat.inputs["deadline_s"] == 120, "healthTimeoutSeconds"
        pickled = base64.b64decode(unwrap(seat.inputs["__provider"]))
        assert b"infra.components.membership" in pickled and b"_MembershipProvider" in pickled
        assert (first in four_hosts.dependencies[name]) == (name != "member-m10_9_0_2-membership"), name
        for container in four_hosts.of_type(CONTAINER):
            assert four_hosts.urns[name] in four_hosts.dependencies[container.name], container.name


def test_a_host_joining_the_running_cluster_comes_after_the_primaries():
    from infra.core.cluster import Primaries

    mocks = run_program({"topology": "replicated", "replicatedHosts": ",".join(f"ssh://root@{a}" for a in FOUR),
                         "dockerSshKeyFile": "/keys/id", **CLUSTER_SECRETS}, stack="prod",
                        look=lambda cfg: Primaries("10.9.0.3", "10.9.0.2", frozenset(ADDRESSES)))
    assert chain(mocks, "patroni") == ["m10_9_0_2", "m10_9_0_4", "m10_9_0_3", "m10_9_0_5"]
    assert chain(mocks, "redis") == ["m10_9_0_3", "m10_9_0_4", "m10_9_0_2", "m10_9_0_5"]


BACKUPS = {"backupSchedule": "0 3 * * *", "backupPassphrase": "b" * 20, "backupS3Bucket": "sin-backups",
           "backupS3Endpoint": "http://10.9.0.1:7070", "backupS3AccessKeyId": "AKIAEXAMPLE",
           "backupS3SecretAccessKey": "s" * 30}


@pytest.fixture(scope="module")
def backed_up():
    return run_program({"topology": "replicated", "replicatedHosts": ",".join(f"ssh://root@{a}" for a in ADDRESSES),
                        "dockerSshKeyFile": "/keys/id", **CLUSTER_SECRETS, **BACKUPS}, stack="prod")


def test_with_backups_every_member_archives_its_wal_into_a_volume_of_its_own(backed_up, replicated):
    for address in ADDRESSES:
        name = "m" + address.replace(".", "_")
        patroni = backed_up.resources[f"member-{name}-patroni"].inputs
        mounts = {v["volumeName"]: v["containerPath"] for v in patroni["volumes"]}
        assert mounts == {"prod-patroni-data": "/var/lib/postgresql/data",
                          "prod-patroni-archive": "/var/lib/postgresql"}
        parameters = yaml.safe_load(unwrap(patroni["uploads"])[0]["content"])["postgresql"]["parameters"]
        assert (parameters["archive_mode"], parameters["archive_timeout"]) == ("always", 30)
        assert "/var/lib/postgresql/wal-archive/%f" in parameters["archive_command"]
    without = yaml.safe_load(unwrap(replicated.resources["member-m10_9_0_2-patroni"].inputs["uploads"])[0]["content"])
    assert "archive_mode" not in without["postgresql"]["parameters"], "backups off: no archiving, no change"
    assert "prod-patroni-archive" not in {v.inputs["name"] for v in replicated.of_type(VOLUME)}


def test_with_backups_every_host_runs_an_agent_beside_its_own_servers_over_loopback(backed_up, replicated):
    agents = backed_up.of_type("sin-datastores:index:BackupAgent")
    assert sorted(a.name for a in agents) == [f"member-m{a.replace('.', '_')}-backup" for a in ADDRESSES]
    assert not replicated.of_type("sin-datastores:index:BackupAgent")
    for address in ADDRESSES:
        name = "m" + address.replace(".", "_")
        assert backed_up.parent_type(f"member-{name}-backup") == MEMBER
        container = backed_up.resources[f"member-{name}-backup-container"]
        assert f"pulumi:providers:docker::docker-{name}::" in container.provider
        agent = container.inputs
        assert (agent["name"], agent["networkMode"]) == ("prod-backup", "host")
        mounts = {v["volumeName"]: (v["containerPath"], v.get("readOnly", False)) for v in agent["volumes"]}
        assert mounts == {"prod-patroni-data": ("/sources/postgres/data", True),
                          "prod-patroni-archive": ("/sources/postgres-archive", False),
                          "prod-redis-data": ("/sources/redis", True), "prod-backup-data": ("/backups", False)}
        uploads = {u["file"]: u["content"] for u in unwrap(agent["uploads"])}
        settings = json.loads(uploads["/etc/sin-backup/agent.json"])
        assert settings["replicated"] is True and settings["pgdata"] == "/sources/postgres/data/pg16"
        assert (settings["postgres_host"], settings["postgres_port"], settings["redis_port"]) == (
            "127.0.0.1", 5432, 6379)
        assert settings["s3"] == {"bucket": "sin-backups", "prefix": "prod", "endpoint": "http://10.9.0.1:7070",
                                  "region": "us-east-1"}
        assert uploads["/run/secrets/postgres-password"] == PG_PASSWORD
        assert not any(p in repr({k: v for k, v in agent.items() if k != "uploads"}) for p in PASSWORDS)
        waits_for = backed_up.dependencies[f"member-{name}-backup-container"]
        for mine in ("patroni", "redis"):
            assert backed_up.urns[f"member-{name}-{mine}"] in waits_for, mine
        assert all(backed_up.urns[f"member-m{a.replace('.', '_')}-membership"] in waits_for for a in ADDRESSES)


def test_with_backups_the_contract_names_the_schedule_and_the_bucket_status_reads(backed_up, replicated):
    exports = {name: output_value(out) for name, out in backed_up.exports.items()}
    assert exports["backupSchedule"] == ("0 3 * * *", False)
    assert exports["backupS3Url"] == ("s3://sin-backups/prod", False)
    assert "backupSchedule" not in replicated.exports and "backupContainerName" not in backed_up.exports


def test_an_etcd_member_created_beside_running_etcd_joins_it_and_no_running_member_is_replaced_for_its_list():
    """Once etcd runs, a container created for a member (the host taking an etcd host's place) starts
    with ``--initial-cluster-state existing``; every etcd container's arguments only seed it."""
    def etcd_commands(mocks):
        return {c.name: c.inputs["command"] for c in mocks.of_type(CONTAINER) if c.name.endswith("-etcd")}

    new = rolled((None, None))
    joining = rolled(("10.9.0.2", "10.9.0.2", frozenset(ADDRESSES), frozenset(ADDRESSES[:2])))
    for mocks, state in ((new, "new"), (joining, "existing")):
        commands = etcd_commands(mocks)
        assert len(commands) == 3
        for command in commands.values():
            assert command[command.index("--initial-cluster-state") + 1] == state
        for name in commands:
            assert mocks.options[name].ignore_changes == ["command"], name
    others = [c.name for c in new.of_type(CONTAINER) if not c.name.endswith("-etcd")]
    assert others and not any(new.options[name].ignore_changes for name in others)
