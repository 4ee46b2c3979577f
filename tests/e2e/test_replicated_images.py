"""The images of the replicated topology (#27) with their real components, on the local Docker Engine.

On a throwaway bridge network (a free /24 reserved like a test stack's): one etcd, two Patroni
members whose YAML is uploaded as /run/secrets/patroni.yml (root, 0400) into each created container
before its start, and one HAProxy whose config is uploaded as /run/secrets/haproxy.cfg. The first
member bootstraps PostgreSQL 16.14 and becomes the leader in etcd, the second one joins as a
streaming replica (pg_basebackup 16); HAProxy's REST check (GET /primary) routes port 5000 to the
leader and keeps the replica out, and follows a switchover to the other member (the old leader
rejoins as a replica). The passwords, generated here and never printed, are in no `docker
inspect`, no log, no process's command line or environment.

Every object carries the label of a test-stack name, so the finally's sweep (or, after a crash,
the test-stack sweeper) removes it; nothing else on the engine is touched.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import tarfile
import time
from dataclasses import dataclass, field

import pytest
import yaml

from infra.core import dockercli
from infra.driver import teststacks
from tests.e2e.support import docker, sweep
from tests.polling import until

IMAGE_ENV = ("SIN_LOCAL_PATRONI_IMAGE", "SIN_LOCAL_ETCD_IMAGE", "SIN_LOCAL_HAPROXY_IMAGE")
PG_VERSION = "16.14"


class Secret(str):
    """A str that every repr, and so every pytest traceback, shows as <secret>."""

    def __repr__(self) -> str:
        return "<secret>"


@dataclass
class Topology:
    name: str  # a test-stack name: the label of every object, the prefix of their names
    network: str
    etcd_ip: str
    member_ips: dict[str, str]  # Patroni member name (and container role) -> its address
    haproxy_ip: str
    passwords: dict[str, Secret] = field(repr=False)

    def container(self, role: str) -> str:
        return f"{self.name}-{role}"


def images() -> dict[str, str]:
    found = {env: os.environ.get(env, "") for env in IMAGE_ENV}
    missing = [env for env, image in found.items() if not image]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run the tests through scripts/test (toolchain/setup.sh "
                    f"exports them)", pytrace=False)
    return found


def upload(container: str, path: str, content: Secret) -> None:
    """``content`` as ``path`` (owned by root, mode 0400) in the created, not yet started ``container``,
    as the docker provider's `uploads` do it (a tar of the file's whole path extracted at /, owners
    kept) through `docker cp`: nothing on a command line or on this machine's disk."""
    data = content.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o400, 0, 0, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    proc = subprocess.run(["docker", "cp", "-a", "-", f"{container}:/"], input=buf.getvalue(),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, f"docker cp into {container}: {proc.stderr.decode(errors='replace')}"


def in_container(container: str, *argv: str, stdin: Secret | None = None, check: bool = True) -> str:
    args = ("exec", "-i", container, *argv) if stdin is not None else ("exec", container, *argv)
    return dockercli.docker(*args, input_text=stdin, check=check, timeout_s=60)


# GET a URL from inside a container: prints the status (a Patroni REST answer of 503 is not an error).
HTTP_STATUS = """
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError as e:
    print("no answer:", type(e).__name__)
"""


def http_status(container: str, url: str) -> str:
    return in_container(container, "python3", "-c", HTTP_STATUS, url).strip()


def psql(t: Topology, host: str, port: int, sql: str) -> str:
    """psql (over TCP, with a password) inside pg1's container; the password is read from the pgpass
    file the test put there through stdin."""
    return in_container(t.container("pg1"), "env", "PGPASSFILE=/run/test.pgpass", "PGCONNECT_TIMEOUT=5",
                        "psql", "-X", "-w", "-At", "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres",
                        "-c", sql).strip()


def patroni_config(t: Topology, member: str) -> Secret:
    pw = {key: str(value) for key, value in t.passwords.items()}  # plain str for the YAML dumper
    ip = t.member_ips[member]
    return Secret(yaml.safe_dump({
        "scope": t.name,
        "name": member,
        "restapi": {"listen": "0.0.0.0:8008", "connect_address": f"{ip}:8008",
                    "authentication": {"username": "patroni", "password": pw["restapi"]}},
        "etcd3": {"hosts": [f"{t.etcd_ip}:2379"]},
        "bootstrap": {
            "dcs": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
                    "postgresql": {"use_pg_rewind": True,
                                   "parameters": {"wal_level": "replica", "hot_standby": "on", "wal_log_hints": "on",
                                                  "wal_keep_size": "128MB", "max_wal_senders": 10,
                                                  "max_replication_slots": 10}}},
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": "0.0.0.0:5432",
            "connect_address": f"{ip}:5432",
            # A directory inside the volume, not the mount point: Patroni removes or renames its
            # data_dir when a replica must be rebuilt, which a mount point refuses.
            "data_dir": "/var/lib/postgresql/data/pgdata",
            "bin_dir": "/usr/lib/postgresql/16/bin",
            "pgpass": "/run/patroni/pgpass",
            "parameters": {"unix_socket_directories": "/var/run/postgresql"},
            "pg_hba": ["local all all trust",
                       "host replication replicator all scram-sha-256",
                       "host all all all scram-sha-256"],
            "authentication": {"superuser": {"username": "postgres", "password": pw["superuser"]},
                               "replication": {"username": "replicator", "password": pw["replication"]}},
        },
    }))


