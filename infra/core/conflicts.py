"""What a stack would collide with on its Docker host, found before anything is created.

Docker reveals some mistakes only when it creates an object: a subnet another network uses, a
host port a container or another process holds, a container, volume or network name that is
taken. Found late, they fail `up` half-way and leave part of the stack behind. :func:`find`
looks first and names each one: the setting, what holds it and the fix.

An object is the stack's own when it carries the stack's labels (a retained data volume, or
what `adopt` copied); names the stack's state declares are its own too (``exempt``: drift,
which `up` repairs). Whether a process that is not a container holds a port, only binding it
tells: a throwaway container of one of the stack's images tries to publish the port, and is
removed at once. Plain Python, no Pulumi.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from infra.core import cluster, dockerhost, statecopy
from infra.core.config import StackConfig
from infra.core.dockercli import LABEL_PREFIX, SCRATCH_LABEL, STACK_LABEL
from infra.core.engine import Engine, EngineError, message
from infra.core.errors import InputError

PROJECT_LABEL = f"{LABEL_PREFIX}.project"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
# Where a free subnet is suggested from, in this order (private ranges Docker itself uses).
SUGGESTION_POOLS = ("172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/8")
# Set by `python -m infra up/preview` for the stack it has looked at, with the names its state declares
# (infra.driver.stacks.look_at_host); the program then does not look again.
LOOKED_ENV = "SIN_DATASTORES_HOST_LOOKED"
# Docker's words when a published port cannot be bound.
PORT_TAKEN_WORDS = ("address already in use", "port is already allocated")


@dataclass(frozen=True)
class Conflict:
    """One setting whose value something on the Docker host already holds."""

    key: str
    value: str
    holder: str
    fix: str

    def line(self) -> str:
        return f"{self.key} {self.value}: {self.holder}; {self.fix}"


class HostConflicts(InputError):
    """The Docker host already holds what the stack would take; nothing was created."""

    def __init__(self, host: str, conflicts: list[Conflict]):
        self.conflicts = conflicts
        super().__init__(f"{host} already has what this stack would take; nothing was created "
                         f"({len(conflicts)} conflict{'s' if len(conflicts) != 1 else ''}):\n"
                         + "\n".join(f"  - {c.line()}" for c in conflicts))


# Tries to bind each address:port given, as the servers do (SO_REUSEADDR), and prints those it cannot.
BIND_PROBE = ("import socket, sys\n"
              "for where in sys.argv[1:]:\n"
              "    address, port = where.rsplit(':', 1)\n"
              "    s = socket.socket()\n"
              "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "    try:\n"
              "        s.bind((address, int(port)))\n"
              "    except OSError as e:\n"
              "        print('taken', where, e.strerror)\n"
              "    s.close()\n")


@contextmanager
def _probe_container(engine: Engine, stack: str, project: str, checking: str, spec: dict) -> Iterator[str]:
    """A probe container made from ``spec``, by name: labelled, and removed however the check ends."""
    name = f"{probe_prefix(stack)}{secrets.token_hex(3)}"
    role_label, role = SCRATCH_LABEL.split("=")
    status, body = engine.request("POST", f"/containers/create?name={name}", {
        **spec, "Labels": {PROJECT_LABEL: project, STACK_LABEL: stack, role_label: role}})
    if status != 201:
        raise EngineError(f"creating a container to check {checking} failed: {message(body)}", status)
    try:
        yield name
    finally:
        engine.request("DELETE", f"/containers/{name}?force=1&v=1")


def held_sockets(engine: Engine, image: str, sockets: list[tuple[str, int]], stack: str, project: str) -> set[str]:
    """Which of ``sockets`` (address, port) something on the engine's host holds: a throwaway container
    of ``image`` (with python3) on the host's network tries to bind each, and is removed at once."""
    with _probe_container(engine, stack, project, "the ports", {
            "Image": image, "Entrypoint": ["python3", "-c", BIND_PROBE], "Cmd": [f"{a}:{p}" for a, p in sockets],
            "HostConfig": {"NetworkMode": "host"}}) as name:
        status, body = engine.request("POST", f"/containers/{name}/start")
        if status not in (200, 204, 304):
            raise EngineError(f"starting a container to check the ports failed: {message(body)}", status)
        engine.request("POST", f"/containers/{name}/wait")
        _, logs = engine.request("GET", f"/containers/{name}/logs?stdout=1")
        return set(re.findall(r"taken (\S+:\d+)", str(logs)))


