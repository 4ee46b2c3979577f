"""The thin adapter that runs the post-deploy step inside `pulumi up`.

A resource of this project's own provider, ``sin-postdeploy``
(toolchain/pulumi-build/cmd/pulumi-resource-sin-postdeploy), whose inputs are the migration
files' checksums, both containers' ids and the connection target: `pulumi preview` diffs those
(so pending migrations show up, and no database is touched), and `pulumi up` runs
:func:`infra.deploy.provider_step.run` whenever one of them changed. A second `up` with nothing
changed does nothing, and starts no Python for the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi.dynamic as dynamic

PROVIDER_PACKAGE = "sin-postdeploy"
STEP_TYPE = f"{PROVIDER_PACKAGE}:index:Step"


class _PostDeployProvider(dynamic.ResourceProvider):
    """The step's dynamic provider up to release 4cf03c7, whose stacks' state refers to this
    class by name: kept so that their first `up` with this release can refresh that step and
    delete it (the new step is created first). Reading keeps the state."""

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the schema lives in the data volume."""


@dataclass
class PostDeployArgs:
    """Arguments of :class:`PostDeploy`."""

    target: pulumi.Input[dict]
    """:meth:`infra.core.connect.Target.to_dict` of the stack; carries both passwords."""
    migrations: list[dict]
    """:func:`infra.deploy.migration_files.fingerprint` of the migration files."""
    container_ids: pulumi.Input[list[str]]
    """Both containers' ids: a replaced container is verified again."""
    actor: str
    """Who runs the deployment, for the history and the audit trail."""
    ready_timeout_s: int
    """How long the step waits for containers just (re)started to answer (healthTimeoutSeconds)."""
    services: list[pulumi.Resource]
    """The services the step runs after. Only the step depends on them: a dependency of the
    component would hold back its provider too (see :class:`PostDeploy`)."""


class PostDeployStep(pulumi.CustomResource):
    applied: pulumi.Output[list[str]]
    checks: pulumi.Output[int]

    def __init__(self, name: str, args: PostDeployArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(
            STEP_TYPE, name,
            {"target": pulumi.Output.secret(args.target), "migrations": args.migrations,
             "container_ids": args.container_ids, "actor": args.actor, "ready_timeout_s": args.ready_timeout_s,
             "applied": None, "already_applied": None, "checks": None, "failed": None, "timings_ms": None},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["target"])),
        )


class PostDeploy(pulumi.ComponentResource):
    """Apply the schema and verify both services as soon as the containers answer."""

    applied: pulumi.Output[list[str]]
    checks: pulumi.Output[int]

    def __init__(self, name: str, args: PostDeployArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:PostDeploy", name, None, opts)
        # An explicit provider with no inputs and no dependencies: it registers (and its process
        # starts) at once, while the rest of the program runs, and it stays inside the component.
        provider = pulumi.ProviderResource(PROVIDER_PACKAGE, f"{name}-provider",
                                           opts=pulumi.ResourceOptions(parent=self))
        step = PostDeployStep(f"{name}-step", args, pulumi.ResourceOptions(
            parent=self, provider=provider, depends_on=args.services))
        self.applied = step.applied
        self.checks = step.checks
        self.register_outputs({"applied": self.applied, "checks": self.checks})
