"""A stack on a remote Docker host, end to end over ssh:// (issue 11): the whole life cycle
through the command line, with decoys on this machine's loopback that must never be
contacted, every way reaching the host can fail, and the scheduled backups there (the agent on
the remote engine, an S3 server in the remote host's network, restore and status over the tunnel)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

from infra.core import statecopy
from infra.core.config import PROJECT
from infra.driver import stacks, teststacks
from infra.backupagent import layout
from infra.components.backupagent import LOCAL_MOUNT
from tests import teams
from tests.e2e.support import cli, local_images
from tests.backups import complete_backups, wait_for
from tests.remote_host import RemoteDockerHost, RemoteHostError
from tests.servers import S3Server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


class Decoy:
    """Listens on this machine's 127.0.0.1 at a port the stack publishes on the remote host, and
    counts every connection: a tool that wrongly uses its own loopback would land here."""

    def __init__(self, port: int):
        self.port, self.contacts = port, 0
        self._socket = socket.create_server(("127.0.0.1", port))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except socket.timeout:
                continue
            self.contacts += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


class Watched:
    """The command line run against a remote stack with every output kept, and decoys on this
    machine's loopback at the stack's ports."""

    def __init__(self, settings: stacks.Settings, *ports: int):
        self.settings, self.outputs = settings, []
        self.decoys = [Decoy(port) for port in ports]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        done = cli(self.settings, *args)
        self.outputs.append(done.stdout + done.stderr)
        return done

    def contacts(self) -> list[int]:
        return [decoy.contacts for decoy in self.decoys]

    def close(self) -> None:
        for decoy in self.decoys:
            decoy.close()


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> stacks.Settings:
    base = tmp_path_factory.mktemp("pulumi-remote")
    return stacks.Settings(backend_url=f"file://{base / 'state'}", passphrase_file=base / "passphrase")


def remote_config(remote: RemoteDockerHost, **overrides: str) -> dict[str, str]:
    return {**teststacks.isolated_config(), "healthTimeoutSeconds": "90", **local_images(),
            "dockerHost": remote.docker_host, "dockerSshKeyFile": str(remote.identity_file),
            "dockerSshKnownHostsFile": str(remote.known_hosts_file), **overrides}


@pytest.fixture
def new_stack(settings):
    """Create stacks on the remote host; each is destroyed and removed afterwards, failing or not."""
    created = []

    def make(config: dict[str, str]):
        name = f"e2e-remote-{uuid.uuid4().hex[:8]}"
        stack = teststacks.create(settings, name, config)
        created.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in created:
            try:
                stack.destroy(color="never")
            finally:
                stack.workspace.remove_stack(stack.name, force=True)
                stacks.config_file(stack.name).unlink(missing_ok=True)


def remote_objects(remote: RemoteDockerHost, stack: str) -> list[str]:
    found = []
    for listing in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        found += remote.docker(*listing, "--filter", f"label=sin-datastores.stack={stack}",
                               "--format", "{{.Name}}" if listing[0] != "ps" else "{{.Names}}").split()
    return found


def local_objects(stack: str) -> str:
    return subprocess.run(["docker", "ps", "-a", "--filter", f"label=sin-datastores.stack={stack}", "-q"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if k != "DOCKER_HOST"}).stdout.strip()


def test_a_stack_lives_its_whole_life_on_the_remote_host_and_never_touches_local_loopback(remote, settings, new_stack):
    config = remote_config(remote)
    stack = new_stack(config)
    name = stack.name
    pg_port, redis_port = int(config["postgresHostPort"]), int(config["redisHostPort"])
    watched = Watched(settings, pg_port, redis_port)
    run, outputs = watched.run, watched.outputs

    try:
        preview = run("preview", "--stack", name)
        assert preview.returncode == 0, preview.stderr
        assert remote_objects(remote, name) == []

        up = run("up", "--stack", name)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"copied {config['postgresImage']} to {remote.docker_host}" in up.stderr
        results = [line.split()[1] for line in up.stdout.splitlines()
                   if len(line.split()) > 1 and line.split()[1] in ("ok", "FAIL")]
        assert results == ["ok"] * 20, up.stdout
        assert sorted(remote_objects(remote, name)) == sorted([
            f"{name}-room-03-archiv-postgres", f"{name}-room-04-memory-redis", f"{name}-sin-network",
            f"{name}-postgres_data", f"{name}-redis_data", statecopy.volume_name(PROJECT, name)])
        assert local_objects(name) == "", "nothing of the stack on this machine's engine"

        again = run("up", "--stack", name)
        assert again.returncode == 0 and "changes: none" in again.stderr, again.stderr
        for command in ("verify", "status", "plan"):
            done = run(command, "--stack", name)
            assert done.returncode == 0, (command, done.stdout, done.stderr)

        # Data written through a tunnel of the test's own, then backed up, changed and restored.
        pw = {k.split(":")[1]: v.value for k, v in stack.get_all_config().items() if k.endswith("Password")}
        pg_local, redis_local = remote.forward(pg_port), remote.forward(redis_port)
        with psycopg.connect(host="127.0.0.1", port=pg_local, dbname="sinsolver", user="sinadmin",
                             password=pw["postgresPassword"], autocommit=True) as conn:
            conn.execute("INSERT INTO logs (level, message) VALUES ('info', 'remote row')")
        redis_lib.Redis(port=redis_local, password=pw["redisPassword"]).set("remote:key", "kept")
        backups = Path(settings.passphrase_file).parent / "backups"
        backup = run("backup", "--stack", name, "--to", str(backups), "--verify")
        assert backup.returncode == 0, backup.stdout + backup.stderr
        folder = next((backups / name).iterdir())
        with psycopg.connect(host="127.0.0.1", port=pg_local, dbname="sinsolver", user="sinadmin",
                             password=pw["postgresPassword"], autocommit=True) as conn:
            conn.execute("DELETE FROM logs WHERE message = 'remote row'")
        redis_lib.Redis(port=redis_local, password=pw["redisPassword"]).delete("remote:key")
        restore = run("restore", "--stack", name, "--from", str(folder))
        assert restore.returncode == 0, restore.stdout + restore.stderr
        with psycopg.connect(host="127.0.0.1", port=pg_local, dbname="sinsolver", user="sinadmin",
                             password=pw["postgresPassword"]) as conn:
            assert conn.execute("SELECT count(*) FROM logs WHERE message = 'remote row'").fetchone()[0] == 1
        assert redis_lib.Redis(port=redis_local, password=pw["redisPassword"]).get("remote:key") == b"kept"

        down = run("down", "--stack", name)
        assert down.returncode == 0, down.stderr
        assert remote_objects(remote, name) == [], "destroy leaves nothing on the remote host"
        assert watched.contacts() == [0, 0], "this machine's loopback was never used for the services"
        key_material = Path(remote.identity_file).read_text()
        for text in outputs:
            assert pw["postgresPassword"] not in text and pw["redisPassword"] not in text
            assert key_material.splitlines()[1] not in text
    finally:
        watched.close()


def failure(settings, remote, stack, **config: str) -> tuple[subprocess.CompletedProcess, float]:
    stacks.configure(stack, config)
    started = time.monotonic()
    done = cli(settings, "preview", "--stack", stack.name)
    return done, time.monotonic() - started


def assert_refused(done, elapsed: float, remote: RemoteDockerHost, *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert elapsed < 20, f"took {elapsed:.1f} s: failures must be clear within seconds"
    assert "Traceback" not in done.stderr
    assert remote.address in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    assert "Previewing" not in done.stdout, "the engine never started"


def test_each_way_reaching_the_host_fails_is_named_within_seconds_and_changes_nothing(remote, settings, new_stack,
                                                                                       tmp_path):
    stack = new_stack(remote_config(remote))

    done, elapsed = failure(settings, remote, stack, dockerHost=f"ssh://root@{remote.address}:2")
    assert_refused(done, elapsed, remote, "nothing accepts SSH connections", "dockerHost")

    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    done, elapsed = failure(settings, remote, stack, dockerHost=remote.docker_host, dockerSshKeyFile=str(other_key))
    assert_refused(done, elapsed, remote, "was refused", "authorized_keys")

    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    done, elapsed = failure(settings, remote, stack, dockerSshKeyFile=str(remote.identity_file),
                            dockerSshKnownHostsFile=str(empty_known_hosts))
    assert_refused(done, elapsed, remote, "host key", "ssh-keyscan")

    done, elapsed = failure(settings, remote, stack, dockerSshKnownHostsFile=str(remote.known_hosts_file),
                            dockerHost=f"ssh://{RemoteDockerHost.NO_DOCKER_USER}@{remote.address}")
    assert_refused(done, elapsed, remote, "may not use the Docker socket", "docker group")

    stacks.configure(stack, {"dockerHost": remote.docker_host})
    remote.stop_daemon()
    try:
        done, elapsed = failure(settings, remote, stack)
        assert_refused(done, elapsed, remote, "no Docker Engine answers")
    finally:
        remote.start_daemon()
    assert remote_objects(remote, stack.name) == []
    key_material = Path(remote.identity_file).read_text().splitlines()[1]
    assert key_material not in done.stdout + done.stderr


def test_a_service_on_a_remote_host_is_never_reached_without_its_tunnel(remote):
    # The guard behind every client: a target for a remote host refuses to connect on its own.
    from infra.core.connect import ConnectError, connect_postgres
    from infra.core.targets import PostgresTarget

    decoy = Decoy(teststacks.free_port())
    try:
        target = PostgresTarget("127.0.0.1", decoy.port, "sinsolver", "sinadmin", secrets.token_hex(16),
                                "pg", "172.29.0.100", 16, tunnel_required=True)
        with pytest.raises(ConnectError, match="SSH tunnel"):
            connect_postgres(target, deadline_s=2)
        assert decoy.contacts == 0
    finally:
        decoy.close()


@pytest.fixture
def remote_s3(remote):
    """An S3 server inside the remote host's network namespace, on its veth address: the agent
    (host network there) and this machine (over the veth) reach it at the same endpoint."""
    server = S3Server.start(address=remote.address, wrap=["nsenter", f"--net={remote.netns_path}", "--"])
    try:
        yield server
    finally:
        server.stop()


def agent_status(remote: RemoteDockerHost, agent: str) -> dict:
    """The agent's status.json, read on the remote engine (empty before it wrote one)."""
    try:
        text = remote.docker("exec", agent, "cat", f"{LOCAL_MOUNT}/{layout.STATUS_FILE}")
    except RemoteHostError:  # the agent has not written it yet
        return {}
    return json.loads(text) if text.strip() else {}


