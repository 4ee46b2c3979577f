"""A lowered redisMemoryMb against what a real Redis 7 holds (infra.deploy.redis_memory)."""

from __future__ import annotations

import pytest
import redis

from infra.deploy import redis_memory
from tests.servers import RedisServer

PASSWORD = "redis-memory-test-password-0123"


@pytest.fixture
def holding_10_mb():
    """A Redis with the maxmemory of a 32 MB container, holding about 10 MB more than when it started."""
    server = RedisServer.start(password=PASSWORD, extra=["maxmemory 24mb", "maxmemory-policy volatile-lru"])
    try:
        with redis.Redis(port=server.port, password=PASSWORD) as client:
            client.mset({f"queue:{i}": b"x" * 10_000 for i in range(1_000)})
        yield server
    finally:
        server.stop()


def test_a_limit_below_what_redis_holds_is_refused_and_one_that_holds_it_passes(holding_10_mb):
    target = holding_10_mb.target()
    with pytest.raises(redis_memory.RedisTooFull) as refused:
        redis_memory.refuse_if_too_full(target, 12, "dev")  # maxmemory 9 MB
    said = str(refused.value)
    assert said.startswith(f"redisMemoryMb 12: {target.describe()} holds 1")
    assert "`pulumi config set redisMemoryMb 1" in said and "--stack dev`" in said and PASSWORD not in said
    redis_memory.refuse_if_too_full(target, 20, "dev")  # maxmemory 15 MB: it fits
    redis_memory.refuse_if_too_full(target, 64, "dev")  # raised
