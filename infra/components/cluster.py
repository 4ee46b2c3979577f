"""One host of the replicated topology: its five servers (infra.core.cluster.servers) as containers
with host networking, each with its named volume and its uploaded files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_docker as docker

from infra.components.common import container_defaults, named_volume
from infra.core.cluster import Server


@dataclass
class ClusterMemberArgs:
    """Arguments of :class:`ClusterMember`."""

    servers: Sequence[Server]
    """What runs on this host, in start order."""
    images: Mapping[str, str]
    """Image reference by :attr:`Server.image` key."""
    names: Mapping[str, str]
    """Container name by role; the data volume is named ``<container>-data``."""
    labels: Mapping[str, Mapping[str, str]]
    """The stack's labels by role."""
    retain_volumes: bool
    """Keep the data volumes when the stack is destroyed."""


class ClusterMember(pulumi.ComponentResource):
    """The servers of one host. Uploads are secrets (passwords); nothing goes into env or argv
    but etcd's addresses."""

    container_ids: pulumi.Output[list]

    def __init__(self, name: str, args: ClusterMemberArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:ClusterMember", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        images = {key: docker.RemoteImage(f"{name}-{key}-image", name=ref, keep_locally=True, opts=child)
                  for key, ref in sorted(args.images.items()) if any(s.image == key for s in args.servers)}
        containers = []
        for server in args.servers:
            container_name = args.names[server.role]
            volumes, mounts = [], []
            if server.data_path:
                volume = named_volume(self, f"{name}-{server.role}-data", f"{container_name}-data",
                                      args.labels[server.role], args.retain_volumes)
                volumes.append(volume)
                mounts.append(docker.ContainerVolumeArgs(volume_name=volume.name, container_path=server.data_path))
            containers.append(docker.Container(
                f"{name}-{server.role}",
                name=container_name,
                image=images[server.image].image_id,
                command=list(server.command) or None,
                network_mode="host",
                uploads=[docker.ContainerUploadArgs(file=path, content=pulumi.Output.secret(text), permissions="0400")
                         for path, text in sorted(server.files.items())] or None,
                volumes=mounts or None,
                **container_defaults(server.memory_mb, args.labels[server.role]),
                # Its name and its ports on the host are the old container's until that is gone.
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                            depends_on=[images[server.image], *volumes]),
            ))
        self.container_ids = pulumi.Output.all(*(c.id for c in containers))
        self.register_outputs({"container_ids": self.container_ids})
