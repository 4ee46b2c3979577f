"""PostgreSQL: image, named data volume, container with a password file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_docker as docker

from infra.backupagent.layout import ARCHIVE_COMMAND, ARCHIVE_MOUNT, ARCHIVE_TIMEOUT_S
from infra.components.common import ServiceArgs, ServiceSpec, declare_service, healthcheck, named_volume
from infra.core.targets import POSTGRES_DATA_PATH, POSTGRES_PORT

PASSWORD_FILE = "/run/secrets/postgres-password"
DATA_PATH = POSTGRES_DATA_PATH
# Healthy = the server accepts TCP connections (the init server listens on the socket only). It
# does not depend on the password: a re-attached volume or a rotation that leaves the data with
# another password is still a running server, whose password the post-deploy step sets
# (infra/deploy/credentials.py). Authentication is what the verification checks.
HEALTHCHECK = f'pg_isready -q -h 127.0.0.1 -p {POSTGRES_PORT} -U "$POSTGRES_USER" -d "$POSTGRES_DB"'


@dataclass
class PostgresArgs(ServiceArgs):
    """Arguments of :class:`PostgresService`."""

    database: pulumi.Input[str]
    """Database created on first start."""
    user: pulumi.Input[str]
    """Superuser created on first start."""
    password: pulumi.Input[str]
    """Superuser password; wrapped as a Pulumi secret here whatever it arrives as."""
    archive_volume_name: Optional[str] = None
    """Named volume PostgreSQL archives WAL into (the backup agent ships it); None: no archiving."""


class PostgresService(pulumi.ComponentResource):
    """PostgreSQL with its password in a mode-0400 file (POSTGRES_PASSWORD_FILE), never in env."""

    container_id: pulumi.Output[str]
    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: PostgresArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:PostgresService", name, None, opts)
        archive = []
        if args.archive_volume_name:
            archive = [named_volume(self, f"{name}-archive", args.archive_volume_name, args.labels,
                                    args.retain_volume)]
        spec = ServiceSpec(
            alias="postgres",
            internal_port=POSTGRES_PORT,
            data_path=DATA_PATH,
            healthcheck=healthcheck(HEALTHCHECK, args.health_timeout_s),
            envs=[pulumi.Output.concat("POSTGRES_DB=", args.database),
                  pulumi.Output.concat("POSTGRES_USER=", args.user),
                  f"POSTGRES_PASSWORD_FILE={PASSWORD_FILE}"],
            uploads=[docker.ContainerUploadArgs(
                file=PASSWORD_FILE, content=pulumi.Output.secret(args.password), permissions="0400")],
            command=(["postgres", "-c", "archive_mode=on", "-c", f"archive_command={ARCHIVE_COMMAND}",
                      "-c", f"archive_timeout={ARCHIVE_TIMEOUT_S}"] if archive else None),
            extra_volumes=archive,
            extra_paths=[ARCHIVE_MOUNT] * len(archive),
        )
        resources = declare_service(self, name, args, spec)
        self.container_id = resources.container.id
        self.container_name = resources.container.name
        self.data_volume_name = resources.volume.name
        self.archive_volume_name = archive[0].name if archive else None
        self.register_outputs({"container_id": self.container_id, "container_name": self.container_name})