def haproxy_config(t: Topology) -> Secret:
    # The replica answers 503 to GET /primary: the check keeps it out.
    return Secret(f"""global
  log stderr format raw local0
defaults
  mode tcp
  log global
  timeout connect 3s
  timeout client 30m
  timeout server 30m
listen primary
  bind :5000
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
  server pg1 {t.member_ips["pg1"]}:5432 check port 8008
  server pg2 {t.member_ips["pg2"]}:5432 check port 8008
listen stats
  mode http
  bind :8404
  stats enable
  stats uri /
  stats auth admin:{t.passwords["stats"]}
""")


# The primary backend's servers and their status, from the stats page (basic auth, the password on stdin).
STATS = """
import base64, csv, io, sys, urllib.request
url, password = sys.stdin.read().split("\\n")[:2]
req = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(("admin:" + password).encode()).decode()})
rows = csv.DictReader(io.StringIO(urllib.request.urlopen(req, timeout=3).read().decode().lstrip("# ")))
print(" ".join(f"{r['svname']}={r['status']}" for r in rows if r["pxname"] == "primary" and r["svname"] not in ("FRONTEND", "BACKEND")))
"""


@pytest.fixture
def topology():
    name = teststacks.new_name()
    subnet, _ = teststacks.reserve(ports=0, subnet=True, stack=name)
    hosts = list(subnet.hosts())
    t = Topology(name, f"{name}-net", str(hosts[9]), {"pg1": str(hosts[10]), "pg2": str(hosts[11])}, str(hosts[12]),
                 {k: Secret(secrets.token_urlsafe(24)) for k in ("superuser", "replication", "restapi", "stats")})
    label = f"{dockercli.STACK_LABEL}={name}"
    try:
        docker("network", "create", "--driver", "bridge", "--subnet", str(subnet),
               "--gateway", str(hosts[0]), "--label", label, t.network)
        yield t, label
    finally:
        try:
            sweep(name)  # containers with their anonymous volumes, then the network
            left = dockercli.labelled_objects(name)
            assert not any(left.values()), f"left behind: {left}"
        finally:
            teststacks.release(name)


