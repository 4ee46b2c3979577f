"""The post-deploy step's provider (toolchain/pulumi-build/cmd/pulumi-resource-sin-postdeploy),
spoken to over gRPC as the engine does: what re-runs the step (a change of one of its triggers,
nothing else), and how it runs it (the project's interpreter, inputs on stdin, outputs back);
and the step's side of that exchange (infra.deploy.provider_step)."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from infra.deploy import provider_step
from tests.integration.plugin_process import serving

DEPLOYED = {"target": {"stack": "dev", "postgres": {"port": 5432}}, "migrations": [{"version": 1, "sha256": "a" * 64}],
            "container_ids": ["pg-1", "redis-1"], "actor": "ci", "applied": ["V001__adr006_schema.sql"],
            "already_applied": 0, "checks": 24, "failed": []}
# A stand-in for infra.deploy.provider_step: echoes its argv, its stdin and where it ran, or fails.
FAKE_STEP = textwrap.dedent("""
    import json, os, sys
    inputs = json.load(sys.stdin)
    if inputs.get("fail"):
        print("VerificationFailed: 2 of 20 checks failed", file=sys.stderr)
        sys.exit(1)
    json.dump({**inputs, "argv": sys.argv[1:], "python": sys.executable, "venv": os.environ.get("VIRTUAL_ENV")},
              sys.stdout)
""")


def provider_binary() -> Path:
    plugins = Path(os.environ["PULUMI_HOME"]) / "plugins"
    found = sorted(plugins.glob("resource-sin-postdeploy-v*/pulumi-resource-sin-postdeploy"))
    assert found, f"no sin-postdeploy provider in {plugins}: run toolchain/setup.sh (scripts/test does)"
    return found[-1]


@pytest.fixture
def project(tmp_path) -> Path:
    """A project directory whose virtualenv's python is this test's own, holding the fake step."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    step = tmp_path / "infra" / "deploy"
    step.mkdir(parents=True)
    for package in (tmp_path / "infra", step):
        (package / "__init__.py").write_text("")
    (step / "provider_step.py").write_text(FAKE_STEP)
    return tmp_path


@pytest.fixture
def provider(project):
    """The provider as the engine starts it: in the project directory, the runtime options exported."""
    with serving(provider_binary(), cwd=project, env={**os.environ, "PULUMI_RUNTIME_VIRTUALENV": "venv"}) as channel:
        yield provider_pb2_grpc.ResourceProviderStub(channel)


def struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def diff(provider, olds: dict, news: dict) -> provider_pb2.DiffResponse:
    return provider.Diff(provider_pb2.DiffRequest(id="dev", urn="urn:step", olds=struct(olds), news=struct(news)),
                         timeout=30)


@pytest.mark.parametrize("changed", [
    {"target": {"stack": "dev", "postgres": {"port": 5433}}},
    {"migrations": [{"version": 1, "sha256": "a" * 64}, {"version": 2, "sha256": "b" * 64}]},
    {"container_ids": ["pg-2", "redis-1"]},
])
def test_a_changed_trigger_re_runs_the_step_in_place(provider, changed):
    answer = diff(provider, DEPLOYED, {**DEPLOYED, **changed})
    assert answer.changes == provider_pb2.DiffResponse.DIFF_SOME
    assert list(answer.diffs) == list(changed) and not answer.replaces and not answer.deleteBeforeReplace


def test_another_actor_or_fresh_outputs_alone_change_nothing(provider):
    news = {**DEPLOYED, "actor": "someone-else", "applied": None, "already_applied": None, "checks": None}
    assert diff(provider, DEPLOYED, news).changes == provider_pb2.DiffResponse.DIFF_NONE


def test_create_runs_the_step_in_the_projects_virtualenv_with_the_inputs_on_stdin(provider, project):
    created = provider.Create(provider_pb2.CreateRequest(urn="urn:step", properties=struct(DEPLOYED)), timeout=60)
    outputs = json_format.MessageToDict(created.properties)
    assert created.id == "dev"
    assert outputs["argv"] == [] and outputs["target"] == {"stack": "dev", "postgres": {"port": 5432}}
    assert outputs["python"] == str(project / "venv" / "bin" / "python")
    assert outputs["venv"] == str(project / "venv")


def test_update_runs_the_step_with_the_new_inputs(provider):
    news = {**DEPLOYED, "container_ids": ["pg-2", "redis-1"]}
    updated = provider.Update(provider_pb2.UpdateRequest(id="dev", urn="urn:step", olds=struct(DEPLOYED),
                                                         news=struct(news)), timeout=60)
    assert list(updated.properties["container_ids"]) == ["pg-2", "redis-1"]


def test_a_failed_step_is_the_error_in_its_own_words(provider):
    with pytest.raises(grpc.RpcError) as failure:
        provider.Create(provider_pb2.CreateRequest(urn="urn:step", properties=struct({**DEPLOYED, "fail": True})),
                        timeout=60)
    assert failure.value.details() == "VerificationFailed: 2 of 20 checks failed"


def test_a_refresh_keeps_the_state_and_secrets_arrive_plain(provider):
    outputs, inputs = struct(DEPLOYED), struct({k: DEPLOYED[k] for k in ("target", "migrations", "container_ids")})
    read = provider.Read(provider_pb2.ReadRequest(id="dev", urn="urn:step", properties=outputs, inputs=inputs),
                         timeout=30)
    assert (read.id, read.properties, read.inputs) == ("dev", outputs, inputs)
    configured = provider.Configure(provider_pb2.ConfigureRequest(), timeout=30)
    assert (configured.acceptSecrets, configured.supportsPreview) == (False, False)


def test_the_step_s_side_prints_only_its_outputs_on_stdout(monkeypatch, capsys):
    def noisy_run(inputs: dict) -> dict:
        print("a line some library printed")
        return {"checks": 20}

    monkeypatch.setattr(provider_step, "run", noisy_run)
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(DEPLOYED)))
    assert provider_step.main() == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == {"checks": 20}
    assert "a line some library printed" in printed.err
