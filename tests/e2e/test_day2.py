"""Day-2 commands against a real stack, through the command line an operator uses:
backup/restore across a destroyed stack, status as a probe, bad input, the PR preview,
test-stack creation and the sweeper."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis as redis_lib
import yaml

from infra.ops.backup import BackupFailed
from infra.ops.backup import commands
from infra.core import dockercli
from infra.driver import stacks, teststacks

from infra.core.connect import connect_postgres
from tests.e2e.support import cli, docker, inspect, local_images, objects_of, stack_config, target_of, wait_healthy

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TABLES = ("services", "configurations", "logs", "audit_trail", "sin_schema_history")




@pytest.fixture(scope="module")
def live(make_stack):
    test_stack = make_stack()
    test_stack.up()
    return test_stack


def write_data(target) -> None:
    with connect_postgres(target.postgres) as conn:
        with conn.transaction():
            for i in range(200):
                conn.execute("INSERT INTO services (name, category, container_name, ip_address, port) "
                             "VALUES (%s, 'e2e', %s, '172.20.1.1', %s)", (f"svc-{i}", f"c-{i}", 1000 + i))
            conn.execute("INSERT INTO configurations (service_id, key, value) "
                         "SELECT id, 'limits', jsonb_build_object('n', id) FROM services WHERE category = 'e2e'")
            conn.execute("INSERT INTO logs (level, message, metadata) "
                         "SELECT 'info', 'line ' || g, '{\"g\": true}' FROM generate_series(1, 500) g")
    client = redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password)
    client.set("session:abc", b"\x00\xff binary \x80", ex=3600)
    client.set("cache:page:/", "<html>", ex=600)
    client.rpush("queue:jobs", "job-1", "job-2", "job-3")
    client.hset("user:1", mapping={"name": "ada", "role": "admin"})
    client.zadd("ratelimit:1.2.3.4", {"r1": 1.0, "r2": 2.0})
    redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password,
                    db=2).set("db2:key", "in another database")


def read_data(target) -> dict:
    """Every row of every table and every key (type, value) of every Redis database."""
    data: dict = {}
    with connect_postgres(target.postgres) as conn:
        for table in TABLES:
            data[table] = [tuple(map(str, r)) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
    for db in range(16):
        client = redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password,
                                 db=db)
        for key in client.scan_iter():
            kind = client.type(key)
            value = {b"string": client.get, b"list": lambda k: client.lrange(k, 0, -1), b"hash": client.hgetall,
                     b"zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind](key)
            data[f"redis:{db}:{key!r}"] = (kind, value, client.ttl(key) > 0)
    return data


def test_backup_destroy_up_restore_brings_back_every_row_and_key(live, settings, tmp_path):
    target = target_of(live)
    write_data(target)
    before = read_data(target)

    backed = cli(settings, "backup", "--stack", live.name, "--to", str(tmp_path), "--verify")
    assert backed.returncode == 0, backed.stderr
    assert "postgres restored rows    ok" in backed.stdout and "redis restored keys       ok" in backed.stdout
    [folder] = (tmp_path / live.name).iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["postgres"]["tables"]["public.services"] == 202 and manifest["postgres"]["major"] == 16
    assert manifest["redis"]["keys"] == {"db0": 5, "db2": 1} and manifest["redis"]["major"] == 7
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "postgres.dump", "redis-appendonlydir.tar", "redis-dump.rdb"]

    live.stack.destroy(color="never")
    assert objects_of(live.name) == {"containers": [], "networks": [], "volumes": []}, "volumes released"
    live.up()
    fresh = read_data(target_of(live))
    assert len(fresh["services"]) == 2 and not [k for k in fresh if k.startswith("redis:")]

    restored = cli(settings, "restore", "--stack", live.name, "--from", str(folder))
    assert restored.returncode == 0, restored.stderr
    assert "previous database is kept as sinsolver_pre_restore_" in restored.stderr
    assert read_data(target_of(live)) == before
    verified = cli(settings, "verify", "--stack", live.name)
    assert verified.returncode == 0, verified.stdout


def test_status_is_a_probe_healthy_then_failing_when_a_container_stops(live, settings, tmp_path):
    for name in (target_of(live).postgres.container_name, target_of(live).redis.container_name):
        wait_healthy(name)
    healthy = cli(settings, "status", "--stack", live.name, "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["healthy"] is True and report["problems"] == []
    assert [(c["state"], c["health"]) for c in report["containers"]] == [("running", "healthy")] * 2
    assert all(c["uptime_s"] >= 0 and c["restarts"] == 0 for c in report["containers"])
    assert report["postgres"]["connections"] >= 1 and report["postgres"]["version"].startswith("16.")
    assert {t["table"] for t in report["postgres"]["tables"]} >= {"public.services", "public.audit_trail"}
    assert report["redis"]["aof_enabled"] == 1 and report["redis"]["connected_clients"] >= 1
    assert report["pending_migrations"] == [] and report["audit"][0]["action"] in ("deploy", "migrate")
    assert "stack " + live.name + ": healthy" in cli(settings, "status", "--stack", live.name).stdout

    redis_container = target_of(live).redis.container_name
    docker("stop", redis_container)
    try:
        failing = cli(settings, "status", "--stack", live.name)
        assert failing.returncode == 1
        assert f"problem: container {redis_container} is exited" in failing.stdout
        refused = cli(settings, "backup", "--stack", live.name, "--to", str(tmp_path))
        assert refused.returncode == 2 and f"container {redis_container} of stack" in refused.stderr
        assert not (tmp_path / live.name).exists() or not list((tmp_path / live.name).iterdir())
    finally:
        docker("start", redis_container)
        wait_healthy(redis_container)


def test_bad_input_is_refused_with_a_clear_message_and_changes_nothing(live, make_stack, settings, tmp_path):
    good = cli(settings, "backup", "--stack", live.name, "--to", str(tmp_path / "good"))
    assert good.returncode == 0, good.stderr
    [folder] = (tmp_path / "good" / live.name).iterdir()

    def variant(name: str, damage) -> str:
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        damage(copy)
        return str(copy)

    def edit_manifest(path: Path, **postgres) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["postgres"].update(postgres)
        (path / "manifest.json").write_text(json.dumps(manifest))

    def flip_a_byte(path: Path) -> None:
        data = bytearray((path / "postgres.dump").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (path / "postgres.dump").write_bytes(bytes(data))

    not_up = make_stack()
    target = target_of(live)
    before = read_data(target)
    with connect_postgres(target.postgres) as conn:
        databases = conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()

    every_command = [("status",), ("backup",), ("restore", "--from", str(folder)), ("verify",), ("plan",),
                     ("migrate",), ("preview",), ("down",)]
    cases = [((*cmd, "--stack", "no-such-stack"), "stack 'no-such-stack' does not exist") for cmd in every_command]
    cases += [((*cmd, "--stack", not_up.name), f"stack '{not_up.name}' is not up")
              for cmd in every_command if cmd[0] not in ("preview", "down")]  # both work on a stack not up
    cases += [
        (("restore", "--stack", live.name, "--from", str(tmp_path / "missing")), "does not exist"),
        (("restore", "--stack", live.name, "--from", variant("incomplete", lambda p: (p / "manifest.json").unlink())),
         "has no manifest.json: the backup is incomplete"),
        (("restore", "--stack", live.name, "--from", variant("tampered", flip_a_byte)),
         "postgres.dump does not match the manifest"),
        (("restore", "--stack", live.name, "--from", variant("no-aof", lambda p: (p / "redis-appendonlydir.tar").unlink())),
         "redis-appendonlydir.tar is missing"),
        (("restore", "--stack", live.name, "--from", variant("pg15", lambda p: edit_manifest(p, major=15, server_version="15.8"))),
         f"the backup is of PostgreSQL 15 (15.8) but stack '{live.name}' runs PostgreSQL 16"),
    ]
    for args, message in cases:
        result = cli(settings, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr

    assert read_data(target) == before
    with connect_postgres(target.postgres) as conn:
        assert conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall() == databases
    assert dockercli.docker("ps", "-aq", "--filter", "label=sin-datastores.role=scratch") == ""
    assert objects_of(not_up.name) == {"containers": [], "networks": [], "volumes": []}


def test_the_pr_workflow_preview_flags_pending_migrations_and_data_replacement(live, settings, tmp_path):
    workflow = yaml.safe_load((ROOT / ".github/workflows/preview.yml").read_text())
    step = next(s for s in workflow["jobs"]["preview"]["steps"] if s.get("name") == "Preview")
    target = target_of(live)
    ids = {c: inspect("container", c)["Id"] for c in (target.postgres.container_name, target.redis.container_name)}
    with connect_postgres(target.postgres) as conn:
        history = conn.execute("SELECT * FROM sin_schema_history WHERE version = 1").fetchone()
        conn.execute("DELETE FROM sin_schema_history WHERE version = 1")
    stacks.configure(live.stack, {"postgresVolumeName": f"{live.name}-moved"})
    summary = tmp_path / "summary.md"
    try:
        result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, capture_output=True, text=True,
                                timeout=600, env={**os.environ, **settings.env(), "STACK": live.name, "IMAGES": "local",
                                                  "GITHUB_STEP_SUMMARY": str(summary), "RUNNER_TEMP": str(tmp_path)})
        strict = cli(settings, "preview", "--stack", live.name, "--images", "local", "--fail-on-risk")
    finally:
        live.stack.remove_config("postgresVolumeName")
        with connect_postgres(target.postgres) as conn:
            placeholders = ", ".join(["%s"] * len(history))
            conn.execute(f"INSERT INTO sin_schema_history VALUES ({placeholders})", history)

    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "migrations: 1 pending, applied by the next `up`:\n  + V001__adr006_schema.sql" in out
    assert "WARNING: this change would replace or delete 2 data resource(s)" in out
    assert f"REPLACE data volume {live.name}-postgres_data (because name changed): DATA LOSS" in out
    assert f"REPLACE database container {live.name}-room-03-archiv-postgres" in out
    assert "DATA LOSS" in summary.read_text()
    assert strict.returncode == 1 and "DATA LOSS" in strict.stdout
    assert {c: inspect("container", c)["Id"] for c in ids} == ids, "a preview touches nothing"
    assert cli(settings, "plan", "--stack", live.name).stdout.startswith("1 applied, 0 pending")


def test_test_stack_create_picks_free_subnet_ports_and_prefixed_names(settings):
    created = cli(settings, "test-stack", "create", "--images", "local")
    assert created.returncode == 0, created.stderr
    outputs = json.loads(created.stdout)
    name = outputs["stack"]
    try:
        assert teststacks.created_at(name) is not None
        assert outputs["networkSubnet"].startswith("172.29.") and outputs["networkName"] == f"{name}-sin-network"
        assert outputs["postgresContainerName"] == f"{name}-room-03-archiv-postgres"
        assert outputs["redisContainerName"] == f"{name}-room-04-memory-redis"
        assert outputs["postgresHostPort"] != outputs["redisHostPort"] and outputs["verificationChecks"] == 20
        assert "postgresHostUrl" not in outputs, "secret outputs are not printed"
        assert len(objects_of(name)["containers"]) == 2
    finally:
        down = cli(settings, "down", "--stack", name, "--remove")
    assert down.returncode == 0, down.stderr
    assert objects_of(name) == {"containers": [], "networks": [], "volumes": []}
    assert not stacks.config_file(name).exists(), "a throwaway test stack leaves no file in the working tree"


def test_the_sweeper_removes_old_test_stacks_and_leftovers_and_nothing_else(live, settings):
    old = teststacks.create(settings, teststacks.new_name(datetime(2001, 1, 1, tzinfo=timezone.utc)),
                            stack_config())
    old.up(color="never")
    orphan_owner = teststacks.new_name(datetime(2001, 1, 2, tzinfo=timezone.utc))
    orphan = f"orphan-{uuid.uuid4().hex[:8]}"
    keeper = f"keeper-{uuid.uuid4().hex[:8]}"
    docker("volume", "create", "--label", f"{dockercli.STACK_LABEL}={orphan_owner}", orphan)
    docker("volume", "create", "--label", f"{dockercli.STACK_LABEL}=e2e-keep-{uuid.uuid4().hex[:6]}", keeper)
    try:
        swept = teststacks.sweep(timedelta(days=3650), settings)
        assert swept.errors == []
        assert swept.stacks == [old.name]
        assert orphan in swept.objects and keeper not in swept.objects
        assert objects_of(old.name) == {"containers": [], "networks": [], "volumes": []}
        assert dockercli.inspect("volume", orphan) is None and dockercli.inspect("volume", keeper) is not None
        assert old.name not in {s.name for s in stacks.workspace(settings).list_stacks()}
        assert stacks.open_stack(live.name, settings).outputs(), "a non-test stack is never touched"
        assert teststacks.sweep(timedelta(days=3650), settings).stacks == []
    finally:
        docker("volume", "rm", "-f", orphan, keeper)
        dockercli.remove_objects(dockercli.labelled_objects(old.name))
        if old.name in {s.name for s in stacks.workspace(settings).list_stacks()}:
            stacks.workspace(settings).remove_stack(old.name, force=True)


def test_one_restore_at_a_time_and_a_crashed_ones_leftovers_are_cleared(live, settings, tmp_path):
    made = cli(settings, "backup", "--stack", live.name, "--to", str(tmp_path))
    assert made.returncode == 0, made.stderr
    [folder] = (tmp_path / live.name).iterdir()
    target = target_of(live)
    maintenance = dataclasses.replace(target.postgres, database="postgres")
    with connect_postgres(maintenance) as conn:
        conn.execute("CREATE DATABASE sinsolver_restore_deadbeef")
    stale = f"sin-scratch-{live.name}-redis-deadbeef"
    docker("create", "--name", stale, "--label", dockercli.SCRATCH_LABEL, "--label",
           f"{dockercli.STACK_LABEL}={live.name}", local_images()["redisImage"])

    with connect_postgres(maintenance) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (commands.LOCK_KEY,))
        busy = cli(settings, "restore", "--stack", live.name, "--from", str(folder))
    assert busy.returncode == 2 and "another restore or backup verification is running" in busy.stderr

    verified = cli(settings, "backup", "--stack", live.name, "--to", str(tmp_path / "again"), "--verify")
    assert verified.returncode == 0, verified.stderr
    with connect_postgres(maintenance) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert not [n for n in names if re.fullmatch(r"sinsolver_restore_[0-9a-f]{8}", n)], names
    assert dockercli.inspect("container", stale) is None


def test_restore_is_all_or_nothing(live, settings, tmp_path, monkeypatch):
    target = target_of(live)
    made = cli(settings, "backup", "--stack", live.name, "--to", str(tmp_path))
    assert made.returncode == 0, made.stderr
    [folder] = (tmp_path / live.name).iterdir()
    redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password).set(
        "written:after-backup", "must survive a failed restore")
    with connect_postgres(target.postgres) as conn:
        conn.execute("INSERT INTO logs (level, message) VALUES ('info', 'written after the backup')")
    before = read_data(target)

    def databases() -> list:
        with connect_postgres(dataclasses.replace(target.postgres, database="postgres")) as conn:
            return conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()

    names = databases()

    # The files are intact but the manifest claims other row counts: refused after the scratch load.
    lying = tmp_path / "lying"
    shutil.copytree(folder, lying)
    manifest = json.loads((lying / "manifest.json").read_text())
    manifest["postgres"]["tables"]["public.services"] += 1
    (lying / "manifest.json").write_text(json.dumps(manifest))
    refused = cli(settings, "restore", "--stack", live.name, "--from", str(lying))
    assert refused.returncode == 1 and "does not load as its manifest says" in refused.stderr
    assert "public.services" in refused.stderr
    assert read_data(target) == before and databases() == names

    # The Redis switch fails after PostgreSQL was switched: PostgreSQL is switched back.
    def broken(*_):
        raise redis_lib.ResponseError("simulated failure during EXEC")

    monkeypatch.setattr(commands, "replace_redis", broken)
    with pytest.raises(BackupFailed, match="PostgreSQL was switched back, nothing live changed"):
        commands.restore(target, folder)
    assert read_data(target) == before
    assert [n for n in databases() if n not in names] == [], "no scratch or renamed database is left"
