"""How our language host runs a program (toolchain/pulumi-build/cmd/pulumi-language-python and
toolchain/python-host/pulumi-language-python-exec), through the real `pulumi` CLI and engine:
the interpreter is started ahead (by the host the CLI asks About, early.go) with the `preload`
modules imported, and the configuration reaches the program through the host, never in its
environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import sys
from pathlib import Path

import pytest

from infra.driver import stacks

SECRET = "a-secret-only-the-program-may-see-0123"

PROGRAM = """\
import gc
import os

import pulumi

import early

config = pulumi.Config()
pulumi.export("greeting", config.get("greeting"))
pulumi.export("secretLength", config.require_secret("token").apply(len))
pulumi.export("configInEnvironment", sorted({"PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS"} & set(os.environ)))
pulumi.export("secretInEnvironment", any("%s" in value for value in os.environ.values()))
pulumi.export("earlySawConfig", early.CONFIG_AT_IMPORT)
pulumi.export("collectorEnabled", gc.isenabled())
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


def helpers_in(directory: Path) -> dict[int, list[str]]:
    """Running exec helpers whose working directory is ``directory``: pid -> command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if (proc.name.isdigit() and any(b"pulumi-language-python-exec" in arg for arg in argv)
                    and (proc / "cwd").resolve() == directory.resolve()):
                found[int(proc.name)] = [arg.decode() for arg in argv if arg]
        except OSError:
            continue
    return found


def helpers_during(directory: Path, env: dict[str, str], *args: str, ok: bool = True) -> dict[int, list[str]]:
    """The exec helpers that ran in ``directory`` during ``pulumi ARGS`` (/proc polled every 5 ms;
    a helper lives from its start ahead of the run to the end of the command)."""
    command = subprocess.Popen(["pulumi", *args, "--non-interactive"], cwd=directory, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = {}
    while command.poll() is None:
        seen.update(helpers_in(directory))
        time.sleep(0.005)
    output = command.stdout.read()
    assert (command.returncode == 0) == ok, output
    return seen


def helper_started(directory: Path, env: dict[str, str], *args: str) -> bool:
    return bool(helpers_during(directory, env, *args))


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
    assert outputs["collectorEnabled"] is True
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


def test_the_interpreter_the_about_host_starts_ahead_runs_the_program(tmp_path):
    """The CLI asks a host About before it derives the stack's keys; that host starts the
    interpreter, and the engine's host adopts it instead of starting one of its own."""
    directory = project(tmp_path / "project", preload="early")
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "config", "set", "greeting", "hello")
    pulumi(directory, env, "config", "set", "--secret", "token", stdin=SECRET)
    for command in (["up", "--yes", "--skip-preview"], ["preview"]):
        helpers = helpers_during(directory, env, *command)
        assert len(helpers) == 1, helpers
        argv = next(iter(helpers.values()))
        assert "--listen-fd" in argv and SECRET not in " ".join(argv), argv
    outputs = json.loads(pulumi(directory, env, "stack", "output", "--json", "--show-secrets"))
    assert outputs["greeting"] == "hello" and outputs["secretLength"] == len(SECRET)
    assert outputs["earlySawConfig"] == []
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_an_interpreter_started_ahead_ends_with_a_command_that_fails_before_the_run(tmp_path):
    """A wrong passphrase fails the command after the About host started the interpreter: the
    interpreter leaves with the CLI, and so does its socket."""
    directory = project(tmp_path / "project", preload="early")
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    wrong = tmp_path / "wrong-passphrase"
    wrong.write_text("not the passphrase of this stack")
    helpers = helpers_during(directory, {**env, "PULUMI_CONFIG_PASSPHRASE_FILE": str(wrong)},
                             "up", "--yes", "--skip-preview", ok=False)
    assert helpers, "no interpreter was started ahead"
    sockets = {arg for argv in helpers.values() for arg in argv if arg.endswith(".sock")}
    deadline = time.monotonic() + 2
    while helpers_in(directory) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert helpers_in(directory) == {}
    assert sockets and not any(Path(path).exists() for path in sockets)
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_the_programs_log_messages_reach_the_cli_in_order_before_it_fails(tmp_path):
    """The exec helper sends the program's log messages from a thread of its own (the SDK's
    calls block for each): all of them, in the order logged, before the failure's own message
    and before the exit code goes back."""
    directory = project(tmp_path / "project", preload="early")
    (directory / "__main__.py").write_text(
        "import pulumi\n"
        "for n in range(40):\n"
        "    pulumi.log.info(f'message {n:02d}')\n"
        "pulumi.log.warn('the last message')\n"
        "raise RuntimeError('the program stops here')\n")
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    done = subprocess.run(["pulumi", "up", "--yes", "--skip-preview", "--non-interactive"], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    diagnostics = done.stdout.split("Diagnostics:", 1)[1].splitlines()
    logged = [line.strip() for line in diagnostics if line.strip().startswith(("message ", "warning: the last"))]
    assert logged == [f"message {n:02d}" for n in range(40)] + ["warning: the last message"], done.stdout
    assert "the program stops here" in "".join(diagnostics).split("the last message", 1)[1], done.stdout
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_updates_and_destroys_record_the_commit_of_a_program_in_git(tmp_path):
    """`up`, `preview`, `destroy` and `refresh` gather the update's metadata while the CLI derives
    the stack's keys (our CLI build's patch, toolchain/pulumi-build/patches): the update history
    still names the program's commit, as upstream's does."""
    directory = project(tmp_path / "project", preload="early")
    git = ["git", "-C", str(directory), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "Pulumi.yaml", "__main__.py", "early.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the program"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "config", "set", "--secret", "token", stdin=SECRET)
    pulumi(directory, env, "up", "--yes", "--skip-preview")
    pulumi(directory, env, "destroy", "--yes", "--skip-preview")
    history = json.loads(pulumi(directory, env, "stack", "history", "--json"))
    assert [entry["kind"] for entry in history] == ["destroy", "update"]
    for entry in history:
        assert entry["environment"]["git.head"] == head, entry["environment"]
        assert entry["message"] == "the program"
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_a_destroy_still_warns_when_the_program_names_a_newer_provider_than_the_state(tmp_path):
    """`destroy` asks for the program's packages beside the deletes instead of before them (our
    CLI build's patch): upstream's warning about a provider older in the state than in the
    program still comes, before the summary."""
    directory = project(tmp_path / "project", preload="early")
    (directory / "__main__.py").write_text(  # a provider nothing uses: no connection to any daemon
        "import pulumi_docker\n"
        "pulumi_docker.Provider('unused', host='unix:///nonexistent/docker.sock')\n")
    newer = tmp_path / "newer-sdk" / "pulumi_docker_next"
    newer.mkdir(parents=True)
    (newer / "pulumi-plugin.json").write_text(json.dumps({"resource": True, "name": "docker", "version": "99.0.0"}))
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "up", "--yes", "--skip-preview")
    output = pulumi(directory, {**env, "PYTHONPATH": str(newer.parent)}, "destroy", "--yes", "--skip-preview")
    warning = re.search(r"warning: destroy operation is using an older version of package 'docker' than the "
                        r"specified program version: \S+ < 99\.0\.0", output)
    assert warning and warning.start() < output.index("Resources:"), output
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def recording_virtualenv(venv: Path, calls: Path) -> None:
    """A virtualenv whose python writes to ``calls`` what it was started for ("scan": the host's
    plugin scan, "helper": the exec helper), then runs the interpreter running these tests."""
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"""#!/bin/sh
case "$*" in
  *"resource plugins that installed packages declare"*) echo scan >> '{calls}' ;;
  *pulumi-language-python-exec*) echo helper >> '{calls}' ;;
esac
exec '{sys.executable}' "$@"
""")
    python.chmod(0o755)


def started_for(calls: Path) -> list[str]:
    started = calls.read_text().split() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return sorted(started)


def test_the_interpreter_started_ahead_has_the_plugin_scan_answered_for_the_host(tmp_path):
    """The engine's host asks for the program's packages before it adopts the interpreter the
    About host started; that interpreter wrote the plugin scan's answer before loading the SDK, so
    no interpreter starts only for the scan. A command that does not run the program scans with
    one of its own."""
    directory = project(tmp_path / "project", preload="early")
    (directory / "venv").unlink()
    calls = tmp_path / "python-calls"
    recording_virtualenv(directory / "venv", calls)
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "config", "set", "greeting", "hello")
    pulumi(directory, env, "config", "set", "--secret", "token", stdin=SECRET)
    started_for(calls)
    for command in (["up", "--yes", "--skip-preview"], ["preview"]):
        pulumi(directory, env, *command)
        assert started_for(calls) == ["helper"], command
    pulumi(directory, env, "destroy", "--yes", "--skip-preview")
    assert started_for(calls) == ["scan"]
    outputs_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"sin-pulumi-python-{os.getuid()}"
    assert not list(outputs_dir.glob("*")), "the early helper left its socket or scan answer behind"
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
