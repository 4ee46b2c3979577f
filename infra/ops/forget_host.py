"""Forget a host of a replicated stack that is gone for good, without reaching it.

A host taken off `replicatedHosts` leaves in `up`: its servers stop, the primaries moving off, its
containers are deleted, the Sentinels that stay forget it. All of that needs the host's Docker
engine, and a host that burned or was wiped has none: the refresh of its resources fails, and
so would their delete. Its servers are gone anyway (the cluster failed over by itself), so what
is left is bookkeeping: this drops from the stack's state what it holds of the host (its member's
resources and its docker provider, references to them, its engine in the memberships' records),
then the Sentinels that stay forget it (:func:`infra.deploy.membership.leave`) and take the majority
of the hosts left as quorum (:func:`infra.deploy.membership.converge`): with the gone host's vote
still needed, losing one more host would leave Redis without a failover. A host that ran etcd first
leaves etcd's member list (:func:`infra.deploy.etcd.forget`), before the state is touched. The next
`up` then changes the other hosts only (and adds an etcd member on the host that took its place
among the first ones). Nothing is done on the host itself; its volumes stay there.

Refused, nothing changed (exit 2): a host still in the list, a host that ran etcd while no etcd
member of the listed hosts answers, a host that answers and still runs the stack's containers
(`up` removes it cleanly), a host neither the state, etcd nor the Sentinels know, a stack another
command holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

from pulumi import automation as auto

from infra.core import cluster, conflicts, dockerhost
from infra.core.engine import Engine, EngineError
from infra.core.errors import InputError
from infra.core.targets import DockerHost
from infra.deploy import etcd, membership
from infra.driver import stacks

PROVIDER_TYPE = "pulumi:providers:docker"


class ForgetRefused(InputError):
    """The host cannot be forgotten as asked; nothing was changed."""


@dataclass(frozen=True)
class Forgotten:
    """What :func:`forget_host` did."""

    urns: tuple[str, ...]
    """The resources dropped from the state (none: it held nothing of the host)."""
    reset: tuple[str, ...]
    """The Sentinels reset, by address."""


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def member_urns(deployment: dict, address: str) -> list[str]:
    """The URNs the state holds of the member on ``address``: its component, everything under it, and
    the docker provider its resources reach the host with."""
    member = cluster.Member(address)
    resources = deployment.get("resources") or []
    found = {r["urn"] for r in resources if _name(r["urn"]) == member.component}
    for resource in resources:  # parents come before their children in a state
        if resource.get("parent") in found:
            found.add(resource["urn"])
    found |= {r["urn"] for r in resources
              if r.get("type") == PROVIDER_TYPE and _name(r["urn"]) == member.provider}
    return [r["urn"] for r in resources if r["urn"] in found]


def _records(resource: dict, side: str, address: str) -> bool:
    """Whether ``resource`` is a membership whose ``side`` (inputs, outputs) records the host's engine."""
    hosts = (resource.get(side) or {}).get("hosts")
    return _name(resource["urn"]).endswith(cluster.MEMBERSHIP_SUFFIX) and isinstance(hosts, dict) and address in hosts


def without_member(deployment: dict, address: str) -> dict:
    """``deployment`` without :func:`member_urns`: no other resource depends on them any more, no
    membership records the host's engine (which the first host's would reach to stop its servers),
    no pending operation is theirs."""
    dropped = set(member_urns(deployment, address))

    def kept(urns: list) -> list:
        return [urn for urn in urns or () if urn not in dropped]

    resources = []
    for resource in deployment.get("resources") or []:
        if resource["urn"] in dropped:
            continue
        if (resource.get("provider") or "").rsplit("::", 1)[0] in dropped:
            raise ForgetRefused(f"the state's {resource['urn']} reaches {address} but is not part of its member; "
                                f"nothing was changed")
        resource = {**resource, "dependencies": kept(resource.get("dependencies"))}
        if resource.get("propertyDependencies"):
            resource["propertyDependencies"] = {key: kept(urns)
                                                for key, urns in resource["propertyDependencies"].items()}
        for side in ("inputs", "outputs"):
            if _records(resource, side, address):
                hosts = resource[side]["hosts"]
                resource[side] = {**resource[side], "hosts": {a: h for a, h in hosts.items() if a != address}}
        resources.append(resource)
    pending = [op for op in deployment.get("pending_operations") or []
               if (op.get("resource") or {}).get("urn") not in dropped]
    return {**deployment, "resources": resources, "pending_operations": pending}