def stack_containers(containers: list[dict], stack: str) -> list[str]:
    """The names of the stack's containers among ``containers`` (an engine's listing), sorted."""
    return sorted((c.get("Names") or ["/?"])[0].lstrip("/") for c in containers
                  if (c.get("Labels") or {}).get(STACK_LABEL) == stack)


def left_volumes(engine: Engine, stack: str) -> list[str]:
    """The stack's own data volumes on an engine where none of its containers is: left by a member
    of a host taken off the list (volumes are retained), or by a destroyed stack."""
    if stack_containers(engine.containers(), stack):
        return []
    return sorted(v["Name"] for v in engine.volumes() if (v.get("Labels") or {}).get(STACK_LABEL) == stack)


def member_conflicts(engine: Engine, stack: str, project: str, me: cluster.Member, probe_image: str,
                     runs_etcd: bool) -> list[str]:
    """What keeps those of ``me``'s servers that its host does not run yet from starting there (every
    one for a new member; etcd for a member taking the place of an etcd host that left): a container
    or volume not of the stack with one of their names, a socket one of them listens on. A running
    server holds its own names and ports."""
    remove_probes(engine, stack)
    containers = engine.containers()
    running = stack_containers(containers, stack)
    roles = [role for role in cluster.ROLES
             if (runs_etcd or role != "etcd") and cluster.container_name(stack, role) not in running]
    if not roles:
        return []
    found = []
    names = {"/" + cluster.container_name(stack, role): role for role in roles}
    for c in containers:
        for name in (c.get("Names") or []):
            if name in names:
                found.append(f"container name {name[1:]} ({names[name]}): taken by a container "
                             f"{maker(c.get('Labels'))}")
    # The stack's own: a server's whose container a failed run replaced (delete before create), kept
    # for it; a departed member's data is refused when its host joins (program.refuse_old_data_joining).
    volumes = {f"{cluster.container_name(stack, role)}-data": role for role in roles}
    for v in engine.volumes():
        if v.get("Name") in volumes and (v.get("Labels") or {}).get(STACK_LABEL) != stack:
            found.append(f"volume name {v['Name']} ({volumes[v['Name']]}): taken by a volume {maker(v.get('Labels'))}")
    if engine.has_image(probe_image):
        listeners = {(address, port): role for role, address, port in cluster.listening(me, runs_etcd)
                     if role in roles}
        for where in sorted(held_sockets(engine, probe_image, list(listeners), stack, project)):
            address, port = where.rsplit(":", 1)
            found.append(f"port {where} ({listeners[(address, int(port))]}): something on the host listens there "
                         f"(`ss -ltnp 'sport = :{port}'` on that host names it)")
    return found


def owned_by(labels: Optional[dict], cfg: StackConfig) -> bool:
    labels = labels or {}
    return labels.get(PROJECT_LABEL) == cfg.project and labels.get(STACK_LABEL) == cfg.stack


def maker(labels: Optional[dict]) -> str:
    """Who made an object, as far as its labels tell."""
    labels = labels or {}
    if labels.get(STACK_LABEL):
        return f"made by stack '{labels[STACK_LABEL]}' of {labels.get(PROJECT_LABEL, LABEL_PREFIX)}"
    if labels.get(COMPOSE_PROJECT_LABEL):
        return f"made by docker compose project '{labels[COMPOSE_PROJECT_LABEL]}'"
    return "not made by this stack"


def _set(cfg: StackConfig, key: str, value: str) -> str:
    return f"`pulumi config set {key} {value} --stack {cfg.stack}`"