def test_patroni_etcd_haproxy(topology):
    t, label = topology
    img = images()
    started = time.monotonic()
    common = ("--label", label, "--network", t.network)

    docker("run", "-d", "--name", t.container("etcd"), *common, "--ip", t.etcd_ip, img["SIN_LOCAL_ETCD_IMAGE"],
           "--name", "etcd1", "--data-dir", "/var/lib/etcd", "--listen-client-urls", "http://0.0.0.0:2379",
           "--advertise-client-urls", f"http://{t.etcd_ip}:2379", "--listen-peer-urls", "http://0.0.0.0:2380",
           "--initial-advertise-peer-urls", f"http://{t.etcd_ip}:2380",
           "--initial-cluster", f"etcd1=http://{t.etcd_ip}:2380", "--initial-cluster-state", "new")

    def start_member(member: str) -> str:
        container = t.container(member)
        docker("create", "--name", container, *common, "--ip", t.member_ips[member], img["SIN_LOCAL_PATRONI_IMAGE"])
        upload(container, "/run/secrets/patroni.yml", patroni_config(t, member))
        docker("start", container)
        return container

    # The first member bootstraps PostgreSQL and takes the leader key in etcd.
    pg1 = start_member("pg1")
    until("pg1's GET /primary to answer 200", lambda: http_status(pg1, "http://127.0.0.1:8008/primary") == "200", 60)
    leader = in_container(t.container("etcd"), "etcdctl", "get", "--print-value-only", f"/service/{t.name}/leader")
    assert leader.strip() == "pg1"
    in_container(t.container("etcd"), "test", "-d", "/var/lib/etcd/member")  # etcd's data in its volume
    bootstrapped = time.monotonic() - started

    in_container(pg1, "sh", "-c", "umask 077 && cat >/run/test.pgpass",
                 stdin=Secret(f"*:*:*:postgres:{t.passwords['superuser']}\n"))
    version = psql(t, "127.0.0.1", 5432, "SELECT version()")
    assert version.startswith(f"PostgreSQL {PG_VERSION} "), version
    assert psql(t, "127.0.0.1", 5432, "SHOW data_checksums") == "on"
    # Every PostgreSQL program Patroni runs (from bin_dir) is the server's version.
    for tool in ("postgres", "initdb", "pg_ctl", "pg_rewind", "pg_basebackup", "pg_controldata", "pg_isready",
                 "pg_waldump"):
        assert in_container(pg1, tool, "--version").strip() == f"{tool} (PostgreSQL) {PG_VERSION}"

    # The second member clones the leader with pg_basebackup and streams from it.
    pg2 = start_member("pg2")
    until("pg2's GET /replica to answer 200", lambda: http_status(pg2, "http://127.0.0.1:8008/replica") == "200", 60)
    assert http_status(pg2, "http://127.0.0.1:8008/primary") == "503"
    psql(t, "127.0.0.1", 5432, "CREATE TABLE replicated AS SELECT 42 AS answer")
    until("pg1 to stream to pg2", lambda: psql(t, "127.0.0.1", 5432, "SELECT host(client_addr) || ' ' || state "
                                                  "FROM pg_stat_replication") == f"{t.member_ips['pg2']} streaming", 30)
    until("the row on pg2", lambda: psql(t, t.member_ips["pg2"], 5432, "SELECT answer FROM replicated "
                                            "WHERE pg_is_in_recovery()") == "42", 30)

    haproxy = t.container("haproxy")
    docker("create", "--name", haproxy, *common, "--ip", t.haproxy_ip, img["SIN_LOCAL_HAPROXY_IMAGE"])
    upload(haproxy, "/run/secrets/haproxy.cfg", haproxy_config(t))
    docker("start", haproxy)

    def routes_to(leader: str) -> None:
        """HAProxy marks ``leader`` UP and the other member DOWN, and port 5000 reaches the leader."""
        want = " ".join(f"{m}={'UP' if m == leader else 'DOWN'}" for m in sorted(t.member_ips))

        def states() -> bool:
            out = in_container(pg1, "python3", "-c", STATS, check=False,
                               stdin=Secret(f"http://{t.haproxy_ip}:8404/;csv\n{t.passwords['stats']}\n"))
            return out.strip() == want

        until(f"HAProxy to show {want}", states, 20)
        for _ in range(3):  # round robin over the servers the checks left up: always the leader
            assert psql(t, t.haproxy_ip, 5000, "SELECT inet_server_addr()::text || ' ' || pg_is_in_recovery()") \
                == f"{t.member_ips[leader]}/32 false"

    routes_to("pg1")

    # A switchover (patronictl reads the REST password from the config): HAProxy follows the new
    # leader, and the old one rejoins as a replica.
    in_container(pg1, "patronictl", "-c", "/run/patroni/patroni.yml", "switchover", "--leader", "pg1",
                 "--candidate", "pg2", "--force")
    until("pg2 to lead", lambda: http_status(pg2, "http://127.0.0.1:8008/primary") == "200", 30)
    routes_to("pg2")
    until("pg1 to rejoin as a replica",
             lambda: http_status(pg1, "http://127.0.0.1:8008/replica") == "200", 30)

    # Non-root servers; the uploaded configs root-only, the copies readable by the server's user only.
    roles = ("etcd", "pg1", "pg2", "haproxy")
    for role in roles:
        status = in_container(t.container(role), "cat", "/proc/1/status")
        assert "Uid:\t999\t999\t999\t999" in status, (role, status)
    for pg in (pg1, pg2):
        assert in_container(pg, "stat", "-c", "%U %a", "/run/secrets/patroni.yml", "/run/patroni/patroni.yml",
                            "/var/lib/postgresql/data").split("\n")[:3] == ["root 400", "postgres 600", "postgres 700"]
    assert in_container(haproxy, "stat", "-c", "%U %a", "/run/secrets/haproxy.cfg",
                        "/run/haproxy/haproxy.cfg").split("\n")[:2] == ["root 400", "haproxy 600"]

    # No password in any container's settings, logs, or any process's command line or environment
    # (read as root inside each container, so every process's is readable).
    leaks = []
    for role in roles:
        container = t.container(role)
        proc = subprocess.run(["docker", "logs", container], capture_output=True, timeout=30)
        logs = (proc.stdout + proc.stderr).decode(errors="replace")
        procs = in_container(container, "sh", "-c",
                             "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ 2>/dev/null; echo; done")
        for where, text in (("inspect", docker("inspect", container)), ("logs", logs), ("processes", procs)):
            leaks += [f"{role} {where}: the {key} password" for key, pw in t.passwords.items() if pw in text]
    assert not leaks, leaks
    # Patroni found every program it ran (without pg_waldump it logs a FileNotFoundError after the
    # switchover and rewinds the old leader blindly).
    for pg in (pg1, pg2):
        proc = subprocess.run(["docker", "logs", pg], capture_output=True, timeout=30)
        assert b"FileNotFoundError" not in proc.stdout + proc.stderr, f"{pg}: Patroni missed a program"
    print(f"replicated images: leader after {bootstrapped:.1f} s, all checked in {time.monotonic() - started:.1f} s")
