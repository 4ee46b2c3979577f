"""The thin adapter through which a host leaves the replicated cluster cleanly inside `pulumi up`.

One dynamic resource per host, which that host's containers depend on (and the other hosts'
resources on the first host's):
- When a host is taken off the list, the first host's resource is updated first and stops the
  leaving host's servers, the primaries moving off them (:func:`infra.deploy.membership.hand_over`),
  before any container changes; the engine deletes the stopped containers at the end. When the
  hosts that run etcd change with it, the same update moves etcd's member to the host that takes
  the leaving one's place (:func:`infra.deploy.membership.move_etcd`), before that host's etcd
  container is created.
- The engine deletes the leaving host's resource after its containers (also when the stack is
  destroyed); its delete runs :func:`infra.deploy.membership.leave` on the hosts that stay, with
  the addresses and passwords its state holds (recorded by every `up`: the cluster's last ones).
A joining host's servers join by themselves; the post-deploy step finishes what they leave
(:func:`infra.deploy.membership.converge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi.dynamic as dynamic

from infra.components.postdeploy import EngineBoundProvider, in_its_own_words
from infra.core.cluster import etcd_addresses
from infra.core.targets import DockerHost, Target

# The inputs whose change the state must record for the leave.
RECORDED = ("address", "target", "hosts", "deadline_s")


class _MembershipProvider(EngineBoundProvider):
    """Pickled by reference into the resource's state: keep its module and name, and no instance state."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=props["address"], outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        """An update records the cluster's addresses and passwords as they are now; nothing is replaced."""
        return dynamic.DiffResult(changes=any(olds.get(k) != news.get(k) for k in RECORDED), replaces=[],
                                  delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        """The first host's resource stops the servers of the hosts that leave the list, then moves
        etcd's member when the hosts that run etcd changed."""
        if news["address"] != news["target"]["cluster"]["members"][0]:
            return dynamic.UpdateResult(outs=news)
        leaving = {address: DockerHost(**docker) for address, docker in olds["hosts"].items()
                   if address not in news["hosts"]}
        if leaving:
            _run("hand_over", Target.from_dict(news["target"]), leaving, news["deadline_s"])
        if _runs_etcd(olds) != _runs_etcd(news):
            _run("move_etcd", Target.from_dict(news["target"]), news["deadline_s"])
        return dynamic.UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """The host's containers are gone: the Sentinels that stay forget it."""
        _run("leave", Target.from_dict(props["target"]), props["address"], props["deadline_s"])


def _runs_etcd(props: dict[str, Any]) -> frozenset[str]:
    """The hosts that run etcd by the list these inputs record."""
    return frozenset(etcd_addresses(props["target"]["cluster"]["members"]))


def _run(step: str, *args: Any) -> None:
    """Run a plain membership step (imported here, in the provider's process only); a failure is its own words."""
    from infra.deploy import membership

    with in_its_own_words():
        getattr(membership, step)(*args)


@dataclass
class MembershipArgs:
    """Arguments of :class:`Membership`."""

    address: str
    """The host's address."""
    target: dict
    """:meth:`infra.core.targets.Target.to_dict` of the replicated stack: every host, the passwords."""
    hosts: dict
    """Every host's engine by address (:class:`infra.core.targets.DockerHost` as a dict): how the
    first host's resource reaches a host that leaves."""
    deadline_s: int
    """How long the leave waits for the Sentinels to agree on a master and to relearn the others."""


class Membership(dynamic.Resource):
    """A host's place in the cluster: declare the host's containers after it, so that it goes after them."""

    def __init__(self, name: str, args: MembershipArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(
            _MembershipProvider(), name,
            {"address": args.address, "target": pulumi.Output.secret(args.target), "hosts": args.hosts,
             "deadline_s": args.deadline_s},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["target"])),
        )