def test_a_remote_stack_is_backed_up_by_its_agent_there_and_restored_to_a_time_over_the_tunnel(
        remote, settings, new_stack, remote_s3):
    bucket = remote_s3.create_bucket()
    config = remote_config(remote, backupSchedule="0 0 1 1 *", backupS3Bucket=bucket,
                           backupS3Endpoint=remote_s3.endpoint)
    stack = new_stack(config)
    name = stack.name
    stacks.set_secret(stack, "backupS3AccessKeyId", remote_s3.access_key)
    stacks.set_secret(stack, "backupS3SecretAccessKey", remote_s3.secret_key)
    pg_port, redis_port = int(config["postgresHostPort"]), int(config["redisHostPort"])
    watched = Watched(settings, pg_port, redis_port)
    run, outputs = watched.run, watched.outputs

    def logged_messages() -> set[str]:
        with psycopg.connect(host="127.0.0.1", port=pg_local, dbname="sinsolver", user="sinadmin",
                             password=pw["postgresPassword"], autocommit=True) as conn:
            return {row[0] for row in conn.execute("SELECT message FROM logs WHERE message LIKE 'remote pitr %'")}

    try:
        up = run("up", "--stack", name)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"copied {config['backupImage']} to {remote.docker_host}" in up.stderr, up.stderr
        agent = stack.outputs()["backupContainerName"].value
        assert remote.docker("inspect", "--format", "{{.State.Running}}", agent).strip() == "true"
        assert local_objects(name) == "", "nothing of the stack, the agent included, on this machine's engine"

        wait_for("the agent's first backup in the bucket", lambda: complete_backups(remote_s3, bucket, name), 120)
        pw = {k.split(":")[1]: v.value for k, v in stack.get_all_config().items()
              if k.endswith(("Password", "Passphrase"))}
        pg_local = remote.forward(pg_port)
        with psycopg.connect(host="127.0.0.1", port=pg_local, dbname="sinsolver", user="sinadmin",
                             password=pw["postgresPassword"], autocommit=True) as conn:
            conn.execute("INSERT INTO logs (level, message) VALUES ('info', 'remote pitr first')")
            time.sleep(1.5)
            between = datetime.now(timezone.utc)
            time.sleep(1.5)
            conn.execute("INSERT INTO logs (level, message) VALUES ('info', 'remote pitr second')")
            segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        wait_for(f"WAL segment {segment} shipped by the agent", lambda: (
            (wal := agent_status(remote, agent).get("wal") or {}).get("pending") == 0
            and wal.get("last_shipped", "") >= segment), 90)

        restore = run("restore", "--stack", name, "--from", f"s3://{bucket}/{name}",
                      "--to-time", between.strftime("%Y-%m-%d %H:%M:%S.%f"))
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert logged_messages() == {"remote pitr first"}

        shown = run("status", "--stack", name)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "backups     schedule '0 0 1 1 *' UTC; last " in shown.stdout and " ok at " in shown.stdout, shown.stdout

        down = run("down", "--stack", name)
        assert down.returncode == 0, down.stderr
        assert remote_objects(remote, name) == [], "destroy leaves nothing on the remote host"
        assert watched.contacts() == [0, 0], "this machine's loopback was never used for the services"
        secrets_in_play = [pw["postgresPassword"], pw["redisPassword"], pw["backupPassphrase"],
                           remote_s3.access_key, remote_s3.secret_key]
        for text in outputs:
            assert not [s for s in secrets_in_play if s in text], "a password, passphrase or S3 key was printed"
    finally:
        watched.close()