def _adopt_hint(labels: Optional[dict], cfg: StackConfig) -> str:
    if (labels or {}).get(COMPOSE_PROJECT_LABEL):
        return f"; to take that deployment over with its data, run `python -m infra adopt --stack {cfg.stack}`"
    return ""


def wanted_names(cfg: StackConfig) -> dict[str, dict[str, str]]:
    """{kind: {name: config key}} of the Docker objects the stack declares by name."""
    containers = {cfg.postgres.container_name: "postgresContainerName", cfg.redis.container_name: "redisContainerName"}
    volumes = {cfg.postgres.volume_name: "postgresVolumeName", cfg.redis.volume_name: "redisVolumeName"}
    if cfg.backup is not None and cfg.backup.scheduled:
        containers[cfg.backup.container_name] = "backupContainerName"
        volumes.update({cfg.backup.volume_name: "backupVolumeName",
                        cfg.backup.archive_volume_name: "postgresArchiveVolumeName"})
    return {"containers": containers, "volumes": volumes, "networks": {cfg.network.name: "networkName"}}


def name_conflicts(cfg: StackConfig, containers: list[dict], volumes: list[dict], networks: list[dict],
                   exempt: frozenset[str] = frozenset()) -> list[Conflict]:
    """Names the stack would create that an object not its own holds."""
    wanted = wanted_names(cfg)
    found = []
    for c in containers:
        for name in (n.lstrip("/") for n in c.get("Names") or []):
            key = wanted["containers"].get(name)
            if key and name not in exempt and not owned_by(c.get("Labels"), cfg):
                found.append(Conflict(key, name, f"container {c['Id'][:12]} ({c.get('Image', '?')}, {c.get('State', '?')}) "
                                      f"holds the name, {maker(c.get('Labels'))}",
                                      f"remove or rename it (`docker rm -f {name}`, `docker rename {name} {name}-old`), "
                                      f"or choose another name: {_set(cfg, key, 'NAME')}"
                                      f"{_adopt_hint(c.get('Labels'), cfg)}"))
    for v in volumes:
        key = wanted["volumes"].get(v["Name"])
        if key and v["Name"] not in exempt and not owned_by(v.get("Labels"), cfg):
            found.append(Conflict(key, v["Name"], f"a volume of that name exists, {maker(v.get('Labels'))}; the stack "
                                  f"would take over its data",
                                  f"choose another name: {_set(cfg, key, 'NAME')}{_adopt_hint(v.get('Labels'), cfg)}; "
                                  f"remove it only if its data is not needed (`docker volume rm {v['Name']}`)"))
    for n in networks:
        key = wanted["networks"].get(n["Name"])
        if key and n["Name"] not in exempt and not owned_by(n.get("Labels"), cfg):
            found.append(Conflict(key, n["Name"], f"network {n['Id'][:12]} holds the name, {maker(n.get('Labels'))}",
                                  f"choose another name: {_set(cfg, key, 'NAME')}, or remove it if nothing uses it "
                                  f"(`docker network rm {n['Name']}`){_adopt_hint(n.get('Labels'), cfg)}"))
    return found


def unknown_to_state(cfg: StackConfig, containers: list[dict], known: frozenset[str]) -> list[Conflict]:
    """The stack's own containers (by their labels) that run on the host while its state does not know
    them: the state was lost, or this is not the state of that environment. `up` would create the
    rest of a second stack beside it."""
    wanted = wanted_names(cfg)["containers"]
    found = []
    for c in containers:
        for name in (n.lstrip("/") for n in c.get("Names") or []):
            if name in wanted and name not in known and owned_by(c.get("Labels"), cfg):
                found.append(Conflict(wanted[name], name,
                                      f"container {c['Id'][:12]} of stack '{cfg.stack}' ({c.get('State', '?')}) is on "
                                      f"the host, but this state of the stack does not know it: the state was lost, "
                                      f"or the environment runs from another one",
                                      f"point PULUMI_BACKEND_URL at the state that holds the environment "
                                      f"(docs/shared-environments.md); if that state is lost, take the environment "
                                      f"back into this one: `python -m infra take-back --stack {cfg.stack}`"))
    return found


