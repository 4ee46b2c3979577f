"""The thin adapter that changes the passwords of a running replicated cluster inside `pulumi up`,
before any of its containers is replaced (they depend on it).

A dynamic resource whose inputs are the cluster's passwords: `preview` shows an update when one
changed (and touches nothing), and `up` runs :func:`infra.deploy.rotation.rotate` with the previous
passwords (the resource's state) and the configured ones. Created on a stack (a new cluster, or
one made before this resource was there), it checks that the servers that answer take the
configured passwords.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import pulumi
import pulumi.dynamic as dynamic

from infra.components.postdeploy import EngineBoundProvider, in_its_own_words
from infra.core.cluster import ClusterSecrets
from infra.core.targets import Target


class _RotationProvider(EngineBoundProvider):
    """Pickled by reference into the resource's state: keep its module and name, and no instance state."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        _rotate(props, None)
        return dynamic.CreateResult(id_=props["target"]["stack"], outs=props)

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        """Refuse new passwords in the run that adds or removes a host: a joining host has no server to
        take them yet, and a leaving one is forgotten with the passwords its state last had."""
        if olds and olds.get("secrets") != news.get("secrets") and _hosts(olds) != _hosts(news):
            return dynamic.CheckResult(news, [dynamic.CheckFailure("secrets", (
                f"passwords changed in the same run as replicatedHosts ({', '.join(_hosts(olds))} -> "
                f"{', '.join(_hosts(news))}); nothing was changed. Set the previous passwords back and run `up` "
                f"for the hosts, then set the new ones and run `up` again."))])
        return dynamic.CheckResult(news, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        """Only the passwords count: the addresses and ports in the target follow the configuration."""
        return dynamic.DiffResult(changes=olds.get("secrets") != news.get("secrets"), replaces=[],
                                  delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        _rotate(news, ClusterSecrets(**olds["secrets"]))
        return dynamic.UpdateResult(outs=news)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the passwords live in the servers."""


def _hosts(props: dict[str, Any]) -> list[str]:
    """The cluster's addresses in the resource's target (the engine hands the provider plain values:
    it accepts no secrets)."""
    return list(props["target"]["cluster"]["members"])


def _rotate(props: dict[str, Any], previous: Optional[ClusterSecrets]) -> None:
    """Run the plain rotation (imported here, in the provider's process only); a failure is its own words."""
    from infra.deploy import rotation

    with in_its_own_words():
        rotation.rotate(Target.from_dict(props["target"]), ClusterSecrets(**props["secrets"]), previous)


@dataclass
class PasswordRotationArgs:
    """Arguments of :class:`PasswordRotation`."""

    target: dict
    """:meth:`infra.core.targets.Target.to_dict` of the replicated stack: where its servers answer."""
    secrets: ClusterSecrets
    """The configured passwords."""


class PasswordRotationStep(dynamic.Resource):
    def __init__(self, name: str, args: PasswordRotationArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(
            _RotationProvider(), name,
            {"target": pulumi.Output.secret(args.target), "secrets": pulumi.Output.secret(asdict(args.secrets))},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["target", "secrets"])),
        )


class PasswordRotation(pulumi.ComponentResource):
    """The cluster's running servers take the configured passwords: declare every container after it."""

    def __init__(self, name: str, args: PasswordRotationArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:PasswordRotation", name, None, opts)
        PasswordRotationStep(f"{name}-step", args, pulumi.ResourceOptions(parent=self))
        self.register_outputs({})
