"""How a program runs under our language host (toolchain/pulumi-build/cmd/pulumi-language-python),
which stands in for upstream's: through the real `pulumi` CLI and engine, it starts upstream's
exec script with the settings on its command line and the stack's configuration in PULUMI_CONFIG
and PULUMI_CONFIG_SECRET_KEYS, as upstream's host does, and reads no runtime option upstream's
host ignores."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


from infra.driver import stacks

SECRET = "a-secret-only-the-program-may-see-0123"

PROGRAM = """\
import json
import os
from pathlib import Path

import pulumi

config = pulumi.Config()
argv = Path("/proc/self/cmdline").read_bytes().decode().split("\\0")
pulumi.export("greeting", config.get("greeting"))
pulumi.export("secretLength", config.require_secret("token").apply(len))
pulumi.export("environmentConfig", sorted(json.loads(os.environ["PULUMI_CONFIG"])))
pulumi.export("environmentSecretKeys", json.loads(os.environ["PULUMI_CONFIG_SECRET_KEYS"]))
pulumi.export("execScript", next(arg for arg in argv if arg.endswith("-exec")))
pulumi.export("execFlags", [arg for arg in argv if arg.startswith("--")])
"""

# The flags upstream's host may pass the exec script (its constructArguments), in its order.
UPSTREAM_FLAGS = ["--monitor", "--engine", "--project", "--root_directory", "--stack", "--pwd", "--dry_run",
                  "--parallel", "--tracing", "--organization"]


def project(directory: Path, options: str = "") -> Path:
    directory.mkdir()
    (directory / "venv").symlink_to(sys.prefix)  # the virtualenv running these tests
    (directory / "Pulumi.yaml").write_text("name: host-run\nruntime:\n  name: python\n  options:\n"
                                           f"    toolchain: pip\n    virtualenv: venv\n{options}")
    (directory / "__main__.py").write_text(PROGRAM)
    return directory


def environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **stacks.Settings(f"file://{tmp_path}/state", tmp_path / "passphrase").env()}


def pulumi(directory: Path, env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(["pulumi", *args, "--non-interactive"], cwd=directory, env=env, input=stdin,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def stack_with_config(directory: Path, env: dict[str, str]) -> None:
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "config", "set", "greeting", "hello")
    pulumi(directory, env, "config", "set", "--secret", "token", stdin=SECRET)


def module_cache_exec_script() -> Path | None:
    """Upstream's exec script in the sdk/v3 module of the Go module cache, when Go is here."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        return None
    version = subprocess.run(["pulumi", "version"], capture_output=True, text=True, check=True).stdout.strip()
    cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    script = Path(cache) / f"github.com/pulumi/pulumi/sdk/v3@{version}/python/cmd/pulumi-language-python-exec"
    return script if script.exists() else None


def test_the_program_gets_its_configuration_in_the_environment_and_its_settings_as_arguments(tmp_path):
    directory = project(tmp_path / "project")
    env = environment(tmp_path)
    stack_with_config(directory, env)
    output = pulumi(directory, env, "up", "--yes", "--skip-preview")
    assert SECRET not in output
    outputs = json.loads(pulumi(directory, env, "stack", "output", "--json", "--show-secrets"))
    assert outputs["greeting"] == "hello"
    assert outputs["secretLength"] == len(SECRET)
    assert outputs["environmentConfig"] == ["host-run:greeting", "host-run:token"]
    assert outputs["environmentSecretKeys"] == ["host-run:token"]
    flags = outputs["execFlags"]
    assert flags == [flag for flag in UPSTREAM_FLAGS if flag in flags], flags
    assert {"--monitor", "--engine", "--project", "--stack", "--dry_run", "--parallel"} <= set(flags), flags
    assert Path(outputs["execScript"]).name == "pulumi-language-python-exec"
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_the_exec_script_is_upstreams_as_the_sdk_module_ships_it(tmp_path):
    shipped = module_cache_exec_script()
    assert shipped is not None, ("no Go module cache holds the sdk/v3 module of this pulumi version: "
                                 "run toolchain/setup.sh (scripts/test does), which builds from it")
    host = Path(shutil.which("pulumi-language-python") or "")
    assert host.is_file(), "pulumi-language-python is not on PATH"
    assert (host.parent / "pulumi-language-python-exec").read_bytes() == shipped.read_bytes()


def test_a_runtime_option_upstreams_host_ignores_changes_nothing(tmp_path):
    """Our host used to import the modules of a `preload` option ahead of the run; now, as under
    upstream's host, a module named there is imported only when the program imports it."""
    directory = project(tmp_path / "project", options="    preload: early\n")
    (directory / "early.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    env = environment(tmp_path)
    stack_with_config(directory, env)
    pulumi(directory, env, "up", "--yes", "--skip-preview")
    assert not (tmp_path / "imported").exists()
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_the_programs_log_messages_reach_the_cli_in_order_before_it_fails(tmp_path):
    directory = project(tmp_path / "project")
    (directory / "__main__.py").write_text(
        "import pulumi\n"
        "for n in range(40):\n"
        "    pulumi.log.info(f'message {n:02d}')\n"
        "pulumi.log.warn('the last message')\n"
        "raise RuntimeError('the program stops here')\n")
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    done = subprocess.run(["pulumi", "up", "--yes", "--skip-preview", "--non-interactive"], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    diagnostics = done.stdout.split("Diagnostics:", 1)[1].splitlines()
    logged = [line.strip() for line in diagnostics if line.strip().startswith(("message ", "warning: the last"))]
    assert logged == [f"message {n:02d}" for n in range(40)] + ["warning: the last message"], done.stdout
    assert "the program stops here" in "".join(diagnostics).split("the last message", 1)[1], done.stdout
    pulumi(directory, env, "stack", "rm", "--yes", "--force")


def test_the_host_reports_the_installed_sdk_packages_provider_to_the_engine(tmp_path):
    """GetRequiredPackages: a destroy warns when the state holds an older provider than an installed
    SDK package declares (pulumi-plugin.json), before the summary, as under upstream's host."""
    directory = project(tmp_path / "project")
    (directory / "__main__.py").write_text(  # a provider nothing uses: no connection to any daemon
        "import pulumi_docker\n"
        "pulumi_docker.Provider('unused', host='unix:///nonexistent/docker.sock')\n")
    env = environment(tmp_path)
    pulumi(directory, env, "stack", "init", "host-run")
    pulumi(directory, env, "up", "--yes", "--skip-preview")
    newer = tmp_path / "newer-sdk"
    package = newer / "pulumi_docker_next"
    package.mkdir(parents=True)
    (package / "pulumi-plugin.json").write_text(json.dumps({"resource": True, "name": "docker", "version": "99.0.0"}))
    info = newer / "pulumi_docker_next-99.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pulumi_docker_next\nVersion: 99.0.0\n")
    (info / "RECORD").write_text("")
    output = pulumi(directory, {**env, "PYTHONPATH": str(newer)}, "destroy", "--yes", "--skip-preview")
    warning = re.search(r"warning: destroy operation is using an older version of package 'docker' than the "
                        r"specified program version: \S+ < 99\.0\.0", output)
    assert warning and warning.start() < output.index("Resources:"), output
    pulumi(directory, env, "stack", "rm", "--yes", "--force")
