"""Conflicts only the Docker host reveals (issue 26), on the real engine: each is refused before anything
is created, through the command line (exit 2, the setting and the fix named) and through plain `pulumi`
(the program's error, once, without a traceback). An `up` killed at any moment leaves a stack the next
`up` completes and `down` removes whole."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.driver import stacks, teststacks
from tests.e2e.support import ROOT, cli, docker, kill_marked, local_images, mark, objects_of, run

pytestmark = pytest.mark.e2e


@pytest.fixture
def new_stack(make_stack):
    """A configured stack that is not up, and its config (the e2e session's stacks: destroyed, removed
    and swept at its end, failing or not)."""
    def make():
        made = make_stack()
        return made.stack, made.config
    return make


def named_like(stack: str) -> list[str]:
    """Every container, volume and network whose name starts with the stack's name, or that carries its label."""
    names = docker("ps", "-a", "--format", "{{.Names}}").split() + docker("volume", "ls", "--format", "{{.Name}}").split() \
        + docker("network", "ls", "--format", "{{.Name}}").split()
    return sorted({n for n in names if n.startswith(stack)} | {n for ns in objects_of(stack).values() for n in ns})


def assert_refused(settings, stack, key: str, words: str, intruders: list[str]) -> None:
    """`up` and `preview`, by the command line and by plain pulumi, refuse naming ``key``; nothing is created."""
    for command in ("up", "preview"):
        done = cli(settings, command, "--stack", stack.name)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{key} " in done.stderr and words in done.stderr, done.stderr
        assert "nothing was created" in done.stderr and "Traceback" not in done.stderr + done.stdout
    for command in ("up", "preview"):
        plain = run(settings, "pulumi", command, "--stack", stack.name, "--yes" if command == "up" else "--diff",
                    "--non-interactive", "--color", "never")
        output = plain.stdout + plain.stderr
        assert plain.returncode != 0, output
        lines = [line for line in output.splitlines() if line.strip().startswith(f"- {key} ")]
        assert len(lines) == 1, output  # the program's error, once
        assert "Traceback" not in output, output
    assert named_like(stack.name) == sorted(intruders), "nothing of the stack was created"


def test_a_subnet_another_network_uses_is_refused_with_a_free_one_named(settings, new_stack):
    stack, config = new_stack()
    intruder = f"{stack.name}-intruder"
    docker("network", "create", "--subnet", config["networkSubnet"], intruder)
    try:
        assert_refused(settings, stack, "networkSubnet", f"overlaps network '{intruder}'", [intruder])
        done = cli(settings, "up", "--stack", stack.name)
        assert "choose a free subnet, e.g." in done.stderr
    finally:
        docker("network", "rm", intruder)


def test_a_new_stack_refused_for_a_conflict_is_not_created_and_its_file_is_left_as_it_was(settings):
    name = teststacks.new_name()
    config = {**teststacks.isolated_config(stack=name), **local_images()}
    path = stacks.config_file(name)
    path.write_text("config:\n" + "".join(f"  sin-datastores:{k}: \"{v}\"\n" for k, v in config.items()))
    before = path.read_bytes()
    intruder = f"{name}-intruder"
    docker("network", "create", "--subnet", config["networkSubnet"], intruder)
    try:
        done = cli(settings, "up", "--stack", name)
        assert done.returncode == 2 and "networkSubnet" in done.stderr, done.stdout + done.stderr
        assert name not in [s.name for s in stacks.workspace(settings).list_stacks()]
        assert path.read_bytes() == before, "no salt, no generated password"
    finally:
        docker("network", "rm", intruder)
        path.unlink(missing_ok=True)
        teststacks.release(name)


def test_a_port_a_plain_process_listens_on_is_refused_naming_no_container(settings, new_stack):
    stack, config = new_stack()
    port = int(config["redisHostPort"])
    with socket.create_server(("127.0.0.1", port)):
        assert_refused(settings, stack, "redisHostPort", "a process on the local Docker Engine that is not a "
                       "container listens there", [])


def test_a_container_and_a_volume_named_like_the_stacks_are_refused(settings, new_stack):
    stack, config = new_stack()
    container, volume = f"{stack.name}-room-04-memory-redis", f"{stack.name}-postgres_data"
    docker("create", "--name", container, config["redisImage"], "true")
    docker("volume", "create", volume)
    try:
        assert_refused(settings, stack, "redisContainerName", "container", [container, volume])
        done = cli(settings, "up", "--stack", stack.name)
        assert f"postgresVolumeName {volume}: a volume of that name exists, not made by this stack" in done.stderr
        assert docker("volume", "inspect", "--format", "{{.Name}}", volume).strip() == volume, "the volume stays"
    finally:
        docker("rm", "-f", "-v", container)
        docker("volume", "rm", volume)


