"""`restore` on a replicated stack, the parts that need no server: its scratch recovery in Patroni's
image, the password file a client tool uses in the live Patroni container, and the leader's host its
docker CLI calls go to."""

from __future__ import annotations

import contextlib
import gzip
import tarfile
from dataclasses import replace
from types import SimpleNamespace

import pytest

from infra.core import dockerhost
from infra.core.config import ClusterHost
from infra.core.targets import DockerHost
from infra.deploy import replicated
from infra.driver import stacks
from infra.ops import pitr
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


def scratch_command(monkeypatch, tmp_path, target) -> tuple[list[str], dict]:
    docker = Docker(monkeypatch, pitr)
    (tmp_path / "wal").mkdir()
    with gzip.open(tmp_path / "base.tar.gz", "wb") as gz, tarfile.open(fileobj=gz, mode="w"):
        pass  # an empty data directory: what the container gets is not looked at here
    fetched = pitr.Fetched({}, tmp_path / "base.tar.gz", tmp_path / "redis.tar.gz", tmp_path / "wal")
    with pitr.ScratchRecovery(target, fetched, ["recovery_target_action=promote"]) as scratch:
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
                             "recovery_target_action=promote", f"hba_file={pitr.PATRONI_SCRATCH_HBA}",
                             f"ident_file={pitr.SCRATCH_DATA}/pg_ident.conf",
                             "unix_socket_directories=/var/run/postgresql", "synchronous_standby_names="]
    assert files == {f"{pitr.SCRATCH_DATA}/recovery.signal": b"", pitr.PATRONI_SCRATCH_HBA: b"local all all trust\n"}


def test_a_single_hosts_scratch_recovery_is_the_images_own_postgres(monkeypatch, tmp_path):
    command, files = scratch_command(monkeypatch, tmp_path, SINGLE)
    assert command == ["postgres", "-c", "listen_addresses=", "-c", "archive_mode=off",
                       "-c", f"restore_command=cp {pitr.WAL_DIR}/%f %p", "-c", "recovery_target_action=promote"]
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
