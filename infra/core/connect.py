"""Reach the two services of a :class:`infra.core.targets.Target`, without Pulumi.

Connecting retries with backoff until a deadline, never retries a rejected password, and
always has a connect timeout.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Iterator, Optional, TypeVar

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from infra.core.errors import OperationFailed
from infra.core.targets import CLIENT_SETTINGS, PostgresTarget, RedisTarget, Target

CONNECT_TIMEOUT_S = CLIENT_SETTINGS["postgres"]["connectionTimeoutMillis"] // 1000
REDIS_RETRY_STEP_S = CLIENT_SETTINGS["redis"]["retryStepMillis"] / 1000
REDIS_RETRY_MAX_S = CLIENT_SETTINGS["redis"]["retryMaxDelayMillis"] / 1000
# How often a service that was just (re)started is asked again: it is ready within one poll of
# the moment it listens, not one growing backoff step later. A refused connection costs ~1 ms.
READY_POLL_S = 0.05

# SQLSTATEs of a rejected login: never retried.
_PG_AUTH_FAILED = {"28P01", "28000"}


class ConnectError(OperationFailed):
    """A service could not be reached in time, or it rejected the credentials."""


class AuthRejected(ConnectError):
    """The service rejected the credentials; retrying cannot help."""


def backoff_delays(step: float = REDIS_RETRY_STEP_S, cap: float = REDIS_RETRY_MAX_S):
    """The ADR's retry strategy: ``min(attempt * step, cap)`` seconds."""
    attempt = 0
    while True:
        attempt += 1
        yield min(attempt * step, cap)


T = TypeVar("T")


def _delays(poll_s: Optional[float]) -> Iterator[float]:
    return itertools.repeat(poll_s) if poll_s else backoff_delays()


def _retry(what: str, attempt: Callable[[], T], is_auth_error: Callable[[Exception], bool],
           transient: tuple, deadline_s: float, delays: Iterator[float]) -> T:
    """Call ``attempt`` until it succeeds, the deadline passes, or credentials are rejected."""
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            return attempt()
        except transient as exc:
            if is_auth_error(exc):
                raise AuthRejected(f"{what} rejected the credentials: {first_line(exc)}; the stack's configured password "
                                   f"differs from the service's: `python -m infra up` sets PostgreSQL's from the "
                                   f"configuration (postgresPassword / redisPassword)") from None
            if time.monotonic() + 0.01 >= give_up:
                raise ConnectError(f"{what} did not answer within {round(deadline_s, 1):g} s: {first_line(exc)}; check that its "
                                   f"container runs and is healthy (`python -m infra status`)") from None
            time.sleep(min(next(delays), max(0.0, give_up - time.monotonic())))


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _require_reachable(target: PostgresTarget | RedisTarget) -> None:
    """Never connect to this machine's loopback for a service published on a remote host."""
    if target.tunnel_required:
        raise ConnectError(f"{target.describe()} is published on the stack's remote Docker host and is reached only "
                           f"through its SSH tunnel (infra.core.dockerhost.reach); nothing was contacted")


def connect_postgres(target: PostgresTarget, deadline_s: float = 30.0, password: str | None = None,
                     autocommit: bool = True, poll_s: Optional[float] = None) -> psycopg.Connection:
    """Open an authenticated connection, retrying while the server starts (with the ADR's
    backoff, or every ``poll_s``)."""
    _require_reachable(target)

    def attempt() -> psycopg.Connection:
        return psycopg.connect(
            host=target.host, port=target.port, dbname=target.database, user=target.user,
            password=target.password if password is None else password,
            connect_timeout=CONNECT_TIMEOUT_S, application_name="sin-datastores",
            autocommit=autocommit,
        )

    def is_auth_error(exc: Exception) -> bool:
        return getattr(exc, "sqlstate", None) in _PG_AUTH_FAILED or "password authentication failed" in str(exc)

    return _retry(target.describe(), attempt, is_auth_error, (psycopg.OperationalError,), deadline_s, _delays(poll_s))


def connect_redis(target: RedisTarget, deadline_s: float = 30.0, password: str | None = None,
                  socket_timeout_s: float = 10.0, decode: bool = True, poll_s: Optional[float] = None) -> redis.Redis:
    """Open an authenticated client and PING it, retrying while the server starts or loads (with
    the ADR's backoff, or every ``poll_s``). ``decode=False`` gives a binary-safe client (values as
    bytes, e.g. for DUMP/RESTORE)."""
    _require_reachable(target)

    def attempt() -> redis.Redis:
        client = redis.Redis(
            host=target.host, port=target.port,
            password=target.password if password is None else (password or None),
            socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=socket_timeout_s,
            decode_responses=decode,
            retry=Retry(NoBackoff(), 0),  # _retry below owns retrying; redis-py's own would retry rejected passwords
        )
        try:
            client.ping()
        except Exception:
            client.close()
            raise
        return client

    def is_auth_error(exc: Exception) -> bool:
        # redis-py maps NOAUTH and WRONGPASS to AuthenticationError, a ConnectionError.
        return isinstance(exc, redis.AuthenticationError)

    return _retry(target.describe(), attempt, is_auth_error,
                  (redis.ConnectionError, redis.TimeoutError),
                  deadline_s, _delays(poll_s))


def wait_until_answering(target: Target, deadline_s: float) -> None:
    """Return once both services answer, asking every READY_POLL_S: what `up` waits for after
    starting containers, instead of Docker's health interval. A rejected password is an answer
    too (the post-deploy step then sets PostgreSQL's from the configuration)."""
    give_up = time.monotonic() + deadline_s
    for service, connect in ((target.postgres, connect_postgres), (target.redis, connect_redis)):
        try:
            connect(service, max(0.1, give_up - time.monotonic()), poll_s=READY_POLL_S).close()
        except AuthRejected:
            pass
