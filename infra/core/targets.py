"""Where the two services of a stack are, as plain data (no client libraries).

A :class:`Target` is what the post-deploy step needs: built from the stack configuration
inside ``pulumi up`` and from the stack outputs on the command line. The Pulumi program
imports this module, :mod:`infra.core.connect` does the connecting.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional
from urllib.parse import urlsplit

# Where the official postgres image (and ours) keeps its data and its Unix socket.
# The ports the services listen on inside their containers (and on the network).
POSTGRES_PORT = 5432
REDIS_PORT = 6379
# Where the Redis image reads config files (the stack's, and a scratch one for restores).
REDIS_CONFIG_DIR = "/usr/local/etc/redis"
# Share of the container limit Redis may use for data; the rest covers AOF rewrites and buffers.
MAXMEMORY_SHARE = 0.75
POSTGRES_DATA_PATH = "/var/lib/postgresql/data"
POSTGRES_SOCKET_DIR = "/var/run/postgresql"


def redis_maxmemory_mb(memory_mb: int) -> int:
    """Redis' ``maxmemory`` in a container of ``memory_mb``."""
    return int(memory_mb * MAXMEMORY_SHARE)


def redis_cli(config_file: str, arguments: str) -> str:
    """A shell command running ``redis-cli`` on loopback with the password from ``config_file``
    (``requirepass``): REDISCLI_AUTH keeps it off the command line."""
    return (f"REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' {config_file})\" "
            f"redis-cli --no-auth-warning -h 127.0.0.1 {arguments}")


# SSH to a remote Docker host: how long connecting may take, and the engine's default socket there.
SSH_CONNECT_TIMEOUT_S = 5
DEFAULT_REMOTE_SOCKET = "/var/run/docker.sock"

# The client settings the ADR gives its applications (node-postgres pool, ioredis).
CLIENT_SETTINGS = {
    "postgres": {"poolMax": 20, "idleTimeoutMillis": 30_000, "connectionTimeoutMillis": 2_000},
    "redis": {"retryStepMillis": 50, "retryMaxDelayMillis": 2_000},
}


@dataclass(frozen=True)
class DockerHost:
    """Where a stack's Docker Engine is (``url``: empty for DOCKER_HOST or the local socket)."""

    url: str = ""
    ssh_key_file: str = ""
    ssh_known_hosts_file: str = ""

    @property
    def is_ssh(self) -> bool:
        return self.url.startswith("ssh://")

    def describe(self) -> str:
        if self.is_ssh:
            parts = urlsplit(self.url)
            return f"ssh://{parts.username + '@' if parts.username else ''}{parts.hostname}" \
                   f"{':' + str(parts.port) if parts.port else ''}"
        return self.url or os.environ.get("DOCKER_HOST") or "the local Docker Engine"

    def ssh_options(self) -> list[str]:
        """Options for every ssh this project runs against the host: no prompts, a bounded
        connect, host keys checked (never added on the fly)."""
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}",
                   "-o", "StrictHostKeyChecking=yes", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.ssh_key_file:
            options += ["-o", "IdentitiesOnly=yes", "-i", self.ssh_key_file]
        if self.ssh_known_hosts_file:
            options += ["-o", f"UserKnownHostsFile={self.ssh_known_hosts_file}"]
        port = urlsplit(self.url).port if self.is_ssh else None
        if port:
            options += ["-p", str(port)]
        return options

    def ssh_destination(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.username + '@' if parts.username else ''}{parts.hostname}"

    def remote_socket(self) -> str:
        return urlsplit(self.url).path or DEFAULT_REMOTE_SOCKET


@dataclass(frozen=True)
class PostgresTarget:
    """How this host reaches PostgreSQL, and where it sits on the stack's network."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    container_name: str
    container_ip: str
    major_version: int
    tunnel_required: bool = False
    """The port is published on a remote Docker host: only :func:`infra.core.dockerhost.reach` makes it reachable."""

    def describe(self) -> str:
        return f"PostgreSQL {self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class RedisTarget:
    """How this host reaches Redis, and where it sits on the stack's network."""

    host: str
    port: int
    password: str = field(repr=False)
    container_name: str
    container_ip: str
    major_version: int
    tunnel_required: bool = False
    """The port is published on a remote Docker host: only :func:`infra.core.dockerhost.reach` makes it reachable."""

    def describe(self) -> str:
        return f"Redis {self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterTarget:
    """The replicated topology's members: where their Patroni REST APIs and Sentinels answer."""

    members: tuple[str, ...]
    """The hosts' addresses, which their servers listen on."""
    patroni_rest_port: int
    sentinel_port: int
    sentinel_password: str = field(repr=False)
    master_name: str


@dataclass(frozen=True)
class Target:
    """Both services of one stack (and, replicated, the members behind them)."""

    stack: str
    postgres: PostgresTarget
    redis: RedisTarget
    docker: DockerHost = field(default_factory=DockerHost)
    cluster: Optional[ClusterTarget] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Target":
        """The inverse of :meth:`to_dict`; numbers may arrive as floats through Pulumi's wire format."""
        def service(fields: dict) -> dict:
            return {k: int(v) if k in ("port", "major_version") else v for k, v in fields.items()}

        cluster = data.get("cluster")
        if cluster:
            cluster = ClusterTarget(**{**cluster, "members": tuple(cluster["members"]),
                                       "patroni_rest_port": int(cluster["patroni_rest_port"]),
                                       "sentinel_port": int(cluster["sentinel_port"])})
        return cls(data["stack"], PostgresTarget(**service(data["postgres"])), RedisTarget(**service(data["redis"])),
                   DockerHost(**data.get("docker", {})), cluster)