def test_conflicts_on_the_remote_host_are_refused_before_anything_is_created_there(remote, settings, new_stack,
                                                                                     redis_image):
    config = remote_config(remote)
    stack = new_stack(config)
    intruders = [f"{stack.name}-intruder", f"{stack.name}-room-04-memory-redis", f"{stack.name}-postgres_data"]
    remote.load_image(redis_image)
    remote.docker("network", "create", "--subnet", config["networkSubnet"], intruders[0])
    remote.docker("create", "--name", intruders[1], redis_image, "true")
    remote.docker("volume", "create", intruders[2])
    # A plain process (no container) listening on the remote host's loopback at the stack's PostgreSQL port.
    port = config["postgresHostPort"]
    listener = subprocess.Popen(["nsenter", f"--net={remote.netns_path}", "--", "python3", "-c",
                                 f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); "
                                 f"print('listening', flush=True); time.sleep(600)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        for command in ("up", "preview"):
            done = cli(settings, command, "--stack", stack.name)
            assert done.returncode == 2, done.stdout + done.stderr
            assert f"ssh://root@{remote.address} already has what this stack would take; nothing was created " \
                   f"(4 conflicts)" in done.stderr, done.stderr
            for line in (f"networkSubnet {config['networkSubnet']}: overlaps network '{intruders[0]}'",
                         f"redisContainerName {intruders[1]}: container ",
                         f"postgresVolumeName {intruders[2]}: a volume of that name exists",
                         f"postgresHostPort 127.0.0.1:{port}: a process on ssh://root@{remote.address} that is not a "
                         f"container listens there"):
                assert line in done.stderr, (line, done.stderr)
            assert "Traceback" not in done.stdout + done.stderr
        plain = subprocess.run(["pulumi", "up", "--yes", "--non-interactive", "--stack", stack.name], cwd=ROOT,
                               capture_output=True, text=True, env={**os.environ, **settings.env()}, timeout=300)
        assert plain.returncode != 0 and "Traceback" not in plain.stdout + plain.stderr
        assert (plain.stdout + plain.stderr).count(f"- postgresHostPort 127.0.0.1:{port}: ") == 1
        assert remote_objects(remote, stack.name) == []
        left = remote.docker("ps", "-a", "--format", "{{.Names}}").split() + \
            remote.docker("volume", "ls", "--format", "{{.Name}}").split() + \
            remote.docker("network", "ls", "--format", "{{.Name}}").split()
        assert sorted(n for n in left if n.startswith(stack.name)) == sorted(intruders)
    finally:
        listener.kill()
        listener.wait()
        remote.docker("rm", "-f", "-v", intruders[1])
        remote.docker("volume", "rm", intruders[2])
        remote.docker("network", "rm", intruders[0])


def test_a_team_shares_a_stack_on_the_remote_host_through_its_state_bucket(remote, tmp_path, monkeypatch):
    """Issue 28 on the remote host: one operator brings it up with the state in the team's bucket, the
    other sees no change; an operator with an empty state (the bucket forgotten) is refused before anything
    is created on the remote engine; the state lost from the bucket, the other takes the environment back
    from the copy on the remote host, over SSH, with no container restarted."""
    with teams.team(tmp_path, monkeypatch) as team:
        ana, ben = team.operator("ana"), team.operator("ben")
        name = team.new_stack_name()
        teststacks.create(ana.settings, name, remote_config(remote))
        up = ana.cli("up", "--stack", name)
        assert up.returncode == 0, up.stdout + up.stderr
        seen = ben.cli("preview", "--stack", name)
        assert seen.returncode == 0 and set(teams.preview_summary(seen)) == {"same"}, seen.stdout + seen.stderr
        before = sorted(remote_objects(remote, name))
        forgot = stacks.Settings(f"file://{tmp_path / 'empty-state'}", ana.settings.passphrase_file)
        refused = cli(forgot, "up", "--stack", name)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"the environment of stack '{name}' on this host" in refused.stderr
        assert "was made by another state of the stack" in refused.stderr
        assert sorted(remote_objects(remote, name)) == before and local_objects(name) == ""

        started = remote.docker("inspect", "--format", "{{.Id}} {{.State.StartedAt}}",
                                f"{name}-room-03-archiv-postgres", f"{name}-room-04-memory-redis")
        for key in team.keys():  # the team's state is lost
            if f"/{name}" in key:
                team.s3.client().delete_object(Bucket=team.bucket, Key=key)
        taken = ben.cli("take-back", "--stack", name)
        assert taken.returncode == 0, taken.stdout + taken.stderr
        assert "back into this state from its copy there" in taken.stderr and remote.docker_host in taken.stderr
        assert "preview after the take-back: no changes" in taken.stderr, taken.stderr
        assert remote.docker("inspect", "--format", "{{.Id}} {{.State.StartedAt}}", f"{name}-room-03-archiv-postgres",
                             f"{name}-room-04-memory-redis") == started
        assert local_objects(name) == ""
        down = ana.cli("down", "--stack", name)
        assert down.returncode == 0, down.stdout + down.stderr
        assert remote_objects(remote, name) == []
