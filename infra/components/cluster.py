"""One host of the replicated topology: its servers (infra.core.cluster.servers) as containers
with host networking, each with its named volume and its uploaded files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_docker as docker

from infra.components.common import container_defaults, healthcheck, named_volume
from infra.core.cluster import Server

# How often Docker checks a server `up` waits for. The first check runs one interval after the
# start, so each host of a rolling change costs at least this. Docker's start_interval would
# check faster during the start only, but needs API 1.44 (Docker 25); the docker provider
# speaks what the engine offers, and an older engine refuses the container.
WAIT_CHECK_INTERVAL_S = 2


@dataclass
class ClusterMemberArgs:
    """Arguments of :class:`ClusterMember`."""

    images: Mapping[str, str]
    """Image reference by :attr:`Server.image` key, one for each key the servers use."""
    names: Mapping[str, str]
    """Container name by role; the data volume is named ``<container>-data`` (the WAL archive's
    ``<container>-archive``)."""
    labels: Mapping[str, Mapping[str, str]]
    """The stack's labels by role."""
    retain_volumes: bool
    """Keep the data volumes when the stack is destroyed."""
    health_timeout_s: int
    """How long `up` waits for a (re)started server with a health command to be healthy."""


class ClusterMember(pulumi.ComponentResource):
    """The servers of one host, declared one by one with :meth:`declare` (the program orders each
    role's containers across the hosts: :func:`infra.core.cluster.rolling_order`), then
    :meth:`complete`. Uploads are secrets (passwords); nothing goes into env or argv but etcd's
    addresses."""

    container_ids: pulumi.Output[list]

    def __init__(self, name: str, args: ClusterMemberArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:ClusterMember", name, None, opts)
        self._name, self._args = name, args
        child = pulumi.ResourceOptions(parent=self)
        self._images = {key: docker.RemoteImage(f"{name}-{key}-image", name=ref, keep_locally=True, opts=child)
                        for key, ref in sorted(args.images.items())}
        self.containers: dict[str, docker.Container] = {}
        self.volumes: dict[str, docker.Volume] = {}
        """``<role>-data`` and ``<role>-archive`` (a server's WAL archive), as their volume names end."""

    def declare(self, server: Server, after: Sequence[pulumi.Resource] = ()) -> docker.Container:
        """The container of ``server``, created (or replaced) only once ``after`` is. A server with a
        health command makes `up` wait until it is healthy, so whatever comes after it finds it serving."""
        args, role = self._args, server.role
        container_name = args.names[role]
        volumes, mounts = [], []
        for kind, path in (("data", server.data_path), ("archive", server.archive_path)):
            if path:
                volume = named_volume(self, f"{self._name}-{role}-{kind}", f"{container_name}-{kind}",
                                      args.labels[role], args.retain_volumes)
                self.volumes[f"{role}-{kind}"] = volume
                volumes.append(volume)
                mounts.append(docker.ContainerVolumeArgs(volume_name=volume.name, container_path=path))
        waits = dict(healthcheck=healthcheck(server.health, args.health_timeout_s, WAIT_CHECK_INTERVAL_S),
                     wait=True, wait_timeout=args.health_timeout_s) if server.health else {}
        container = docker.Container(
            f"{self._name}-{role}",
            name=container_name,
            image=self._images[server.image].image_id,
            command=list(server.command) or None,
            network_mode="host",
            uploads=[docker.ContainerUploadArgs(file=path, content=pulumi.Output.secret(text), permissions="0400")
                     for path, text in sorted(server.files.items())] or None,
            volumes=mounts or None,
            **waits,
            **container_defaults(server.memory_mb, args.labels[role]),
            # Its name and its ports on the host are the old container's until that is gone. The
            # provider never applies a changed healthcheck to a running container: it takes a new one.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, replace_on_changes=["healthcheck"],
                                        ignore_changes=["command"] if server.command_at_creation_only else None,
                                        depends_on=[self._images[server.image], *volumes, *after]),
        )
        self.containers[role] = container
        return container

    def complete(self) -> None:
        """Register the outputs once every server is declared (their ids in the order declared)."""
        self.container_ids = pulumi.Output.all(*(c.id for c in self.containers.values()))
        self.register_outputs({"container_ids": self.container_ids})
