"""The Docker daemon restarted under a deployed stack: its containers come back by their restart
policy, `status` is healthy and the next `up` changes nothing, with the data intact.

This test stops and starts the Docker daemon that every other test on this host shares: run it
on its own (`scripts/test tests/e2e/test_daemon_restart.py`), never beside other e2e runs. The
daemon is started again the way toolchain/docker-engine.sh starts it, and `finally` makes sure
it answers before the stack is torn down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.support import KEPT, change_summary, cli, data_of, inspect, target_of, wait_healthy

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DOCKER_ENGINE = ROOT / "toolchain" / "docker-engine.sh"
DOCKERD_PID = Path("/var/run/docker.pid")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def start_daemon() -> None:
    """toolchain/docker-engine.sh: starts dockerd (setsid, its own log) unless one answers, and waits for it."""
    subprocess.run([str(DOCKER_ENGINE)], check=True, capture_output=True, timeout=300)


def stop_daemon() -> None:
    """SIGTERM to dockerd, as a service manager stops it: it stops the containers, then exits."""
    pid = int(DOCKERD_PID.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    give_up = time.monotonic() + 120
    while alive(pid):
        assert time.monotonic() < give_up, f"dockerd (pid {pid}) did not exit within 120 s of SIGTERM"
        time.sleep(0.5)


def test_after_a_docker_daemon_restart_the_stack_is_back_healthy_and_up_changes_nothing(stack_with_data, settings):
    target = target_of(stack_with_data)
    names = (target.postgres.container_name, target.redis.container_name)
    ids = [inspect("container", name)["Id"] for name in names]
    try:
        stop_daemon()
        start_daemon()
    finally:
        if not daemon_answers():
            start_daemon()

    # The restart policy brought back the very containers the stack created.
    assert [wait_healthy(name)["Id"] for name in names] == ids
    status = cli(settings, "status", "--stack", stack_with_data.name)
    assert status.returncode == 0 and f"stack {stack_with_data.name}: healthy" in status.stdout, status.stdout
    up = cli(settings, "up", "--stack", stack_with_data.name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert change_summary(up) == "update succeeded; changes: none"
    assert "drift:" not in up.stderr
    assert data_of(target) == KEPT
