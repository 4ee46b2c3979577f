"""The replicated topology as plain data: its members and the files each of their servers reads.

Every host of the list runs, with Docker's host networking, PostgreSQL 16 under Patroni,
HAProxy, Redis and a Sentinel; the first three hosts also run etcd's three members. Each
server listens on its host's own address
(the address in its ``ssh://`` URL), which is also the address it announces to the others:
nothing is published through NAT, so etcd's peer URLs, Patroni's connect addresses, Redis'
replication and Sentinel's gossip all see the addresses clients use.

Nothing here knows Pulumi or Docker: the components render these files and upload them; the
tests render them to start the same servers by hand.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Sequence

import yaml

from infra.backupagent.layout import ARCHIVE_COMMAND, ARCHIVE_MOUNT, ARCHIVE_TIMEOUT_S
from infra.core.targets import redis_cli, redis_maxmemory_mb

# The ports every member listens on, on its host's address (one home for each).
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
POSTGRES_PORT = 5432
PATRONI_REST_PORT = 8008
# A Redis master takes writes only while a replica is online and acknowledged within this many seconds.
REDIS_MIN_REPLICAS_MAX_LAG_S = 10
HAPROXY_PRIMARY_PORT = 5000
REDIS_PORT = 6379
SENTINEL_PORT = 26379

# Paths inside the images (toolchain/images/{etcd,patroni,haproxy}); the uploaded files are
# root's, mode 0400, and each image's entrypoint hands its server a copy it may read.
PATRONI_CONFIG_FILE = "/run/secrets/patroni.yml"
PATRONI_VOLUME_PATH = "/var/lib/postgresql/data"
PATRONI_DATA_DIR = f"{PATRONI_VOLUME_PATH}/pg16"
PATRONI_BIN_DIR = "/usr/lib/postgresql/16/bin"
HAPROXY_CONFIG_FILE = "/run/secrets/haproxy.cfg"
ETCD_VOLUME_PATH = "/var/lib/etcd"
ETCD_DATA_DIR = f"{ETCD_VOLUME_PATH}/data"
REDIS_VOLUME_PATH = "/data"
# Redis and Sentinel rewrite their own files as the master moves (Sentinel's CONFIG REWRITE), so
# the uploaded file only seeds the one in the data volume on the first start; after that the
# server's own copy, with the role it last had, is what a restart reads.
REDIS_SEED_FILE = "/run/secrets/redis.conf"
SENTINEL_SEED_FILE = "/run/secrets/sentinel.conf"
# What each server may use; PostgreSQL and Redis take the stack's postgresMemoryMb and redisMemoryMb.
SMALL_SERVER_MEMORY_MB = {"etcd": 256, "haproxy": 128, "sentinel": 64}

# Roles Patroni creates at bootstrap besides the superuser.
REPLICATION_USER = "replicator"
PATRONI_REST_USER = "patroni"
# The name clients ask the Sentinels for.
SENTINEL_MASTER_NAME = "sin-redis"
# Where Patroni keeps the cluster's keys in etcd (the scope, the stack, goes below it).
ETCD_NAMESPACE = "/sin-datastores/"
# etcd runs on the first this-many hosts of the list: three members keep a majority when one is
# lost (the field's usual size), and the count stays odd as hosts after the third come and go.
ETCD_SIZE = 3
MEMBERSHIP_SUFFIX = "-membership"


@dataclass(frozen=True)
class ClusterTiming:
    """How fast the cluster gives up on a member. Patroni raises a ttl below 20 s to 20 (its floor,
    only a warning in its log) and requires loop_wait + 2 * retry_timeout <= ttl; values it would
    change are refused here, so what is rendered is what runs. The leader lock of a lost leader
    outlives it by up to ttl (a full ttl, plus etcd's election, when its host also led etcd): the
    floor of a failover's duration."""

    ttl_s: int = 20
    loop_wait_s: int = 2
    retry_timeout_s: int = 5
    sentinel_down_after_ms: int = 4000
    sentinel_failover_timeout_ms: int = 30000

    PATRONI_MINIMUMS = {"ttl_s": 20, "loop_wait_s": 1, "retry_timeout_s": 3}

    def __post_init__(self) -> None:
        for name, least in self.PATRONI_MINIMUMS.items():
            if getattr(self, name) < least:
                raise ValueError(f"{name} {getattr(self, name)} is below Patroni's minimum {least}; "
                                 f"Patroni would run with {least}")
        if self.loop_wait_s + 2 * self.retry_timeout_s > self.ttl_s:
            raise ValueError(f"loop_wait {self.loop_wait_s} s + 2 x retry_timeout {self.retry_timeout_s} s "
                             f"exceeds ttl {self.ttl_s} s; Patroni would lose its lock while retrying")


@dataclass(frozen=True)
class ClusterSecrets:
    """The passwords of the replicated topology (Pulumi secrets; never rendered into anything
    but the uploaded files)."""

    superuser: str = field(repr=False)
    replication: str = field(repr=False)
    patroni_rest: str = field(repr=False)
    redis: str = field(repr=False)
    sentinel: str = field(repr=False)


# The stack setting each of ClusterSecrets' passwords comes from, for messages.
SECRET_SETTINGS = {"superuser": "postgresPassword", "replication": "replicationPassword",
                   "patroni_rest": "patroniRestPassword", "redis": "redisPassword", "sentinel": "sentinelPassword"}


@dataclass(frozen=True)
class Member:
    """One host of the cluster: its address and the name its servers go by."""

    address: str

    @property
    def name(self) -> str:
        """Stable as long as the host keeps its address, whatever the list order: etcd member,
        Patroni member and replication slot names are derived from it."""
        return "m" + self.address.replace(".", "_")

    @property
    def component(self) -> str:
        """The name of its component in the stack's state; its resources' names start with it."""
        return f"member-{self.name}"

    @property
    def membership(self) -> str:
        """The name of its membership resource (:mod:`infra.components.membership`)."""
        return self.component + MEMBERSHIP_SUFFIX

    @property
    def provider(self) -> str:
        """The name of the docker provider through which its resources reach its host."""
        return f"docker-{self.name}"

    def url(self, port: int, scheme: str = "http") -> str:
        return f"{scheme}://{self.address}:{port}"


@dataclass(frozen=True)
class Server:
    """One container of a member, as plain data: the components declare it, the tests start it."""

    role: str
    """etcd, patroni, haproxy, redis or sentinel: also the image key and the name suffix."""
    command: tuple[str, ...]
    files: dict[str, str] = field(repr=False)
    """Uploaded before the container starts: path -> content (passwords among them)."""
    data_path: Optional[str]
    """Where its named volume is mounted; None: it keeps nothing."""
    memory_mb: int
    health: Optional[str] = None
    """A shell command that succeeds once the server serves its part of the cluster; a change
    reaches the next member's server of the same role only then (None: not waited for)."""
    archive_path: Optional[str] = None
    """Where the WAL archive volume is mounted (PostgreSQL with backups on; its backup agent ships
    what is archived there); None: no archive."""
    command_at_creation_only: bool = False
    """Its arguments only seed it (etcd's initial cluster: its data directory holds the members
    afterwards), so a change of them does not replace a running container."""

    @property
    def image(self) -> str:
        """Which image it runs: Sentinel is Redis' own binary (redis-server --sentinel)."""
        return "redis" if self.role == "sentinel" else self.role


def container_name(stack: str, role: str) -> str:
    """The container of ``role`` on each host; its volume is ``<name>-data``."""
    return f"{stack}-{role}"


ROLES = ("etcd", "patroni", "haproxy", "redis", "sentinel")
# The backup agent's role on every host when backups are on (not a Server: its component uploads its
# code and settings; infra.components.backupagent): container <stack>-backup, volume <stack>-backup-data.
BACKUP_ROLE = "backup"


@dataclass(frozen=True)
class Primaries:
    """Where the cluster takes writes, as read before a run: Patroni's leader and the Redis master
    the Sentinels agree on (None: no cluster yet, or no single answer); and who is in it."""

    postgres: Optional[str] = None
    redis: Optional[str] = None
    members: frozenset[str] = frozenset()
    """The hosts whose Patroni is in the running cluster (empty: no cluster yet); a listed host
    not among them is joining it."""
    etcd: frozenset[str] = frozenset()
    """The hosts in etcd's member list (empty: no etcd cluster yet): an etcd member created on
    another host joins it."""

    def of(self, role: str) -> Optional[str]:
        """The primary whose host a change of ``role`` reaches last (Sentinel follows Redis)."""
        return self.postgres if role == "patroni" else self.redis if role in ("redis", "sentinel") else None


def one_at_a_time(server: Server, primaries: Primaries) -> bool:
    """Whether a change reaches ``server``'s role one host after the other, each waiting for the one
    before to be healthy (HAProxy, which has no health check, to be started: replaced on every host
    at once, it would cut every endpoint at once). On a new cluster (no leader yet) etcd's members
    start together (a member is healthy only within a majority), and HAProxy waits for nothing."""
    if server.role in ("etcd", "haproxy") and primaries.postgres is None:
        return False
    return server.health is not None or server.role == "haproxy"


def rolling_order(cluster: Sequence[Member], primary: Optional[str],
                  joining: frozenset[str] = frozenset()) -> tuple[Member, ...]:
    """The order in which a change reaches one role's containers, one host after the other: the
    replicas in list order, the primary, so that it restarts once and hands over to a replica
    that is back and caught up, then the hosts ``joining`` a running cluster (their PostgreSQL
    copies the leader, which lets them in once its file lists them). A new cluster (no primary)
    goes in list order: the first member bootstraps (and is the seeded Redis master), the others
    copy it."""
    staying = [m for m in cluster if m.address not in joining]
    last = [m for m in staying if m.address == primary]
    return (tuple(m for m in staying if m.address != primary) + tuple(last)
            + tuple(m for m in cluster if m.address in joining))


def patroni_health(me: Member) -> str:
    """Healthy: this member's PostgreSQL runs as the primary, or runs and streams from it (Patroni's
    /readiness alone also passes a replica that is running but not replicating)."""
    return ("python3 -c 'import json, sys, urllib.request as u; "
            f"s = json.load(u.urlopen(\"{me.url(PATRONI_REST_PORT)}/patroni\", timeout=3)); "
            "sys.exit(0 if s.get(\"state\") == \"running\" and "
            "(s.get(\"role\") == \"primary\" or s.get(\"replication_state\") == \"streaming\") else 1)'")


def seeded(seed: str, config: str, *server_args: str) -> tuple[str, ...]:
    """The Redis image's own entrypoint on ``config`` in the data volume, copied from ``seed`` once,
    writable (Sentinel refuses to start on a file it cannot rewrite; its entrypoint makes it redis').
    What ``server_args`` set wins over the file at every start."""
    return ("sh", "-c", f'test -f {config} || install -m 600 {seed} {config}; exec docker-entrypoint.sh "$@"',
            "sh", config, *server_args)


def servers(cluster: Sequence[Member], me: Member, scope: str, superuser: str, secrets: ClusterSecrets,
            postgres_memory_mb: int, redis_memory_mb: int, timing: ClusterTiming = ClusterTiming(),
            archiving: bool = False, etcd_running: bool = False) -> tuple[Server, ...]:
    """The servers of ``me``, in the order they start: etcd first (on :func:`etcd_hosts` only),
    Patroni needs it. ``archiving``: PostgreSQL archives its WAL (backups on). ``etcd_running``: an
    etcd cluster runs, which a member created now joins."""
    redis_config_path, sentinel_config_path = f"{REDIS_VOLUME_PATH}/redis.conf", f"{REDIS_VOLUME_PATH}/sentinel.conf"
    # Healthy: a member of a cluster with a leader (a linearizable read through this member).
    etcd = (Server("etcd", tuple(etcd_command(cluster, me, scope, "existing" if etcd_running else "new")), {},
                   ETCD_VOLUME_PATH, SMALL_SERVER_MEMORY_MB["etcd"],
                   f"etcdctl --endpoints=http://127.0.0.1:{ETCD_CLIENT_PORT} --command-timeout=3s endpoint health",
                   command_at_creation_only=True),)
    return (etcd if me in etcd_hosts(cluster) else ()) + (
        Server("patroni", (), {PATRONI_CONFIG_FILE: patroni_config(cluster, me, scope, superuser, secrets, timing,
                                                                    postgres_memory_mb, archiving)},
               PATRONI_VOLUME_PATH, postgres_memory_mb, patroni_health(me), ARCHIVE_MOUNT if archiving else None),
        Server("haproxy", (), {HAPROXY_CONFIG_FILE: haproxy_config(cluster, me)}, None,
               SMALL_SERVER_MEMORY_MB["haproxy"]),
        # maxmemory on the command line: the file in the volume keeps what its first start was seeded with.
        Server("redis", seeded(REDIS_SEED_FILE, redis_config_path, "--maxmemory",
                               f"{redis_maxmemory_mb(redis_memory_mb)}mb"),
               {REDIS_SEED_FILE: redis_config(cluster, me, secrets)}, REDIS_VOLUME_PATH,
               redis_memory_mb,
               # A master, or a replica whose link to its master is up (it has the master's data). The
               # password comes from the uploaded seed: the server's own copy is rewritten, quoted.
               redis_cli(REDIS_SEED_FILE, "info replication") + " | grep -Eq '^(role:master|master_link_status:up)'"),
        Server("sentinel", seeded(SENTINEL_SEED_FILE, sentinel_config_path, "--sentinel"),
               {SENTINEL_SEED_FILE: sentinel_config(cluster, me, secrets, timing)}, REDIS_VOLUME_PATH,
               SMALL_SERVER_MEMORY_MB["sentinel"],
               redis_cli(SENTINEL_SEED_FILE, f"-p {SENTINEL_PORT} ping") + " | grep -qx PONG"),
    )


def etcd_hosts(cluster: Sequence[Member]) -> tuple[Member, ...]:
    """The members that run etcd: the first :data:`ETCD_SIZE` of the list."""
    return tuple(cluster[:ETCD_SIZE])


def etcd_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    """The addresses of a host list whose hosts run etcd (:func:`etcd_hosts`)."""
    return tuple(m.address for m in etcd_hosts(members(addresses)))


def members(addresses: Sequence[str]) -> tuple[Member, ...]:
    """The members, in the order given; the first is the initial leader and Redis master."""
    for address in addresses:
        ipaddress.IPv4Address(address)
    return tuple(Member(address) for address in addresses)


def etcd_command(cluster: Sequence[Member], me: Member, token: str, state: str = "new") -> list[str]:
    """The etcd member's arguments. ``token`` keeps two clusters on one network apart;
    ``state`` is ``existing`` for a member joining a running cluster."""
    initial = ",".join(f"{m.name}={m.url(ETCD_PEER_PORT)}" for m in etcd_hosts(cluster))
    return [
        "--name", me.name,
        "--data-dir", ETCD_DATA_DIR,
        "--listen-peer-urls", me.url(ETCD_PEER_PORT),
        "--initial-advertise-peer-urls", me.url(ETCD_PEER_PORT),
        "--listen-client-urls", f"{me.url(ETCD_CLIENT_PORT)},http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--advertise-client-urls", me.url(ETCD_CLIENT_PORT),
        "--initial-cluster", initial,
        "--initial-cluster-state", state,
        "--initial-cluster-token", token,
    ]


def listening(me: Member, runs_etcd: bool = True) -> tuple[tuple[str, str, int], ...]:
    """(role, address, port) of every socket ``me``'s servers listen on (their files and arguments
    below say the same): what must be free on a host before its member is created."""
    loopback = "127.0.0.1"
    etcd = (("etcd", me.address, ETCD_CLIENT_PORT), ("etcd", loopback, ETCD_CLIENT_PORT),
            ("etcd", me.address, ETCD_PEER_PORT))
    return (etcd if runs_etcd else ()) + (
        ("patroni", me.address, POSTGRES_PORT), ("patroni", loopback, POSTGRES_PORT),
        ("patroni", me.address, PATRONI_REST_PORT),
        ("haproxy", me.address, HAPROXY_PRIMARY_PORT), ("haproxy", loopback, HAPROXY_PRIMARY_PORT),
        ("redis", me.address, REDIS_PORT), ("redis", loopback, REDIS_PORT),
        ("sentinel", me.address, SENTINEL_PORT), ("sentinel", loopback, SENTINEL_PORT))


def patroni_config(cluster: Sequence[Member], me: Member, scope: str, superuser: str,
                   secrets: ClusterSecrets, timing: ClusterTiming = ClusterTiming(),
                   memory_mb: int = 512, archiving: bool = False) -> str:
    """Patroni's YAML for ``me``: etcd v3 as its store, synchronous mode (an acknowledged commit
    is on a second member), pg_rewind for a former leader, the cluster's addresses in pg_hba.
    ``archiving``: every member archives its WAL (:func:`archive_parameters`)."""
    # Loopback too: Patroni reads its own timeline over a local replication connection to decide
    # whether a former leader needs pg_rewind (without it, a cut-off leader never rejoined).
    replication_sources = ["127.0.0.1/32", *(f"{m.address}/32" for m in cluster)]
    hba = ["local all all scram-sha-256",
           "host all all 127.0.0.1/32 scram-sha-256",
           *(f"host replication {REPLICATION_USER} {source} scram-sha-256" for source in replication_sources),
           "host all all 0.0.0.0/0 scram-sha-256"]
    config = {
        "scope": scope,
        "namespace": ETCD_NAMESPACE,
        "name": me.name,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"{me.address}:{PATRONI_REST_PORT}",
            "connect_address": f"{me.address}:{PATRONI_REST_PORT}",
            "authentication": {"username": PATRONI_REST_USER, "password": secrets.patroni_rest},
        },
        "etcd3": {"hosts": [f"{m.address}:{ETCD_CLIENT_PORT}" for m in etcd_hosts(cluster)]},
        "bootstrap": {
            "dcs": {
                "ttl": timing.ttl_s,
                "loop_wait": timing.loop_wait_s,
                "retry_timeout": timing.retry_timeout_s,
                "maximum_lag_on_failover": 1 << 20,
                "synchronous_mode": True,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_keep_size": "256MB",
                        "password_encryption": "scram-sha-256",
                        "shared_buffers": f"{max(memory_mb // 4, 16)}MB",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums",
                       {"auth": "scram-sha-256"}],
        },
        "postgresql": {
            "listen": f"{me.address},127.0.0.1:{POSTGRES_PORT}",
            "connect_address": f"{me.address}:{POSTGRES_PORT}",
            "data_dir": PATRONI_DATA_DIR,
            "bin_dir": PATRONI_BIN_DIR,
            "pgpass": "/run/patroni/pgpass",
            "authentication": {
                "superuser": {"username": superuser, "password": secrets.superuser},
                "replication": {"username": REPLICATION_USER, "password": secrets.replication},
            },
            "parameters": {"unix_socket_directories": "/run/postgresql", **(archive_parameters() if archiving else {})},
            "pg_hba": hba,
        },
        "watchdog": {"mode": "off"},
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }
    return yaml.safe_dump(config, sort_keys=False)


