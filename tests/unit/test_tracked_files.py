"""Every environment's Pulumi.<stack>.yaml is tracked by default; the test suite's throwaway stacks' are not."""

from __future__ import annotations

import subprocess

import pytest

from infra.driver import stacks, teststacks


@pytest.mark.parametrize("name,ignored", [("dev", False), ("prod", False), ("staging-eu", False), ("test", False),
                                          ("test-env", False), (teststacks.new_name(), True), ("e2e-1a2b3c4d", True)])
def test_a_stack_file_is_tracked_unless_a_test_stack_made_it(name, ignored):
    checked = subprocess.run(["git", "-C", str(stacks.ROOT), "check-ignore", "-q", "--no-index", f"Pulumi.{name}.yaml"])
    assert checked.returncode == (0 if ignored else 1), name
