"""Fixtures of the unit tests; the helpers they use are in tests/unit/program_mocks.py."""

from __future__ import annotations

import pytest

from tests.unit.program_mocks import RecordingMocks, run_program


@pytest.fixture
def dev() -> RecordingMocks:
    """A run of its own for each test: a shared run would be credited by coverage tools (mutmut
    picks the tests to run against a mutant that way) to the first test that used it only."""
    return run_program()
