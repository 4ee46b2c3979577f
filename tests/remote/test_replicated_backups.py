"""Backups of a replicated stack across a failover (issue #27), end to end on three SSH-only Docker hosts
and an S3 server on their LAN: every member archives its WAL, each host's agent ships it into the one
bucket, the leader's agent takes the base backup; the leader's host is lost under a writer; the bucket
then recovers, with the real PostgreSQL 16, to a moment before the failover and to one after it."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from infra.backupagent import layout
from infra.backupagent.store import S3Store
from infra.core import cluster
from infra.ops import pitr
from tests import replicated_stacks
from tests.backups import complete_backups, keys, wait_for
from tests.e2e.support import cli
from tests.cluster_clients import PostgresWriter, leader_of, roles
from tests.polling import until
from tests.replicated_stacks import objects_on
from infra.driver.teststacks import free_port
from tests.servers import PG_USER, S3Server, pg16_dir

pytestmark = pytest.mark.e2e


def recovered_marks(store: S3Store, manifest: dict, passphrase: str, to_time: datetime,
                    password: str) -> tuple[set[str], int]:
    """The marks, and the writer's row count, that a PostgreSQL 16 on this machine recovers to ``to_time``
    from the base backup of ``manifest`` and the WAL after it, fetched from ``store`` as `restore --to-time`
    fetches them, and recovered as it does in its scratch container: restore_command over the fetched WAL,
    recovery_target_time, promote."""
    work = Path(tempfile.mkdtemp(prefix="sin-pitr-test-"))
    try:
        (work / "fetched").mkdir()
        fetched = pitr.fetch(store, manifest, passphrase, work / "fetched", with_wal=True, say=print)
        data = work / "data"
        with tarfile.open(fetched.base_tar, "r:gz") as tar:
            tar.extractall(data, filter="data")
        data.chmod(0o700)
        (data / "recovery.signal").write_bytes(b"")
        bin_dir, port = pg16_dir() / "bin", free_port()
        # Patroni's own file names its paths inside the container: the hba and ident files are the data dir's.
        options = {"listen_addresses": "127.0.0.1", "port": port, "unix_socket_directories": work,
                   "archive_mode": "off", "restore_command": f"cp {fetched.wal_dir}/%f %p",
                   "recovery_target_time": to_time.isoformat(), "recovery_target_action": "promote",
                   "hba_file": data / "pg_hba.conf", "ident_file": data / "pg_ident.conf"}
        with open(data / "postgresql.auto.conf", "a") as conf:  # the last setting of a name wins
            conf.writelines(f"{key} = '{value}'\n" for key, value in options.items())
        subprocess.run(["chown", "-R", f"{PG_USER}:{PG_USER}", str(work)], check=True)
        start = subprocess.run(
            ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--", str(bin_dir / "pg_ctl"),
             "-D", str(data), "-l", str(work / "log"), "-w", "-t", "120", "start"],
            capture_output=True, text=True)
        assert start.returncode == 0, start.stdout + start.stderr + (work / "log").read_text()
        try:
            def promoted():
                with psycopg.connect(host="127.0.0.1", port=port, user="sinadmin", password=password,
                                     dbname="sinsolver", autocommit=True, connect_timeout=3) as conn:
                    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return None
                    marks = {row[0] for row in conn.execute("SELECT name FROM marks")}
                    return marks, conn.execute("SELECT count(*) FROM acked").fetchone()[0]
            return until("the recovery to end and promote", promoted, 120)
        finally:
            subprocess.run(["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--",
                            str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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

        # Recovered from the bucket alone, on either side of the failover, with the real PostgreSQL 16.
        store = S3Store(lan_s3.endpoint, lan_s3.region, bucket, stack.name, lan_s3.access_key, lan_s3.secret_key)
        passphrase = stack.get_config("sin-datastores:backupPassphrase").value
        manifest = pitr.choose(pitr.manifests(store), before_failover, store.describe())
        assert manifest["name"] == first[0] and manifest["postgres"]["timeline"] == 1
        for to_time, want_marks, acked in ((before_failover, {"before"}, acked_before),
                                           (after_failover, {"before", "after"}, acked_after)):
            marks, rows = recovered_marks(store, manifest, passphrase, to_time, password)
            assert marks == want_marks, (to_time, marks)
            assert rows >= acked, f"recovered to {to_time}: {rows} rows, {acked} were acknowledged before it"
            print(f"recovered to {to_time.isoformat()}: marks {sorted(marks)}, {rows} rows "
                  f"({acked} acknowledged before)")
        assert outputs["topology"] == "replicated"


def stack_sysid(s3: S3Server, bucket: str, prefix: str) -> str:
    """The cluster's id, as its WAL is filed in the bucket (one cluster: one id)."""
    ids = {found[0] for key in keys(s3, bucket, prefix) if (found := layout.wal_of(key))}
    assert len(ids) == 1, ids
    return ids.pop()
