"""The thin adapter that runs the post-deploy step inside `pulumi up`.

A dynamic resource whose inputs are the migration files' checksums, both containers'
ids and the connection target: `pulumi preview` diffs those (so pending migrations show
up, and no database is touched), and `pulumi up` runs :func:`infra.deploy.steps.run`
whenever one of them changed. A second `up` with nothing changed does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi.dynamic as dynamic

# Inputs whose change re-runs the step.
TRIGGERS = ("target", "migrations", "container_ids")


class _PostDeployProvider(dynamic.ResourceProvider):
    """Runs in Pulumi's dynamic-provider process; imports the plain step lazily there."""

    def _run(self, props: dict[str, Any]) -> dict[str, Any]:
        from infra.core import dockerhost
        from infra.core.targets import Target
        from infra.deploy import steps

        with dockerhost.reach(Target.from_dict(props["target"])) as target:
            result = steps.run(target, actor=props["actor"], deadline_s=props["ready_timeout_s"])
        return {**{k: props[k] for k in (*TRIGGERS, "actor", "ready_timeout_s")}, **result.summary()}

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=props["target"]["stack"], outs=self._run(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [k for k in TRIGGERS if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=self._run(news))

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


class PostDeployStep(dynamic.Resource):
    applied: pulumi.Output[list[str]]
    checks: pulumi.Output[int]

    def __init__(self, name: str, args: PostDeployArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(
            _PostDeployProvider(), name,
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
        # The step registers only once the containers exist (its inputs hold their ids), and the
        # engine would start its provider process (a Python interpreter importing the SDK, ~0.3 s)
        # only then. This provider has no inputs and depends on nothing, so it registers at once and
        # that process starts while the rest of the program runs.
        provider = pulumi.ProviderResource("pulumi-python", f"{name}-provider", opts=pulumi.ResourceOptions(parent=self))
        step = PostDeployStep(f"{name}-step", args, pulumi.ResourceOptions(
            parent=self, provider=provider, depends_on=args.services))
        self.applied = step.applied
        self.checks = step.checks
        self.register_outputs({"applied": self.applied, "checks": self.checks})
