"""What the end-to-end tests share: the docker CLI, a stack's objects and config, the command
line, and the data a stack is brought up with to show it is kept."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import redis as redis_lib

from infra.core import dockercli
from infra.core.connect import connect_postgres
from infra.driver import stacks, teststacks

ROOT = Path(__file__).resolve().parents[2]


def docker(*args: str) -> str:
    return dockercli.docker(*args)


def inspect(kind: str, name: str) -> dict:
    return json.loads(docker(kind, "inspect", name))[0]


def wait_healthy(name: str, seconds: float = 120) -> dict:
    """The container's inspect data once Docker's healthcheck says healthy (its first check runs
    one interval after a start: `up` does not wait for it)."""
    give_up = time.monotonic() + seconds
    while True:
        data = inspect("container", name)
        if (data["State"].get("Health") or {}).get("Status") == "healthy":
            return data
        assert time.monotonic() < give_up, f"{name} is {data['State']['Status']} {data['State'].get('Health')}"
        time.sleep(0.5)


def objects_of(stack: str) -> dict[str, list[str]]:
    """Names of the containers, networks and volumes labelled as the stack's."""
    return {kind: sorted(names) for kind, names in dockercli.labelled_objects(stack).items()}


def sweep(stack: str) -> None:
    """Remove whatever Docker objects of the stack are left."""
    dockercli.remove_objects(dockercli.labelled_objects(stack))


def local_images() -> dict[str, str]:
    try:
        return stacks.local_images()
    except stacks.StackError as exc:
        pytest.fail(f"{exc}; run the tests through scripts/test", pytrace=False)


def stack_config(retain_volumes: bool = False, stack: str = "") -> dict[str, str]:
    return {**teststacks.isolated_config(retain_volumes, stack), "healthTimeoutSeconds": "90", **local_images()}


def state_files(settings: stacks.Settings) -> list[Path]:
    return [p for p in Path(settings.backend_url[len("file://"):]).rglob("*") if p.is_file()]


def cli(settings: stacks.Settings, *args: str, env: dict | None = None, timeout_s: float = 900) -> subprocess.CompletedProcess:
    """`python -m infra ARGS` as an operator runs it, against the tests' backend."""
    return subprocess.run([sys.executable, "-m", "infra", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **settings.env(), **(env or {})}, timeout=timeout_s)


def run(settings: stacks.Settings, *argv: str) -> subprocess.CompletedProcess:
    """Any command (plain `pulumi` ...) with the tests' backend."""
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, env={**os.environ, **settings.env()},
                          timeout=600)


def target_of(test_stack):
    return stacks.target_from_outputs(test_stack.name, test_stack.stack.outputs())


def put_data(target) -> None:
    with connect_postgres(target.postgres) as conn:
        conn.execute("INSERT INTO services (name, category, container_name, ip_address, port) "
                     "VALUES ('kept', 'e2e', 'c-kept', '172.20.1.1', 1234)")
    client = redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password)
    client.set("session:kept", "yes")
    client.rpush("queue:kept", "job-1", "job-2")
    time.sleep(1.2)  # appendfsync everysec: the keys are on disk after at most a second


def data_of(target) -> tuple:
    with connect_postgres(target.postgres) as conn:
        rows = conn.execute("SELECT name, port FROM services WHERE category = 'e2e'").fetchall()
    client = redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password)
    return rows, client.get("session:kept"), client.lrange("queue:kept", 0, -1)


KEPT = ([("kept", 1234)], b"yes", [b"job-1", b"job-2"])


def change_summary(result: subprocess.CompletedProcess) -> str:
    """The `preview: {...}` / `changes: ...` summary line the CLI prints."""
    match = re.search(r"sin-datastores: (preview: .*|update .*)", result.stderr)
    assert match, result.stdout + result.stderr
    return match.group(1)


# Every process a command starts inherits its environment: a mark there finds them all, and nothing else.
MARK = "SIN_PROCESS_TEST_MARK"


def marked_processes(mark: str) -> dict[int, str]:
    """Running processes whose environment carries ``MARK=mark``: pid -> command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"{MARK}={mark}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()[:200]
        except OSError:  # gone meanwhile, a zombie, or not ours to read
            continue
    return found


def mark(env: dict) -> str:
    """Mark the processes of every command run with ``env`` (a workspace's ``env_vars``, say)."""
    env[MARK] = secrets.token_hex(8)
    return env[MARK]


def assert_no_process_left(mark: str, grace_s: float = 10.0) -> None:
    """No process of the finished commands run with ``mark`` is left (after ``grace_s`` for those the
    engine stops as it ends: SIGINT, then SIGKILL 5 s later)."""
    give_up = time.monotonic() + grace_s
    while (left := marked_processes(mark)) and time.monotonic() < give_up:
        time.sleep(0.2)
    assert not left, f"processes outlived the command: {left}"


def kill_marked(mark: str) -> None:
    """End what a command killed on purpose left running (Pulumi's plugins run in process groups of
    their own and were seen running an hour after their CLI was killed)."""
    for pid in marked_processes(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def resource_steps(events: list, types: Optional[set[str]] = None) -> dict[tuple[str, str], str]:
    """(type, name) -> what the update did to each resource (of ``types``), the refresh before it left out."""
    steps = {}
    for event in events:
        meta = event.resource_pre_event.metadata if event.resource_pre_event else None
        if meta and (types is None or meta.type in types):
            op = str(getattr(meta.op, "value", meta.op))
            if op != "refresh":
                steps[(meta.type, meta.urn.rsplit("::", 1)[-1])] = op
    return steps


def volume_steps(events: list) -> dict[str, str]:
    return {name: op for (_, name), op in resource_steps(events, {"docker:index/volume:Volume"}).items()}


def release_tree(release: str, tree: Path) -> Path:
    """The files of an earlier release of this repository in ``tree``, run with this checkout's
    virtualenv (same pins): for the tests that upgrade a stack that release made."""
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", release], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    (tree / ".venv").symlink_to(ROOT / ".venv")
    return tree
