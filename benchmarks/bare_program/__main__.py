"""The stack's Docker objects (network, two volumes, two images, two containers) declared with
pulumi_docker alone: no components, configuration, uploads or post-deploy step. What a no-op
`up`, a `preview` and a `destroy` of it take is what Pulumi itself costs on this host. With
"step" in the settings, also a dynamic resource whose provider does nothing: what Pulumi's
mechanism for the post-deploy step costs by itself (a `python -m pulumi.dynamic` process per
engine run, the refresh's and the update's).

Reads its settings as JSON from SIN_BENCH_BARE (benchmarks.lifecycle.BarePulumi.spec)."""

import json
import os

import pulumi_docker as docker

spec = json.loads(os.environ["SIN_BENCH_BARE"])
prefix = spec["prefix"]
label = {"label": spec["label"], "value": prefix}  # the test-stack label: a crashed run's objects are swept
network = docker.Network("network", name=f"{prefix}-net", labels=[docker.NetworkLabelArgs(**label)],
                         ipam_configs=[docker.NetworkIpamConfigArgs(subnet=spec["subnet"], gateway=spec["gateway"],
                                                                    ip_range=spec["ip_range"])])
containers = []
for service in ("postgres", "redis"):
    image = docker.RemoteImage(f"{service}-image", name=spec[service]["image"], keep_locally=True)
    volume = docker.Volume(f"{service}-data", name=f"{prefix}-{service}", labels=[docker.VolumeLabelArgs(**label)])
    containers.append(docker.Container(
        service, name=f"{prefix}-{service}", image=image.image_id, envs=spec[service]["envs"],
        networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network.name, ipv4_address=spec[service]["ip"])],
        volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=spec[service]["data_path"])],
        labels=[docker.ContainerLabelArgs(**label)], restart="unless-stopped",
        destroy_grace_seconds=spec["stop_grace_s"], wait=False).id)

if spec.get("step"):
    # The mechanism of the stack's post-deploy step alone: a dynamic resource whose provider does nothing,
    # diffed on both containers' ids. What it costs is what Pulumi's dynamic providers cost.
    import pulumi
    import pulumi.dynamic as dynamic

    class NoopStep(dynamic.ResourceProvider):
        def create(self, props):
            return dynamic.CreateResult(id_=prefix, outs=props)

        def diff(self, _id, olds, news):
            return dynamic.DiffResult(changes=olds.get("ids") != news.get("ids"))

        def update(self, _id, _olds, news):
            return dynamic.UpdateResult(outs=news)

    class Step(dynamic.Resource):
        pass

    Step(NoopStep(), "step", {"ids": pulumi.Output.all(*containers)})
