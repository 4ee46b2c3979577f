"""`restore` on a replicated stack, the parts that need no server: its scratch recovery in Patroni's
image, the password file a client tool uses in the live Patroni container, and the leader's host its
docker CLI calls go to."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import tarfile
from dataclasses import replace
from types import SimpleNamespace

import pytest

from infra.backupagent import layout
from infra.core import dockercli, dockerhost
from infra.core.config import ClusterHost
from infra.core.targets import DockerHost
from infra.deploy import replicated
from infra.driver import stacks
from infra.ops import agentstatus, pitr
from infra.ops.backup import postgres_dump
from tests.unit.test_replicated_step import ADDRESSES, TARGET, whole

SINGLE = replace(TARGET, cluster=None)


class Docker:
    """dockercli as the scratch recovery and the restore call it: records every call, inspects an image."""

    def __init__(self, monkeypatch, module):
        self.calls: list[tuple] = []
        self.files: dict[str, dict] = {}
        monkeypatch.setattr(module.dockercli, "docker", self.docker)
        monkeypatch.setattr(module.dockercli, "put_files", lambda name, files: self.files.setdefault(name, {})
                            .update({path: content for path, (content, _mode) in files.items()}))
        monkeypatch.setattr(module.dockercli, "inspect", lambda kind, name: {"Image": "sha256:live",
                                                                           "State": {"Running": True}})
        monkeypatch.setattr(module.dockercli, "copy_in", lambda *args: None)

    def docker(self, *args, **kwargs):
        self.calls.append(args)
        if args[0] == "exec" and "SELECT pg_is_in_recovery()" in args:
            return "f\n"
        return ""


# Set empty on the command line, before the target recovered to: a base backup's own postgresql.conf
# cannot set a second one (a promoted Patroni replica's has them; PostgreSQL then refuses to start).
EMPTY_TARGETS = ["recovery_target=", "recovery_target_lsn=", "recovery_target_name=", "recovery_target_time=",
                 "recovery_target_xid="]


def scratch_command(monkeypatch, tmp_path, target,
                    settings: tuple = ("recovery_target_action=promote",)) -> tuple[list[str], dict]:
    docker = Docker(monkeypatch, pitr)
    (tmp_path / "wal").mkdir()
    with gzip.open(tmp_path / "base.tar.gz", "wb") as gz, tarfile.open(fileobj=gz, mode="w"):
        pass  # an empty data directory: what the container gets is not looked at here
    fetched = pitr.Fetched({}, tmp_path / "base.tar.gz", tmp_path / "redis.tar.gz", tmp_path / "wal")
    with pitr.ScratchRecovery(target, fetched, list(settings)) as scratch:
        name = scratch.name
    create = next(call for call in docker.calls if call[0] == "create")
    return list(create[create.index("sha256:live") + 1:]), docker.files[name]


def test_a_replicated_stacks_scratch_recovery_starts_postgres_as_its_user_trusting_only_its_own_socket(
        monkeypatch, tmp_path):
    command, files = scratch_command(monkeypatch, tmp_path, TARGET)
    assert command[:4] == ["sh", "-c", pitr.PATRONI_SCRATCH_START, "sh"]
    assert "setpriv --reuid=postgres" in command[2] and "chown -R postgres:postgres" in command[2]
    settings = command[4::2]
    assert command[4::2] == ["-c"] * len(settings) and settings
    assert command[5::2] == ["listen_addresses=", "archive_mode=off", f"restore_command=cp {pitr.WAL_DIR}/%f %p",
                             *EMPTY_TARGETS, "recovery_target_action=promote", f"hba_file={pitr.PATRONI_SCRATCH_HBA}",
                             f"ident_file={pitr.SCRATCH_DATA}/pg_ident.conf",
                             "unix_socket_directories=/var/run/postgresql", "synchronous_standby_names="]
    assert files == {f"{pitr.SCRATCH_DATA}/recovery.signal": b"", pitr.PATRONI_SCRATCH_HBA: b"local all all trust\n"}


def test_the_target_recovered_to_is_set_after_the_others_are_emptied(monkeypatch, tmp_path):
    command, _ = scratch_command(monkeypatch, tmp_path, SINGLE, ("recovery_target=immediate",
                                                                 "recovery_target_action=promote"))
    assert command[-6:] == ["-c", "recovery_target_xid=", "-c", "recovery_target=immediate",
                            "-c", "recovery_target_action=promote"]
    assert [c for c in command if c.startswith("recovery_target=")] == ["recovery_target=immediate"]


def test_a_single_hosts_scratch_recovery_is_the_images_own_postgres(monkeypatch, tmp_path):
    command, files = scratch_command(monkeypatch, tmp_path, SINGLE)
    assert command == ["postgres", "-c", "listen_addresses=", "-c", "archive_mode=off",
                       "-c", f"restore_command=cp {pitr.WAL_DIR}/%f %p",
                       *[part for target in EMPTY_TARGETS for part in ("-c", target)],
                       "-c", "recovery_target_action=promote"]
    assert files == {f"{pitr.SCRATCH_DATA}/recovery.signal": b""}


def test_the_password_file_holds_the_escaped_password_and_is_removed_even_when_the_tool_fails(monkeypatch):
    docker = Docker(monkeypatch, postgres_dump)
    target = replace(TARGET.postgres, password="pa:ss\\word")
    with pytest.raises(RuntimeError):
        with postgres_dump.socket_password_file(target) as path:
            assert path == postgres_dump.PASSWORD_FILE
            raise RuntimeError("pg_restore failed")
    assert docker.files["prod-patroni"] == {postgres_dump.PASSWORD_FILE: b"*:*:*:sinadmin:pa\\:ss\\\\word\n"}
    assert docker.calls == [("exec", "prod-patroni", "rm", "-f", postgres_dump.PASSWORD_FILE)]


def test_the_restore_script_takes_the_password_file_only_when_given():
    assert 'if [ -n "${4:-}" ]; then export PGPASSFILE="$4"; fi;' in postgres_dump.RESTORE_SCRIPT


def hosts_config() -> SimpleNamespace:
    """The part of the stack's configuration the leader's host is read from."""
    hosts = tuple(ClusterHost(DockerHost(f"ssh://deploy@{a}", "/keys/id"), a) for a in ADDRESSES)
    return SimpleNamespace(cluster=SimpleNamespace(hosts=hosts))


@pytest.fixture
def cluster(monkeypatch):
    """A deployed replicated stack whose state is ``reading``; the sessions opened, by host URL."""
    opened = []
    monkeypatch.setattr(stacks, "deployed_target", lambda name, settings=None: TARGET)
    monkeypatch.setattr(stacks, "stack_config", lambda name, settings=None: hosts_config())

    @contextlib.contextmanager
    def session(host):
        opened.append(host.url)
        yield host

    monkeypatch.setattr(dockerhost, "session", session)
    monkeypatch.setattr(dockerhost, "using", lambda current: contextlib.nullcontext(current))
    return opened


def test_restore_works_on_the_leaders_host(monkeypatch, cluster):
    monkeypatch.setattr(replicated, "read_state", lambda *args: whole(patroni=[
        {"host": "10.9.0.3", "role": "leader", "state": "running"}]))
    with stacks.reached("prod", engine=True) as target:
        assert target.postgres.host == "10.9.0.3"
    assert cluster == ["ssh://deploy@10.9.0.3"]
    with stacks.reached("prod") as target:  # the day-2 commands that need no engine open no session
        assert target.postgres.host == "10.9.0.3"
    assert cluster == ["ssh://deploy@10.9.0.3"]


def test_without_one_leader_restore_does_nothing(monkeypatch, cluster):
    monkeypatch.setattr(replicated, "read_state", lambda *args: whole(patroni=[]))
    with pytest.raises(stacks.StackError, match="stack 'prod' has 0 PostgreSQL leaders now"):
        with stacks.reached("prod", engine=True):
            pytest.fail("reached without a leader")
    assert cluster == []


def test_a_leader_off_the_host_list_is_named(monkeypatch, cluster):
    monkeypatch.setattr(replicated, "read_state", lambda *args: whole(patroni=[
        {"host": "10.9.0.9", "role": "leader", "state": "running"}]))
    with pytest.raises(stacks.StackError, match="10.9.0.9 leads stack 'prod' but is not in its replicatedHosts"):
        with stacks.reached("prod", engine=True):
            pytest.fail("reached a host off the list")


class Conn:
    """A psycopg connection as dump_postgres uses it: one value per query."""

    def execute(self, query, *args):
        value = {"SHOW server_version_num": "160014", "SELECT pg_export_snapshot()": "00000003-1"}.get(query, "16.14")
        return SimpleNamespace(fetchone=lambda: (value,), fetchall=lambda: [])

    def rollback(self):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("target, prefix", [(TARGET, ["env", f"PGPASSFILE={postgres_dump.PASSWORD_FILE}"]),
                                            (SINGLE, [])])
def test_pg_dump_of_a_replicated_stack_reads_the_password_from_a_file_put_there_for_it(monkeypatch, tmp_path,
                                                                                         target, prefix):
    docker = Docker(monkeypatch, postgres_dump)
    dumped = []
    monkeypatch.setattr(postgres_dump, "connect_postgres", lambda *a, **k: Conn())
    monkeypatch.setattr(postgres_dump.dockercli, "exec_to_file", lambda name, argv, path: dumped.append(
        (name, argv, dict(docker.files.get(name, {})))))
    monkeypatch.setattr(postgres_dump, "table_counts", lambda conn: {})
    monkeypatch.setattr(postgres_dump, "schema_digest", lambda conn: "")
    postgres_dump.dump_postgres(target.postgres, tmp_path / "dump", socket_password=target.cluster is not None)
    (name, argv, files), = dumped
    assert argv[:len(prefix) + 1] == [*prefix, "pg_dump"] and "--snapshot=00000003-1" in argv
    assert target.postgres.password not in " ".join(argv)
    assert bool(files) == bool(prefix)  # there while pg_dump ran ...
    assert (("exec", name, "rm", "-f", postgres_dump.PASSWORD_FILE) in docker.calls) == bool(prefix)  # ... not after


class Replication:
    """connect_redis as with_redis_on uses it: the master's offset, the replica's offsets one INFO at a time."""

    def __init__(self, master_offset, replica_offsets):
        self.master_offset, self.replica_offsets, self.asked = master_offset, list(replica_offsets), []

    def connect(self, target, *args, **kwargs):
        replication = self

        class Client:
            def info(self, section):
                replication.asked.append(target.host)
                if target.host == TARGET.redis.host:
                    return {"role": "master", "master_repl_offset": replication.master_offset}
                return {"role": "slave", "slave_repl_offset": replication.replica_offsets.pop(0)}

        return contextlib.nullcontext(Client())


def test_redis_is_read_beside_the_leader_once_it_has_the_masters_acknowledged_writes(monkeypatch):
    found = Replication(500, [100, 499, 500])
    monkeypatch.setattr(replicated, "connect_redis", found.connect)
    monkeypatch.setattr(replicated, "POLL_S", 0.001)
    moved = replicated.with_redis_on(TARGET, "10.9.0.3", 5)
    assert moved.redis == replace(TARGET.redis, host="10.9.0.3") and moved.postgres == TARGET.postgres
    assert found.asked == [TARGET.redis.host] + ["10.9.0.3"] * 3
    assert replicated.with_redis_on(TARGET, TARGET.redis.host, 5) is TARGET  # the master is there: no wait


def test_a_replica_that_does_not_catch_up_stops_the_backup(monkeypatch):
    monkeypatch.setattr(replicated, "connect_redis", Replication(500, [100] * 10_000).connect)
    monkeypatch.setattr(replicated, "POLL_S", 0.001)
    with pytest.raises(replicated.ClusterNotReady, match="the Redis replica on 10.9.0.3 did not catch up with the "
                                                         "master on 10.9.0.2 within 0 s"):
        replicated.with_redis_on(TARGET, "10.9.0.3", 0.05)


@pytest.mark.parametrize("reason, said", [("replica", "is a replica now"), ("OperationalError", "does not answer")])
def test_backup_now_says_when_the_agent_took_none(monkeypatch, reason, said):
    records = [{"last_skipped": {"name": "old", "reason": "replica"}},
               {"last_skipped": {"name": "old", "reason": "replica"}},
               {"last_skipped": {"name": "20261207T100000Z", "reason": reason}}]
    monkeypatch.setattr(agentstatus, "read", lambda agent: records.pop(0))
    monkeypatch.setattr(agentstatus.dockercli, "docker", lambda *args, **kwargs: "")
    monkeypatch.setattr(agentstatus.time, "sleep", lambda s: None)
    assert agentstatus.run_now("prod-backup") == {
        "name": "20261207T100000Z", "result": "skipped",
        "error": f"PostgreSQL beside the agent prod-backup {said}; run it again"}


def test_a_scratch_recoverys_failure_shows_what_postgres_wrote_to_stderr(monkeypatch, tmp_path):
    """`docker logs` passes a container's stderr to its own stderr, where PostgreSQL's log is."""
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho \"args: $*\"\necho 'FATAL:  could not locate required checkpoint record' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert dockercli.logs("sin-scratch-prod-pitr-1", 15).splitlines() == [
        "args: logs --tail 15 sin-scratch-prod-pitr-1", "FATAL:  could not locate required checkpoint record"]


class WalStore:
    """A bucket holding the WAL files ``names`` of cluster 7, each a gzip of its name."""

    def __init__(self, names):
        self.keys = [layout.wal_key("7", name) for name in names]

    def list(self, prefix):
        return [key for key in self.keys if key.startswith(prefix)]

    def get(self, key, path):
        path.write_bytes(gzip.compress(key.encode()))

    def describe(self):
        return "s3://sin-backups/prod"


BACKUP = {"name": "20261207T110952Z", "postgres": {"system_identifier": "7", "start_wal": "000000020000000000000005",
                                                  "stop_wal": "000000020000000000000006"}}


def test_the_wal_from_the_backups_start_and_every_history_is_fetched(monkeypatch, tmp_path):
    monkeypatch.setattr(pitr, "_decrypt", lambda sealed, plain, passphrase, name: shutil.copyfile(sealed, plain))
    store = WalStore(["000000010000000000000004", "00000002.history", "000000020000000000000005",
                      "000000020000000000000006"])
    assert pitr._fetch_wal(store, BACKUP, "passphrase", tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000002.history", "000000020000000000000005",
                                                          "000000020000000000000006"]


def test_a_backup_whose_last_wal_is_not_shipped_yet_is_refused_with_when_to_try_again(monkeypatch, tmp_path):
    """A base backup's manifest lands before its agent ships the WAL of its end (`backup --now`, then at once
    `--verify` or `restore`): recovery would fail without saying why."""
    monkeypatch.setattr(pitr, "_decrypt", lambda sealed, plain, passphrase, name: shutil.copyfile(sealed, plain))
    with pytest.raises(pitr.BackupRefused, match=r"the WAL up to the end of base backup 20261207T110952Z "
                                                 r"\(000000020000000000000006\) is not in s3://sin-backups/prod yet"):
        pitr._fetch_wal(WalStore(["000000020000000000000005"]), BACKUP, "passphrase", tmp_path)
