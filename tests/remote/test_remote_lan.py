"""Several remote hosts on one private LAN, and the two faults issue #27's tests inject: a host's link cut
(it keeps running) and its engine lost with every container (then started again, as after a reboot).

Servers run with Docker host networking on their host's LAN address, as the replicated topology's will."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from ipaddress import ip_network
from pathlib import Path

import pytest

from tests.polling import until
from tests.remote.leftovers import lan_leftovers, leftovers
from tests.remote_host import NETNS_DIR, PRIVSEP_DIR, PREFIX, RemoteDockerHost, RemoteHostGroup, _alive

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def group(redis_image):
    """Three hosts on one LAN, the Redis image in each engine; torn down even when a test fails."""
    hosts = RemoteHostGroup(3)
    try:
        started = time.monotonic()
        hosts.start()
        print(f"a group of 3 hosts on a LAN started in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        hosts.load_image(redis_image)
        print(f"{redis_image} loaded into the 3 engines in {time.monotonic() - started:.1f} s")
        yield hosts
    finally:
        started = time.monotonic()
        hosts.close()
        print(f"the group of 3 closed in {time.monotonic() - started:.1f} s")


def serve(host: RemoteDockerHost, image: str, *docker_args: str) -> tuple[str, int]:
    """A Redis server in a host-networked container listening on ``host``'s LAN address; (name, port)."""
    name, port = f"{host.name}-redis-{secrets.token_hex(2)}", 20000 + secrets.randbelow(10000)
    host.docker("run", "-d", "--name", name, "--network", "host", *docker_args, image,
                "redis-server", "--bind", host.address, "--port", str(port), "--protected-mode", "no", "--save", "")
    until(f"{name} answering on {host.address}:{port}", lambda: ping_from_here(host.address, port), 30, every_s=0.2)
    return name, port


def ping_from(client: RemoteDockerHost, image: str, address: str, port: int) -> subprocess.CompletedProcess:
    """`redis-cli PING` to address:port from a host-networked container on ``client`` (at most 8 s)."""
    return subprocess.run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "timeout", image,
                           "8", "redis-cli", "-h", address, "-p", str(port), "ping"],
                          capture_output=True, text=True, timeout=60, env=client.env)


def ping_from_here(address: str, port: int) -> bool:
    """PING from this machine (one connection attempt of at most 3 s, no client library retries)."""
    try:
        with socket.create_connection((address, port), timeout=3) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64) == b"+PONG\r\n"
    except OSError:
        return False


def ping_inside(host: RemoteDockerHost, port: int) -> str:
    """PING sent from inside ``host``'s namespace (no SSH, no LAN): what the server answers."""
    return host.run_in_namespace(["python3", "-c", "import socket, sys; s = socket.create_connection((sys.argv[1], "
                                  "int(sys.argv[2])), timeout=3); s.sendall(b'PING\\r\\n'); print(s.recv(64))",
                                  host.address, str(port)]).stdout.strip()


def new_ssh(host: RemoteDockerHost, tmp_path, command: str) -> tuple[subprocess.CompletedProcess, float]:
    """``command`` over a new, unshared SSH connection to ``host`` (ConnectTimeout 5 s); (result, seconds)."""
    env = host.other_client_env(tmp_path / f"client-{host.name}", host.identity_file, host.known_hosts_file)
    started = time.monotonic()
    done = subprocess.run(["ssh", host.address, command], capture_output=True, text=True, timeout=60, env=env)
    return done, time.monotonic() - started


def state(host: RemoteDockerHost, container: str) -> dict:
    return json.loads(host.docker("inspect", "--format", "{{json .State}}", container))


def test_each_host_has_one_lan_address_that_this_machine_reaches_directly(group):
    lan = group.lan
    assert len({h.address for h in group} | {lan.root_address}) == 4
    for host in group:
        assert ip_network(f"{host.address}/32").subnet_of(lan.network)
        assert host.docker_host == f"ssh://root@{host.address}" and host.host_address == lan.root_address
        routes = json.loads(host.run_in_namespace(["ip", "-4", "-j", "route"]).stdout)
        # The LAN and the engine's own bridge; no /30 to this machine, no default route.
        assert sorted(r["dst"] for r in routes) == sorted([str(lan.network), str(ip_network(host.bridge, strict=False))])
        assert host.docker("info", "--format", "{{.Name}}").strip() == host.name
    here = json.loads(subprocess.run(["ip", "-4", "-j", "route", "show", str(lan.network)], capture_output=True,
                                     text=True, check=True).stdout)
    assert [(r["dst"], r["dev"]) for r in here] == [(str(lan.network), lan.root_veth)]  # on-link, not routed


