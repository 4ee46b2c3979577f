"""The parts of the day-2 commands that need no server: backup manifests, test-stack names,
preview risk detection, the status report and the PR workflow file."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from pulumi.automation import events

from infra.ops.backup import BackupRefused
from infra.ops.backup.manifest import FILES, FORMAT, MANIFEST, PG_DUMP, REDIS_AOF, REDIS_RDB, file_digest, load_manifest
from infra.driver import previews, teststacks

from infra.core.connect import ConnectError
from infra.core.targets import PostgresTarget, RedisTarget, Target
from infra.ops import status as status_module
from infra.ops.status import Container, Status

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ backup manifests

@pytest.fixture
def backup_folder(tmp_path) -> Path:
    folder = tmp_path / "20261126T010203Z"
    folder.mkdir()
    for name, data in ((PG_DUMP, b"PGDMP..."), (REDIS_RDB, b"REDIS0010"), (REDIS_AOF, b"tar")):
        (folder / name).write_bytes(data)
    manifest = {
        "format": FORMAT, "stack": "dev",
        "postgres": {"major": 16, "tables": {"public.services": 2}, "schema_sha256": "ab" * 32},
        "redis": {"major": 7, "keys": {"db0": 3}},
        "files": {name: file_digest(folder / name) for name in FILES},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_a_complete_backup_loads(backup_folder):
    manifest = load_manifest(backup_folder)
    assert manifest["files"][REDIS_RDB] == {"size": 9, "sha256": file_digest(
        backup_folder / REDIS_RDB)["sha256"]}


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(BackupRefused, match=f"backup folder {tmp_path / 'nope'} does not exist"):
        load_manifest(tmp_path / "nope")


def test_a_folder_without_manifest_is_incomplete(backup_folder):
    (backup_folder / MANIFEST).unlink()
    with pytest.raises(BackupRefused, match="has no manifest.json: the backup is incomplete"):
        load_manifest(backup_folder)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / PG_DUMP).write_bytes(b"PGDMP!.."), r"postgres.dump does not match the manifest \(size 8 vs 8"),
    (lambda f: (f / REDIS_RDB).write_bytes(b"REDIS0010 plus"), "redis-dump.rdb does not match .*size 14 vs 9"),
    (lambda f: (f / REDIS_AOF).unlink(), "redis-appendonlydir.tar is missing"),
])
def test_a_tampered_or_incomplete_backup_is_refused_with_the_file_named(backup_folder, damage, message):
    damage(backup_folder)
    with pytest.raises(BackupRefused, match=message):
        load_manifest(backup_folder)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["postgres"].pop("major"), "postgres.major"),
    (lambda m: m["files"].pop(PG_DUMP), "files.postgres.dump"),
    (lambda m: m.update(format=99), "has format 99; this version reads format 1"),
])
def test_a_manifest_missing_fields_or_of_another_format_is_refused(backup_folder, edit, message):
    path = backup_folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BackupRefused, match=message):
        load_manifest(backup_folder)


def test_a_manifest_that_is_not_json_is_refused(backup_folder):
    (backup_folder / MANIFEST).write_text("{not json")
    with pytest.raises(BackupRefused, match="is not a sin-datastores manifest: unreadable"):
        load_manifest(backup_folder)


# ------------------------------------------------------------------ test stacks

def test_test_stack_names_carry_their_creation_time():
    now = datetime(2026, 11, 26, 1, 2, 3, tzinfo=timezone.utc)
    name = teststacks.new_name(now)
    assert name.startswith("test-20261126t010203-") and teststacks.NAME.match(name)
    assert teststacks.created_at(name) == now
    assert teststacks.new_name(now) != name


@pytest.mark.parametrize("name", ["dev", "prod", "e2e-1a2b3c4d", "test", "test-20261126t010203",
                                  "test-20261126t010203-1a2b3c-x", "mytest-20261126t010203-1a2b3c",
                                  "test-20261126T010203-1a2b3c"])
def test_anything_else_is_never_a_test_stack(name):
    assert teststacks.created_at(name) is None


# ------------------------------------------------------------------ preview risks

def step(op: events.OpType, type_: str, name: str, keys=None) -> events.EngineEvent:
    meta = events.StepEventMetadata(op=op, urn=f"urn:pulumi:s::p::{type_}::{name}", type=type_, provider="",
                                    keys=keys, old=events.StepEventStateMetadata(
                                        type=type_, urn="", id="", parent="", provider="",
                                        outputs={"name": f"docker-{name}"}))
    return events.EngineEvent(sequence=0, timestamp=0, resource_pre_event=events.ResourcePreEvent(metadata=meta))


VOLUME, CONTAINER, NETWORK = "docker:index/volume:Volume", "docker:index/container:Container", \
    "docker:index/network:Network"


def test_replacing_a_volume_or_container_is_a_risk_and_names_the_docker_object():
    found = previews.risks([
        step(events.OpType.DELETE_REPLACED, VOLUME, "postgres-data"),
        step(events.OpType.REPLACE, VOLUME, "postgres-data", keys=["name"]),
        step(events.OpType.REPLACE, CONTAINER, "redis-container"),
        step(events.OpType.DELETE, VOLUME, "redis-data"),
    ])
    assert [(r.kind, r.name, r.op, r.because) for r in found] == [
        ("data volume", "docker-postgres-data", "replace", ("name",)),
        ("database container", "docker-redis-container", "replace", ()),
        ("data volume", "docker-redis-data", "delete", ()),
    ]
    text = previews.banner(found, "dev")
    assert "WARNING: this change would replace or delete 3 data resource(s)" in text
    assert "DATA LOSS" in text and "python -m infra backup --stack dev" in text


def test_updates_creates_and_other_types_are_no_risk():
    assert previews.risks([
        step(events.OpType.UPDATE, CONTAINER, "postgres-container"),
        step(events.OpType.CREATE, VOLUME, "postgres-data"),
        step(events.OpType.SAME, VOLUME, "redis-data"),
        step(events.OpType.REPLACE, NETWORK, "network"),
    ]) == []


# ------------------------------------------------------------------ status

def test_status_is_unhealthy_exactly_when_it_has_problems():
    status = Status("dev", [Container("pg", "running", "healthy", 3725, 0, "img"),
                            Container("redis", "exited", "unhealthy", None, 2, "img")],
                    pending_migrations=["V002__x.sql"], warnings=["1 migrations pending"])
    assert status.healthy
    status.problems.append("container redis is exited")
    assert not status.healthy
    data = json.loads(status.to_json())
    assert data["healthy"] is False and data["containers"][1]["restarts"] == 2
    table = status.table()
    assert "stack dev: UNHEALTHY" in table and "01:02:05" in table
    assert "migrations  1 pending: V002__x.sql" in table and "problem: container redis is exited" in table


def test_a_container_before_docker_s_first_health_check_is_a_warning_an_unhealthy_one_a_problem(monkeypatch):
    health = {"pg": "starting", "redis": "unhealthy"}
    monkeypatch.setattr(status_module, "container",
                        lambda name, now: Container(name, "running", health[name], 5, 0, "img"))

    def unreachable(*_args, **_kwargs):
        raise ConnectError("not contacted in this test")

    monkeypatch.setattr(status_module, "connect_postgres", unreachable)
    monkeypatch.setattr(status_module, "connect_redis", unreachable)
    target = Target("dev", PostgresTarget("127.0.0.1", 1, "sinsolver", "sinadmin", "p" * 16, "pg", "172.20.0.100", 16),
                    RedisTarget("127.0.0.1", 2, "r" * 16, "redis", "172.20.0.200", 7))
    found = status_module.collect(target)
    assert found.warnings == ["container pg: Docker's first health check is still to come"]
    assert [p for p in found.problems if p.startswith("container")] == [
        "container redis is unhealthy; see `docker logs redis`"]


# ------------------------------------------------------------------ the PR workflow

def test_the_pr_workflow_runs_the_unit_tests_and_the_local_preview_command_for_dev():
    workflow = yaml.safe_load((ROOT / ".github/workflows/preview.yml").read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    job = workflow["jobs"]["preview"]
    assert job["env"]["STACK"] == "dev"
    runs = [s.get("run", "") for s in job["steps"]]
    assert any("-m venv" in r and "pip\" install --quiet -r requirements.txt" in r and "pytest\" tests/unit" in r
               for r in runs), runs  # the unit tests need no toolchain: a plain venv
    preview = next(s for s in job["steps"] if s.get("name") == "Preview")
    assert 'scripts/preview "$STACK"' in preview["run"] and "pipefail" in preview["run"]
    assert set(preview["env"]) == {"PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "DOCKER_HOST", "SIN_SETUP_SKIP"}



def test_failing_wal_archiving_is_a_problem_until_an_archive_succeeds_again():
    from datetime import datetime, timedelta, timezone

    from infra.ops.status import archiver_problems

    t = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
    assert archiver_problems((t, None, None)) == []
    assert archiver_problems((t, t - timedelta(seconds=5), "000000010000000000000003")) == []
    [problem] = archiver_problems((t, t + timedelta(seconds=5), "000000010000000000000004"))
    assert "since 2026-11-26T10:00:05+00:00 (segment 000000010000000000000004)" in problem
    assert archiver_problems((None, t, "000000010000000000000001"))

