"""Where the two services of a stack are, as plain data (no client libraries).

A :class:`Target` is what the post-deploy step needs: built from the stack configuration
inside ``pulumi up`` and from the stack outputs on the command line. The Pulumi program
imports this module, :mod:`infra.connect` does the connecting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Where the official postgres image (and ours) keeps its data and its Unix socket.
POSTGRES_DATA_PATH = "/var/lib/postgresql/data"
POSTGRES_SOCKET_DIR = "/var/run/postgresql"

# The client settings the ADR gives its applications (node-postgres pool, ioredis).
CLIENT_SETTINGS = {
    "postgres": {"poolMax": 20, "idleTimeoutMillis": 30_000, "connectionTimeoutMillis": 2_000},
    "redis": {"retryStepMillis": 50, "retryMaxDelayMillis": 2_000},
}


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

    def describe(self) -> str:
        return f"Redis {self.host}:{self.port}"


@dataclass(frozen=True)
class Target:
    """Both services of one stack."""

    stack: str
    postgres: PostgresTarget
    redis: RedisTarget

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Target":
        """The inverse of :meth:`to_dict`; numbers may arrive as floats through Pulumi's wire format."""
        def service(fields: dict) -> dict:
            return {k: int(v) if k in ("port", "major_version") else v for k, v in fields.items()}

        return cls(data["stack"], PostgresTarget(**service(data["postgres"])), RedisTarget(**service(data["redis"])))
