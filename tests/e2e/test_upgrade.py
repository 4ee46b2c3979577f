"""Upgrading is a path users take: a stack brought up by the previous release of main, then
`preview` and `up` with this code, keeps its data volumes and its data."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib
from pulumi import automation as auto

from infra.driver import stacks, teststacks
from tests.e2e.support import (MARK, assert_no_process_left, local_images, mark, release_tree, resource_steps,
                               sweep, volume_steps)

pytestmark = pytest.mark.e2e
# The last release of main (the last with the post-deploy step as a resource of this project's own
# provider plugin, sin-postdeploy); bump it with each release.
PREVIOUS_RELEASE = "b4cf473"
STEP_PROVIDER = "pulumi-resource-sin-postdeploy"


def step_provider_of(tree: Path) -> Path:
    """The directory holding the previous release's sin-postdeploy provider, built from its own tree
    (toolchain/pulumi-build: the plugin needs none of the CLI's patches) once, then cached under
    $SIN_CACHE/upgrade-plugins/<release>/. This release's toolchain no longer builds it."""
    cache = Path(os.environ.get("SIN_CACHE") or "/var/cache/sin-datastores") / "upgrade-plugins" / PREVIOUS_RELEASE
    binary = cache / STEP_PROVIDER
    if binary.is_file():
        return cache
    go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if Path(p).is_file()), None)
    if go is None:
        pytest.fail("go is not on PATH: it builds the previous release's sin-postdeploy provider; run the tests "
                    "through scripts/test", pytrace=False)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        module = Path(scratch) / "pulumi-build"
        shutil.copytree(tree / "toolchain" / "pulumi-build", module)
        partial = cache / f".{STEP_PROVIDER}.{os.getpid()}"
        built = subprocess.run(
            [go, "build", "-trimpath", "-ldflags", "-s -w -X main.version=1.0.0", "-o", str(partial),
             "./cmd/pulumi-resource-sin-postdeploy"], cwd=module, capture_output=True, text=True,
            env={**os.environ, "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"})
        assert built.returncode == 0, f"building {STEP_PROVIDER} of {PREVIOUS_RELEASE} failed:\n{built.stderr}"
        partial.rename(binary)
    return cache


@pytest.fixture
def previous_tree(tmp_path) -> Path:
    """The previous release's files, run with this checkout's virtualenv (same pins), its step's
    provider named in its Pulumi.yaml (not installed into any plugin cache)."""
    tree = release_tree(PREVIOUS_RELEASE, tmp_path / "previous")
    with (tree / "Pulumi.yaml").open("a") as project:
        project.write(f"plugins:\n  providers:\n    - name: sin-postdeploy\n      path: {step_provider_of(tree)}\n")
    return tree


@pytest.fixture
def without_step_provider(tmp_path, monkeypatch):
    """A Pulumi home whose plugin cache is the shared one without any sin-postdeploy provider, as a user of
    this release has it (this machine's cache may still hold one that an earlier setup installed)."""
    shared = Path(os.environ["PULUMI_HOME"]) / "plugins"
    home = tmp_path / "pulumi-home"
    for entry in shared.iterdir():
        if entry.is_dir() and "sin-postdeploy" not in entry.name:
            # The engine skips plugin directories that are symbolic links; their files may be.
            (home / "plugins" / entry.name).mkdir(parents=True)
            for item in entry.iterdir():
                (home / "plugins" / entry.name / item.name).symlink_to(item)

    def use() -> None:
        monkeypatch.setenv("PULUMI_HOME", str(home))

    return use


