"""The backups' recovery point and the restore time of a large database, beside baselines.

Two throwaway stacks (private file backend, local images) and a versitygw S3 server on loopback:
  recovery point  stack A (backups to the bucket) takes a committed write every WRITE_EVERY_S; at
                  a random moment the host "dies" (`docker kill` of PostgreSQL and the agent, no
                  shutdown); stack B is restored from the bucket alone; the recovery point is the
                  span of acknowledged writes B did not get back (first lost to last acknowledged).
                  ROUNDS rounds (env SIN_BENCH_ROUNDS), target <= 60 s.
  restore time    A is filled with SIZE_MB (env SIN_BENCH_SIZE_MB, default 1024) of rows, a backup is
                  taken, then `restore --from s3://...` into B is timed, beside the baseline: pg_restore
                  of a plain `pg_dump -Fc` of the same data into an empty database of the same server.
Run: scripts/bench backups
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg

from infra.core import dockercli
from infra.driver import stacks, teststacks
from infra.ops import agentstatus
from infra.core.connect import connect_postgres
from tests.servers import S3Server

ROUNDS = int(os.environ.get("SIN_BENCH_ROUNDS", "3"))
SIZE_MB = int(os.environ.get("SIN_BENCH_SIZE_MB", "1024"))
WRITE_EVERY_S = 0.1
RUN_BEFORE_KILL_S = (15.0, 45.0)


class Stack:
    def __init__(self, settings: stacks.Settings, s3: S3Server, bucket: str, scheduled: bool):
        self.settings = settings
        self.name = teststacks.new_name()
        config = {**teststacks.isolated_config(stack=self.name), "healthTimeoutSeconds": "90",
                  **stacks.local_images(), "backupS3Bucket": bucket, "backupS3Endpoint": s3.endpoint,
                  "postgresMemoryMb": "2048"}
        if scheduled:
            config["backupSchedule"] = "0 0 1 1 *"
        self.stack = teststacks.create(settings, self.name, config)
        stacks.set_secret(self.stack, "backupS3AccessKeyId", s3.access_key)
        stacks.set_secret(self.stack, "backupS3SecretAccessKey", s3.secret_key)

    def up(self) -> None:
        teststacks.up_with_retries(self.stack, lambda: self.stack.up(color="never"), print)
        self.outputs = {k: v.value for k, v in self.stack.outputs().items()}
        self.target = stacks.target_from_outputs(self.name, self.stack.outputs())

    def cli(self, *args: str) -> float:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "infra", *args, "--stack", self.name], cwd=stacks.ROOT,
                              env={**os.environ, **self.settings.env()}, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return time.monotonic() - started

    def remove(self) -> None:
        try:
            self.stack.destroy(color="never")
        finally:
            self.stack.workspace.remove_stack(self.name, force=True)
            dockercli.remove_objects(dockercli.labelled_objects(self.name))
            teststacks.release(self.name)


class Writer:
    """Commits one row with its time every WRITE_EVERY_S; remembers every acknowledged one."""

    def __init__(self, target):
        self.target, self.acked, self.stop = target, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with connect_postgres(self.target.postgres) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS rpo_probe (at timestamptz PRIMARY KEY)")
            while not self.stop.is_set():
                try:
                    at = conn.execute("INSERT INTO rpo_probe VALUES (clock_timestamp()) RETURNING at").fetchone()[0]
                except psycopg.Error:
                    return  # the host died
                self.acked.append(at)
                time.sleep(WRITE_EVERY_S)


def newest_probe(target) -> datetime:
    with connect_postgres(target.postgres) as conn:
        return conn.execute("SELECT max(at) FROM rpo_probe").fetchone()[0]


def recovery_point(a: Stack, b: Stack) -> float:
    a.cli("up")  # brings back what the previous round killed (drift repair), ends verified
    a.target = stacks.target_from_outputs(a.name, a.stack.outputs())
    writer = Writer(a.target)
    writer.thread.start()
    time.sleep(random.uniform(*RUN_BEFORE_KILL_S))
    dockercli.docker("kill", a.outputs["postgresContainerName"], a.outputs["backupContainerName"])
    writer.thread.join(timeout=10)
    writer.stop.set()
    bucket, prefix = a.stack.get_config("sin-datastores:backupS3Bucket").value, a.name
    b.cli("restore", "--from", f"s3://{bucket}/{prefix}")
    newest = newest_probe(b.target)
    lost = [at for at in writer.acked if at > newest]
    # Seconds of acknowledged writes lost: from the first lost one to the last acknowledged one.
    return (writer.acked[-1] - lost[0]).total_seconds() + WRITE_EVERY_S if lost else 0.0


def fill(target, size_mb: int) -> None:
    rows = size_mb * 1024  # rows of about 1 kB
    with connect_postgres(target.postgres) as conn:
        conn.execute("CREATE TABLE bulk (id bigint PRIMARY KEY, payload text NOT NULL)")
        batch = 100_000
        for start in range(0, rows, batch):
            conn.execute("INSERT INTO bulk SELECT g, repeat(md5(g::text), 30) FROM generate_series(%s, %s) g",
                         (start, min(rows, start + batch) - 1))
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    print(f"filled {size / 2**20:.0f} MB")


def pg_restore_baseline(target, container: str) -> float:
    """pg_dump -Fc of the same database, then timed: pg_restore into an empty database."""
    user, db = target.postgres.user, target.postgres.database
    socket = "--host=/var/run/postgresql"
    dockercli.docker("exec", container, "sh", "-c",
                     f"pg_dump {socket} --username={user} --format=custom --file=/tmp/base.dump {db}")
    dockercli.docker("exec", container, "psql", socket, f"--username={user}", "--dbname=postgres",
                     "-c", "CREATE DATABASE bench_restore")
    started = time.monotonic()
    dockercli.docker("exec", container, "sh", "-c",
                     f"pg_restore --file=- /tmp/base.dump | grep -v '^SET transaction_timeout' | "
                     f"psql --quiet {socket} --username={user} --dbname=bench_restore --set=ON_ERROR_STOP=1 "
                     f"--single-transaction >/dev/null")
    elapsed = time.monotonic() - started
    dockercli.docker("exec", container, "sh", "-c", f"rm -f /tmp/base.dump; psql {socket} --username={user} "
                     f"--dbname=postgres -c 'DROP DATABASE bench_restore'")
    return elapsed


def main() -> None:
    s3 = S3Server.start()
    made: list[Stack] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sin-bench-") as tmp:
            settings = stacks.Settings(f"file://{tmp}/state", Path(tmp) / "passphrase")
            bucket = s3.create_bucket()
            a = Stack(settings, s3, bucket, scheduled=True)
            made.append(a)
            a.up()
            b = Stack(settings, s3, bucket, scheduled=False)
            made.append(b)
            stacks.set_secret(b.stack, "backupPassphrase", a.stack.get_config("sin-datastores:backupPassphrase").value)
            b.up()
            while not (agentstatus.read(a.outputs["backupContainerName"]) or {}).get("last_success"):
                time.sleep(0.5)
            points = [recovery_point(a, b) for _ in range(ROUNDS)]
            a.cli("up")
            a.target = stacks.target_from_outputs(a.name, a.stack.outputs())
            fill(a.target, SIZE_MB)
            backup_s = a.cli("backup", "--now")
            restore_s = b.cli("restore", "--from", f"s3://{bucket}/{a.name}")
            baseline_s = pg_restore_baseline(a.target, a.outputs["postgresContainerName"])
            for stack in made:
                stack.remove()
            made.clear()
    finally:
        for stack in made:
            try:
                stack.remove()
            except Exception as exc:  # keep cleaning up
                print(f"cleanup of {stack.name}: {exc}")
        s3.stop()
    print(f"recovery point (s, {ROUNDS} rounds, target <= 60): "
          + ", ".join(f"{p:.1f}" for p in points) + f"; worst {max(points):.1f}, median {statistics.median(points):.1f}")
    print(f"{SIZE_MB} MB: scheduled-style backup to S3 {backup_s:.1f} s; restore --from s3:// {restore_s:.1f} s "
          f"vs pg_restore of a plain dump {baseline_s:.1f} s ({restore_s / baseline_s:.2f}x)")


if __name__ == "__main__":
    with teststacks.private_pulumi_home():
        main()
