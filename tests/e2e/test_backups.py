"""Scheduled, encrypted, off-host backups with point-in-time recovery, on the real Pulumi engine,
Docker Engine, PostgreSQL 16, Redis 7 and a real S3-compatible server (versitygw) on loopback:
the backup agent's runs appear on their own and are pruned by the policy, nothing readable lands
in the bucket, a time between two writes is restored, a new host is restored from the bucket
alone, a wrong passphrase is refused, and archiving survives the bucket being away."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis as redis_lib

from infra.driver import stacks
from infra.ops import agentstatus
from infra.backupagent import layout
from infra.core.connect import connect_postgres
from tests.e2e.support import cli, docker, objects_of
from tests.backups import complete_backups, keys, wait_for
from tests.servers import S3Server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ROW_MARKER = "row-marker-7f3a9c"
KEY_MARKER = "key-marker-5b1e2d"




@pytest.fixture
def s3():
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


def backed_up_stack(make_stack, s3: S3Server, bucket: str, schedule: str = "0 0 1 1 *", **extra: str):
    """A stack whose agent backs up into ``bucket`` (by default only its first backup, at start)."""
    test_stack = make_stack(backupSchedule=schedule, backupS3Bucket=bucket, backupS3Endpoint=s3.endpoint, **extra)
    s3_keys(test_stack, s3)
    return test_stack


def up_with_first_backup(make_stack, s3: S3Server, bucket: str):
    """A backed-up stack brought up, once the agent's first backup is in the bucket: (stack, target, agent)."""
    test_stack = backed_up_stack(make_stack, s3, bucket)
    test_stack.up()
    wait_for("the first backup", lambda: complete_backups(s3, bucket, test_stack.name), 90)
    return test_stack, target_of(test_stack), agent_of(test_stack)


def s3_keys(test_stack, s3: S3Server) -> None:
    stacks.set_secret(test_stack.stack, "backupS3AccessKeyId", s3.access_key)
    stacks.set_secret(test_stack.stack, "backupS3SecretAccessKey", s3.secret_key)


def passphrase_of(test_stack) -> str:
    return test_stack.stack.get_config("sin-datastores:backupPassphrase").value


def target_of(test_stack):
    return stacks.target_from_outputs(test_stack.name, test_stack.stack.outputs())


def agent_of(test_stack) -> str:
    return test_stack.stack.outputs()["backupContainerName"].value


def write_marked_data(target, label: str) -> None:
    with connect_postgres(target.postgres) as conn:
        conn.execute("INSERT INTO services (name, category, container_name, ip_address, port) "
                     "VALUES (%s, %s, %s, '172.20.1.1', 1)", (f"{ROW_MARKER}-{label}", "e2e", f"c-{label}"))
    client = redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password)
    client.set(f"{KEY_MARKER}:{label}", f"value {ROW_MARKER}")
    client.close()


def service_names(target) -> set[str]:
    with connect_postgres(target.postgres) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM services")}


def redis_keys(target) -> set[bytes]:
    client = redis_lib.Redis(host=target.redis.host, port=target.redis.port, password=target.redis.password)
    try:
        return set(client.keys("*"))
    finally:
        client.close()


def switch_wal_and_wait_shipped(target, agent: str) -> None:
    """Close the current WAL segment and wait until the agent has shipped it everywhere."""
    with connect_postgres(target.postgres) as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    wait_for(f"WAL segment {segment} shipped",
             lambda: ((agentstatus.read(agent) or {}).get("wal") or {}).get("last_shipped", "") >= segment
             and not ((agentstatus.read(agent) or {}).get("wal") or {}).get("pending"), 60)


def test_scheduled_backups_appear_on_their_own_encrypted_and_pruned_in_every_place(make_stack, settings, s3):
    bucket = s3.create_bucket()
    test_stack = backed_up_stack(make_stack, s3, bucket, schedule="* * * * *", backupKeepLast="2",
                                 backupKeepDaily="0", backupKeepWeekly="0")
    test_stack.up()
    target, agent = target_of(test_stack), agent_of(test_stack)
    write_marked_data(target, "scheduled")
    # The first backup at start, then the agent's schedule, with nobody asking.
    names = wait_for("two backups in the bucket", lambda: len(complete_backups(s3, bucket, test_stack.name)) >= 2
                     and complete_backups(s3, bucket, test_stack.name), 150)
    first = names[0]
    for _ in range(2):
        ran = cli(settings, "backup", "--stack", test_stack.name, "--now")
        assert ran.returncode == 0, ran.stderr
    kept = complete_backups(s3, bucket, test_stack.name)
    assert len(kept) == 2 and first not in kept, kept
    local = docker("exec", agent, "ls", f"/backups/{layout.LOCAL_STORE_DIR}/base").split()
    assert sorted(local) == kept
    # WAL older than the oldest kept backup's start is gone; what the kept ones need is there.
    manifest = json.loads(s3.client().get_object(
        Bucket=bucket, Key=f"{test_stack.name}/{layout.backup_key(kept[0], layout.MANIFEST)}")["Body"].read())
    wal = [layout.wal_of(k) for k in keys(s3, bucket, test_stack.name) if layout.wal_of(k)]
    segments = sorted(layout.segment(f) for _, f in wal if not f.endswith(".history"))
    assert segments and segments[0] >= layout.segment(manifest["postgres"]["start_wal"])
    assert manifest["encryption"]["cipher"] == "AES-256-GCM"
    # Nothing readable in the bucket: no row, key, password or passphrase in any object.
    secrets_in_play = [ROW_MARKER, KEY_MARKER, target.postgres.password, target.redis.password,
                       passphrase_of(test_stack)]
    objects = [p for p in (s3.data_dir / bucket).rglob("*") if p.is_file()]
    assert len(objects) >= 6
    for path in objects:
        data = path.read_bytes()
        found = [s for s in secrets_in_play if s.encode() in data]
        assert not found, f"{path} holds {len(found)} readable secrets or data"
    shown = cli(settings, "status", "--stack", test_stack.name)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "backups     schedule '* * * * *' UTC; last" in shown.stdout and " ok at " in shown.stdout
    agent_config = docker("inspect", agent)
    for secret in secrets_in_play[2:]:
        assert secret not in shown.stdout + shown.stderr and secret not in agent_config
    # A changed policy is a new agent (its name is fixed: replaced delete-first); its record stays.
    before = json.loads(agent_config)[0]["Id"]
    stacks.configure(test_stack.stack, {"backupKeepLast": "3"})
    test_stack.up()
    assert json.loads(docker("inspect", agent))[0]["Id"] != before
    assert (agentstatus.read(agent) or {}).get("last_success", {}).get("name") == kept[-1]


