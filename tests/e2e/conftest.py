"""Throwaway stacks on the real Pulumi engine and the local Docker Engine.

Every stack lives in a temporary file backend with its own passphrase, gets a free
subnet, free host ports and stack-prefixed names, and is destroyed and removed in
`finally`, with a label-based sweep of Docker objects as the last resort.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import pytest
from pulumi import automation as auto

from infra.core import dockercli
from infra.driver import stacks, teststacks
from tests.e2e.support import put_data, stack_config, sweep


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
        # A test stack's name (it carries its age): if this run dies before its teardown,
        # `python -m infra test-stack sweep` finds what it left.
        name = teststacks.new_name()
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


@pytest.fixture
def stack_with_data(make_stack):
    """A stack brought up with a row and two Redis keys; torn down after the test, hand-made
    containers under its names included (they carry neither its state nor its labels)."""
    test_stack = make_stack()
    test_stack.up()
    target = stacks.target_from_outputs(test_stack.name, test_stack.stack.outputs())
    try:
        put_data(target)
        yield test_stack
    finally:
        dockercli.docker("rm", "-f", "-v", target.postgres.container_name, target.redis.container_name, check=False)
        test_stack.destroy_and_remove()