def test_a_stack_of_the_previous_release_upgrades_without_touching_its_volumes_or_data(
        previous_tree, settings, without_step_provider):
    name = f"e2e-upgrade-{uuid.uuid4().hex[:8]}"
    config = {**teststacks.isolated_config(), "healthTimeoutSeconds": "90", **local_images()}
    old = auto.create_or_select_stack(name, work_dir=str(previous_tree),
                                      opts=auto.LocalWorkspaceOptions(work_dir=str(previous_tree),
                                                                      env_vars=settings.env()))
    new_file = stacks.config_file(name)
    said: list[str] = []
    try:
        token = mark(old.workspace.env_vars)
        stacks.configure(old, config)
        stacks.ensure_secrets(old)
        old.up(color="never")
        assert any(r["type"] == "sin-postdeploy:index:Step" for r in stacks.exported_deployment(old)["resources"])
        pw = {k: v.value for k, v in old.get_all_config().items() if k.endswith("Password")}
        pg_port, redis_port = int(config["postgresHostPort"]), int(config["redisHostPort"])
        with psycopg.connect(host="127.0.0.1", port=pg_port, dbname="sinsolver", user="sinadmin",
                             password=pw["sin-datastores:postgresPassword"], autocommit=True) as conn:
            conn.execute("INSERT INTO logs (level, message) VALUES ('info', 'written by the previous release')")
        redis_lib.Redis(port=redis_port, password=pw["sin-datastores:redisPassword"]).set("upgrade:key", "kept")

        # This release, with a plugin cache that has no sin-postdeploy provider.
        without_step_provider()
        new_file.write_bytes((previous_tree / f"Pulumi.{name}.yaml").read_bytes())
        stack = stacks.open_stack(name, settings)
        stack.workspace.env_vars[MARK] = token
        before = stacks.exported_deployment(stack)
        events: list = []
        stacks.preview(stack, "auto", said.append, on_event=events.append)
        assert set(volume_steps(events).values()) == {"same"}, volume_steps(events)
        assert {step: op for step, op in resource_steps(events).items() if op != "same"} == {
            ("pulumi-python:dynamic:Resource", "post-deploy-step"): "create",
            ("pulumi:providers:pulumi-python", "post-deploy-provider"): "create"}
        assert any("the next `python -m infra up` removes it from the state" in line for line in said), said
        assert stacks.exported_deployment(stack) == before, "a preview changes no state"

        events.clear()
        said.clear()
        result = stacks.up(stack, "auto", said.append, on_event=events.append)
        assert set(volume_steps(events).values()) == {"same"}, volume_steps(events)
        assert result.outputs["verificationChecks"].value == 20
        # Only the post-deploy step changed hands: the old one left the state before the engine ran,
        # the new one is created (and verifies again).
        assert {step: op for step, op in resource_steps(events).items() if op != "same"} == {
            ("pulumi-python:dynamic:Resource", "post-deploy-step"): "create",
            ("pulumi:providers:pulumi-python", "post-deploy-provider"): "create"}
        assert [line for line in said if "removed the post-deploy step" in line], said
        assert not [r["urn"] for r in stacks.exported_deployment(stack)["resources"] if "sin-postdeploy" in r["type"]]

        with psycopg.connect(host="127.0.0.1", port=pg_port, dbname="sinsolver", user="sinadmin",
                             password=pw["sin-datastores:postgresPassword"]) as conn:
            assert conn.execute("SELECT count(*) FROM logs WHERE message = 'written by the previous release'"
                                ).fetchone()[0] == 1
        assert redis_lib.Redis(port=redis_port, password=pw["sin-datastores:redisPassword"]).get("upgrade:key") == b"kept"
        stack.preview(expect_no_changes=True, color="never")
        assert_no_process_left(token)

        # Then the backups are switched on: PostgreSQL is replaced (WAL archiving), its volume is not.
        stacks.configure(stack, {"backupSchedule": "0 0 1 1 *"})
        stacks.ensure_secrets(stack)
        events.clear()
        stack.up(color="never", on_event=events.append)
        steps = volume_steps(events)
        assert {steps["postgres-data"], steps["redis-data"]} == {"same"}, steps
        assert {steps["postgres-archive"], steps["backup-copies"]} == {"create"}, steps
        with psycopg.connect(host="127.0.0.1", port=pg_port, dbname="sinsolver", user="sinadmin",
                             password=pw["sin-datastores:postgresPassword"]) as conn:
            assert conn.execute("SHOW archive_mode").fetchone()[0] == "on"
            assert conn.execute("SELECT count(*) FROM logs WHERE message = 'written by the previous release'"
                                ).fetchone()[0] == 1
    finally:
        try:
            old.destroy(color="never")
        finally:
            old.workspace.remove_stack(name, force=True)
            new_file.unlink(missing_ok=True)
            sweep(name)