def archive_parameters() -> dict[str, object]:
    """PostgreSQL's WAL archiving on every member (this member's own settings: they go with its
    file, so turning backups on or off rolls like any change). ``always``: a replica archives what
    it receives too, so the segments a lost leader had not archived yet come from the member that
    takes over (with ``on``, a promoted replica archives only from its new timeline on: a gap)."""
    return {"archive_mode": "always", "archive_command": ARCHIVE_COMMAND, "archive_timeout": ARCHIVE_TIMEOUT_S}


def haproxy_config(cluster: Sequence[Member], me: Member) -> str:
    """HAProxy on ``me``: port HAPROXY_PRIMARY_PORT goes to whichever member answers Patroni's
    ``/primary`` with 200; a member marked down has its sessions cut, so no client keeps
    writing to a demoted leader."""
    servers = "\n".join(
        f"    server {m.name} {m.address}:{POSTGRES_PORT} check port {PATRONI_REST_PORT}" for m in cluster)
    return (
        "global\n"
        "    maxconn 1000\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 3s\n"
        "    timeout client 30m\n"
        "    timeout server 30m\n"
        "    timeout check 2s\n"
        "listen primary\n"
        f"    bind {me.address}:{HAPROXY_PRIMARY_PORT}\n"
        f"    bind 127.0.0.1:{HAPROXY_PRIMARY_PORT}\n"
        "    option httpchk\n"
        "    http-check send meth OPTIONS uri /primary\n"
        "    http-check expect status 200\n"
        "    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n"
        f"{servers}\n"
    )


