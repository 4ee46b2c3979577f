"""The look at the Docker host before anything is created: each conflict names the setting, what holds
it and the fix; what the stack owns (by its labels, or by its state) is no conflict."""

from __future__ import annotations

import ipaddress

import pytest

from infra.core import conflicts
from infra.core.config import parse

CFG = parse({"postgresPassword": "p" * 16, "redisPassword": "r" * 16}, "dev")
OWN = {"sin-datastores.project": "sin-datastores", "sin-datastores.stack": "dev", "sin-datastores.role": "postgres"}
OTHER_STACK = {**OWN, "sin-datastores.stack": "staging"}
COMPOSE = {"com.docker.compose.project": "sin-solver"}


def container(name: str, labels: dict, state: str = "running", ports: tuple = ()) -> dict:
    """A container as GET /containers/json lists it."""
    return {"Id": "c0ffee" * 10, "Names": [f"/{name}"], "Image": "postgres:16-alpine", "State": state,
            "Labels": labels, "Ports": [{"IP": ip, "PrivatePort": 1, "PublicPort": port, "Type": "tcp"}
                                        for ip, port in ports]}


def network(name: str, subnet: str, labels: dict | None = None) -> dict:
    return {"Id": "beef" * 16, "Name": name, "Labels": labels or {}, "IPAM": {"Config": [{"Subnet": subnet}]}}


class FakeEngine:
    """Answers like the Engine API; a port listed in ``process_ports`` cannot be published (a process holds it)."""

    def __init__(self, containers=(), networks=(), volumes=(), images=("postgres:16-alpine",), process_ports=()):
        self._containers, self._networks, self._volumes = list(containers), list(networks), list(volumes)
        self.images, self.process_ports = set(images), set(process_ports)
        self.probes: list[tuple[str, str, int]] = []
        self.left: set[str] = set()

    def containers(self):
        return self._containers

    def networks(self):
        return [network("bridge", "172.17.0.0/16"), network("host", ""), *self._networks]

    def volumes(self):
        return self._volumes

    def has_image(self, name):
        return name in self.images

    def request(self, method, path, body=None):
        if method == "POST" and path.startswith("/containers/create"):
            name = path.split("name=")[1]
            self.left.add(name)
            binding = next(iter(body["HostConfig"]["PortBindings"].values()))[0]
            self.probes.append((body["Image"], binding["HostIp"], int(binding["HostPort"])))
            self._probing = int(binding["HostPort"])
            return 201, {"Id": name}
        if method == "POST" and path.endswith("/start"):
            if self._probing in self.process_ports:
                return 500, {"message": f"driver failed programming external connectivity: listen tcp4 "
                                        f"127.0.0.1:{self._probing}: bind: address already in use"}
            return 204, None
        if method == "DELETE":
            self.left.discard(path.split("/")[2].split("?")[0])
            return 204, None
        raise AssertionError((method, path))


def found(engine: FakeEngine, exempt=frozenset()) -> list[conflicts.Conflict]:
    return conflicts.find(engine, CFG, "the local Docker Engine", exempt)


def test_an_empty_host_has_no_conflict_and_each_port_is_tried_once_with_the_stacks_image():
    engine = FakeEngine()
    assert found(engine) == []
    assert sorted(engine.probes) == [("postgres:16-alpine", "127.0.0.1", 5432), ("postgres:16-alpine", "127.0.0.1", 6379)]
    assert engine.left == set(), "every probe container is removed"


def test_a_deployed_stack_conflicts_with_nothing_it_owns_and_needs_no_probe():
    engine = FakeEngine(
        containers=[container("room-03-archiv-postgres", OWN, ports=(("127.0.0.1", 5432),)),
                    container("room-04-memory-redis", OWN, ports=(("127.0.0.1", 6379),))],
        networks=[network("sin-network", "172.20.0.0/16", OWN)],
        volumes=[{"Name": "postgres_data", "Labels": OWN}, {"Name": "redis_data", "Labels": OWN}])
    assert found(engine) == []
    assert engine.probes == [], "ports held by the stack's own containers need no probe"


def test_a_network_of_another_owner_with_an_overlapping_subnet_names_the_key_the_holder_and_a_free_subnet():
    engine = FakeEngine(networks=[network("ci-net", "172.20.5.0/24", COMPOSE)])
    (conflict,) = found(engine)
    assert (conflict.key, conflict.value) == ("networkSubnet", "172.20.0.0/16")
    assert "network 'ci-net' (172.20.5.0/24, made by docker compose project 'sin-solver')" in conflict.holder
    # The suggestion is free on the host and keeps the ADR's layout (.0.1, .128.0/17, .0.100, .0.200).
    assert "e.g. 172.16.0.0/16" in conflict.fix
    assert "networkGateway 172.16.0.1; networkIpRange 172.16.128.0/17; postgresIp 172.16.0.100; redisIp 172.16.0.200" \
        in conflict.fix
    assert "python -m infra adopt --stack dev" in conflict.fix


