"""Settings of the whole run: its Pulumi commands log into a home of their own (see
:func:`infra.driver.teststacks.private_pulumi_home`), removed when the run ends."""

from __future__ import annotations

import contextlib

import pytest

from infra.driver import stacks, teststacks

_run = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    _run.enter_context(teststacks.private_pulumi_home())


def pytest_unconfigure(config: pytest.Config) -> None:
    _run.close()


@pytest.fixture(scope="session", autouse=True)
def no_stack_file_left():
    """Throwaway stacks leave no Pulumi.<stack>.yaml in the working tree once the run is over."""
    before = set(stacks.ROOT.glob("Pulumi.*.yaml"))
    yield
    left = sorted(p.name for p in set(stacks.ROOT.glob("Pulumi.*.yaml")) - before)
    assert not left, f"the run left stack files in the working tree: {left}"