def redis_config(cluster: Sequence[Member], me: Member, secrets: ClusterSecrets) -> str:
    """Redis on ``me``: the first member starts as master, the others as its replicas; a master
    that sees no replica within 10 s stops taking writes, which bounds what a cut-off master
    can accept and later lose. A full resync starts at once (the default waits 5 s for more
    replicas to share it): a new master refuses writes (NOREPLICAS) until a replica is synced,
    and the wait showed as 3-4 s more of outage in the failover benchmark."""
    lines = [
        f"bind {me.address} 127.0.0.1",
        f"port {REDIS_PORT}",
        "dir /data",
        "appendonly yes",
        "appendfsync everysec",
        f"requirepass {secrets.redis}",
        f"masterauth {secrets.redis}",
        f"replica-announce-ip {me.address}",
        "min-replicas-to-write 1",
        f"min-replicas-max-lag {REDIS_MIN_REPLICAS_MAX_LAG_S}",
        "repl-diskless-sync-delay 0",
        "maxmemory-policy noeviction",
    ]
    leader = cluster[0]
    if me != leader:
        lines.append(f"replicaof {leader.address} {REDIS_PORT}")
    return "\n".join(lines) + "\n"


def sentinel_quorum(hosts: int) -> int:
    """How many Sentinels must agree that the master is down: a majority of the hosts."""
    return hosts // 2 + 1


