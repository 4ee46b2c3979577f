"""Drift: the Docker host against what a stack's state says it created; without Pulumi.

The input is the stack's exported deployment (plain JSON, `pulumi stack export`); the host is
read with `docker inspect`. Pulumi's refresh (Pulumi.yaml `options: refresh: always`) finds a
removed or stopped container by itself, but not a container re-created by hand under the
declared name: the state still holds the old id, so the refresh drops it and the create then
collides with the name. :func:`find` names every kind of drift for `status` and `preview`; the containers it marks
:attr:`Finding.replaced_by_up` are removed by `python -m infra up` before the engine runs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from infra.core import dockercli

CONTAINER_TYPE = "docker:index/container:Container"
VOLUME_TYPE = "docker:index/volume:Volume"
NETWORK_TYPE = "docker:index/network:Network"


@dataclass(frozen=True)
class DeclaredContainer:
    """A container as the state records it."""

    urn: str
    id: str
    name: str
    network: str
    ip: str
    volume: str
    labels: tuple[tuple[str, str], ...]
    memory_mb: int = 0
    """The memory limit the state gives it (0: none)."""

    @property
    def role(self) -> str:
        return dict(self.labels).get(dockercli.ROLE_LABEL, "")


@dataclass(frozen=True)
class DeclaredObject:
    """A network or a data volume as the state records it."""

    urn: str
    name: str


@dataclass(frozen=True)
class Declared:
    """The Docker objects a deployed stack owns, by the state."""

    containers: tuple[DeclaredContainer, ...] = ()
    volumes: tuple[DeclaredObject, ...] = ()
    networks: tuple[DeclaredObject, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One object that is not as the stack left it; ``kind`` is missing, stopped, foreign or changed."""

    kind: str
    what: str
    name: str
    detail: str
    urn: str

    def line(self) -> str:
        return f"{self.what} {self.name} {self.detail}"

    @property
    def replaced_by_up(self) -> bool:
        """`up` removes this container first: the engine cannot adopt or repair it."""
        return self.what == "container" and self.kind in ("foreign", "changed")


def declared(deployment: dict) -> Declared:
    """The containers, data volumes and networks of a deployment (the ``deployment`` object of
    ``pulumi stack export``)."""
    resources = [r for r in deployment.get("resources") or []
                 if not r.get("delete") and r.get("id")]
    containers, volumes, networks = [], [], []
    for r in resources:
        out = r.get("outputs") or {}
        if r["type"] == CONTAINER_TYPE:
            net = (out.get("networksAdvanced") or [{}])[0]
            vol = (out.get("volumes") or [{}])[0]
            containers.append(DeclaredContainer(
                r["urn"], r["id"], out.get("name", ""), net.get("name", ""), net.get("ipv4Address", ""),
                vol.get("volumeName", ""), tuple(sorted((l["label"], l["value"]) for l in out.get("labels") or [])),
                int(out.get("memory") or 0)))
        elif r["type"] == VOLUME_TYPE:
            volumes.append(DeclaredObject(r["urn"], out.get("name", r["id"])))
        elif r["type"] == NETWORK_TYPE:
            networks.append(DeclaredObject(r["urn"], out.get("name", "")))
    return Declared(tuple(containers), tuple(volumes), tuple(networks))


def differences(want: DeclaredContainer, found: dict) -> list[str]:
    """How a container as Docker shows it (``docker inspect``) differs from what the stack declared."""
    problems = []
    labels = (found.get("Config") or {}).get("Labels") or {}
    missing = [k for k, v in want.labels if labels.get(k) != v]
    if missing:
        problems.append(f"lacks the stack's labels ({', '.join(missing)})")
    networks = (found.get("NetworkSettings") or {}).get("Networks") or {}
    if want.network and want.network not in networks:
        problems.append(f"is not on network {want.network}")
    elif want.network:
        ip = ((networks[want.network] or {}).get("IPAMConfig") or {}).get("IPv4Address") or ""
        if want.ip and ip != want.ip:
            problems.append(f"has address {ip or 'automatic'} instead of {want.ip}")
    mounts = {m.get("Name") for m in found.get("Mounts") or [] if m.get("Type") == "volume"}
    if want.volume and want.volume not in mounts:
        problems.append(f"does not mount data volume {want.volume}")
    return problems


def compare(want: Declared, look: Callable[[str, str], Optional[dict]]) -> list[Finding]:
    """Every drift between the state and the host; ``look(kind, name)`` is ``docker KIND inspect``."""
    findings = []
    for net in want.networks:
        if look("network", net.name) is None:
            findings.append(Finding("missing", "network", net.name, "is missing; `up` creates it again", net.urn))
    for vol in want.volumes:
        if look("volume", vol.name) is None:
            findings.append(Finding("missing", "data volume", vol.name,
                                    "is missing: its data is gone; `up` refuses to create it EMPTY unless given "
                                    "--accept-data-loss, then restore a backup (`python -m infra restore`)", vol.urn))
    for c in want.containers:
        found = look("container", c.name)
        if found is None:
            findings.append(Finding("missing", "container", c.name, "is missing; `up` creates it again", c.urn))
            continue
        changed = differences(c, found)
        if found.get("Id") != c.id:
            why = f" and {', '.join(changed)}" if changed else ""
            findings.append(Finding("foreign", "container", c.name,
                                    f"is not the one the stack created (id {found.get('Id', '?')[:12]}, the stack's "
                                    f"was {c.id[:12]}){why}; `up` removes it and creates the declared one "
                                    f"(data stays on its volume)", c.urn))
        elif changed:
            findings.append(Finding("changed", "container", c.name,
                                    f"{', '.join(changed)}; `up` removes it and creates the declared one "
                                    f"(data stays on its volume)", c.urn))
        elif not (found.get("State") or {}).get("Running"):
            findings.append(Finding("stopped", "container", c.name,
                                    f"is {(found.get('State') or {}).get('Status', 'not running')}; "
                                    f"`up` re-creates it", c.urn))
    return findings


def find(want: Declared) -> list[Finding]:
    """:func:`compare` against this Docker host; the inspections run at once (each is a CLI start)."""
    wanted = [("network", n.name) for n in want.networks] + [("volume", v.name) for v in want.volumes] + [
        ("container", c.name) for c in want.containers]
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        seen = dict(zip(wanted, pool.map(lambda object_: dockercli.inspect(*object_), wanted)))
    return compare(want, lambda kind, name: seen[(kind, name)])


@dataclass(frozen=True)
class Interrupted:
    """A Docker object a killed `up` was creating: Docker may hold it while the state does not."""

    kind: str  # "container", "network" or "volume", as the docker CLI names them
    name: str


KINDS = {CONTAINER_TYPE: "container", NETWORK_TYPE: "network", VOLUME_TYPE: "volume"}


def interrupted(deployment: dict) -> list[Interrupted]:
    """The state's pending creates of containers, networks and volumes (the ``deployment`` of
    ``pulumi stack export``), by the name their inputs give. A pending create the state also records
    as a resource was completed by a later `up` (the engine keeps the pending operation until a
    refresh clears it): the object of that name is the stack's own, not a leftover."""
    recorded = {r.get("urn") for r in deployment.get("resources") or []}
    found = []
    for op in deployment.get("pending_operations") or []:
        resource = op.get("resource") or {}
        kind = KINDS.get(resource.get("type", ""))
        name = (resource.get("inputs") or {}).get("name")
        if op.get("type") == "creating" and kind and name and resource.get("urn") not in recorded:
            found.append(Interrupted(kind, name))
    return found
