"""Redis: image, named data volume, container started from an uploaded config file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_docker as docker

from infra.core.targets import REDIS_CONFIG_DIR, REDIS_PORT, redis_cli, redis_maxmemory_mb
from infra.components.common import ServiceArgs, ServiceSpec, declare_service, healthcheck

CONFIG_FILE = f"{REDIS_CONFIG_DIR}/redis.conf"
DATA_PATH = "/data"
# PING must answer PONG with the password from the config file (an unauthenticated
# client gets NOAUTH).
HEALTHCHECK = redis_cli(CONFIG_FILE, "ping") + " | grep -qx PONG"


@dataclass
class RedisArgs(ServiceArgs):
    """Arguments of :class:`RedisService`."""

    password: pulumi.Input[str]
    """requirepass; wrapped as a Pulumi secret here whatever it arrives as."""


def render_config(password: str, memory_mb: int) -> str:
    """redis.conf with AOF on and a password; volatile-lru evicts only keys with a TTL
    (sessions, cache), never queues."""
    return "\n".join([
        "# Written by sin-datastores; changes are replaced on the next `pulumi up`.",
        "bind * -::*",
        "protected-mode yes",
        f"port {REDIS_PORT}",
        "dir /data",
        "appendonly yes",
        "appendfsync everysec",
        f"maxmemory {redis_maxmemory_mb(memory_mb)}mb",
        "maxmemory-policy volatile-lru",
        f"requirepass {password}",
        "",
    ])


class RedisService(pulumi.ComponentResource):
    """Redis whose password lives only in its uploaded config file, never on the command line."""

    container_id: pulumi.Output[str]
    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: RedisArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:RedisService", name, None, opts)
        config_text = pulumi.Output.secret(pulumi.Output.all(args.password, args.memory_mb).apply(
            lambda values: render_config(values[0], values[1])))
        spec = ServiceSpec(
            alias="redis",
            internal_port=REDIS_PORT,
            data_path=DATA_PATH,
            healthcheck=healthcheck(HEALTHCHECK, args.health_timeout_s),
            command=["redis-server", CONFIG_FILE],
            # 0444: the official image reads its config after dropping to the redis user.
            uploads=[docker.ContainerUploadArgs(file=CONFIG_FILE, content=config_text, permissions="0444")],
        )
        resources = declare_service(self, name, args, spec)
        self.container_id = resources.container.id
        self.container_name = resources.container.name
        self.data_volume_name = resources.volume.name
        self.register_outputs({"container_id": self.container_id, "container_name": self.container_name})
