"""Small helpers the container components share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import pulumi
import pulumi_docker as docker

from infra.core.dockercli import LABEL_PREFIX, ROLE_LABEL, STACK_LABEL, STOP_GRACE_S

# Rotate container logs instead of letting json-file grow without bound.
LOG_OPTS = {"max-size": "10m", "max-file": "3"}
SECURITY_OPTS = ["no-new-privileges:true"]


def labels(project: str, stack: str, role: str) -> dict[str, str]:
    """The labels every Docker object of a stack carries (and the sweeper selects on)."""
    return {f"{LABEL_PREFIX}.project": project, STACK_LABEL: stack, ROLE_LABEL: role}


def container_labels(values: Mapping[str, str]) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(values.items())]



def container_defaults(memory_mb: pulumi.Input[int], values: Mapping[str, str]) -> dict:
    """What every container of a stack gets: restart policy, a graceful stop, memory limit,
    rotated logs, no-new-privileges, the stack's labels."""
    return dict(
        restart="unless-stopped",
        destroy_grace_seconds=STOP_GRACE_S,
        memory=memory_mb,
        # Explicit, or Docker picks twice the limit and every `up` would show drift; equal means no swap.
        memory_swap=memory_mb,
        log_driver="json-file",
        log_opts=LOG_OPTS,
        security_opts=SECURITY_OPTS,
        labels=container_labels(values),
    )


# Docker's healthcheck is for `status`, monitoring and whoever watches the containers; on a
# single host `up` does not wait for it (the post-deploy step polls both services itself, see
# infra.core.connect.wait_until_answering). So it runs at a monitoring pace: a failed service is
# reported unhealthy within about HEALTH_INTERVAL_S x HEALTH_RETRIES, and the checks of an idle
# stack cost the CPU the lifecycle benchmark measures (docs/benchmarks.md).
HEALTH_INTERVAL_S = 10
HEALTH_RETRIES = 3
HEALTH_CHECK_TIMEOUT_S = 5


def go_duration(seconds: int) -> str:
    """Whole seconds as Go's time.Duration prints them, which is how the provider reads a
    healthcheck back: "120s" would differ from "2m0s" on every refresh and replace the container."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def healthcheck(shell_command: str, start_period_s: int,
                interval_s: int = HEALTH_INTERVAL_S) -> docker.ContainerHealthcheckArgs:
    """Docker's healthcheck for ``shell_command``; failures within ``start_period_s`` of a
    (re)start do not count, so a long crash recovery is not reported as unhealthy."""
    return docker.ContainerHealthcheckArgs(
        tests=["CMD-SHELL", shell_command],
        interval=go_duration(interval_s),
        timeout=go_duration(HEALTH_CHECK_TIMEOUT_S),
        start_period=go_duration(start_period_s),
        retries=HEALTH_RETRIES,
    )


@dataclass
class ServiceArgs:
    """What every data-service container needs; the PostgreSQL and Redis args add their own."""

    image: pulumi.Input[str]
    """Image reference; a local image is used as it is, never pulled when present."""
    container_name: pulumi.Input[str]
    """Container name."""
    volume_name: pulumi.Input[str]
    """Named data volume."""
    network_name: pulumi.Input[str]
    """Network to join."""
    ip: pulumi.Input[str]
    """Fixed IPv4 address on that network."""
    host_port: pulumi.Input[int]
    """Port published on the host."""
    bind_address: pulumi.Input[str]
    """Host address the port is published on (127.0.0.1 by default)."""
    memory_mb: pulumi.Input[int]
    """Container memory limit."""
    retain_volume: bool
    """Keep the data volume when the stack is destroyed."""
    health_timeout_s: int
    """How long a (re)started service may take to answer: Docker's health start period."""
    labels: Mapping[str, str]
    """Labels naming project, stack and role."""


@dataclass
class ServiceSpec:
    """The service-specific parts of a data container."""

    alias: str
    internal_port: int
    data_path: str
    healthcheck: docker.ContainerHealthcheckArgs
    envs: list[str] = field(default_factory=list)
    command: Optional[list[str]] = None
    uploads: list[docker.ContainerUploadArgs] = field(default_factory=list)
    extra_volumes: list[docker.Volume] = field(default_factory=list)
    """Further named volumes, mounted at ``extra_paths``."""
    extra_paths: list[str] = field(default_factory=list)


def named_volume(parent: pulumi.Resource, name: str, volume_name: pulumi.Input[str], values: Mapping[str, str],
                 retain: bool) -> docker.Volume:
    """A labelled named volume; a retained one outlives `destroy` and `up` re-attaches it later."""
    return docker.Volume(
        name,
        name=volume_name,
        labels=[docker.VolumeLabelArgs(label=k, value=v) for k, v in sorted(values.items())],
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=retain),
    )


@dataclass
class ServiceResources:
    image: docker.RemoteImage
    volume: docker.Volume
    container: docker.Container


def declare_service(parent: pulumi.Resource, name: str, args: ServiceArgs, spec: ServiceSpec) -> ServiceResources:
    """Image, named volume and container of one data service, as children of ``parent``."""
    child = pulumi.ResourceOptions(parent=parent)
    image = docker.RemoteImage(f"{name}-image", name=args.image, keep_locally=True, opts=child)
    volume = named_volume(parent, f"{name}-data", args.volume_name, args.labels, args.retain_volume)
    container = docker.Container(
        f"{name}-container",
        name=args.container_name,
        image=image.image_id,
        envs=spec.envs or None,
        command=spec.command,
        uploads=spec.uploads or None,
        networks_advanced=[docker.ContainerNetworksAdvancedArgs(
            name=args.network_name, ipv4_address=args.ip, aliases=[spec.alias])],
        ports=[docker.ContainerPortArgs(internal=spec.internal_port, external=args.host_port, ip=args.bind_address)],
        volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=spec.data_path),
                 *(docker.ContainerVolumeArgs(volume_name=extra.name, container_path=path)
                   for extra, path in zip(spec.extra_volumes, spec.extra_paths))],
        healthcheck=spec.healthcheck,
        **container_defaults(args.memory_mb, args.labels),
        # The replacement needs the fixed IP and host port that the old container holds. The
        # provider reports a changed healthcheck as an in-place update it never applies to the
        # running container, so a new healthcheck means a new container.
        opts=pulumi.ResourceOptions(parent=parent, delete_before_replace=True,
                                    depends_on=[image, volume, *spec.extra_volumes],
                                    replace_on_changes=["healthcheck"]),
    )
    return ServiceResources(image, volume, container)
