"""Stacks made by release b4cf473 and earlier hold the post-deploy step of this project's own
provider plugin (sin-postdeploy), which no Pulumi install has: `up` and `down` remove it from the
state before the engine runs, `preview` previews a copy of the state without it."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from infra.core.targets import DockerHost
from infra.driver import stacks

PREFIX = "urn:pulumi:dev::sin-datastores::"
STEP = f"{PREFIX}sin-datastores:index:PostDeploy$sin-postdeploy:index:Step::post-deploy-step"
PROVIDER = f"{PREFIX}sin-datastores:index:PostDeploy$pulumi:providers:sin-postdeploy::post-deploy-provider"
VOLUME = f"{PREFIX}sin-datastores:index:PostgresService$docker:index/volume:Volume::postgres-data"
OLD_STATE = {"resources": [
    {"urn": f"{PREFIX}pulumi:pulumi:Stack::sin-datastores-dev", "type": "pulumi:pulumi:Stack"},
    {"urn": PROVIDER, "type": "pulumi:providers:sin-postdeploy"},
    {"urn": VOLUME, "type": "docker:index/volume:Volume"},
    {"urn": STEP, "type": "sin-postdeploy:index:Step", "provider": f"{PROVIDER}::04da6b54"},
]}


def test_the_old_step_is_found_before_its_provider():
    assert stacks.legacy_step(OLD_STATE) == [STEP, PROVIDER]


def test_a_state_of_this_release_has_no_old_step():
    current = {"resources": [r for r in OLD_STATE["resources"] if "sin-postdeploy" not in r["type"]]}
    assert stacks.legacy_step(current) == [] and stacks.legacy_step({}) == []


@pytest.fixture
def cli_calls(monkeypatch):
    """The `pulumi` commands the driver runs, answered with ``cli_calls.answer``."""
    calls = SimpleNamespace(argv=[], answer=subprocess.CompletedProcess([], 0, "", ""))

    def fake(stack, *args, stdin=None):
        calls.argv.append(args)
        return calls.answer

    monkeypatch.setattr(stacks, "_pulumi", fake)
    return calls


def test_up_removes_the_old_step_and_its_provider_in_one_state_edit_and_says_so(cli_calls):
    said = []
    stacks.forget_legacy_step(SimpleNamespace(name="dev"), OLD_STATE, said.append)
    assert cli_calls.argv == [("state", "delete", "--yes", STEP, PROVIDER)]
    assert len(said) == 1 and "removed the post-deploy step of release b4cf473" in said[0]


def test_a_current_state_is_left_alone(cli_calls):
    said = []
    stacks.forget_legacy_step(SimpleNamespace(name="dev"), {"resources": OLD_STATE["resources"][:1]}, said.append)
    assert (cli_calls.argv, said) == ([], [])


def test_a_refused_state_edit_says_how_to_do_it_by_hand(cli_calls):
    cli_calls.answer = subprocess.CompletedProcess([], 255, "", "error: the stack is locked")
    with pytest.raises(stacks.StackError, match="the stack is locked; remove it by hand with `pulumi state delete"):
        stacks.forget_legacy_step(SimpleNamespace(name="dev"), OLD_STATE, print)


def backend_with(tmp_path: Path, name: str, suffix: str = ".json") -> Path:
    """A file backend (project layout) holding the old state of stack ``name``."""
    backend = tmp_path / "state"
    folder = backend / ".pulumi" / "stacks" / "sin-datastores"
    folder.mkdir(parents=True)
    (backend / ".pulumi" / "meta.yaml").write_text("version: 1\n")
    checkpoint = {"version": 3, "checkpoint": {"stack": name, "latest": OLD_STATE}}
    with (gzip.open if suffix.endswith(".gz") else open)(folder / f"{name}{suffix}", "wt") as handle:
        json.dump(checkpoint, handle)
    return backend


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_preview_s_copy_of_the_state_lacks_the_old_step_and_the_stack_s_own_is_unchanged(tmp_path, suffix):
    backend = backend_with(tmp_path, "dev", suffix)
    original = (backend / ".pulumi" / "stacks" / "sin-datastores" / f"dev{suffix}").read_bytes()
    copy = tmp_path / "copy"
    assert stacks.copy_state_without(backend, "dev", [STEP, PROVIDER], copy)
    copied = copy / ".pulumi" / "stacks" / "sin-datastores" / f"dev{suffix}"
    with (gzip.open if suffix.endswith(".gz") else open)(copied, "rt") as handle:
        kept = json.load(handle)["checkpoint"]["latest"]["resources"]
    assert [r["urn"] for r in kept] == [OLD_STATE["resources"][0]["urn"], VOLUME]
    assert (copy / ".pulumi" / "meta.yaml").read_text() == "version: 1\n"
    assert (backend / ".pulumi" / "stacks" / "sin-datastores" / f"dev{suffix}").read_bytes() == original


def test_no_copy_of_a_stack_the_backend_does_not_hold(tmp_path):
    backend = backend_with(tmp_path, "dev")
    assert not stacks.copy_state_without(backend, "prod", [STEP], tmp_path / "copy")


def test_down_removes_the_old_step_before_the_engine_deletes_the_rest(cli_calls, monkeypatch, tmp_path):
    order = []
    monkeypatch.setattr(stacks, "exported_deployment", lambda stack: OLD_STATE)
    monkeypatch.setattr(stacks, "docker_host_of", lambda stack: DockerHost())  # local: no tunnel
    monkeypatch.setattr(stacks.Engine, "of", classmethod(lambda cls, env: None))  # no Docker here
    monkeypatch.setattr(stacks, "retains_volumes", lambda stack: True)
    monkeypatch.setattr(stacks, "keep_state_copy", lambda stack, say: order.append(("state copy",)))
    cli_calls.answer = subprocess.CompletedProcess([], 0, "", "")
    stack = SimpleNamespace(name="dev", destroy=lambda **kwargs: order.append(("destroy", cli_calls.argv[:])),
                            workspace=SimpleNamespace(env_vars={"PULUMI_BACKEND_URL": f"file://{tmp_path}"}))
    stacks.destroy(stack, print)
    assert order == [("destroy", [("state", "delete", "--yes", STEP, PROVIDER)]), ("state copy",)]
