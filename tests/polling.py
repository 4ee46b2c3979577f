"""Waiting in tests: poll a check until it holds, bounded."""

from __future__ import annotations

import time
from typing import Callable

import pytest


def until(what: str, check: Callable[[], object], timeout_s: float, every_s: float = 0.5):
    """``check()``'s first truthy result; fails the test naming ``what`` and the last error at the deadline
    (a check that raises, e.g. against a server still starting, is asked again)."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the last failure is reported below
            last = exc
        time.sleep(every_s)
    pytest.fail(f"{what} not within {timeout_s:.0f} s (last error: {last!r})", pytrace=False)