def test_restore_to_a_time_between_two_writes_then_on_a_new_host_from_the_bucket_alone(make_stack, settings, s3):
    bucket = s3.create_bucket()
    old, target, agent = up_with_first_backup(make_stack, s3, bucket)
    write_marked_data(target, "first")
    time.sleep(1.5)
    between = datetime.now(timezone.utc)
    time.sleep(1.5)
    write_marked_data(target, "second")
    switch_wal_and_wait_shipped(target, agent)

    back = cli(settings, "restore", "--stack", old.name, "--from", f"s3://{bucket}/{old.name}",
               "--to-time", between.strftime("%Y-%m-%d %H:%M:%S.%f"))
    assert back.returncode == 0, back.stderr
    names = service_names(target)
    assert f"{ROW_MARKER}-first" in names and f"{ROW_MARKER}-second" not in names

    # Lose the host: stack, data volumes and the local copies all gone.
    write_marked_data(target, "second")
    switch_wal_and_wait_shipped(target, agent)
    # Redis has no log to replay: a restore brings back the newest snapshot, so take one now.
    assert cli(settings, "backup", "--stack", old.name, "--now").returncode == 0
    rows, keys_then = service_names(target), redis_keys(target)
    assert {f"{ROW_MARKER}-first", f"{ROW_MARKER}-second"} <= rows and keys_then
    passphrase = passphrase_of(old)
    old.destroy_and_remove()
    assert objects_of(old.name) == {"containers": [], "networks": [], "volumes": []}

    # A new stack that knows only the bucket, its keys and the passphrase. First a wrong passphrase.
    new = make_stack(backupS3Bucket=bucket, backupS3Endpoint=s3.endpoint)
    s3_keys(new, s3)
    stacks.set_secret(new.stack, "backupPassphrase", "not-the-passphrase-of-those-backups")
    new.up()
    fresh = target_of(new)
    refused = cli(settings, "restore", "--stack", new.name, "--from", f"s3://{bucket}/{old.name}")
    assert refused.returncode == 2, refused.stderr
    assert "backupPassphrase" in refused.stderr and "Traceback" not in refused.stderr
    assert not [n for n in service_names(fresh) if ROW_MARKER in n] and redis_keys(fresh) == set()

    stacks.set_secret(new.stack, "backupPassphrase", passphrase)
    restored = cli(settings, "restore", "--stack", new.name, "--from", f"s3://{bucket}/{old.name}")
    assert restored.returncode == 0, restored.stderr
    assert {n for n in service_names(fresh) if ROW_MARKER in n} == {n for n in rows if ROW_MARKER in n}
    assert redis_keys(fresh) == keys_then


def test_archiving_survives_the_bucket_being_away_and_a_failed_backup_shows_in_status(make_stack, settings, s3):
    bucket = s3.create_bucket()
    test_stack, target, agent = up_with_first_backup(make_stack, s3, bucket)
    before = {k for k in keys(s3, bucket, test_stack.name) if k.startswith("wal/")}
    s3.halt()
    try:
        for i in range(3):
            write_marked_data(target, f"away-{i}")
            with connect_postgres(target.postgres) as conn:
                conn.execute("SELECT pg_switch_wal()")
        wait_for("segments waiting in the archive", lambda: ((agentstatus.read(agent) or {}).get("wal") or {})
                 .get("pending", 0) >= 3, 60)
        assert {f"{ROW_MARKER}-away-{i}" for i in range(3)} <= service_names(target)  # PostgreSQL keeps serving
        failed = cli(settings, "backup", "--stack", test_stack.name, "--now")
        assert failed.returncode == 1 and "failed" in failed.stderr
        shown = cli(settings, "status", "--stack", test_stack.name)
        assert shown.returncode == 1 and "the last backup" in shown.stdout and "failed" in shown.stdout
    finally:
        s3.resume()
    wait_for("the archive shipped", lambda: not ((agentstatus.read(agent) or {}).get("wal") or {}).get("pending"), 60)
    after = {k for k in keys(s3, bucket, test_stack.name) if k.startswith("wal/")}
    assert len(after - before) >= 3
    ran = cli(settings, "backup", "--stack", test_stack.name, "--now")
    assert ran.returncode == 0, ran.stderr
    assert cli(settings, "status", "--stack", test_stack.name).returncode == 0
    verified = cli(settings, "backup", "--stack", test_stack.name, "--verify", "--from", f"s3://{bucket}/{test_stack.name}")
    assert verified.returncode == 0, verified.stdout + verified.stderr
