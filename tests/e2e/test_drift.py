"""Drift on the real engine and Docker Engine: each test brings a stack up with data, breaks it
by hand the way an operator would, and checks that `status` names it, `preview` shows it, and
`up` repairs it with every row and key still there (or, for a lost data volume, that the
preview says DATA LOSS, `--fail-on-risk` fails and `up` refuses unless told to start empty)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.core import dockercli
from tests.e2e.support import (KEPT, change_summary, cli, data_of, docker, inspect, local_images, run, target_of,
                               wait_healthy)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


# Every resource of a stack: the stack, the docker provider, 3 components, network, 2 x (image,
# volume, container), the post-deploy component, its provider and its step.
RESOURCES = 15


def assert_running_as_declared(test_stack, name: str, ip: str) -> None:
    data = wait_healthy(name)
    assert data["State"]["Running"]
    assert data["Config"]["Labels"]["sin-datastores.stack"] == test_stack.name
    network = test_stack.stack.outputs()["networkName"].value
    assert data["NetworkSettings"]["Networks"][network]["IPAMConfig"]["IPv4Address"] == ip


def assert_repaired(settings, test_stack) -> None:
    """The data is all there, and the next preview and `up` see nothing to do."""
    target = target_of(test_stack)
    assert data_of(target) == KEPT
    preview = cli(settings, "preview", "--stack", test_stack.name)
    assert preview.returncode == 0 and change_summary(preview) == f"preview: {{'same': {RESOURCES}}}", preview.stderr
    assert "drift:" not in preview.stdout
    healthy = cli(settings, "status", "--stack", test_stack.name)
    assert healthy.returncode == 0, healthy.stdout


def test_a_container_removed_by_hand_is_named_previewed_and_recreated_with_its_data(stack_with_data, settings):
    postgres = target_of(stack_with_data).postgres
    docker("rm", "-f", postgres.container_name)

    status = cli(settings, "status", "--stack", stack_with_data.name)
    assert status.returncode == 1 and f"problem: container {postgres.container_name} is missing" in status.stdout

    preview = cli(settings, "preview", "--stack", stack_with_data.name)
    assert preview.returncode == 0, preview.stderr
    assert "'create': 1" in change_summary(preview)
    assert f"drift: container {postgres.container_name} is missing; `up` creates it again" in preview.stdout
    assert dockercli.inspect("container", postgres.container_name) is None  # preview touched nothing

    up = cli(settings, "up", "--stack", stack_with_data.name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "'create': 1" in change_summary(up)
    assert_running_as_declared(stack_with_data, postgres.container_name, postgres.container_ip)
    assert_repaired(settings, stack_with_data)


def test_a_container_stopped_by_hand_is_named_previewed_and_plain_pulumi_up_brings_it_back(stack_with_data, settings):
    redis = target_of(stack_with_data).redis
    docker("stop", redis.container_name)

    status = cli(settings, "status", "--stack", stack_with_data.name)
    assert status.returncode == 1 and f"problem: container {redis.container_name} is exited" in status.stdout

    preview = cli(settings, "preview", "--stack", stack_with_data.name)
    assert preview.returncode == 0, preview.stderr
    assert change_summary(preview) != f"preview: {{'same': {RESOURCES}}}"
    assert f"drift: container {redis.container_name} is exited; `up` re-creates it" in preview.stdout
    assert not inspect("container", redis.container_name)["State"]["Running"]

    # Plain `pulumi up` refreshes too (Pulumi.yaml), so it repairs the same as `python -m infra up`.
    up = run(settings, "pulumi", "up", "--yes", "--skip-preview", "--stack", stack_with_data.name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert_running_as_declared(stack_with_data, redis.container_name, redis.container_ip)
    assert_repaired(settings, stack_with_data)


def test_a_container_recreated_by_hand_with_other_settings_is_removed_by_up_and_declared_again(stack_with_data, settings):
    redis = target_of(stack_with_data).redis
    volume = next(m["Name"] for m in inspect("container", redis.container_name)["Mounts"] if m["Type"] == "volume")
    docker("rm", "-f", redis.container_name)
    # Same name and data volume; default bridge network, no labels, no password.
    impostor = docker("run", "-d", "--name", redis.container_name, "-v", f"{volume}:/data",
                      local_images()["redisImage"], "redis-server", "--appendonly", "yes").strip()

    status = cli(settings, "status", "--stack", stack_with_data.name)
    assert status.returncode == 1
    assert f"problem: drift: container {redis.container_name} is not the one the stack created" in status.stdout
    assert "lacks the stack's labels" in status.stdout and "is not on network" in status.stdout

    preview = cli(settings, "preview", "--stack", stack_with_data.name)
    assert preview.returncode == 0, preview.stderr
    assert "'create': 1" in change_summary(preview)
    assert f"drift: container {redis.container_name} is not the one the stack created" in preview.stdout
    assert inspect("container", redis.container_name)["Id"] == impostor  # preview touched nothing

    up = cli(settings, "up", "--stack", stack_with_data.name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"drift: container {redis.container_name} is not the one the stack created" in up.stderr
    assert inspect("container", redis.container_name)["Id"] != impostor
    assert dockercli.inspect("volume", volume) is not None
    assert_running_as_declared(stack_with_data, redis.container_name, redis.container_ip)
    assert_repaired(settings, stack_with_data)


def test_a_data_volume_removed_by_hand_is_data_loss_in_preview_and_up_refuses_it_unless_accepted(stack_with_data, settings):
    postgres = target_of(stack_with_data).postgres
    volume = next(m["Name"] for m in inspect("container", postgres.container_name)["Mounts"] if m["Type"] == "volume")
    docker("rm", "-f", postgres.container_name)
    docker("volume", "rm", volume)

    status = cli(settings, "status", "--stack", stack_with_data.name)
    assert status.returncode == 1
    assert f"problem: drift: data volume {volume} is missing: its data is gone" in status.stdout

    preview = cli(settings, "preview", "--stack", stack_with_data.name)
    assert preview.returncode == 0, preview.stderr
    assert "!! WARNING: this change would re-create empty, replace or delete 1 data resource(s)" in preview.stdout
    assert f"CREATE data volume {volume}: DATA LOSS" in preview.stdout
    assert f"python -m infra restore --stack {stack_with_data.name}" in preview.stdout

    risky = cli(settings, "preview", "--stack", stack_with_data.name, "--fail-on-risk")
    assert risky.returncode == 1 and f"CREATE data volume {volume}: DATA LOSS" in risky.stdout

    refused = cli(settings, "up", "--stack", stack_with_data.name)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"error: data volume {volume} of stack '{stack_with_data.name}' is gone from the Docker host" in refused.stderr
    assert "--accept-data-loss" in refused.stderr
    assert dockercli.inspect("volume", volume) is None  # neither the previews nor the refused up created anything
    assert dockercli.inspect("container", postgres.container_name) is None

    accepted = cli(settings, "up", "--stack", stack_with_data.name, "--accept-data-loss")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert dockercli.inspect("volume", volume) is not None
    rows, *redis_data = data_of(target_of(stack_with_data))
    assert rows == [] and redis_data == list(KEPT[1:])  # PostgreSQL starts empty, Redis kept its volume


def test_the_stack_container_taken_off_its_network_by_hand_is_named_and_replaced_by_up(stack_with_data, settings):
    postgres = target_of(stack_with_data).postgres
    network = stack_with_data.stack.outputs()["networkName"].value
    before = inspect("container", postgres.container_name)["Id"]
    docker("network", "disconnect", network, postgres.container_name)

    status = cli(settings, "status", "--stack", stack_with_data.name)
    assert status.returncode == 1
    assert f"problem: drift: container {postgres.container_name} is not on network {network}" in status.stdout

    preview = cli(settings, "preview", "--stack", stack_with_data.name)
    assert preview.returncode == 0, preview.stderr
    assert f"drift: container {postgres.container_name} is not on network {network}; `up` removes it" in preview.stdout
    assert network not in inspect("container", postgres.container_name)["NetworkSettings"]["Networks"]

    up = cli(settings, "up", "--stack", stack_with_data.name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert inspect("container", postgres.container_name)["Id"] != before
    assert_running_as_declared(stack_with_data, postgres.container_name, postgres.container_ip)
    assert_repaired(settings, stack_with_data)