def another_state(cfg: StackConfig, containers: list[dict], volumes: list[dict],
                  identity: Optional[str]) -> list[Conflict]:
    """The stack's environment on the host, its containers or data volumes, was made by another state
    than this one (its state copy says so, :mod:`infra.core.statecopy`; ``identity``: this state's id, None
    for a state that has made nothing yet): its volumes, retained ones included, are that state's. A copy
    beside nothing of the stack (left by a plain `pulumi destroy`) protects nothing."""
    name = statecopy.volume_name(cfg.project, cfg.stack)
    wanted = wanted_names(cfg)
    environment = [c for c in containers for n in c.get("Names") or []
                   if n.lstrip("/") in wanted["containers"] and owned_by(c.get("Labels"), cfg)] + \
                  [v for v in volumes if v["Name"] in wanted["volumes"] and owned_by(v.get("Labels"), cfg)]
    for v in volumes:
        made_by = statecopy.owner(v)
        if v["Name"] == name and owned_by(v.get("Labels"), cfg) and made_by and made_by != identity and environment:
            return [Conflict("state", made_by, f"the environment of stack '{cfg.stack}' on this host (its "
                             f"containers and volumes, retained ones too) was made by another state of the stack "
                             f"than this one ({identity or 'new'}), so this one may not take it",
                             f"point PULUMI_BACKEND_URL at the state that holds the environment "
                             f"(docs/shared-environments.md); if that state is lost, take the environment back "
                             f"into this one: `python -m infra take-back --stack {cfg.stack}`")]
    return []


def subnets(network: dict) -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network(c["Subnet"], strict=False) for c in (network.get("IPAM") or {}).get("Config") or []
            if c.get("Subnet") and ":" not in c["Subnet"]]


def free_subnet(prefix: int, used: Iterable[ipaddress.IPv4Network]) -> Optional[ipaddress.IPv4Network]:
    """The first subnet of ``prefix`` bits in SUGGESTION_POOLS that overlaps none of ``used``."""
    used = list(used)
    for pool in SUGGESTION_POOLS:
        pool_net = ipaddress.IPv4Network(pool)
        if prefix < pool_net.prefixlen:
            continue
        for candidate in pool_net.subnets(new_prefix=prefix):
            if not any(candidate.overlaps(u) for u in used):
                return candidate
    return None


def moved_network(cfg: StackConfig, subnet: ipaddress.IPv4Network) -> dict[str, str]:
    """The network keys for ``subnet``, each address at the same offset as in the configured subnet."""
    old = ipaddress.IPv4Network(cfg.network.subnet)

    def move(address: str) -> str:
        return str(subnet.network_address + (int(ipaddress.IPv4Address(address)) - int(old.network_address)))

    ip_range = ipaddress.IPv4Network(cfg.network.ip_range)
    return {"networkSubnet": str(subnet), "networkGateway": move(cfg.network.gateway),
            "networkIpRange": f"{move(str(ip_range.network_address))}/{ip_range.prefixlen}",
            "postgresIp": move(cfg.postgres.ip), "redisIp": move(cfg.redis.ip)}


def subnet_conflicts(cfg: StackConfig, networks: list[dict], exempt: frozenset[str] = frozenset()) -> list[Conflict]:
    """Other networks whose subnets overlap the stack's."""
    mine = ipaddress.IPv4Network(cfg.network.subnet)
    others = [n for n in networks if not owned_by(n.get("Labels"), cfg) and n["Name"] not in exempt]
    overlapping = [(n, s) for n in others for s in subnets(n) if s.overlaps(mine)]
    if not overlapping:
        return []
    free = free_subnet(mine.prefixlen, [s for n in networks for s in subnets(n)])
    if free is None:
        fix = "choose a subnet no Docker network on that host uses and move networkGateway, networkIpRange, postgresIp and redisIp into it"
    else:
        keys = moved_network(cfg, free)
        fix = (f"choose a free subnet, e.g. {free}, with the other addresses moved into it: "
               + "; ".join(f"{k} {v}" for k, v in keys.items())
               + f" (`pulumi config set KEY VALUE --stack {cfg.stack}` for each)")
    return [Conflict("networkSubnet", cfg.network.subnet,
                     f"overlaps network '{n['Name']}' ({s}, {maker(n.get('Labels'))})",
                     fix + _adopt_hint(n.get("Labels"), cfg)) for n, s in overlapping]


