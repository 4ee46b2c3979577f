"""How our language host runs a program (toolchain/pulumi-build/cmd/pulumi-language-python and
toolchain/python-host/pulumi-language-python-exec), through the real `pulumi` CLI and engine:
the interpreter is started before the refresh with the `preload` modules imported, and the
configuration reaches the program on stdin, never in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

from infra.driver import stacks

SECRET = "a-secret-only-the-program-may-see-0123"

PROGRAM = """\
import os

import pulumi

import early

config = pulumi.Config()
pulumi.export("greeting", config.get("greeting"))
pulumi.export("secretLength", config.require_secret("token").apply(len))
pulumi.export("configInEnvironment", sorted({"PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS"} & set(os.environ)))
pulumi.export("secretInEnvironment", any("%s" in value for value in os.environ.values()))
pulumi.export("earlySawConfig", early.CONFIG_AT_IMPORT)
""" % SECRET

# Imported by the `preload` option before the run request, so it sees no configuration yet;
# imported by the program instead, it would see the stack's.
EARLY = """\
from pulumi.runtime import config

CONFIG_AT_IMPORT = sorted(config.CONFIG.get())
"""


def project(directory: Path, preload: str) -> Path:
    directory.mkdir()
    (directory / "venv").symlink_to(sys.prefix)  # the virtualenv running these tests
    options = "    toolchain: pip\n    virtualenv: venv\n" + (f"    preload: {preload}\n" if preload else "")
    (directory / "Pulumi.yaml").write_text(f"name: host-run\nruntime:\n  name: python\n  options:\n{options}")
    (directory / "__main__.py").write_text(PROGRAM)
    (directory / "early.py").write_text(EARLY)
    return directory


def environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **stacks.Settings(f"file://{tmp_path}/state", tmp_path / "passphrase").env()}


def pulumi(directory: Path, env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(["pulumi", *args, "--non-interactive"], cwd=directory, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def helpers_in(directory: Path) -> set[int]:
    """Running exec helpers whose working directory is ``directory``."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and b"pulumi-language-python-exec" in (proc / "cmdline").read_bytes()
                    and (proc / "cwd").resolve() == directory.resolve()):
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def helper_started(directory: Path, env: dict[str, str], *args: str) -> bool:
    """Whether an exec helper ran in ``directory`` during ``pulumi ARGS`` (/proc polled every 5 ms;
    a helper lives from the engine's package question to the end of the command)."""
    command = subprocess.Popen(["pulumi", *args, "--non-interactive"], cwd=directory, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = set()
    while command.poll() is None:
        seen |= helpers_in(directory)
        time.sleep(0.005)
    output = command.stdout.read()
    assert command.returncode == 0, output
    return bool(seen)


@pytest.mark.parametrize("preload, early_sees", [("early", []), ("", ["host-run:greeting", "host-run:token"])],
                         ids=["preloaded", "imported by the program"])
def test_the_program_gets_its_configuration_on_stdin_and_preloaded_modules_before_it(tmp_path, preload, early_sees):
    directory = project(tmp_path / "project", preload)
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "config", "set", "greeting", "hello")
    pulumi(directory, env, "config", "set", "--secret", "token", stdin=SECRET)
    output = pulumi(directory, env, "up", "--yes", "--skip-preview")
    assert SECRET not in output
    outputs = json.loads(pulumi(directory, env, "stack", "output", "--json", "--show-secrets"))
    assert outputs["greeting"] == "hello"
    assert outputs["secretLength"] == len(SECRET)
    assert outputs["configInEnvironment"] == []
    assert outputs["secretInEnvironment"] is False
    assert outputs["earlySawConfig"] == early_sees
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_commands_that_do_not_run_the_program_start_no_interpreter_for_it(tmp_path):
    """The engine asks for the program's packages before a destroy or refresh too; the host starts
    the interpreter ahead only for the commands that run the program."""
    directory = project(tmp_path / "project", preload="early")
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "config", "set", "greeting", "hello")
    pulumi(directory, env, "config", "set", "--secret", "token", stdin=SECRET)
    assert helper_started(directory, env, "up", "--yes", "--skip-preview")
    assert not helper_started(directory, env, "refresh", "--yes")
    assert not helper_started(directory, env, "destroy", "--yes", "--skip-preview")
    assert helper_started(directory, env, "preview")
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_a_virtualenv_without_the_sdk_gets_one_message_naming_the_fix(tmp_path):
    """The interpreter started ahead finds no SDK: it says so once, when the program would run."""
    directory = project(tmp_path / "project", preload="early")
    (directory / "venv").unlink()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory / "venv")], check=True)
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    done = subprocess.run(["pulumi", "preview", "--non-interactive"], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120)
    diagnostics = (done.stdout + done.stderr).partition("Diagnostics:")[2]
    assert done.returncode != 0
    assert diagnostics.count("The Python package 'pulumi' cannot be imported by") == 1, done.stdout + done.stderr
    assert "python -m pip install -r requirements.txt" in diagnostics
    pulumi(directory, env, "stack", "rm", "--yes", "--force")
