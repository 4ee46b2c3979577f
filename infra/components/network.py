"""The bridge network both data containers join with fixed addresses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi
import pulumi_docker as docker


@dataclass
class NetworkArgs:
    """Arguments of :class:`SinNetwork`."""

    name: pulumi.Input[str]
    """Docker network name, e.g. sin-network."""
    subnet: pulumi.Input[str]
    """IPv4 subnet in CIDR form."""
    gateway: pulumi.Input[str]
    """Gateway address inside the subnet."""
    ip_range: pulumi.Input[str]
    """Where Docker hands out automatic addresses; kept away from every fixed IP."""
    labels: Mapping[str, str]
    """Labels naming project, stack and role."""


class SinNetwork(pulumi.ComponentResource):
    """A bridge network with IPAM subnet, gateway and a restricted automatic range."""

    network_name: pulumi.Output[str]
    network_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:SinNetwork", name, None, opts)
        network = docker.Network(
            f"{name}-network",
            name=args.name,
            driver="bridge",
            ipam_configs=[docker.NetworkIpamConfigArgs(subnet=args.subnet, gateway=args.gateway,
                                                       ip_range=args.ip_range)],
            labels=[docker.NetworkLabelArgs(label=k, value=v) for k, v in sorted(args.labels.items())],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.network_name = network.name
        self.network_id = network.id
        self.register_outputs({"network_name": self.network_name, "network_id": self.network_id})
