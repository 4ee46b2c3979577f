"""Upgrading is a path users take: a stack brought up by the previous release of main, then
`preview` and `up` with this code, keeps its data volumes and its data."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Optional

import psycopg
import pytest
import redis as redis_lib
from pulumi import automation as auto

from infra.driver import stacks, teststacks
from tests.e2e.support import local_images, sweep

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# The last release of main (the last with the post-deploy step as a Python dynamic resource); bump it
# with each release.
PREVIOUS_RELEASE = "4cf03c7"


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


@pytest.fixture
def previous_tree(tmp_path) -> Path:
    """The previous release's files, run with this checkout's virtualenv (same pins)."""
    tree = tmp_path / "previous"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    (tree / ".venv").symlink_to(ROOT / ".venv")
    return tree


def test_a_stack_of_the_previous_release_upgrades_without_touching_its_volumes_or_data(previous_tree, settings):
    name = f"e2e-upgrade-{uuid.uuid4().hex[:8]}"
    config = {**teststacks.isolated_config(), "healthTimeoutSeconds": "90", **local_images()}
    old = auto.create_or_select_stack(name, work_dir=str(previous_tree),
                                      opts=auto.LocalWorkspaceOptions(work_dir=str(previous_tree),
                                                                      env_vars=settings.env()))
    new_file = stacks.config_file(name)
    try:
        stacks.configure(old, config)
        stacks.ensure_secrets(old)
        old.up(color="never")
        pw = {k: v.value for k, v in old.get_all_config().items() if k.endswith("Password")}
        pg_port, redis_port = int(config["postgresHostPort"]), int(config["redisHostPort"])
        with psycopg.connect(host="127.0.0.1", port=pg_port, dbname="sinsolver", user="sinadmin",
                             password=pw["sin-datastores:postgresPassword"], autocommit=True) as conn:
            conn.execute("INSERT INTO logs (level, message) VALUES ('info', 'written by the previous release')")
        redis_lib.Redis(port=redis_port, password=pw["sin-datastores:redisPassword"]).set("upgrade:key", "kept")

        new_file.write_bytes((previous_tree / f"Pulumi.{name}.yaml").read_bytes())
        stack = stacks.open_stack(name, settings)
        events: list = []
        stack.preview(on_event=events.append, color="never")
        assert set(volume_steps(events).values()) == {"same"}, volume_steps(events)
        events.clear()
        result = stack.up(color="never", on_event=events.append)
        assert set(volume_steps(events).values()) == {"same"}, volume_steps(events)
        assert result.outputs["verificationChecks"].value == 20
        # Only the post-deploy step changed hands, from a Python dynamic resource to our own provider: the
        # new step is created (and verified again), then the old one and its provider are deleted.
        assert {step: op for step, op in resource_steps(events).items() if op != "same"} == {
            ("sin-postdeploy:index:Step", "post-deploy-step"): "create",
            ("pulumi:providers:sin-postdeploy", "post-deploy-provider"): "create",
            ("pulumi-python:dynamic:Resource", "post-deploy-step"): "delete",
            ("pulumi:providers:pulumi-python", "post-deploy-provider"): "delete"}

        with psycopg.connect(host="127.0.0.1", port=pg_port, dbname="sinsolver", user="sinadmin",
                             password=pw["sin-datastores:postgresPassword"]) as conn:
            assert conn.execute("SELECT count(*) FROM logs WHERE message = 'written by the previous release'"
                                ).fetchone()[0] == 1
        assert redis_lib.Redis(port=redis_port, password=pw["sin-datastores:redisPassword"]).get("upgrade:key") == b"kept"
        stack.preview(expect_no_changes=True, color="never")

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
