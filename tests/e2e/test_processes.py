"""No process outlives the command that started it: after plain `pulumi up`, `preview` and `destroy`
of the project's program, no provider, language host or interpreter started for the command is
still running (a leftover would hold the state's lock files, the Docker socket or a port)."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from tests.e2e.support import ROOT

MARK = "SIN_PROCESS_TEST_MARK"


def marked_processes(mark: str) -> dict[int, str]:
    """Running processes whose environment carries ``MARK=mark`` (what a command started
    inherits it): pid -> command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"{MARK}={mark}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_up_preview_and_destroy_leave_no_process_behind(make_stack, settings):
    test_stack = make_stack()
    for command in (["up", "--yes", "--skip-preview"], ["preview"], ["destroy", "--yes", "--skip-preview"]):
        mark = secrets.token_hex(8)
        env = {**os.environ, **settings.env(), MARK: mark}
        done = subprocess.run(["pulumi", *command, "--stack", test_stack.name, "--non-interactive"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        assert marked_processes(mark) == {}, command
