"""The post-deploy step as `pulumi up` runs it: the step's dynamic provider
(infra.components.postdeploy) calls :func:`run` on create and update, in the provider process
the engine starts (``python -m pulumi.dynamic``), with the step's inputs (the target carries
both passwords) and returns its outputs to the engine.
"""

from __future__ import annotations

from typing import Any

from infra.core import dockerhost
from infra.core.targets import Target
from infra.deploy import steps

# Inputs the step's outputs repeat, so the next diff compares them (the provider's triggers among them).
KEPT_INPUTS = ("target", "migrations", "container_ids", "actor", "ready_timeout_s")


def run(inputs: dict[str, Any]) -> dict[str, Any]:
    """Run the step for ``inputs`` (see infra.components.postdeploy.PostDeployArgs); its outputs."""
    with dockerhost.reach(Target.from_dict(inputs["target"])) as target:
        result = steps.run(target, actor=inputs["actor"], deadline_s=inputs["ready_timeout_s"])
    return {**{k: inputs[k] for k in KEPT_INPUTS}, **result.summary()}
