"""What the replicated-topology tests watch the cluster with, as its clients would: Patroni's REST API
and a writer that records each commit the server acknowledged."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Callable, Sequence

import psycopg

from infra.core import cluster


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
    """Inserts rows into ``acked`` through the endpoints in turn, one commit at a time, and records
    each commit the server acknowledged and when, as an application sees them, and when a commit
    failed. An id whose commit failed is never reused: it may or may not be there.

    No statement_timeout: cancelling a commit that waits for its synchronous standby returns it as
    committed (PostgreSQL's warning "the transaction has already committed locally"), an
    acknowledgement no cluster promises to keep. A dead connection is given up by the socket
    (``tcp_user_timeout`` in the connect function) instead, which acknowledges nothing."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], connect: Callable[[str, int], psycopg.Connection]):
        super().__init__(daemon=True)
        self.endpoints, self.connect = list(endpoints), connect
        self.acknowledged: list[tuple[int, float]] = []
        self.failed_at: list[float] = []
        self.stop = threading.Event()
        self.next_id = 1

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.connect(*self.endpoints[self.next_id % len(self.endpoints)])
                conn.execute("INSERT INTO acked (id) VALUES (%s)", (self.next_id,))
                self.acknowledged.append((self.next_id, time.monotonic()))
            except psycopg.Error:
                self.failed_at.append(time.monotonic())
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
            self.next_id += 1
            time.sleep(0.01)
        if conn is not None:
            conn.close()

    def ids(self) -> set[int]:
        return {row for row, _ in self.acknowledged}

    def back_after(self, moment: float) -> float:
        """Seconds from ``moment`` until writes were acknowledged again after the first failure
        that followed it (the outage a client saw)."""
        first_failure = next(at for at in self.failed_at if at > moment)
        return next(at for _, at in self.acknowledged if at > first_failure) - moment

    def writing_again(self, moment: float) -> bool:
        return any(at > moment for at in self.failed_at) and self.acknowledged[-1][1] > self.failed_at[-1]