def test_an_up_killed_at_any_moment_is_completed_by_the_next_up_and_removed_whole_by_down(settings, new_stack):
    stack, _ = new_stack()
    # The moments are spread over how long a whole `up` takes on this machine now: the first one measures it.
    started = time.monotonic()
    assert cli(settings, "up", "--stack", stack.name).returncode == 0
    whole = time.monotonic() - started
    assert cli(settings, "down", "--stack", stack.name).returncode == 0
    seed = random.randrange(1 << 30)
    moments = [round(whole * random.Random(seed + run).uniform(0.05, 1.0), 2) for run in range(5)]
    print(f"a whole `up` took {whole:.1f} s; killing the first `up` after {moments} s (seed {seed})")
    for moment in moments:
        env = {**os.environ, **settings.env()}
        token = mark(env)
        started = subprocess.Popen([sys.executable, "-m", "infra", "up", "--stack", stack.name], cwd=ROOT,
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            started.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)
            started.wait()
        kill_marked(token)
        time.sleep(0.5)  # what the killed processes had asked the engine for lands
        done = cli(settings, "up", "--stack", stack.name)
        # Exit 0: the stack is up and every check of its verification passed.
        assert done.returncode == 0, f"after a kill at {moment} s: {done.stdout}{done.stderr}"
        down = cli(settings, "down", "--stack", stack.name)
        assert down.returncode == 0, down.stdout + down.stderr
        assert named_like(stack.name) == [], f"after a kill at {moment} s, `down` left {named_like(stack.name)}"


def interrupt_create(settings, stack, logical_name: str) -> dict:
    """Make the stack's state what a kill during the create of ``logical_name`` leaves: that resource and
    what waits for it unrecorded, a pending create instead (written into the file backend: `pulumi stack
    import` drops pending operations)."""
    path = Path(settings.backend_url[len("file://"):]) / ".pulumi" / "stacks" / "sin-datastores" / f"{stack.name}.json"
    checkpoint = json.loads(path.read_text())
    latest = checkpoint["checkpoint"]["latest"]
    (resource,) = [r for r in latest["resources"] if r["urn"].endswith(f"::{logical_name}")]
    gone = {resource["urn"]} | {r["urn"] for r in latest["resources"] if resource["urn"] in r.get("dependencies", [])}
    latest["resources"] = [r for r in latest["resources"] if r["urn"] not in gone]
    latest["pending_operations"] = [{"resource": {k: v for k, v in resource.items() if k != "id"}, "type": "creating"}]
    raw = json.dumps(checkpoint).encode()
    path.write_bytes(raw)
    attrs = Path(f"{path}.attrs")  # the blob store keeps the file's MD5 beside it
    attrs.write_text(json.dumps({**json.loads(attrs.read_text()),
                                 "md5": base64.b64encode(hashlib.md5(raw).digest()).decode()}))
    return resource


def test_a_container_an_interrupted_up_created_without_recording_it_is_replaced_by_the_next_up(settings, new_stack):
    stack, _ = new_stack()
    assert cli(settings, "up", "--stack", stack.name).returncode == 0
    name = f"{stack.name}-room-04-memory-redis"
    before = docker("inspect", "--format", "{{.Id}}", name).strip()
    interrupt_create(settings, stack, "redis-container")

    done = cli(settings, "up", "--stack", stack.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed container {name}, which an interrupted `up` created without recording it" in done.stderr
    replaced = docker("inspect", "--format", "{{.Id}}", name).strip()
    assert replaced != before
    assert not stacks.exported_deployment(stack).get("pending_operations"), "the state is done with the create"
    # Once completed, the create is done with: the next `up` and `down` leave the stack's container to the engine.
    again = cli(settings, "up", "--stack", stack.name)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "interrupted" not in again.stderr and docker("inspect", "--format", "{{.Id}}", name).strip() == replaced
    down = cli(settings, "down", "--stack", stack.name)
    assert down.returncode == 0 and "interrupted" not in down.stderr, down.stdout + down.stderr
    assert named_like(stack.name) == []


def test_down_after_an_interrupted_up_removes_what_the_state_never_recorded(settings, new_stack):
    stack, _ = new_stack()
    assert cli(settings, "up", "--stack", stack.name).returncode == 0
    interrupt_create(settings, stack, "redis-container")
    done = cli(settings, "down", "--stack", stack.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed container {stack.name}-room-04-memory-redis" in done.stderr
    assert named_like(stack.name) == [], "retainVolumes is false: nothing of the stack is left"


def test_a_lock_a_killed_up_of_this_machine_left_is_removed_and_said(settings, new_stack):
    stack, _ = new_stack()
    folder = Path(settings.backend_url[len("file://"):]) / ".pulumi" / "locks" / "organization" / "sin-datastores" \
        / stack.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stale.json").write_text(json.dumps({"pid": 2 ** 22 + 3, "username": "root",
                                                   "hostname": socket.gethostname(),
                                                   "timestamp": "2026-12-06T04:12:01.885639042Z"}))
    done = cli(settings, "up", "--stack", stack.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed the lock a killed command left on stack '{stack.name}' (root@{socket.gethostname()} " \
           f"(pid {2 ** 22 + 3}) since 2026-12-06 04:12:01 UTC, no longer running)" in done.stderr
    assert not (folder / "stale.json").exists()
