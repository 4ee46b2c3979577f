"""Settings of the whole run: its Pulumi commands log into a home of their own (see
:func:`infra.driver.teststacks.private_pulumi_home`), removed when the run ends."""

from __future__ import annotations

import contextlib

import pytest

from infra.driver import teststacks

_run = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    _run.enter_context(teststacks.private_pulumi_home())


def pytest_unconfigure(config: pytest.Config) -> None:
    _run.close()
