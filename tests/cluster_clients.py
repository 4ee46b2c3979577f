"""What the replicated-topology tests watch the cluster with, as its clients would: Patroni's REST API
and writers that record each write the server acknowledged (PostgreSQL through an endpoint, Redis
through Sentinel)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Callable, Sequence

import psycopg
import redis

from infra.core import cluster


class Secret(redis.CredentialProvider):
    """A password an application reads at each new connection, as from its secret store (for psycopg:
    call it): the test changes ``value`` as an operator would."""

    def __init__(self, value: str):
        self.value = value

    def get_credentials(self) -> tuple[str]:
        return (self.value,)

    def __call__(self) -> str:
        return self.value


def roles(address: str) -> dict[str, tuple[str, str]]:
    """Patroni's members as ``address`` sees them: host -> (role, state)."""
    url = f"http://{address}:{cluster.PATRONI_REST_PORT}/cluster"
    with urllib.request.urlopen(url, timeout=2) as reply:
        return {m["host"]: (m["role"], m["state"]) for m in json.load(reply)["members"]}


def whole(addresses: Sequence[str], via: str = "") -> Callable[[], dict]:
    """A check: every member of ``addresses`` there, one leader, a synchronous standby, the rest
    streaming, as ``via`` (default: the first) sees them."""
    def check():
        found = roles(via or addresses[0])
        kinds = sorted(role for role, _ in found.values())
        expected = ["leader", *(["replica"] * (len(addresses) - 2)), "sync_standby"]
        if (sorted(found) == sorted(addresses) and sorted(kinds) == sorted(expected)
                and all(s in ("running", "streaming") for _, s in found.values())):
            return found
        raise AssertionError(f"members: {found}")  # until() reports the last one
    return check


def leader_of(found: dict[str, tuple[str, str]]) -> str:
    return next(address for address, (role, _) in found.items() if role == "leader")


class Writer(threading.Thread):
    """Writes one numbered item at a time, as an application does, and records each write the server
    acknowledged and when, and when a write failed. A number whose write failed is never reused: it
    may or may not be there. Numbers start at ``first_id``: a second writer on the same table or list
    starts past the first one's."""

    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, first_id: int):
        super().__init__(daemon=True)
        self.acknowledged: list[tuple[int, float]] = []
        self.failed_at: list[float] = []
        self.failure_kinds: list[str] = []
        """Beside ``failed_at``: what each failure was (the exception's class and its first words)."""
        self.stop = threading.Event()
        self.next_id = first_id

    def write(self, item: int) -> None:
        raise NotImplementedError

    def drop_connection(self) -> None:
        """After a failed write: the next one starts from a new connection."""

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.write(self.next_id)
                self.acknowledged.append((self.next_id, time.monotonic()))
            except self.errors as exc:
                self.failed_at.append(time.monotonic())
                self.failure_kinds.append(" ".join([type(exc).__name__, *str(exc).split()[:1]]))
                self.drop_connection()
                time.sleep(0.1)
            self.next_id += 1
            time.sleep(0.01)
        self.drop_connection()

    def ids(self) -> set[int]:
        return {item for item, _ in self.acknowledged}

    def back_after(self, moment: float) -> float:
        """Seconds from ``moment`` until writes were acknowledged again after the first failure
        that followed it (the outage a client saw); 0 when none failed."""
        first_failure = next((at for at in self.failed_at if at > moment), None)
        if first_failure is None:
            return 0.0
        return next(at for _, at in self.acknowledged if at > first_failure) - moment

    def outage(self, moment: float) -> str:
        """The failures after ``moment`` by kind, each with when it was first and last seen: where an
        outage's time went (e.g. the old master's timeouts, then no master, then refused writes)."""
        spans: dict[str, list] = {}
        for at, kind in zip(self.failed_at, self.failure_kinds):
            if at > moment:
                span = spans.setdefault(kind, [at, at, 0])
                span[1], span[2] = at, span[2] + 1
        return "; ".join(f"{kind} x{n} {first - moment:.1f}-{last - moment:.1f} s"
                         for kind, (first, last, n) in spans.items())

    def longest_gap(self, since: float) -> float:
        """The longest time after ``since`` between two acknowledged writes: what a client waited at worst."""
        moments = [since, *(at for _, at in self.acknowledged if at > since)]
        return max(b - a for a, b in zip(moments, moments[1:]))

    def failures_in_a_row(self, since: float) -> int:
        """The most attempts after ``since`` that failed one after the other (a retry 0.1 s after each)."""
        events = sorted([(at, True) for _, at in self.acknowledged if at > since]
                        + [(at, False) for at in self.failed_at if at > since])
        longest = run = 0
        for _, ok in events:
            run = 0 if ok else run + 1
            longest = max(longest, run)
        return longest

    def writing_again(self, moment: float) -> bool:
        return any(at > moment for at in self.failed_at) and self.acknowledged[-1][1] > self.failed_at[-1]


class PostgresWriter(Writer):
    """Inserts rows into ``acked`` through the endpoints in turn, one commit at a time.

    No statement_timeout: cancelling a commit that waits for its synchronous standby returns it as
    committed (PostgreSQL's warning "the transaction has already committed locally"), an
    acknowledgement no cluster promises to keep. A dead connection is given up by the socket
    (``tcp_user_timeout`` in the connect function) instead, which acknowledges nothing."""

    errors = (psycopg.Error,)

    def __init__(self, endpoints: Sequence[tuple[str, int]], connect: Callable[[str, int], psycopg.Connection],
                 first_id: int):
        super().__init__(first_id)
        self.endpoints, self.connect = list(endpoints), connect
        self.conn: psycopg.Connection | None = None

    def write(self, item: int) -> None:
        if self.conn is None:
            self.conn = self.connect(*self.endpoints[item % len(self.endpoints)])
        self.conn.execute("INSERT INTO acked (id) VALUES (%s)", (item,))

    def drop_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


class RedisWriter(Writer):
    """Appends numbers to the list ``key`` on whichever server the Sentinels name master (the client
    asks them again after a connection error); a write Redis acknowledged but lost in a failover is
    missing from the list afterwards."""

    errors = (redis.RedisError,)

    def __init__(self, master: redis.Redis, key: str):
        super().__init__(1)
        self.master, self.key = master, key

    def write(self, item: int) -> None:
        self.master.rpush(self.key, item)

    def lost(self) -> set[int]:
        """The acknowledged numbers the current master does not have."""
        return self.ids() - {int(item) for item in self.master.lrange(self.key, 0, -1)}
