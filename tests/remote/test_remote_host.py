"""The remote Docker host harness (issue #11): a Docker Engine reachable from here only over SSH."""

from __future__ import annotations

import json
from ipaddress import ip_network
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_lib

from infra.driver.teststacks import free_port
from tests.remote.leftovers import leftovers
from tests.remote_host import NETNS_DIR, PRIVSEP_DIR, PREFIX, RemoteDockerHost, RemoteHostError

pytestmark = pytest.mark.e2e


def local_docker(*args: str) -> subprocess.CompletedProcess:
    """`docker ARGS` against this machine's own engine."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


def remote_docker(host: RemoteDockerHost, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, env=env or host.env)


def local_engine_objects() -> dict[str, set[str]]:
    """Every container, network and volume of this machine's engine, with its name and labels."""
    objects = {}
    for kind, listing in (("container", ["ps", "-a", "-q", "--no-trunc"]), ("network", ["network", "ls", "-q"]),
                          ("volume", ["volume", "ls", "-q"])):
        ids = local_docker(*listing).stdout.split()
        described = set()
        for obj in json.loads(local_docker(kind, "inspect", *ids).stdout or "[]") if ids else []:
            labels = obj.get("Labels") if kind != "container" else obj["Config"].get("Labels")
            described.add(f"{obj.get('Id', obj.get('Name'))} {obj['Name']} {json.dumps(labels or {})}")
        objects[kind] = described
    return objects


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_over_ssh_the_remote_engine_answers_with_its_own_name_data_root_and_id(remote_host):
    info = json.loads(remote_docker(remote_host, "info", "--format", "{{json .}}").stdout)
    local_info = json.loads(local_docker("info", "--format", "{{json .}}").stdout)

    assert info["Name"] == remote_host.name != local_info["Name"]
    assert info["DockerRootDir"] == str(remote_host.data_root) != local_info["DockerRootDir"]
    assert info["ID"] != local_info["ID"]
    assert remote_host.docker_host == f"ssh://root@{remote_host.address}"