def recorded_engine(deployment: dict, address: str) -> Optional[DockerHost]:
    """How the memberships in the state reach the host's engine; None: none records it."""
    for resource in deployment.get("resources") or []:
        if _records(resource, "outputs", address):
            return DockerHost(**resource["outputs"]["hosts"][address])
    return None


def running_there(docker: DockerHost, stack: str) -> Optional[list[str]]:
    """The stack's containers on the host, by name; None: its engine cannot be reached."""
    try:
        with dockerhost.session(docker) as current:
            engine = Engine.of(current.docker_env)
            if engine is None:
                return None
            return conflicts.stack_containers(engine.containers(), stack)
    except (dockerhost.DockerHostError, EngineError):
        return None


def _leave_etcd(address: str, asking: tuple[str, ...], deadline_s: float, say: Callable[[str], None]) -> None:
    """Remove the host's etcd member, if etcd lists it (before the state is touched: a failure changes nothing)."""
    for change in etcd.forget(address, asking, deadline_s):
        say(change)


def forget_host(stack: auto.Stack, address: str, say: Callable[[str], None]) -> Forgotten:
    """Drop the host at ``address`` from the stack's state, then from its Sentinels' memory (module docstring)."""
    cfg = stacks.stack_config(stack.name)
    if cfg.cluster is None:
        raise ForgetRefused(f"stack '{stack.name}' is not replicated (topology single): its one host goes with "
                            f"`python -m infra down --stack {stack.name}`; nothing was changed")
    if address in cfg.cluster.addresses:
        raise ForgetRefused(f"{address} is still in replicatedHosts of stack '{stack.name}'; take it off the list "
                            f"first (`pulumi config set replicatedHosts ssh://<user>@<address>,... --stack "
                            f"{stack.name}` without it), then run forget-host again; nothing was changed")
    stacks.refuse_while_locked(stack, say)
    deployment = stacks.exported_deployment(stack)
    urns = member_urns(deployment, address)
    ran_etcd = any(_name(urn) == f"{cluster.Member(address).component}-etcd" for urn in urns)
    asked, etcd_members = etcd.listed(cfg.cluster.addresses)
    if ran_etcd and asked is None:
        raise ForgetRefused(f"{address} ran one of the stack's etcd members, and no etcd member on "
                            f"{', '.join(cfg.cluster.addresses)} answers to remove it: etcd changes its members only "
                            f"with a majority of them up. Bring the other etcd hosts back, then run forget-host "
                            f"again; nothing was changed")
    in_etcd = any(m.address == address for m in etcd_members)
    deployed = stacks.deployed_target(stack.name)
    target = replace(deployed, cluster=replace(
        deployed.cluster, members=tuple(a for a in deployed.cluster.members if a != address)))
    if not urns:
        if not in_etcd and not membership.remembered_by(target, address):
            raise ForgetRefused(f"neither the state of stack '{stack.name}', etcd nor its Sentinels know {address}: "
                                f"nothing to forget (its hosts: {', '.join(cfg.cluster.addresses)})")
        say(f"the state of stack '{stack.name}' holds nothing of {address}; the cluster still knows it")
        _leave_etcd(address, cfg.cluster.addresses, cfg.health_timeout_seconds, say)
    else:
        docker = recorded_engine(deployment, address)
        running = running_there(docker, stack.name) if docker else None
        if running:
            raise ForgetRefused(f"{address} answers and runs the stack's {', '.join(running)}: with the host off the "
                                f"list, `pulumi up --stack {stack.name}` stops them and has the cluster forget it "
                                f"cleanly; forget-host is for a host that cannot be reached. Nothing was changed")
        _leave_etcd(address, cfg.cluster.addresses, cfg.health_timeout_seconds, say)
        stacks.import_deployment(stack, without_member(deployment, address), f"forgetting {address} in")
        say(f"dropped {len(urns)} resources of {address} from the state of stack '{stack.name}' (nothing was done "
            f"on the host: {'its engine cannot be reached' if running is None else 'it runs none of them'})")
    reset = membership.leave(target, address, cfg.health_timeout_seconds)
    if len(reset) < len(target.cluster.members):
        say(f"the Sentinels on {', '.join(reset) or 'no other host'} reset and forgot {address}; the others did not "
            f"answer: run forget-host again once they do")
        return Forgotten(tuple(urns), tuple(reset))
    say(f"the Sentinels on {', '.join(reset)} reset: they forgot {address}")
    for change in membership.converge(target, cfg.health_timeout_seconds):  # the majority of the hosts left
        say(change)
    return Forgotten(tuple(urns), tuple(reset))
