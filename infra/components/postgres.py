"""PostgreSQL: image, named data volume, container with a password file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_docker as docker

from infra.components.common import ServiceArgs, ServiceSpec, declare_service, healthcheck
from infra.targets import POSTGRES_DATA_PATH

PASSWORD_FILE = "/run/secrets/postgres-password"
DATA_PATH = POSTGRES_DATA_PATH
# Ready = the server accepts TCP connections. The init server listens on the socket only, so
# this is false during init. It does not depend on the password: when a re-attached volume or
# a rotation leaves the data with another password, the container still becomes healthy at
# once and the post-deploy step sets the configured password (infra/credentials.py) instead
# of `up` waiting out the health timeout. Authentication is what the verification checks.
HEALTHCHECK = 'pg_isready -q -h 127.0.0.1 -p 5432 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'


@dataclass
class PostgresArgs(ServiceArgs):
    """Arguments of :class:`PostgresService`."""

    database: pulumi.Input[str]
    """Database created on first start."""
    user: pulumi.Input[str]
    """Superuser created on first start."""
    password: pulumi.Input[str]
    """Superuser password; wrapped as a Pulumi secret here whatever it arrives as."""


class PostgresService(pulumi.ComponentResource):
    """PostgreSQL with its password in a mode-0400 file (POSTGRES_PASSWORD_FILE), never in env."""

    container_id: pulumi.Output[str]
    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: PostgresArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:PostgresService", name, None, opts)
        spec = ServiceSpec(
            alias="postgres",
            internal_port=5432,
            data_path=DATA_PATH,
            healthcheck=healthcheck(HEALTHCHECK, args.health_timeout_s),
            envs=[pulumi.Output.concat("POSTGRES_DB=", args.database),
                  pulumi.Output.concat("POSTGRES_USER=", args.user),
                  f"POSTGRES_PASSWORD_FILE={PASSWORD_FILE}"],
            uploads=[docker.ContainerUploadArgs(
                file=PASSWORD_FILE, content=pulumi.Output.secret(args.password), permissions="0400")],
        )
        resources = declare_service(self, name, args, spec)
        self.container_id = resources.container.id
        self.container_name = resources.container.name
        self.register_outputs({"container_id": self.container_id, "container_name": self.container_name})