def _same_address(a: str, b: str) -> bool:
    """Two bind addresses that cannot both take one port (a wildcard takes it on every address)."""
    wildcard = ("", "0.0.0.0", "::")
    return a in wildcard or b in wildcard or a == b


def wanted_ports(cfg: StackConfig) -> dict[int, str]:
    return {cfg.postgres.host_port: "postgresHostPort", cfg.redis.host_port: "redisHostPort"}


def _fix_port(cfg: StackConfig, key: str) -> str:
    return f"stop it, or choose a free port: {_set(cfg, key, 'PORT')}"


def port_conflicts(cfg: StackConfig, containers: list[dict],
                   exempt: frozenset[str] = frozenset()) -> tuple[list[Conflict], list[int]]:
    """Ports on bindAddress that running containers not the stack's publish, and the ports no
    container holds (which a process may hold: :func:`probe_port` tells)."""
    found, held = [], set()
    for c in containers:
        if c.get("State") != "running":
            continue
        names = [n.lstrip("/") for n in c.get("Names") or []]
        own = owned_by(c.get("Labels"), cfg) or any(n in exempt for n in names)
        for p in c.get("Ports") or []:
            port, key = p.get("PublicPort"), wanted_ports(cfg).get(p.get("PublicPort"))
            if key is None or not _same_address(p.get("IP", ""), cfg.bind_address):
                continue
            held.add(port)
            if not own:
                found.append(Conflict(key, f"{cfg.bind_address}:{port}",
                                      f"container '{names[0] if names else c['Id'][:12]}' publishes it "
                                      f"({p.get('IP') or '0.0.0.0'}:{port}), {maker(c.get('Labels'))}",
                                      _fix_port(cfg, key)))
    return found, [port for port in wanted_ports(cfg) if port not in held]


def probe_prefix(stack: str) -> str:
    return f"{stack}-port-probe-"


def remove_probes(engine: Engine, stack: str) -> None:
    """Remove the probe containers of ``stack`` that a killed command left (between create and remove)."""
    for c in engine.containers():
        names = [n.lstrip("/") for n in c.get("Names") or []]
        labels = c.get("Labels") or {}
        if any(n.startswith(probe_prefix(stack)) for n in names) and labels.get(STACK_LABEL) == stack:
            engine.request("DELETE", f"/containers/{c['Id']}?force=1&v=1")


def probe_port(engine: Engine, image: str, address: str, port: int, stack: str, project: str) -> Optional[str]:
    """Docker's words when a container cannot publish ``address:port`` (a process holds it), else None."""
    with _probe_container(engine, stack, project, f"port {port}", {
            "Image": image, "Entrypoint": ["true"], "Cmd": [],
            "HostConfig": {"PortBindings": {f"{port}/tcp": [{"HostIp": address, "HostPort": str(port)}]}},
            "ExposedPorts": {f"{port}/tcp": {}}}) as name:
        status, body = engine.request("POST", f"/containers/{name}/start")
        if status in (200, 204, 304):
            return None
        words = message(body)
        if any(w in words for w in PORT_TAKEN_WORDS):
            return words
        raise EngineError(f"starting a container to check port {port} failed: {words}", status)


def process_conflicts(engine: Engine, cfg: StackConfig, ports: list[int], images: Iterable[str],
                      host: str) -> list[Conflict]:
    """The ``ports`` a process that is not a container holds, found by :func:`probe_port` with the first
    of ``images`` the host has; none can be found on a host without any of them."""
    image = next((i for i in images if engine.has_image(i)), None)
    if image is None or not ports:
        return []
    found = []
    for port in ports:
        if probe_port(engine, image, cfg.bind_address, port, cfg.stack, cfg.project) is not None:
            key = wanted_ports(cfg)[port]
            found.append(Conflict(key, f"{cfg.bind_address}:{port}",
                                  f"a process on {host} that is not a container listens there "
                                  f"(`ss -ltnp 'sport = :{port}'` on that host names it)", _fix_port(cfg, key)))
    return found