def test_the_suggested_subnet_overlaps_no_network_of_the_host():
    used = [ipaddress.IPv4Network(f"172.{n}.0.0/16") for n in range(16, 32)]
    assert conflicts.free_subnet(16, used) == ipaddress.IPv4Network("192.168.0.0/16")
    assert conflicts.free_subnet(16, used + [ipaddress.IPv4Network("192.168.0.0/16")]) == \
        ipaddress.IPv4Network("10.0.0.0/16")


def test_a_port_published_by_another_container_names_that_container():
    engine = FakeEngine(containers=[container("legacy-db", {}, ports=(("0.0.0.0", 5432),))])
    (conflict,) = found(engine)
    assert conflict.line().startswith("postgresHostPort 127.0.0.1:5432: container 'legacy-db' publishes it (0.0.0.0:5432)")
    assert "pulumi config set postgresHostPort PORT --stack dev" in conflict.fix
    assert [p[2] for p in engine.probes] == [6379], "a port a container holds needs no probe"


def test_a_stopped_container_or_one_on_another_address_holds_no_port():
    engine = FakeEngine(containers=[container("stopped", {}, state="exited", ports=(("0.0.0.0", 5432),)),
                                    container("elsewhere", {}, ports=(("10.1.2.3", 6379),))])
    assert found(engine) == []


def test_a_port_a_process_holds_is_found_by_the_probe_and_named_as_no_container():
    engine = FakeEngine(process_ports={6379})
    (conflict,) = found(engine)
    assert conflict.key == "redisHostPort" and conflict.value == "127.0.0.1:6379"
    assert "a process on the local Docker Engine that is not a container listens there" in conflict.holder
    assert "ss -ltnp 'sport = :6379'" in conflict.holder
    assert engine.left == set()


def test_without_any_of_the_stacks_images_on_the_host_no_probe_runs():
    engine = FakeEngine(images=(), process_ports={5432})
    assert found(engine) == [] and engine.probes == []


@pytest.mark.parametrize("kind", ["container", "volume", "network"])
def test_a_name_held_by_an_object_of_another_owner_is_a_conflict_naming_its_maker(kind):
    engine = FakeEngine(
        containers=[container("room-03-archiv-postgres", OTHER_STACK, state="exited")] if kind == "container" else [],
        volumes=[{"Name": "postgres_data", "Labels": COMPOSE}] if kind == "volume" else [],
        networks=[network("sin-network", "10.99.0.0/16")] if kind == "network" else [])
    (conflict,) = found(engine)
    key = {"container": "postgresContainerName", "volume": "postgresVolumeName", "network": "networkName"}[kind]
    assert conflict.key == key
    maker = {"container": "made by stack 'staging' of sin-datastores", "volume": "made by docker compose project",
             "network": "not made by this stack"}[kind]
    assert maker in conflict.holder
    assert f"pulumi config set {key} NAME --stack dev" in conflict.fix


def test_the_data_volume_of_another_owner_is_never_removed_by_the_fix_without_a_warning():
    (conflict,) = found(FakeEngine(volumes=[{"Name": "redis_data", "Labels": None}]))
    assert "the stack would take over its data" in conflict.holder
    assert "remove it only if its data is not needed" in conflict.fix


def test_names_the_state_declares_are_the_stacks_own_whatever_their_labels():
    # A container re-created by hand under a declared name: drift, which `up` repairs first.
    engine = FakeEngine(containers=[container("room-03-archiv-postgres", {}, ports=(("127.0.0.1", 5432),))])
    assert found(engine, exempt=frozenset({"room-03-archiv-postgres"})) == []
    assert {c.key for c in found(engine)} == {"postgresContainerName", "postgresHostPort"}


def test_the_stacks_running_containers_a_read_state_does_not_know_are_refused_as_a_lost_or_wrong_state():
    engine = FakeEngine(
        containers=[container("room-03-archiv-postgres", OWN, ports=(("127.0.0.1", 5432),)),
                    container("room-04-memory-redis", OWN, ports=(("127.0.0.1", 6379),))],
        volumes=[{"Name": "postgres_data", "Labels": OWN}])
    lost = conflicts.find(engine, CFG, "the local Docker Engine", state=frozenset())
    assert {(c.key, c.value) for c in lost} == {("postgresContainerName", "room-03-archiv-postgres"),
                                               ("redisContainerName", "room-04-memory-redis")}
    assert all("this state of the stack does not know it" in c.line() and "PULUMI_BACKEND_URL" in c.line()
               for c in lost)
    known = frozenset({"room-03-archiv-postgres", "room-04-memory-redis"})
    assert conflicts.find(engine, CFG, "the local Docker Engine", known, state=known) == []
    assert found(engine) == [], "without the state read (the program's own look), nothing to compare with"
    retained = FakeEngine(volumes=[{"Name": "postgres_data", "Labels": OWN}])
    assert conflicts.find(retained, CFG, "the local Docker Engine", state=frozenset()) == [], \
        "the data volumes `down` kept are what the next `up` comes back onto"


