"""Pulumi.yaml asks the Python language host only for what upstream's host reads: the program must
run the same under the host users install with the Pulumi CLI."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The runtime options upstream's pulumi-language-python reads (its parseOptions).
UPSTREAM_OPTIONS = {"toolchain", "virtualenv", "typechecker"}


def test_the_runtime_options_are_only_those_upstreams_language_host_reads():
    runtime = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["runtime"]
    assert runtime["name"] == "python"
    assert set(runtime.get("options", {})) <= UPSTREAM_OPTIONS, runtime["options"]
