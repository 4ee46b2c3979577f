"""Run the real Pulumi program under `pulumi.runtime.set_mocks` and record every registration.

Test modules import these helpers from here; tests/unit/conftest.py only holds fixtures."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

from infra.components.postdeploy import STEP_TYPE
from infra.core import config as stack_config

PG_PASSWORD = "pg-unit-test-password-0123"
REDIS_PASSWORD = "redis-unit-test-password-0123"


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict
    provider: str = ""
    """The provider reference (``<urn>::<id>``) the resource is bound to; empty for the default."""


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: dict[str, Registered] = field(default_factory=dict)
    exports: dict[str, pulumi.Output] = field(default_factory=dict)
    options: dict[str, pulumi.ResourceOptions] = field(default_factory=dict)
    urns: dict[str, str] = field(default_factory=dict)
    component_outputs: dict[str, dict] = field(default_factory=dict)
    """Component name -> the outputs it registered (``register_outputs``)."""
    dependencies: dict[str, list[str]] = field(default_factory=dict)
    """Resource name -> the URNs it waits for, explicit and through its inputs."""
    """Resource name -> URN as the engine builds it: its type part chains the parent's type."""
    looked: list = field(default_factory=list)
    """The configurations the program looked at the Docker host with, before declaring anything."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources[args.name] = Registered(args.typ, args.name, args.inputs, args.provider or "")
        state = dict(args.inputs)
        if args.typ == "docker:index/remoteImage:RemoteImage":
            state["imageId"] = f"sha256:{args.name}"
        if args.typ == STEP_TYPE:
            # What the post-deploy step reports after a first `up` (infra.deploy.steps.Result.summary).
            state.update(applied=["V001__adr006_schema.sql"], already_applied=0, checks=20, failed=[])
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources.values() if r.typ == typ]

    def parent_type(self, name: str) -> str:
        """The type of the resource's parent, read from its URN (`...::<parent type>$<type>::<name>`)."""
        return self.urns[name].split("::")[2].split("$")[-2]


class RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping what components register as their outputs (it drops them)."""

    def __init__(self, mocks: RecordingMocks):
        super().__init__(mocks)
        self.outputs: dict[str, dict] = {}

    def RegisterResource(self, request):
        self.mocks.dependencies[request.name] = list(request.dependencies)
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request):
        self.outputs[request.urn] = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)


def unwrap(value):
    """The plain value of a possibly secret-wrapped RPC value."""
    return rpc.unwrap_rpc_secret(value) if rpc.is_rpc_secret(value) else value


def is_secret(value) -> bool:
    return rpc.is_rpc_secret(value)


BASE_CONFIG = {"postgresPassword": PG_PASSWORD, "redisPassword": REDIS_PASSWORD}


def run_program(config: dict | None = None, stack: str = "dev", mocks: RecordingMocks | None = None,
                project: str = stack_config.PROJECT, plain: tuple[str, ...] = (),
                look=None) -> RecordingMocks:
    """Run infra.program under mocks with the given stack config (the secret keys stored as
    secrets, except those named in ``plain``). ``look`` stands in for the look at the Docker host
    (default: record the configuration it was given in ``mocks.looked``)."""
    from infra.program import program

    values = {**BASE_CONFIG, **(config or {})}
    mocks = mocks if mocks is not None else RecordingMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(
        {f"{project}:{k}": str(v) for k, v in values.items()},
        secret_keys=[f"{project}:{k}" for k in stack_config.ALL_SECRET_KEYS if k not in plain],
    )

    def record_export(name, value):
        mocks.exports[name] = pulumi.Output.from_input(value)

    running = True

    def record_options(args: pulumi.ResourceTransformationArgs):
        # Resource options never reach the mock monitor; an SDK-side transformation sees them.
        # The SDK keeps stack transformations across runs in one process: record only this run's.
        if running:
            mocks.options[args.name] = args.opts
        return None

    @pulumi.runtime.test
    def deploy():
        pulumi.runtime.register_stack_transformation(record_options)
        original, pulumi.export = pulumi.export, record_export
        try:
            program(look=look or mocks.looked.append)
        finally:
            pulumi.export = original
        return pulumi.Output.all(*mocks.exports.values())

    try:
        deploy()
    finally:
        running = False
    mocks.urns = {urn.rsplit("::", 1)[1]: urn for urn in monitor.resources}
    mocks.component_outputs = {urn.rsplit("::", 1)[1]: outputs for urn, outputs in monitor.outputs.items()}
    return mocks


def output_value(out: pulumi.Output):
    """The resolved value and secretness of an exported output (after the run finished)."""
    data = out._data.result()  # the run has finished, so the underlying future is done
    return data.value, data.is_secret
