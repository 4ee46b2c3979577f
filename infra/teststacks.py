"""Throwaway test stacks: created with a free subnet, free host ports and stack-prefixed
names; swept when older than a limit, so a crashed CI run leaves nothing behind.

A test stack is recognised by its name alone, ``test-<UTC yyyymmddThhmmss>-<6 hex>``,
which also carries its age; the sweeper never touches a stack or Docker object whose name
or label does not match it.
"""

from __future__ import annotations

import re
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

from pulumi import automation as auto

from infra import dockercli, stacks

PREFIX = "test"
NAME = re.compile(rf"^{PREFIX}-(\d{{8}}t\d{{6}})-[0-9a-f]{{6}}$")
# Test subnets come from here, away from the ADR's 172.20.0.0/16.
SUBNET_POOL = "172.29.0.0/16"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def new_name(now: Optional[datetime] = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{PREFIX}-{now.strftime('%Y%m%dt%H%M%S')}-{secrets.token_hex(3)}"


def created_at(name: str) -> Optional[datetime]:
    """When a test stack was created, from its name; None for anything that is not a test stack."""
    match = NAME.match(name)
    return datetime.strptime(match.group(1), "%Y%m%dt%H%M%S").replace(tzinfo=timezone.utc) if match else None


# What this process has handed out but Docker may not show yet (stacks configured, not up).
_handed_out: dict[str, set] = {"subnets": set(), "ports": set()}
_handed_out_lock = threading.Lock()


def isolated_config(retain_volumes: bool = False) -> dict[str, str]:
    """Config that keeps a stack clear of every other on this host: its own /24 and ports.

    Names need nothing here: every stack but dev gets them prefixed with its own name.
    """
    with _handed_out_lock:
        subnet = dockercli.free_subnet(SUBNET_POOL, exclude=list(_handed_out["subnets"]))
        ports = []
        while len(ports) < 2:
            port = free_port()
            if port not in _handed_out["ports"] and port not in ports:
                ports.append(port)
        _handed_out["subnets"].add(subnet)
        _handed_out["ports"].update(ports)
    hosts = list(subnet.hosts())
    return {
        "networkSubnet": str(subnet), "networkGateway": str(hosts[0]),
        "networkIpRange": str(list(subnet.subnets(prefixlen_diff=1))[1]),
        "postgresIp": str(hosts[99]), "redisIp": str(hosts[119]),
        "postgresHostPort": str(ports[0]), "redisHostPort": str(ports[1]),
        "retainVolumes": "true" if retain_volumes else "false",
    }


def create(settings: Optional[stacks.Settings] = None, name: Optional[str] = None,
           config: Optional[dict[str, str]] = None) -> auto.Stack:
    """Create and configure (not deploy) a new stack: ``config`` (default: :func:`isolated_config`)
    and generated secrets."""
    stack = stacks.open_stack(name or new_name(), settings, create=True)
    stacks.configure(stack, isolated_config() if config is None else config)
    stacks.ensure_secrets(stack)
    return stack


@dataclass(frozen=True)
class Swept:
    stacks: list[str]
    objects: list[str]
    errors: list[str]


def sweep(max_age: timedelta, settings: Optional[stacks.Settings] = None,
          now: Optional[datetime] = None, say: Callable[[str], None] = lambda _: None) -> Swept:
    """Destroy and remove test stacks older than ``max_age``, then any Docker object left
    labelled with an old test stack's name (its state may be gone with a crashed run)."""
    now = now or datetime.now(timezone.utc)

    def old(name: str) -> bool:
        born = created_at(name)
        return born is not None and now - born > max_age

    settings = settings or stacks.Settings.default()
    workspace = stacks.workspace(settings)
    removed, errors = [], []
    for summary in workspace.list_stacks():
        if not old(summary.name):
            continue
        say(f"sweeping stack {summary.name}")
        try:
            stack = stacks.open_stack(summary.name, settings)
            try:
                stack.destroy(color="never")
            finally:
                workspace.remove_stack(summary.name, force=True)
            removed.append(summary.name)
        except Exception as exc:  # keep sweeping; the label sweep below catches what is left
            errors.append(f"{summary.name}: {(str(exc).strip().splitlines() or [type(exc).__name__])[-1]}")
    leftovers = {kind: {n: s for n, s in objs.items() if old(s)}
                 for kind, objs in dockercli.labelled_objects().items()}
    dockercli.remove_objects(leftovers)
    return Swept(removed, sorted(n for objs in leftovers.values() for n in objs), errors)
