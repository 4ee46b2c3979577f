"""How long clients are refused while a password is rotated, beside a plain container restart.

One throwaway stack (private file backend, local images). A prober logs in every PROBE_S
through the published port, with the old and with the new password. For each service:
  rotation   `pulumi up` after `pulumi config set --secret <key>` (docs/configuration.md, Rotating a password):
             the container is replaced (its password file or config file changed) and, for
             PostgreSQL, the post-deploy step sets the new password in the data
  baseline   `docker restart` of the same container (what any restart costs clients)
Printed per service, medians over ROUNDS (env SIN_BENCH_ROUNDS): the outage (the longest time
in which neither password was accepted), how long after `up` started the old password still
worked, and the wall time of `up`. Run: scripts/bench rotation
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import psycopg
import redis as redis_lib

from benchmarks.lifecycle import PulumiStack
from infra.core import dockercli
from infra.driver import stacks, teststacks

ROUNDS = int(os.environ.get("SIN_BENCH_ROUNDS", "3"))
PROBE_S = 0.02
SETTLE_S = 1.0
PASSWORD_KEY = {"postgres": "postgresPassword", "redis": "redisPassword"}


def pg_login(port: int, password: str) -> bool:
    try:
        psycopg.connect(host="127.0.0.1", port=port, dbname="sinsolver", user="sinadmin", password=password,
                        connect_timeout=1).close()
        return True
    except psycopg.OperationalError:
        return False


def redis_login(port: int, password: str) -> bool:
    client = redis_lib.Redis(port=port, password=password, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis_lib.RedisError:
        return False
    finally:
        client.close()


class Prober:
    """Logs in with each password in its own thread until stopped, noting when each answer came."""

    def __init__(self, login: Callable[[str], bool], old: str, new: str):
        self.login = login
        self.answers: dict[str, list[tuple[float, bool]]] = {"old": [], "new": []}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(which, password), daemon=True)
                         for which, password in (("old", old), ("new", new))]

    def _run(self, which: str, password: str) -> None:
        while not self._stop.is_set():
            accepted = self.login(password)
            self.answers[which].append((time.monotonic(), accepted))
            time.sleep(PROBE_S)

    def __enter__(self) -> "Prober":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        time.sleep(SETTLE_S)
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def outage_s(self) -> float:
        """The longest time between two answers that accepted some password."""
        accepted = sorted(t for answers in self.answers.values() for t, ok in answers if ok)
        if not accepted:
            raise AssertionError("no password was accepted at any time")
        return max((b - a for a, b in zip(accepted, accepted[1:])), default=0.0)

    def old_accepted_for_s(self, since: float) -> float:
        last = [t for t, ok in self.answers["old"] if ok]
        return max(0.0, (last[-1] - since) if last else 0.0)

    def switched(self) -> bool:
        """At the end the new password is accepted and the old one refused."""
        return self.answers["new"][-1][1] and not self.answers["old"][-1][1]


def rotate(stack: PulumiStack, service: str, port: int, login) -> tuple[float, float, float]:
    """Outage, how long the old password still worked, and `up` wall time, for one rotation."""
    key = PASSWORD_KEY[service]
    old = stack.stack.get_all_config()[f"sin-datastores:{key}"].value
    new = secrets.token_urlsafe(32)
    stacks.set_secret(stack.stack, key, new)
    with Prober(lambda pw: login(port, pw), old, new) as probe:
        started = time.monotonic()
        stack.up()
        wall = time.monotonic() - started
    assert probe.switched(), f"{service}: after the rotation the new password must work, the old not"
    return probe.outage_s(), probe.old_accepted_for_s(started), wall


def restart(container: str, port: int, password: str, login) -> float:
    with Prober(lambda pw: login(port, pw), password, password) as probe:
        dockercli.docker("restart", container)
        # Ready again: the prober must see the service answer before it stops.
        deadline = time.monotonic() + 60
        while not login(port, password) and time.monotonic() < deadline:
            time.sleep(PROBE_S)
    return probe.outage_s()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sin-bench-") as tmp:
        settings = stacks.Settings(f"file://{tmp}/state", Path(tmp) / "passphrase")
        figures: dict[str, list[float]] = {}
        stack = PulumiStack(settings)
        try:
            stack.up()
            outputs = {k: v.value for k, v in stack.stack.outputs().items()}
            for _ in range(ROUNDS):
                for service, login in (("postgres", pg_login), ("redis", redis_login)):
                    port = int(outputs[f"{service}HostPort"])
                    outage, old_for, wall = rotate(stack, service, port, login)
                    figures.setdefault(f"{service} outage", []).append(outage)
                    figures.setdefault(f"{service} old", []).append(old_for)
                    figures.setdefault(f"{service} up", []).append(wall)
                    password = stack.stack.get_all_config()[f"sin-datastores:{PASSWORD_KEY[service]}"].value
                    figures.setdefault(f"{service} restart", []).append(
                        restart(outputs[f"{service}ContainerName"], port, password, login))
            stack.destroy()
        finally:
            stack.remove()
    med = {k: statistics.median(v) for k, v in figures.items()}
    row = "{:<9} {:>20} {:>22} {:>16} {:>14}"
    print(row.format("service", "rotation outage s", "old password kept s", "up wall s",
                     f"restart s (baseline; medians of {ROUNDS})"))
    for service in ("postgres", "redis"):
        print(row.format(service, f"{med[f'{service} outage']:.2f}", f"{med[f'{service} old']:.2f}",
                         f"{med[f'{service} up']:.2f}", f"{med[f'{service} restart']:.2f}"))


if __name__ == "__main__":
    with teststacks.private_pulumi_home():
        main()
