"""The backup agent: a container on the stack's Docker host that takes scheduled backups and
ships PostgreSQL's WAL archive (the code it runs is infra/backupagent, uploaded with it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_docker as docker

from infra.backupagent.layout import HEARTBEAT_FILE
from infra.components.common import container_defaults, healthcheck, named_volume

CODE_DIR = Path(__file__).resolve().parent.parent / "backupagent"
CODE_MOUNT = "/opt/sin-backup/backupagent"
CONFIG_FILE = "/etc/sin-backup/agent.json"
SECRETS_DIR = "/run/secrets"
# Where the agent sees the volumes (the data volumes read-only).
PGDATA_MOUNT = "/sources/postgres"
ARCHIVE_MOUNT = "/sources/postgres-archive"
REDIS_MOUNT = "/sources/redis"
LOCAL_MOUNT = "/backups"
# Healthy while the WAL shipper's loop (every 2 s) has touched its heartbeat within a minute; a
# check costs one `sh`, `date` and `stat` (a few ms of CPU). Its first heartbeat comes within
# START_PERIOD_S of a start.
HEALTHCHECK = f'test $(( $(date +%s) - $(stat -c %Y {LOCAL_MOUNT}/{HEARTBEAT_FILE}) )) -lt 60'
START_PERIOD_S = 10


@dataclass
class BackupAgentArgs:
    """Arguments of :class:`BackupAgent`."""

    image: pulumi.Input[str]
    container_name: pulumi.Input[str]
    volume_name: pulumi.Input[str]
    """Named volume for the local copies and status.json."""
    postgres_volume: pulumi.Input[str]
    archive_volume: pulumi.Input[str]
    redis_volume: pulumi.Input[str]
    settings: dict
    """agent.json without the mount paths (see infra.backupagent.agent.AgentConfig); no secrets."""
    secrets: Mapping[str, pulumi.Input[str]]
    """File name under /run/secrets -> value."""
    memory_mb: int
    retain_volume: bool
    labels: Mapping[str, str]
    data_dir_in_volume: str = ""
    """Where PostgreSQL's data directory is inside ``postgres_volume`` (Patroni's: a folder of it)."""
    after: Sequence[pulumi.Resource] = ()
    """Created after these, deleted before them."""


def agent_code() -> dict[str, str]:
    """The agent's modules by file name, uploaded into the container (a new version replaces it)."""
    return {path.name: path.read_text() for path in sorted(CODE_DIR.glob("*.py"))}


class BackupAgent(pulumi.ComponentResource):
    """Uses the host's network: PostgreSQL and Redis over their published ports, and the S3
    endpoint reached exactly as the Docker host reaches it."""

    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: BackupAgentArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:BackupAgent", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        image = docker.RemoteImage(f"{name}-image", name=args.image, keep_locally=True, opts=child)
        volume = named_volume(self, f"{name}-copies", args.volume_name, args.labels, args.retain_volume)
        pgdata = f"{PGDATA_MOUNT}/data/{args.data_dir_in_volume}".rstrip("/")
        settings = {**args.settings, "pgdata": pgdata, "archive": ARCHIVE_MOUNT,
                    "redis_data": REDIS_MOUNT, "local_root": LOCAL_MOUNT}
        uploads = [docker.ContainerUploadArgs(file=f"{CODE_MOUNT}/{file}", content=text, permissions="0444")
                   for file, text in agent_code().items()]
        uploads.append(docker.ContainerUploadArgs(file=CONFIG_FILE, content=json.dumps(settings, sort_keys=True),
                                                  permissions="0444"))
        uploads += [docker.ContainerUploadArgs(file=f"{SECRETS_DIR}/{file}", content=pulumi.Output.secret(value),
                                               permissions="0400")
                    for file, value in sorted(args.secrets.items())]
        mounts = [(args.postgres_volume, f"{PGDATA_MOUNT}/data", True), (args.archive_volume, ARCHIVE_MOUNT, False),
                  (args.redis_volume, REDIS_MOUNT, True), (volume.name, LOCAL_MOUNT, False)]
        container = docker.Container(
            f"{name}-container",
            name=args.container_name,
            image=image.image_id,
            network_mode="host",
            healthcheck=healthcheck(HEALTHCHECK, START_PERIOD_S),
            uploads=uploads,
            volumes=[docker.ContainerVolumeArgs(volume_name=v, container_path=p, read_only=ro) for v, p, ro in mounts],
            **container_defaults(args.memory_mb, args.labels),
            # Its name is fixed, so a new version (code, settings) replaces it delete-first; a changed
            # healthcheck is replaced too (the provider would report an update it never applies).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[image, volume, *args.after],
                                        delete_before_replace=True, replace_on_changes=["healthcheck"]),
        )
        self.container_name = container.name
        self.register_outputs({"container_name": self.container_name})
