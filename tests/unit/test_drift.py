"""Drift detection without Docker: an exported deployment against `docker inspect` answers,
the preview banner for a lost data volume, and status naming the drift."""

from __future__ import annotations

from typing import Optional

from pulumi.automation import events

from infra.driver import drift, previews
from infra.core.connect import ConnectError
from infra.ops.status import Container, collect
from infra.core.targets import PostgresTarget, RedisTarget, Target
from tests.unit.test_day2 import CONTAINER, VOLUME, step

LABELS = {"sin-datastores.project": "sin-datastores", "sin-datastores.stack": "s", "sin-datastores.role": "redis"}
PG_ID, RD_ID = "a" * 64, "b" * 64
URN = ("urn:pulumi:s::sin-datastores::sin-datastores:index:RedisService"
       "$docker:index/container:Container::redis-container")


def resource(type_: str, id_: str, urn: str, **outputs) -> dict:
    return {"type": type_, "id": id_, "urn": urn, "outputs": outputs}


def deployment() -> dict:
    labels = [{"label": k, "value": v} for k, v in LABELS.items()]
    return {"resources": [
        {"type": "pulumi:pulumi:Stack", "urn": "urn:stack"},
        resource(drift.NETWORK_TYPE, "n" * 64, "urn:net", name="s-sin-network"),
        resource(drift.VOLUME_TYPE, "s-redis_data", "urn:redis-data", name="s-redis_data"),
        resource(drift.CONTAINER_TYPE, RD_ID, URN, name="s-redis",
                 networksAdvanced=[{"name": "s-sin-network", "ipv4Address": "172.29.1.120", "aliases": ["redis"]}],
                 volumes=[{"volumeName": "s-redis_data", "containerPath": "/data"}], labels=labels),
        # A container pending deletion (a replaced one) is not declared any more.
        {**resource(drift.CONTAINER_TYPE, PG_ID, "urn:old", name="s-old"), "delete": True},
    ]}


def redis_inspect(id_: str = RD_ID, running: bool = True, labels: Optional[dict] = None,
                  network: str = "s-sin-network", ip: str = "172.29.1.120", volume: str = "s-redis_data") -> dict:
    return {"Id": id_, "State": {"Running": running, "Status": "running" if running else "exited"},
            "Config": {"Labels": LABELS if labels is None else labels},
            "NetworkSettings": {"Networks": {network: {"IPAMConfig": {"IPv4Address": ip}}}},
            "Mounts": [{"Type": "volume", "Name": volume, "Destination": "/data"}]}


def host(**containers: Optional[dict]):
    """A `docker inspect` that knows the network, the volume (unless ``volume=None``) and ``containers``."""
    objects = {("network", "s-sin-network"): {"Name": "s-sin-network"},
               ("volume", "s-redis_data"): containers.pop("volume", {"Name": "s-redis_data"})}
    objects.update({("container", "s-redis"): containers.get("redis")})
    return lambda kind, name: objects.get((kind, name))


def test_the_deployment_names_each_declared_container_volume_and_network():
    declared = drift.declared(deployment())
    assert declared.containers == (drift.DeclaredContainer(
        URN, RD_ID, "s-redis", "s-sin-network", "172.29.1.120", "s-redis_data", tuple(sorted(LABELS.items()))),)
    assert declared.volumes == (drift.DeclaredObject("urn:redis-data", "s-redis_data"),)
    assert declared.networks == (drift.DeclaredObject("urn:net", "s-sin-network"),)
    assert drift.declared({}) == drift.Declared()


def test_a_host_as_the_stack_left_it_has_no_drift():
    assert drift.compare(drift.declared(deployment()), host(redis=redis_inspect())) == []


def test_a_removed_container_is_missing_and_a_stopped_one_is_stopped():
    declared = drift.declared(deployment())
    [missing] = drift.compare(declared, host(redis=None))
    assert (missing.kind, missing.name, missing.urn, missing.replaced_by_up) == ("missing", "s-redis", URN, False)
    [stopped] = drift.compare(declared, host(redis=redis_inspect(running=False)))
    assert (stopped.kind, stopped.replaced_by_up) == ("stopped", False)
    assert stopped.line() == "container s-redis is exited; `up` re-creates it"


def test_a_container_recreated_by_hand_is_foreign_and_says_how_it_differs():
    by_hand = redis_inspect(id_="c" * 64, labels={}, network="bridge", volume="anonymous")
    [foreign] = drift.compare(drift.declared(deployment()), host(redis=by_hand))
    assert foreign.kind == "foreign" and foreign.replaced_by_up
    line = foreign.line()
    assert "is not the one the stack created (id cccccccccccc, the stack's was bbbbbbbbbbbb)" in line
    assert "lacks the stack's labels" in line and "is not on network s-sin-network" in line
    assert "does not mount data volume s-redis_data" in line and "`up` removes it" in line


def test_the_stack_container_changed_in_place_is_replaced_by_up():
    [changed] = drift.compare(drift.declared(deployment()), host(redis=redis_inspect(ip="172.29.1.7")))
    assert changed.kind == "changed" and changed.replaced_by_up
    assert "has address 172.29.1.7 instead of 172.29.1.120" in changed.line()


def test_a_lost_data_volume_is_named_as_data_loss():
    [lost] = drift.compare(drift.declared(deployment()), host(redis=redis_inspect(), volume=None))
    assert (lost.what, lost.kind, lost.name, lost.urn) == ("data volume", "missing", "s-redis_data", "urn:redis-data")
    assert "its data is gone" in lost.line() and "--accept-data-loss" in lost.line()


def test_creating_a_data_volume_the_host_lost_is_a_risk_and_a_new_one_is_not():
    lost = step(events.OpType.CREATE, VOLUME, "postgres-data")
    assert previews.risks([lost]) == []
    [risk] = previews.risks([lost, step(events.OpType.CREATE, CONTAINER, "postgres-container")],
                            gone=frozenset({lost.resource_pre_event.metadata.urn}))
    assert (risk.kind, risk.name, risk.op) == ("data volume", "docker-postgres-data", "create")
    text = previews.banner([risk], "dev")
    assert "WARNING: this change would re-create empty, replace or delete 1 data resource(s)" in text
    assert "DATA LOSS" in text and "python -m infra restore --stack dev" in text


def test_status_names_foreign_containers_and_lost_volumes_but_not_twice_a_missing_container(monkeypatch):
    monkeypatch.setattr("infra.ops.status.container", lambda name, now: Container(name, "missing", "-", None, None, "-"))
    unreachable = Target("s", PostgresTarget("127.0.0.1", 1, "db", "u", "p", "s-pg", "172.29.1.100", 16),
                         RedisTarget("127.0.0.1", 1, "p", "s-redis", "172.29.1.120", 7))
    monkeypatch.setattr("infra.ops.status.connect_postgres", _refuse)
    monkeypatch.setattr("infra.ops.status.connect_redis", _refuse)
    found = [drift.Finding("missing", "container", "s-redis", "is missing", "urn:c"),
             drift.Finding("missing", "data volume", "s-redis_data", "is missing: its data is gone", "urn:v"),
             drift.Finding("foreign", "container", "s-pg", "is not the one the stack created", "urn:p")]
    result = collect(unreachable, drift=found)
    drift_lines = [p for p in result.problems if p.startswith("drift:")]
    assert drift_lines == ["drift: data volume s-redis_data is missing: its data is gone",
                           "drift: container s-pg is not the one the stack created"]
    assert not result.healthy


def _refuse(*_args, **_kwargs):
    raise ConnectError("refused")
