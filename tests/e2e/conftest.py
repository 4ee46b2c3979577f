"""Throwaway stacks on the real Pulumi engine and the local Docker Engine.

Every stack lives in a temporary file backend with its own passphrase, gets a free
subnet, free host ports and stack-prefixed names, and is destroyed and removed in
`finally`, with a label-based sweep of Docker objects as the last resort.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from pulumi import automation as auto

from infra.core import dockercli
from infra.driver import stacks, teststacks


def docker(*args: str) -> str:
    return dockercli.docker(*args)


def inspect(kind: str, name: str) -> dict:
    return json.loads(docker(kind, "inspect", name))[0]


def objects_of(stack: str) -> dict[str, list[str]]:
    """Names of the containers, networks and volumes labelled as the stack's."""
    return {kind: sorted(names) for kind, names in dockercli.labelled_objects(stack).items()}


def sweep(stack: str) -> None:
    """Remove whatever Docker objects of the stack are left."""
    dockercli.remove_objects(dockercli.labelled_objects(stack))


def local_images() -> dict[str, str]:
    try:
        return stacks.local_images()
    except stacks.StackError as exc:
        pytest.fail(f"{exc}; run the tests through scripts/test", pytrace=False)


@dataclass
class TestStack:
    """A throwaway stack and the config it was created with."""

    stack: auto.Stack
    name: str
    config: dict[str, str]
    removed: bool = False

    def up(self, **kwargs) -> auto.UpResult:
        """`up`, choosing new ports or subnet if one this stack reserved was taken meanwhile."""
        return teststacks.up_with_retries(self.stack, lambda: self.stack.up(color="never", **kwargs), print,
                                          rechosen=self.config)

    def destroy_and_remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        try:
            self.stack.destroy(color="never")
        finally:
            try:
                self.stack.workspace.remove_stack(self.name)
            finally:
                sweep(self.name)
                teststacks.release(self.name)


def stack_config(retain_volumes: bool = False, stack: str = "") -> dict[str, str]:
    return {**teststacks.isolated_config(retain_volumes, stack), "healthTimeoutSeconds": "90", **local_images()}


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> stacks.Settings:
    if shutil.which("pulumi") is None:
        pytest.fail("the pulumi CLI is not on PATH: run the tests through scripts/test", pytrace=False)
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker daemon answers: run the tests through scripts/test", pytrace=False)
    base = tmp_path_factory.mktemp("pulumi")
    return stacks.Settings(backend_url=f"file://{base / 'state'}", passphrase_file=base / "passphrase")


@pytest.fixture(scope="session")
def make_stack(settings):
    """Create throwaway stacks; every one is destroyed and removed at the end of the session."""
    created: list[TestStack] = []

    def make(retain_volumes: bool = False, **overrides: str) -> TestStack:
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        config = {**stack_config(retain_volumes, name), **overrides}
        test_stack = TestStack(teststacks.create(settings, name, config), name, config)
        created.append(test_stack)
        return test_stack

    try:
        yield make
    finally:
        errors = []
        for test_stack in created:
            try:
                test_stack.destroy_and_remove()
            except Exception as exc:  # keep cleaning the others; report at the end
                errors.append(f"{test_stack.name}: {exc}")
        for test_stack in created:
            sweep(test_stack.name)
        assert not errors, errors


def state_files(settings: stacks.Settings) -> list[Path]:
    return [p for p in Path(settings.backend_url[len("file://"):]).rglob("*") if p.is_file()]