def find(engine: Engine, cfg: StackConfig, host: str, exempt: frozenset[str] = frozenset(),
         state: Optional[frozenset[str]] = None, identity: Optional[str] = None) -> list[Conflict]:
    """Every conflict of the stack with what its Docker host holds (``exempt``: names the state declares;
    ``state``: every name the state knows, and ``identity`` its id, when it was read)."""
    remove_probes(engine, cfg.stack)
    containers, volumes, networks = engine.containers(), engine.volumes(), engine.networks()
    taken_ports, free_ports = port_conflicts(cfg, containers, exempt)
    images = [cfg.postgres.image, cfg.redis.image] + ([cfg.backup.image] if cfg.backup and cfg.backup.scheduled else [])
    return (name_conflicts(cfg, containers, volumes, networks, exempt) + subnet_conflicts(cfg, networks, exempt)
            + ((another_state(cfg, containers, volumes, identity) or unknown_to_state(cfg, containers, state))
               if state is not None else [])
            + taken_ports + process_conflicts(engine, cfg, free_ports, images, host))


def check(engine: Engine, cfg: StackConfig, host: str, exempt: frozenset[str] = frozenset(),
          state: Optional[frozenset[str]] = None, identity: Optional[str] = None) -> None:
    """Raise :class:`HostConflicts` naming every conflict; nothing is created either way."""
    conflicts = find(engine, cfg, host, exempt, state, identity)
    if conflicts:
        raise HostConflicts(host, conflicts)


def check_host(cfg: StackConfig, exempt: frozenset[str] = frozenset()) -> bool:
    """:func:`check` on the stack's Docker host, reached as its docker provider reaches it (over SSH for an
    ``ssh://`` host); False when this client cannot look there (a TLS or context address)."""
    with dockerhost.session(cfg.docker) as current:
        engine = Engine.of(current.docker_env)
        if engine is None:
            return False
        check(engine, cfg, cfg.docker.describe(), exempt)
        return True


# Docker's words for a subnet or a name it found taken itself.
_LATE_SUBNET_WORDS = ("Pool overlaps", "failed to allocate gateway")
_LATE_NAME = re.compile(r'container name "/(?P<container>[^"]+)" is already in use|'
                        r'network with name (?P<network>\S+) already exists')


def explain_failure(error: str, cfg: StackConfig) -> Optional[str]:
    """The setting and the fix for a conflict Docker found only while `up` ran (a port taken after the
    look, a host this client cannot look at); None for any other failure."""
    fix_then = (f"then run `python -m infra up --stack {cfg.stack}` again, which completes the stack, or "
                f"`python -m infra down --stack {cfg.stack}`, which removes what was created")
    host = cfg.docker.describe()
    words = next((w for w in PORT_TAKEN_WORDS if w in error), None)
    if words:
        for port, key in wanted_ports(cfg).items():
            if f":{port}" in error:
                return (f"{key} {cfg.bind_address}:{port} was taken on {host} while `up` ran (Docker: {words}); "
                        f"{_fix_port(cfg, key)}; {fix_then}")
    words = next((w for w in _LATE_SUBNET_WORDS if w in error), None)
    if words:
        return (f"networkSubnet {cfg.network.subnet} overlaps a network created on {host} while `up` ran "
                f"(Docker: {words}); choose a free subnet and move networkGateway, networkIpRange, postgresIp and "
                f"redisIp into it; {fix_then}")
    match = _LATE_NAME.search(error)
    if match:
        kind = "containers" if match.group("container") else "networks"
        name = match.group("container") or match.group("network")
        key = wanted_names(cfg)[kind].get(name)
        if key:
            return (f"{key} {name} was taken on {host} while `up` ran; remove what holds it or choose another "
                    f"name: {_set(cfg, key, 'NAME')}; {fix_then}")
    return None
