"""No process outlives the command that started it: after plain `pulumi up`, `preview` and `destroy`
of the project's program, no provider, language host or interpreter started for the command is
still running (a leftover would hold the state's lock files, the Docker socket or a port)."""

from __future__ import annotations

import os
import subprocess

from tests.e2e.support import ROOT, mark, marked_processes

def test_up_preview_and_destroy_leave_no_process_behind(make_stack, settings):
    test_stack = make_stack()
    for command in (["up", "--yes", "--skip-preview"], ["preview"], ["destroy", "--yes", "--skip-preview"]):
        env = {**os.environ, **settings.env()}
        token = mark(env)
        done = subprocess.run(["pulumi", *command, "--stack", test_stack.name, "--non-interactive"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        assert marked_processes(token) == {}, command