def state_copy(state_id: str | None, stack: str = "dev") -> dict:
    """The state-copy volume of ``stack`` as the Engine API lists it, naming ``state_id``."""
    labels = {**OWN, "sin-datastores.stack": stack, "sin-datastores.role": "state-copy"}
    if state_id:
        labels["sin-datastores.state-id"] = state_id
    return {"Name": f"sin-datastores-state-{stack}", "Labels": labels}


def test_an_environment_another_state_made_is_refused_with_its_volumes_and_said_once():
    running = [container("room-03-archiv-postgres", OWN, ports=(("127.0.0.1", 5432),))]
    engine = FakeEngine(containers=running, volumes=[{"Name": "postgres_data", "Labels": OWN}, state_copy("a1")])
    for identity in (None, "b2"):
        (refused,) = conflicts.find(engine, CFG, "the local Docker Engine", state=frozenset(), identity=identity)
        assert (refused.key, refused.value) == ("state", "a1")
        assert f"than this one ({identity or 'new'})" in refused.line()
        assert "`python -m infra take-back --stack dev`" in refused.line() and "PULUMI_BACKEND_URL" in refused.line()
    known = frozenset({"room-03-archiv-postgres"})
    assert conflicts.find(engine, CFG, "the local Docker Engine", known, state=known, identity="a1") == []
    retained = FakeEngine(volumes=[{"Name": "postgres_data", "Labels": OWN}, state_copy("a1")])
    assert [c.key for c in conflicts.find(retained, CFG, "the local Docker Engine", state=frozenset(),
                                          identity="b2")] == ["state"], "kept volumes are the state's that made them"
    assert conflicts.find(retained, CFG, "the local Docker Engine", state=frozenset(), identity="a1") == []
    data = {"Name": "postgres_data", "Labels": OWN}
    for other in (FakeEngine(volumes=[data, state_copy("a1", stack="staging")]),
                  FakeEngine(volumes=[data, state_copy(None)]),
                  FakeEngine(volumes=[data, {**state_copy("a1"), "Labels": {"sin-datastores.state-id": "a1"}}]),
                  FakeEngine(volumes=[state_copy("a1")])):  # left by a plain `pulumi destroy`: protects nothing
        assert conflicts.find(other, CFG, "the local Docker Engine", state=frozenset(), identity="b2") == []
    not_its = FakeEngine(volumes=[{**data, "Labels": OTHER_STACK}, state_copy("a1")])
    assert [c.key for c in conflicts.find(not_its, CFG, "the local Docker Engine", state=frozenset(), identity="b2")] \
        == ["postgresVolumeName"], "another stack's volume under the name: a name conflict, not this stack's state"
    assert found(engine) == [], "without the state read (the program's own look), nothing to compare with"


def test_backup_objects_are_looked_at_only_when_backups_are_scheduled():
    volumes = [{"Name": "postgres_wal_archive", "Labels": {}}]
    assert found(FakeEngine(volumes=volumes)) == []
    scheduled = parse({"postgresPassword": "p" * 16, "redisPassword": "r" * 16, "backupSchedule": "@daily",
                       "backupPassphrase": "b" * 16}, "dev", secret_keys={"postgresPassword", "redisPassword",
                                                                            "backupPassphrase"})
    (conflict,) = conflicts.find(FakeEngine(volumes=volumes), scheduled, "h")
    assert conflict.key == "postgresArchiveVolumeName"


def test_every_conflict_is_reported_at_once_in_one_error():
    engine = FakeEngine(networks=[network("x", "172.20.0.0/16")], process_ports={5432, 6379})
    with pytest.raises(conflicts.HostConflicts) as caught:
        conflicts.check(engine, CFG, "ssh://deploy@db-1")
    text = str(caught.value)
    assert text.startswith("ssh://deploy@db-1 already has what this stack would take; nothing was created (3 conflicts)")
    assert [line.split()[1] for line in text.splitlines()[1:]] == ["networkSubnet", "postgresHostPort", "redisHostPort"]
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("error, key", [
    ("Error response from daemon: driver failed programming external connectivity on endpoint x: Error starting "
     "userland proxy: listen tcp4 127.0.0.1:6379: bind: address already in use", "redisHostPort"),
    ("Bind for 127.0.0.1:5432 failed: port is already allocated", "postgresHostPort"),
    ("Error response from daemon: Pool overlaps with other one on this address space", "networkSubnet"),
    ('Conflict. The container name "/room-04-memory-redis" is already in use by container "abc"', "redisContainerName"),
])
def test_a_conflict_docker_finds_while_up_runs_names_the_key_and_how_to_finish(error, key):
    sentence = conflicts.explain_failure(f"error: update failed\n  {error}", CFG)
    assert sentence.startswith(f"{key} ")
    assert "python -m infra up --stack dev` again, which completes the stack" in sentence
    assert "python -m infra down --stack dev`, which removes what was created" in sentence


def test_any_other_failure_is_not_explained_as_a_conflict():
    assert conflicts.explain_failure("error: connection refused", CFG) is None
