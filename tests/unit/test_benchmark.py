"""The life-cycle benchmark compares like with like: its floor creates the containers with the same checks."""

from __future__ import annotations

import pytest

from benchmarks.lifecycle import HEALTH_TIMEOUT_S, health_flags, host_busy_s
from infra.components import postgres, redis
from infra.components.common import healthcheck


@pytest.mark.parametrize("command", [postgres.HEALTHCHECK, redis.HEALTHCHECK])
def test_the_floor_declares_the_healthcheck_the_components_declare(command):
    declared = healthcheck(command, HEALTH_TIMEOUT_S)
    flags = dict(zip(health_flags(command)[::2], health_flags(command)[1::2]))
    assert flags == {"--health-cmd": declared.tests[1], "--health-interval": declared.interval,
                     "--health-timeout": declared.timeout, "--health-start-period": declared.start_period,
                     "--health-retries": str(declared.retries)}


def test_host_cpu_counter_grows_with_work():
    before = host_busy_s()
    sum(i * i for i in range(2_000_000))
    assert host_busy_s() - before > 0.01
