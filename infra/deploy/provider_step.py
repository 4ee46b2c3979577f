"""The post-deploy step as `pulumi up` runs it: the `sin-postdeploy` provider
(toolchain/pulumi-build/cmd/pulumi-resource-sin-postdeploy) starts ``python -m
infra.deploy.provider_step`` on create and update, with the step's inputs as JSON on stdin
(the target carries both passwords, so never argv or the environment) and reads its outputs as
JSON from stdout. A failure is the error's message on stderr and exit code 1; the engine shows
it as the step's error.
"""

from __future__ import annotations

import contextlib
import json
import sys
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


def main() -> int:
    inputs = json.load(sys.stdin)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the outputs and nothing else
            outputs = run(inputs)
    except Exception as exc:  # the provider reports it as the step's error
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    json.dump(outputs, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
