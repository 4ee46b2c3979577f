"""Defects of kreuzwerker's Docker provider that users of the official pulumi-docker plugin hit too,
fixed by our build's patches (toolchain/docker-provider/patches/github.com/terraform-providers/
terraform-provider-docker), and one it does not fix; all reported in docs/upstream-defects.md. Each test runs a small program
of its own against the local Docker Engine, through the real `pulumi` CLI."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from infra.core import dockercli
from infra.driver import stacks, teststacks
from tests.e2e.support import local_images

# Stops on SIGTERM only after a second of cleanup, then says so in the bind-mounted directory.
SLOW_STOPPER = "trap 'sleep 1; echo stopped-cleanly > /out/stopped; exit 0' TERM; while :; do sleep 0.2; done"


@pytest.fixture
def project(tmp_path):
    """A project whose program ($PROGRAM_FILE) is written by the test; its stack is removed after."""
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "venv").symlink_to(sys.prefix)
    (directory / "Pulumi.yaml").write_text(
        "name: provider-defects\nruntime:\n  name: python\n  options:\n    toolchain: pip\n    virtualenv: venv\n")
    name = f"e2e-defect-{secrets.token_hex(4)}"
    env = {**os.environ, **stacks.Settings(f"file://{tmp_path}/state", tmp_path / "passphrase").env()}
    run(directory, env, "stack", "init", name)
    try:
        yield directory, env, name
    finally:
        subprocess.run(["pulumi", "destroy", "--yes", "--skip-preview", "--non-interactive"], cwd=directory, env=env,
                       capture_output=True, timeout=300)
        dockercli.docker("rm", "-f", "-v", f"{name}-c", check=False)
        dockercli.docker("network", "rm", f"{name}-net", check=False)
        dockercli.docker("volume", "rm", f"{name}-vol", check=False)
        teststacks.release(name)


def run(directory: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["pulumi", *args, "--non-interactive"], cwd=directory, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_container_without_destroy_grace_seconds_is_stopped_with_time_to_shut_down(project, tmp_path):
    """kreuzwerker stops such a container with a timeout of 0 s (SIGTERM and SIGKILL at once): a
    database in it is killed mid-shutdown. Docker's own default gives it 10 s, as `docker stop` does."""
    directory, env, name = project
    out = tmp_path / "out"
    out.mkdir()
    (directory / "__main__.py").write_text(f"""
import pulumi_docker as docker
docker.Container("c", name={name + '-c'!r}, image={local_images()['redisImage']!r},
                 entrypoints=["/bin/sh", "-c"], command=[{SLOW_STOPPER!r}],
                 volumes=[docker.ContainerVolumeArgs(host_path={str(out)!r}, container_path="/out")])
""")
    run(directory, env, "up", "--yes", "--skip-preview")
    run(directory, env, "destroy", "--yes", "--skip-preview")
    assert (out / "stopped").read_text() == "stopped-cleanly\n"


def operation_seconds(event_log: Path) -> dict[tuple[str, str], int]:
    """(operation, resource type) -> whole seconds between the engine's events before and after it."""
    started, took = {}, {}
    for line in event_log.read_text().splitlines():
        event = json.loads(line)
        step = (event.get("resourcePreEvent") or event.get("resOutputsEvent") or {}).get("metadata")
        if not step or step["type"].startswith("pulumi:"):
            continue
        key = (step["op"], step["type"])
        if "resourcePreEvent" in event:
            started[key] = event["timestamp"]
        else:
            took[key] = event["timestamp"] - started[key]
    return took


def test_networks_and_volumes_are_created_and_removed_without_a_fixed_wait(project, tmp_path):
    """kreuzwerker waits a fixed 2 s before reading a network back (after its create and on every
    refresh) and before removing a network or a volume. The engine stamps its events in whole
    seconds: a 2 s wait puts at least 2 between an operation's first and last event."""
    directory, env, name = project
    subnet, _ = teststacks.reserve(ports=0, subnet=True, stack=name)
    (directory / "__main__.py").write_text(f"""
import pulumi_docker as docker
docker.Network("net", name={name + '-net'!r}, ipam_configs=[docker.NetworkIpamConfigArgs(subnet={str(subnet)!r})])
docker.Volume("vol", name={name + '-vol'!r})
""")
    log = tmp_path / "events.jsonl"
    env = {**env, "PULUMI_DEBUG_COMMANDS": "true"}  # what enables --event-log, as the Automation API does
    run(directory, env, "up", "--yes", "--skip-preview", "--event-log", str(log))
    created = operation_seconds(log)
    run(directory, env, "destroy", "--yes", "--skip-preview", "--event-log", str(log))
    deleted = operation_seconds(log)
    assert created[("create", "docker:index/network:Network")] <= 1, created
    assert deleted[("delete", "docker:index/network:Network")] <= 1, deleted
    assert deleted[("delete", "docker:index/volume:Volume")] <= 1, deleted


def test_an_imported_container_reads_back_none_of_its_settings(project):
    """Not fixed here (docs/upstream-defects.md): importing a running container gives the engine none of
    its ports, environment, labels, mounts or networks, so an import of a container declared exactly as
    it runs wants to replace it. This is why a lost state is not taken back with `import`; the test goes
    red once a provider reads them back."""
    directory, env, name = project
    image = local_images()["redisImage"]
    container = dockercli.docker("create", "--name", f"{name}-c", "--publish", "127.0.0.1::6379", "--env", "A=1",
                                 "--label", "made-by=test", image).strip()
    (directory / "__main__.py").write_text(f"""
import pulumi
import pulumi_docker as docker
docker.Container("c", name={name + '-c'!r}, image={image!r}, must_run=False, start=False,
                 ports=[docker.ContainerPortArgs(internal=6379, ip="127.0.0.1")],
                 envs=["A=1"], labels=[docker.ContainerLabelArgs(label="made-by", value="test")],
                 opts=pulumi.ResourceOptions(import_={container!r}))
""")
    done = subprocess.run(["pulumi", "preview", "--non-interactive", "--diff"], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    refusal = "previously-imported resources that still specify an ID may not be replaced"
    assert refusal in said, said
    for setting in ("ports", "envs", "labels"):
        assert f"{setting}: {{<nil>}} => " in said.split(refusal, 1)[1], said
