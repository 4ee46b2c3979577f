"""Throwaway test stacks: created with a free subnet, free host ports and stack-prefixed
names; swept when older than a limit, so a crashed CI run leaves nothing behind.

Ports and subnets are reserved host-wide (infra/driver/reservations.py) at the moment they are
chosen, so stacks created at once by several processes never share one; ports come from
outside the ephemeral range and must bind. When something takes one anyway before Docker
does, :func:`up_with_retries` chooses again. A stack in use by a live process is never swept.

A test stack is recognised by its name alone, ``test-<UTC yyyymmddThhmmss>-<6 hex>``,
which also carries its age; the sweeper never touches a stack or Docker object whose name
or label does not match it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar

from pulumi import automation as auto

from infra.core import dockercli, dockerhost
from infra.driver import reservations, stacks
from infra.core.config import PROJECT

PREFIX = "test"
NAME = re.compile(rf"^{PREFIX}-(\d{{8}}t\d{{6}})-[0-9a-f]{{6}}$")
# Test subnets come from here, away from the ADR's 172.20.0.0/16.
SUBNET_POOL = "172.29.0.0/16"


@contextlib.contextmanager
def private_pulumi_home() -> Iterator[Path]:
    """Point PULUMI_HOME, for this process and its children, at a new directory that shares this
    user's plugin cache; remove it afterwards.

    The CLI writes a log file per command into $PULUMI_HOME/logs, keeps a week of them and lists
    the directory at every start: the thousands of commands of a test or benchmark run would
    otherwise fill the user's ~/.pulumi/logs and slow down each of their later commands.
    """
    shared = Path(os.environ.get("PULUMI_HOME") or Path(pwd.getpwuid(os.getuid()).pw_dir) / ".pulumi")
    (shared / "plugins").mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sin-pulumi-home-"))
    (home / "plugins").symlink_to(shared / "plugins")
    before = os.environ.get("PULUMI_HOME")
    os.environ["PULUMI_HOME"] = str(home)
    try:
        yield home
    finally:
        if before is None:
            os.environ.pop("PULUMI_HOME", None)
        else:
            os.environ["PULUMI_HOME"] = before
        shutil.rmtree(home, ignore_errors=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port outside the ephemeral range that nothing holds now and no other process on this
    host has reserved; it stays reserved for this process until it ends."""
    return reserve(ports=1, subnet=False, host=host)[1][0]


