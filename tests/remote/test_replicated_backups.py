"""Backups of a replicated stack across a failover (issue #27), end to end on three SSH-only Docker hosts
and an S3 server on their LAN: every member archives its WAL, each host's agent ships it into the one
bucket, the leader's agent takes the base backup; the leader's host is lost under a writer; `restore`
then brings the cluster back from the bucket to a moment before the failover and to one after it."""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
import pytest

from infra.backupagent import layout
from infra.core import cluster
from tests import replicated_stacks
from tests.backups import complete_backups, keys, wait_for
from tests.cluster_clients import PostgresWriter, leader_of, roles
from tests.e2e.support import cli
from tests.polling import until
from tests.replicated_stacks import objects_on
from tests.servers import S3Server

pytestmark = pytest.mark.e2e


def mark(conn: psycopg.Connection, name: str) -> datetime:
    """Commit the mark ``name``; the server's time just after that commit."""
    conn.execute("INSERT INTO marks (name) VALUES (%s)", (name,))
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def test_backups_continue_across_a_failover_and_recover_to_either_side_of_it(three_hosts, lan_s3, tmp_path):
    addresses = [h.address for h in three_hosts]
    bucket = lan_s3.create_bucket()
    backups = replicated_stacks.backup_settings(lan_s3, bucket, three_hosts)
    with replicated_stacks.replicated_stack(three_hosts, tmp_path, "e2e-ha-bk", extra=backups) as stack:
        replicated_stacks.store_s3_keys(stack, lan_s3)
        outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
        for host in three_hosts:
            assert {f"{stack.name}-backup", f"{stack.name}-backup-data", f"{stack.name}-patroni-archive"} <= set(
                objects_on(host, stack.name)), host.address

        # The first base backup comes from the leader's agent alone; the others wait for it in the bucket.
        first = wait_for("the first base backup in the bucket",
                         lambda: complete_backups(lan_s3, bucket, stack.name), 180)
        time.sleep(12)  # the replicas' agents looked again meanwhile (5 s, then 10 s)
        assert complete_backups(lan_s3, bucket, stack.name) == first and len(first) == 1
        shown = cli(replicated_stacks.settings(tmp_path), "status", "--stack", stack.name, timeout_s=120)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert (f"backups     schedule '0 0 1 1 *' UTC; newest base backup {first[0]} in s3://{bucket}/{stack.name}"
                in shown.stdout), shown.stdout

        password = stack.get_config("sin-datastores:postgresPassword").value
        connect = replicated_stacks.postgres_connector(password)
        leader = leader_of(roles(addresses[0]))
        with connect(leader, cluster.HAPROXY_PRIMARY_PORT) as conn:
            conn.execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
            conn.execute("CREATE TABLE marks (name text PRIMARY KEY)")
        settings = replicated_stacks.settings(tmp_path)
        master = replicated_stacks.redis_master(stack, replicated_stacks.sentinel_client(stack, addresses),
                                                cluster.SENTINEL_MASTER_NAME)

        # An on-demand backup folder of the cluster (pg_dump on the leader's host, the Redis there), verified.
        master.set("in-the-folder", "yes")
        taken = cli(settings, "backup", "--stack", stack.name, "--to", str(tmp_path / "folders"), "--verify",
                    timeout_s=600)
        assert taken.returncode == 0, taken.stdout + taken.stderr
        folder = next(line.split(":")[0].removeprefix("backup ") for line in taken.stdout.splitlines()
                      if line.startswith("backup "))
        assert f"backup {tmp_path / 'folders' / stack.name}/" in taken.stdout and "postgres.dump" in taken.stdout
        master.delete("in-the-folder")
        master.set("after-the-folder", "yes")
        writer = PostgresWriter([(a, cluster.HAPROXY_PRIMARY_PORT) for a in addresses], connect, 1)
        writer.start()
        try:
            until("the writer's first commits", lambda: len(writer.acknowledged) >= 30, 30)
            with connect(leader, cluster.HAPROXY_PRIMARY_PORT) as conn:
                before_failover = mark(conn, "before")
            acked_before = len(writer.acknowledged)
            time.sleep(1)

            # The leader's host lost: a replica takes over on a new timeline, its agent ships on.
            failed_at = time.monotonic()
            three_hosts[addresses.index(leader)].stop_engine()
            survivor = next(a for a in addresses if a != leader)
            new_leader = until("a new leader", lambda: next(
                (a for a, (role, _) in roles(survivor).items() if role == "leader" and a != leader), None), 90)
            until("writes after the failover", lambda: writer.writing_again(failed_at), 90)
            with connect(new_leader, cluster.HAPROXY_PRIMARY_PORT) as conn:
                after_failover = mark(conn, "after")
                acked_after = len(writer.acknowledged)
                time.sleep(1)
                mark(conn, "later")
                timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
                segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
                conn.execute("SELECT pg_switch_wal()")
        finally:
            writer.stop.set()
            writer.join(30)
        assert timeline >= 2 and segment.startswith(f"{timeline:08X}")
        wal = f"wal/{stack_sysid(lan_s3, bucket, stack.name)}"
        wait_for(f"{segment} and the new timeline's history in the bucket", lambda: {
            f"{wal}/{segment}.gz.enc", f"{wal}/{timeline:08X}.history.gz.enc"} <= set(keys(lan_s3, bucket, stack.name)),
                 90)

        # Restored from the bucket into the running cluster, to either side of the failover: `restore --to-time`
        # recovers in a scratch container on the leader's host and switches the leader's database and the master.
        for to_time, want_marks, acked in ((before_failover, {"before"}, acked_before),
                                           (after_failover, {"before", "after"}, acked_after)):
            restored = cli(settings, "restore", "--stack", stack.name, "--from", f"s3://{bucket}/{stack.name}",
                           "--to-time", to_time.isoformat(), timeout_s=600)
            assert restored.returncode == 0, restored.stdout + restored.stderr
            assert f"fetched base backup {first[0]}" in restored.stderr, restored.stderr
            secrets = (password, stack.get_config("sin-datastores:backupPassphrase").value, lan_s3.secret_key)
            assert not [x for x in secrets if x in restored.stdout + restored.stderr], "a secret was printed"
            with connect(new_leader, cluster.HAPROXY_PRIMARY_PORT) as conn:
                marks = {name for (name,) in conn.execute("SELECT name FROM marks")}
                ids = {i for (i,) in conn.execute("SELECT id FROM acked")}
            assert marks == want_marks, (to_time, marks)
            missing = {i for i, _ in writer.acknowledged[:acked]} - ids
            assert not missing, f"restored to {to_time}: {len(missing)} rows acknowledged before it are missing"
            print(f"restored to {to_time.isoformat()}: marks {sorted(marks)}, {len(ids)} rows ({acked} acknowledged "
                  f"before)")

        # On demand, after the failover: the new leader's agent takes a base backup, which recovers.
        now = cli(settings, "backup", "--stack", stack.name, "--now", timeout_s=600)
        assert now.returncode == 0 and ": ok" in now.stderr, now.stdout + now.stderr
        both = complete_backups(lan_s3, bucket, stack.name)
        assert len(both) == 2 and both[0] == first[0], both

        def verify():
            """A verify, once the agent shipped the WAL up to the backup's end (refused until then: exit 2)."""
            done = cli(settings, "backup", "--stack", stack.name, "--verify", "--from", f"s3://{bucket}/{stack.name}",
                       timeout_s=600)
            return None if done.returncode == 2 and f"of base backup {both[1]}" in done.stderr else done

        verified = wait_for("a verify of the new base backup", verify, 120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert f"postgres base backup {both[1]} recovers" in verified.stdout, verified.stdout

        # The folder taken before the failover, restored into the cluster: its rows and keys, nothing after.
        restored = cli(settings, "restore", "--stack", stack.name, "--from", folder, timeout_s=600)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        with connect(new_leader, cluster.HAPROXY_PRIMARY_PORT) as conn:
            assert conn.execute("SELECT (SELECT count(*) FROM acked) + (SELECT count(*) FROM marks)").fetchone()[0] \
                == 0
        assert master.get("in-the-folder") == b"yes" and master.get("after-the-folder") is None
        assert outputs["topology"] == "replicated"


def stack_sysid(s3: S3Server, bucket: str, prefix: str) -> str:
    """The cluster's id, as its WAL is filed in the bucket (one cluster: one id)."""
    ids = {found[0] for key in keys(s3, bucket, prefix) if (found := layout.wal_of(key))}
    assert len(ids) == 1, ids
    return ids.pop()
