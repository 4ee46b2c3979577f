"""Every environment's Pulumi.<stack>.yaml is tracked by default; the test suite's throwaway stacks' are not."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from infra.driver import stacks, teststacks


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A repository with this project's .gitignore (wherever this tree lives, e.g. inside another checkout)."""
    repo = tmp_path_factory.mktemp("checkout")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    shutil.copy(stacks.ROOT / ".gitignore", repo / ".gitignore")
    return repo


def ignored(checkout, name: str) -> bool:
    checked = subprocess.run(["git", "-C", str(checkout), "check-ignore", "-q", "--no-index", f"Pulumi.{name}.yaml"])
    return checked.returncode == 0


@pytest.mark.parametrize("name", ["dev", "prod", "staging-eu", "test", "test-env"])
def test_every_environment_s_stack_file_is_tracked(checkout, name):
    assert not ignored(checkout, name)


@pytest.mark.parametrize("name", ["test-20261126t010203-a1b2c3", "e2e-1a2b3c4d"])
def test_the_test_suite_s_throwaway_stack_files_are_not(checkout, name):
    assert ignored(checkout, name)


def test_a_name_teststacks_gives_is_one_of_them(checkout):
    assert ignored(checkout, teststacks.new_name())
