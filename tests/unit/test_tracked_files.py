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


@pytest.mark.parametrize("name,ignored", [("dev", False), ("prod", False), ("staging-eu", False), ("test", False),
                                          ("test-env", False), (teststacks.new_name(), True), ("e2e-1a2b3c4d", True)])
def test_a_stack_file_is_tracked_unless_a_test_stack_made_it(checkout, name, ignored):
    checked = subprocess.run(["git", "-C", str(checkout), "check-ignore", "-q", "--no-index", f"Pulumi.{name}.yaml"])
    assert checked.returncode == (0 if ignored else 1), name