def new_name(now: Optional[datetime] = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{PREFIX}-{now.strftime('%Y%m%dt%H%M%S')}-{secrets.token_hex(3)}"


def created_at(name: str) -> Optional[datetime]:
    """When a test stack was created, from its name; None for anything that is not a test stack."""
    match = NAME.match(name)
    return datetime.strptime(match.group(1), "%Y%m%dt%H%M%S").replace(tzinfo=timezone.utc) if match else None


def reserve(ports: int, subnet: bool, stack: str = "", host: str = "127.0.0.1",
            avoid: Sequence[str] = ()) -> tuple[Optional[ipaddress.IPv4Network], list[int]]:
    """Choose and reserve, host-wide and under one lock, ``ports`` free ports and (with ``subnet``) a /24
    of SUBNET_POOL that no Docker network uses; ``avoid`` are values not to choose again."""
    with reservations.Registry().locked() as records:
        taken_ports = {int(r.value) for r in records if r.kind == "port"} | {int(v) for v in avoid if v.isdigit()}
        chosen = reservations.pick_ports(ports, reservations.port_pool(),
                                         taken_ports, lambda port: reservations.bindable(port, host))
        net = None
        if subnet:
            taken = dockercli.used_subnets() + [ipaddress.IPv4Network(r.value) for r in records if r.kind == "subnet"]
            net = reservations.pick_subnet(SUBNET_POOL, 24, taken + [ipaddress.IPv4Network(v) for v in avoid if "/" in v])
            records.append(reservations.new_record("subnet", str(net), stack))
        records.extend(reservations.new_record("port", str(port), stack) for port in chosen)
    return net, chosen


def network_config(subnet: ipaddress.IPv4Network) -> dict[str, str]:
    """The network keys for ``subnet``: gateway first, fixed IPs below the automatic range."""
    hosts = list(subnet.hosts())
    return {"networkSubnet": str(subnet), "networkGateway": str(hosts[0]),
            "networkIpRange": str(list(subnet.subnets(prefixlen_diff=1))[1]),
            "postgresIp": str(hosts[99]), "redisIp": str(hosts[119])}


def isolated_config(retain_volumes: bool = False, stack: str = "") -> dict[str, str]:
    """Config that keeps a stack clear of every other on this host: its own /24 and ports, reserved
    host-wide for ``stack`` (only values reserved for the stack are chosen again on a collision).

    Names need nothing here: every stack but dev gets them prefixed with its own name.
    """
    subnet, ports = reserve(ports=2, subnet=True, stack=stack)
    return {**network_config(subnet), "postgresHostPort": str(ports[0]), "redisHostPort": str(ports[1]),
            "retainVolumes": "true" if retain_volumes else "false"}


def mark_in_use(stack: str) -> None:
    """Record that this process uses ``stack``, so no sweeper on this host removes it meanwhile."""
    pid, _ = reservations.current_owner()
    with reservations.Registry().locked() as records:
        if not any(r.kind == "stack" and r.value == stack and r.pid == pid for r in records):
            records.append(reservations.new_record("stack", stack, stack))


def release(stack: str) -> None:
    """Give back everything reserved for ``stack`` (it is destroyed, or its owner is gone)."""
    with reservations.Registry().locked() as records:
        records[:] = [r for r in records if r.stack != stack]


def in_use_elsewhere() -> set[str]:
    """Test stacks that another live process on this host is still using."""
    pid, _ = reservations.current_owner()
    return {r.value for r in reservations.Registry().records() if r.kind == "stack" and r.pid != pid}


def create(settings: Optional[stacks.Settings] = None, name: Optional[str] = None,
           config: Optional[dict[str, str]] = None) -> auto.Stack:
    """Create and configure (not deploy) a new stack: ``config`` (default: :func:`isolated_config`)
    and generated secrets."""
    stack = stacks.open_stack(name or new_name(), settings, create=True)
    mark_in_use(stack.name)
    stacks.configure(stack, isolated_config(stack=stack.name) if config is None else config)
    stacks.ensure_secrets(stack)
    return stack


# Docker's words when a chosen subnet or port was taken after it was chosen, and the look before
# creating (infra.core.conflicts) finding it taken.
COLLISIONS = (("Pool overlaps", "subnet"), ("failed to allocate gateway", "subnet"), ("overlaps network '", "subnet"),
              ("address already in use", "ports"), ("port is already allocated", "ports"),
              ("that is not a container listens there", "ports"), ("publishes it (", "ports"))
RETRIES = 3
PORT_KEYS = ("postgresHostPort", "redisHostPort")
T = TypeVar("T")


def up_with_retries(stack: auto.Stack, attempt: Callable[[], T], say: Callable[[str], None],
                    rechosen: Optional[dict[str, str]] = None) -> T:
    """Run ``attempt`` (an `up` of the test stack); when it fails because a port or subnet this process
    reserved for the stack was taken meanwhile, choose new ones and try again, at most RETRIES
    times, saying so. Values the stack was given by hand are never changed: that failure is raised.
    The new values are also written into ``rechosen``."""
    retry = 0
    while True:
        try:
            return attempt()
        except Exception as exc:
            retry += 1
            changed = rechoose(stack, str(exc), retry, say) if retry <= RETRIES else {}
            if not changed:
                raise
            if rechosen is not None:
                rechosen.update(changed)


def collision(error: str) -> tuple[str, str]:
    """What Docker found taken in ``error`` ("ports" or "subnet") and its words; ("", "") for any other failure."""
    return next(((kind, words) for words, kind in COLLISIONS if words in error), ("", ""))


def ports_named(error: str) -> set[str]:
    """The ports of the ``address:port`` pairs an error names."""
    return set(re.findall(r"\d+\.\d+\.\d+\.\d+:(\d+)", error))


def rechoose(stack: auto.Stack, error: str, retry: int, say: Callable[[str], None]) -> dict[str, str]:
    """New reserved ports or subnet for ``stack`` after ``error``, configured; {} when the error is no
    collision or the colliding values are not this process's reservations for the stack."""
    kind, words = collision(error)
    if not kind:
        return {}
    prefix = f"{PROJECT}:"
    current = {k[len(prefix):]: v.value for k, v in stack.get_all_config().items() if k.startswith(prefix)}
    pid, _ = reservations.current_owner()
    ours = {r.value for r in reservations.Registry().records() if r.pid == pid and r.stack == stack.name}
    if kind == "ports":
        keys = [k for k in PORT_KEYS if current.get(k) in ports_named(error)] or list(PORT_KEYS)
        old = [current.get(k) for k in keys]
        if not all(v in ours for v in old):
            return {}
        _, ports = reserve(ports=len(keys), subnet=False, stack=stack.name, avoid=old)
        changed = {k: str(p) for k, p in zip(keys, ports)}
        what = f"port {', '.join(old)} was taken after it was chosen ({words})"
    else:
        old = [current.get("networkSubnet")]
        if old[0] not in ours:
            return {}
        subnet, _ = reserve(ports=0, subnet=True, stack=stack.name, avoid=old)
        changed = network_config(subnet)
        what = f"subnet {old[0]} was taken after it was chosen ({words})"
    stacks.configure(stack, changed)
    with reservations.Registry().locked() as records:
        records[:] = [r for r in records if not (r.stack == stack.name and r.kind != "stack" and r.value in old)]
    say(f"test stack {stack.name}: {what}; retrying with "
        f"{', '.join(f'{k}={v}' for k, v in changed.items())} (retry {retry} of {RETRIES})")
    return changed


@dataclass(frozen=True)
class Swept:
    stacks: list[str]
    objects: list[str]
    errors: list[str]
    in_use: list[str] = dataclasses.field(default_factory=list)


def sweep(max_age: timedelta, settings: Optional[stacks.Settings] = None,
          now: Optional[datetime] = None, say: Callable[[str], None] = lambda _: None) -> Swept:
    """Destroy and remove test stacks older than ``max_age`` (and what is left labelled as theirs on
    their own Docker host), then any Docker object on this process's Docker host left labelled
    with an old test stack's name (its state may be gone with a crashed run).
    A stack another live process on this host still uses is left alone, however old."""
    now = now or datetime.now(timezone.utc)
    in_use = in_use_elsewhere()

    def old(name: str) -> bool:
        born = created_at(name)
        return born is not None and now - born > max_age and name not in in_use

    settings = settings or stacks.Settings.default()
    workspace = stacks.workspace(settings)
    removed, objects, errors = [], [], []
    for summary in workspace.list_stacks():
        if not old(summary.name):
            continue
        say(f"sweeping stack {summary.name}")
        try:
            stack = stacks.open_stack(summary.name, settings)
            host = stacks.docker_host_of(stack)
            try:
                stack.destroy(color="never")
            finally:
                workspace.remove_stack(summary.name, force=True)
            # What a crashed run left labelled on the stack's own Docker host (remote ones too).
            with dockerhost.session(host) as current, dockerhost.using(current):
                left = dockercli.labelled_objects(summary.name)
                dockercli.remove_objects(left)
            objects += [name for names in left.values() for name in names]
            removed.append(summary.name)
            release(summary.name)
        except Exception as exc:  # keep sweeping; the label sweep below catches what is left
            errors.append(f"{summary.name}: {(str(exc).strip().splitlines() or [type(exc).__name__])[-1]}")
    leftovers = {kind: {n: s for n, s in objs.items() if old(s)}
                 for kind, objs in dockercli.labelled_objects().items()}
    dockercli.remove_objects(leftovers)
    spared = sorted(name for name in in_use if (born := created_at(name)) and now - born > max_age)
    return Swept(removed, sorted(objects + [n for objs in leftovers.values() for n in objs]), errors, spared)
