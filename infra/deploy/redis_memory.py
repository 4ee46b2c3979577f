"""Whether what Redis holds fits the smaller limit a lowered ``redisMemoryMb`` gives it.

Redis gets 3/4 of its container's limit as ``maxmemory`` (:func:`infra.core.targets.redis_maxmemory_mb`).
Lowered below what it uses, Redis evicts keys with a TTL (sessions, cache: ``volatile-lru``) to fit,
refuses writes once only keys without one are left (queues), and its container may no longer hold
the data it loads at a restart. `up` and `preview` therefore read Redis first and refuse such a change
before anything is touched. Plain Python, no Pulumi.
"""

from __future__ import annotations

import math
from typing import Optional

from infra.core.connect import connect_redis
from infra.core.errors import InputError
from infra.core.targets import MAXMEMORY_SHARE, RedisTarget, redis_maxmemory_mb

MB = 1 << 20
# How long `up` waits for Redis to answer the one INFO it asks: it answers at once, or is down.
READ_DEADLINE_S = 5.0


class RedisTooFull(InputError):
    """Redis holds more than the lowered ``redisMemoryMb`` would let it; nothing was changed."""


def smallest_fitting_mb(used_bytes: int) -> int:
    """The smallest ``redisMemoryMb`` whose ``maxmemory`` (whole MB) holds ``used_bytes``."""
    return math.ceil(-(-used_bytes // MB) / MAXMEMORY_SHARE)


def problem(info: dict, memory_mb: int, stack: str, where: str) -> Optional[str]:
    """Why ``redisMemoryMb`` ``memory_mb`` cannot be given to the Redis whose ``INFO memory`` is ``info``
    (``where``: which one), or None: only a ``maxmemory`` lower than the running one and below what Redis
    uses is refused (one already over its limit is left to `verify`)."""
    used, running = int(info["used_memory"]), int(info.get("maxmemory") or 0)
    lowered = redis_maxmemory_mb(memory_mb) * MB
    if (running and lowered >= running) or used <= lowered:
        return None
    fitting = smallest_fitting_mb(used)
    return (f"redisMemoryMb {memory_mb}: {where} holds {used / MB:.1f} MB, more than the "
            f"{lowered // MB} MB maxmemory a {memory_mb} MB container leaves it ({MAXMEMORY_SHARE:.0%}); it would "
            f"evict keys with a TTL (sessions, cache) and then refuse writes. Nothing was changed. Set "
            f"redisMemoryMb to {fitting} or more (`pulumi config set redisMemoryMb {fitting} --stack {stack}`), "
            f"or delete keys first.")


def refuse_if_too_full(target: RedisTarget, memory_mb: int, stack: str, deadline_s: float = READ_DEADLINE_S) -> None:
    """Raise :class:`RedisTooFull` when the Redis at ``target`` holds more than ``memory_mb`` leaves it.
    Raises :class:`infra.core.connect.ConnectError` when it does not answer within ``deadline_s``."""
    with connect_redis(target, deadline_s) as client:
        info = client.info("memory")
    refused = problem(info, memory_mb, stack, target.describe())
    if refused:
        raise RedisTooFull(refused)