def test_a_session_that_ignores_docker_host_still_reaches_the_remote_engine(remote_host):
    proc = subprocess.run(["ssh", remote_host.address, "env -u DOCKER_HOST docker info --format '{{.Name}}'"],
                          capture_output=True, text=True, timeout=30, env=remote_host.env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == remote_host.name


def test_the_namespace_routes_only_to_its_veth_peer_and_its_own_bridge(remote_host):
    routes = json.loads(remote_host.run_in_namespace(["ip", "-4", "-j", "route"]).stdout)
    own = [ip_network(f"{remote_host.address}/30", strict=False), ip_network(remote_host.bridge, strict=False)]

    assert sorted(r["dst"] for r in routes) == sorted(str(n) for n in own)


def test_a_published_port_is_reached_only_through_an_ssh_tunnel(remote_host, redis_image):
    port = free_port()
    started = time.monotonic()
    remote_host.load_image(redis_image)
    load_s = time.monotonic() - started
    # No password in this throwaway: protected mode would refuse the tunnelled (docker-proxy) client.
    remote_host.docker("run", "-d", "--name", f"{remote_host.name}-redis", "-p", f"127.0.0.1:{port}:6379",
                       redis_image, "redis-server", "--protected-mode", "no")

    in_namespace = remote_host.run_in_namespace(["ss", "-Htln", f"sport = :{port}"]).stdout
    assert f"127.0.0.1:{port}" in in_namespace
    assert refuses_connections(port), f"something answers on this machine's 127.0.0.1:{port}"

    local_port = remote_host.forward(port)
    client = redis_lib.Redis(host="127.0.0.1", port=local_port, socket_timeout=5)
    deadline = time.monotonic() + 20
    while True:
        try:
            assert client.ping() is True
            break
        except redis_lib.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    client.close()
    print(f"docker save | docker load of {redis_image} over ssh: {load_s:.1f} s")


def test_the_local_engine_sees_none_of_the_remote_objects(remote_host):
    name = remote_host.name
    image = f"{name}/empty:remote-only"
    remote_host.docker("import", "-", image, input_bytes=b"\0" * 1024)  # an empty tar archive
    remote_host.docker("network", "create", f"{name}-net")
    remote_host.docker("volume", "create", f"{name}-data")
    remote_host.docker("create", "--name", f"{name}-box", "--network", f"{name}-net", "-v", f"{name}-data:/data",
                       image, "true")

    assert remote_host.docker("ps", "-a", "--format", "{{.Names}}").split() == [f"{name}-box"]
    assert local_docker("image", "inspect", image).returncode != 0
    assert local_docker("container", "inspect", f"{name}-box").returncode != 0
    assert local_docker("network", "inspect", f"{name}-net").returncode != 0
    assert local_docker("volume", "inspect", f"{name}-data").returncode != 0


def test_a_client_key_the_host_does_not_know_is_refused_within_seconds(remote_host, tmp_path):
    key = tmp_path / "stranger_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = remote_host.other_client_env(tmp_path / "client", key, remote_host.known_hosts_file)

    started = time.monotonic()
    proc = remote_docker(remote_host, "info", env=env)

    assert proc.returncode != 0
    assert time.monotonic() - started < 10
    assert "Permission denied (publickey)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("known_hosts", ["empty", "another key for the address"])
def test_a_host_key_that_is_not_the_pinned_one_is_refused_within_seconds(remote_host, tmp_path, known_hosts):
    known_hosts_file = tmp_path / "known_hosts"
    known_hosts_file.write_text("")
    if known_hosts != "empty":
        other = tmp_path / "other_host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        kind, key = Path(f"{other}.pub").read_text().split()[:2]
        known_hosts_file.write_text(f"{remote_host.address} {kind} {key}\n")
    env = remote_host.other_client_env(tmp_path / "client", remote_host.identity_file, known_hosts_file)

    started = time.monotonic()
    proc = remote_docker(remote_host, "info", env=env)

    assert proc.returncode != 0
    assert time.monotonic() - started < 10
    assert "Host key verification failed" in proc.stderr, proc.stderr


def test_the_remote_daemon_stops_and_starts_again_keeping_its_data(remote_host):
    remote_host.docker("volume", "create", f"{remote_host.name}-kept")
    remote_host.stop_daemon()

    started = time.monotonic()
    down = remote_docker(remote_host, "info")
    assert down.returncode != 0 and time.monotonic() - started < 10
    assert "Cannot connect to the Docker daemon" in down.stderr, down.stderr

    remote_host.start_daemon()
    assert remote_host.docker("volume", "ls", "-q").split() == [f"{remote_host.name}-kept"]
    # The default socket path (what a tunnel to the engine's socket uses) leads to the new daemon too.
    proc = subprocess.run(["ssh", remote_host.address, "env -u DOCKER_HOST docker volume ls -q"],
                          capture_output=True, text=True, timeout=30, env=remote_host.env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"{remote_host.name}-kept"]


def test_a_cut_link_makes_a_single_host_unreachable_until_it_is_restored(remote_host, tmp_path):
    env = remote_host.other_client_env(tmp_path / "client", remote_host.identity_file, remote_host.known_hosts_file)
    remote_host.cut_link()
    try:
        started = time.monotonic()
        cut = subprocess.run(["ssh", remote_host.address, "true"], capture_output=True, text=True, timeout=60, env=env)
        assert cut.returncode == 255 and time.monotonic() - started < 10, cut.stderr
        # The host's own end stays up with its address, without carrier: a pulled cable.
        link = json.loads(remote_host.run_in_namespace(["ip", "-j", "addr", "show", remote_host.namespace_veth]).stdout)[0]
        assert {"UP", "NO-CARRIER"} <= set(link["flags"]) and link["addr_info"][0]["local"] == remote_host.address
    finally:
        remote_host.restore_link()
    assert remote_host.docker("info", "--format", "{{.Name}}").strip() == remote_host.name


def test_close_leaves_nothing_behind_and_the_local_engine_unchanged(redis_image):
    shared_dirs_before = {p: p.exists() for p in (NETNS_DIR, PRIVSEP_DIR)}
    before = local_engine_objects()
    host = RemoteDockerHost()
    try:
        host.start()
        host.load_image(redis_image)
        port = free_port()
        host.docker("run", "-d", "--name", f"{host.name}-redis", "-p", f"127.0.0.1:{port}:6379", redis_image)
        host.docker("volume", "create", f"{host.name}-data")
        host.forward(port)
        assert leftovers(host) != []  # the check sees a live host
    finally:
        host.close()
    after = local_engine_objects()

    assert leftovers(host) == []
    if not any(Path("/run").glob(f"{PREFIX}-*")):  # no other run shares them right now
        assert {p: p.exists() for p in shared_dirs_before} == shared_dirs_before
        assert list(Path("/run").glob(f".{PREFIX}-made-*")) == []
    for kind in before:
        assert [obj for obj in after[kind] - before[kind] if host.name in obj] == [], kind


class HostWhoseSshdFailsToStart(RemoteDockerHost):
    """Fails in the middle of start(): namespace and dockerd are up, sshd has just started."""

    def _start_sshd(self) -> None:
        super()._start_sshd()
        raise RemoteHostError("sshd failed (injected)")


def test_a_start_that_fails_halfway_tears_down_what_it_built():
    host = HostWhoseSshdFailsToStart()
    try:
        with pytest.raises(RemoteHostError, match="injected"):
            host.start()
        assert leftovers(host) == []
    finally:
        host.close()