def sentinel_settings(hosts: int, timing: ClusterTiming = ClusterTiming()) -> dict[str, int]:
    """How each Sentinel watches the master, by the name ``SENTINEL SET`` and ``SENTINEL MASTER``
    give each setting. A Sentinel's file only seeds the copy it rewrites, so these reach running
    Sentinels through ``SENTINEL SET`` (:func:`infra.deploy.membership.converge`)."""
    return {
        "quorum": sentinel_quorum(hosts),
        "down-after-milliseconds": timing.sentinel_down_after_ms,
        "failover-timeout": timing.sentinel_failover_timeout_ms,
        "parallel-syncs": 1,
    }


def sentinel_config(cluster: Sequence[Member], me: Member, secrets: ClusterSecrets,
                    timing: ClusterTiming = ClusterTiming()) -> str:
    """A Sentinel on ``me`` watching the first member as master, quorum a majority. Sentinel
    rewrites this file as the master moves, so it must live in a writable place."""
    settings = sentinel_settings(len(cluster), timing)
    quorum = settings.pop("quorum")  # on the monitor line; the others name the master after it
    leader = cluster[0]
    name = SENTINEL_MASTER_NAME
    lines = [
        f"bind {me.address} 127.0.0.1",
        f"port {SENTINEL_PORT}",
        f"sentinel announce-ip {me.address}",
        f"requirepass {secrets.sentinel}",
        f"sentinel sentinel-pass {secrets.sentinel}",
        f"sentinel monitor {name} {leader.address} {REDIS_PORT} {quorum}",
        f"sentinel auth-pass {name} {secrets.redis}",
        *(f"sentinel {setting} {name} {value}" for setting, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"