def test_one_key_and_one_known_hosts_file_reach_every_host_of_the_group(group, tmp_path):
    """As one stack's dockerSshKeyFile and dockerSshKnownHostsFile serve all its hosts."""
    pinned = [line.split()[0] for line in group.known_hosts_file.read_text().splitlines()]
    assert sorted(pinned) == sorted(h.address for h in group)
    for host in group:
        assert (host.identity_file, host.known_hosts_file) == (group.identity_file, group.known_hosts_file)
        env = host.other_client_env(tmp_path / host.name, group.identity_file, group.known_hosts_file)
        done = subprocess.run(["docker", "info", "--format", "{{.Name}}"], capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.stdout.strip() == host.name, done.stderr


def test_the_lan_namespace_filters_nothing_though_br_netfilter_is_on(group):
    """br_netfilter (Docker loads it) hands bridged IPv4 frames to the bridge namespace's own iptables;
    those are empty with ACCEPT policies, so nothing is dropped (the next tests prove it)."""
    lan_ns = ["ip", "netns", "exec", group.lan.name]
    rules = subprocess.run([*lan_ns, "iptables", "-S"], capture_output=True, text=True, check=True).stdout
    assert rules.split("\n")[:3] == ["-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT"]
    assert rules.strip().count("\n") == 2, rules
    sysctl = subprocess.run([*lan_ns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables"], capture_output=True,
                            text=True)
    print(f"bridge-nf-call-iptables in {group.lan.name}: {sysctl.stdout.strip() or sysctl.stderr.strip()}")


def test_a_host_networked_server_is_reached_from_another_host_and_from_here(group, redis_image):
    a, b = group[0], group[1]
    _, port = serve(a, redis_image)

    done = ping_from(b, redis_image, a.address, port)
    assert done.stdout.strip() == "PONG", done.stderr
    assert ping_from_here(a.address, port)
    # Listening on A's LAN address only, in A's own network.
    assert f"{a.address}:{port}" in a.run_in_namespace(["ss", "-Htln", f"sport = :{port}"]).stdout


def test_a_cut_link_isolates_a_running_host_until_it_is_restored(group, redis_image, tmp_path):
    a, b = group[0], group[1]
    name, port = serve(a, redis_image)
    started_at = state(a, name)["StartedAt"]

    a.cut_link()
    try:
        done = ping_from(b, redis_image, a.address, port)
        assert done.returncode != 0 and "PONG" not in done.stdout, done.stdout
        assert not ping_from_here(a.address, port)
        ssh, elapsed = new_ssh(a, tmp_path, "true")
        assert ssh.returncode == 255 and elapsed < 10, (ssh.stderr, elapsed)
        print(f"ssh to a cut host failed in {elapsed:.1f} s: {ssh.stderr.strip()}")
        # A itself keeps running, its interface up with its address but without carrier (a pulled cable),
        # and its server still answers inside its namespace.
        link = json.loads(a.run_in_namespace(["ip", "-j", "addr", "show", a.namespace_veth]).stdout)[0]
        assert {"UP", "NO-CARRIER"} <= set(link["flags"]) and link["addr_info"][0]["local"] == a.address
        assert "PONG" in ping_inside(a, port)
        # And A reaches nobody either.
        out = a.run_in_namespace(["python3", "-c", "import socket, sys; socket.create_connection((sys.argv[1], 22), "
                                  "timeout=3)", b.address])
        assert out.returncode != 0
    finally:
        a.heal()  # the link back; the running engine left alone (its container was never restarted, below)

    until(f"{a.address}:{port} reachable again", lambda: ping_from_here(a.address, port), 30, every_s=0.2)
    assert ping_from(b, redis_image, a.address, port).stdout.strip() == "PONG"
    assert new_ssh(a, tmp_path, "true")[0].returncode == 0
    after = state(a, name)
    assert after["Running"] and after["StartedAt"] == started_at  # never restarted


def test_a_lost_engine_takes_every_container_and_comes_back_like_after_a_reboot(group, redis_image, tmp_path):
    b, c = group[1], group[2]
    kept, port = serve(c, redis_image, "--restart", "unless-stopped")
    once, once_port = serve(c, redis_image)  # no restart policy
    c_processes = c._engine_processes()
    peer = socket.create_connection((c.address, port), timeout=3)

    started = time.monotonic()
    c.stop_engine()
    print(f"stop_engine: {time.monotonic() - started:.2f} s")
    # C's kernel lives on and closes the killed server's connections: a peer learns at once (here, a reset).
    with peer:
        try:
            closed = peer.recv(64) == b""
        except ConnectionResetError:
            closed = True
        assert closed
    assert c._engine_processes() == set()
    assert all(not _alive(pid) for pid in c_processes)
    assert not ping_from_here(c.address, port) and not ping_from_here(c.address, once_port)
    ssh, _ = new_ssh(c, tmp_path, "echo reached")
    assert ssh.returncode == 0 and ssh.stdout.strip() == "reached", ssh.stderr
    ps = subprocess.run(["docker", "ps"], capture_output=True, text=True, timeout=60, env=c.env)
    assert ps.returncode != 0 and "Cannot connect to the Docker daemon" in ps.stderr, ps.stderr

    started = time.monotonic()
    c.heal()  # the engine started again (the link was never cut)
    until(f"{kept} back on {c.address}:{port}", lambda: ping_from_here(c.address, port), 30, every_s=0.2)
    print(f"start_engine until the restarted server answers: {time.monotonic() - started:.2f} s")
    assert state(c, kept)["Running"]
    assert not state(c, once)["Running"]
    assert ping_from(b, redis_image, c.address, port).stdout.strip() == "PONG"


def test_a_group_left_with_a_cut_link_and_a_lost_engine_closes_leaving_nothing(redis_image):
    shared_dirs_before = {p: p.exists() for p in (NETNS_DIR, PRIVSEP_DIR)}
    hosts = RemoteHostGroup(2)
    try:
        started = time.monotonic()
        hosts.start()
        print(f"a group of 2 hosts started in {time.monotonic() - started:.1f} s")
        hosts[0].load_image(redis_image)
        serve(hosts[0], redis_image, "--restart", "always")
        hosts[0].stop_engine()
        hosts[1].cut_link()
        assert all(leftovers(h) for h in hosts) and lan_leftovers(hosts.lan)  # the checks see a live group
    finally:
        started = time.monotonic()
        hosts.close()
        print(f"closed in {time.monotonic() - started:.1f} s")

    assert [leftovers(h) for h in hosts] == [[], []]
    assert lan_leftovers(hosts.lan) == []
    if not any(Path("/run").glob(f"{PREFIX}-*")):  # no other run shares them right now
        assert {p: p.exists() for p in shared_dirs_before} == shared_dirs_before
        assert list(Path("/run").glob(f".{PREFIX}-made-*")) == []
