"""Benchmark of a stack's life cycle against the same work done with plain `docker` commands.

Same two services, same host, same run, images already present, nothing of the stack on
the Docker host before a cold bring-up. The Pulumi side is the `pulumi` command an operator
runs (`up --yes --skip-preview`, `preview`, `destroy --yes --skip-preview`) against a
throwaway stack in a private file backend. Prints medians over ROUNDS (env SIN_BENCH_ROUNDS):
  cold up     `pulumi up` of a new stack until verified (migrate + 20 checks; the command
              fails otherwise) vs network create, volume create x2, create + copy
              secret/config + start with the same healthchecks, wait healthy, `psql -f` the schema
  no-op up    `pulumi up --expect-no-changes`   vs `docker inspect` of the five objects
  preview     `pulumi preview --expect-no-changes` vs the same inspect
  destroy     `pulumi destroy`                  vs `docker rm -f`, network rm, volume rm
  cold up through the Automation API (what `python -m infra up` runs; it also reads the
  outputs and the update summary back with three more CLI calls), for reference,
and the wall time of 4 stacks brought up in parallel (once per round) against one stack's
cold up, beside 4 plain-docker bring-ups at once against one, with the host CPU one cold up
takes: on a host with few cores neither can beat 4 x that / cores.
Targets: cold up <= 1.5x plain docker (issue 5), no-op up and preview < 2 s with the refresh
that finds drift (issue 10), 4 parallel stacks <= 2x one stack (issue 5). Run: scripts/bench lifecycle
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from infra.core import dockercli
from infra.deploy import migration_files
from infra.driver import stacks, teststacks
from infra.components import postgres, redis
from infra.components.common import healthcheck
from infra.core.config import DEFAULTS

ROUNDS = int(os.environ.get("SIN_BENCH_ROUNDS", "3"))
PARALLEL = 4
HEALTH_TIMEOUT_S = 90


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def host_busy_s() -> float:
    """CPU seconds this host has spent outside idle (every process, containers included)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed_with_cpu(fn, cpu: list[float]) -> float:
    """Wall time of ``fn``; appends the host CPU it took (the host is otherwise idle)."""
    busy = host_busy_s()
    wall = timed(fn)
    cpu.append(host_busy_s() - busy)
    return wall


def assert_verified(outputs: dict) -> None:
    checks = outputs["verificationChecks"].value
    assert checks == 20, f"up must end verified, got {checks} checks"


class PulumiStack:
    """A throwaway stack in a private file backend, driven by the `pulumi` command."""

    def __init__(self, settings: stacks.Settings):
        self.env = {**os.environ, **settings.env()}
        name = teststacks.new_name()
        self.stack = teststacks.create(settings, name, config={**teststacks.isolated_config(stack=name),
                                                               "healthTimeoutSeconds": str(HEALTH_TIMEOUT_S),
                                                               **stacks.local_images()})

    def pulumi(self, *args: str) -> None:
        done = subprocess.run(["pulumi", *args, "--stack", self.stack.name, "--non-interactive", "--color", "never"],
                              cwd=stacks.ROOT, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pulumi {args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def up(self) -> None:
        teststacks.up_with_retries(self.stack, lambda: self.pulumi("up", "--yes", "--skip-preview"), print)

    def check_verified(self) -> None:
        assert_verified(self.stack.outputs())

    def noop_up(self) -> None:
        self.pulumi("up", "--yes", "--skip-preview", "--expect-no-changes")

    def preview(self) -> None:
        self.pulumi("preview", "--expect-no-changes")

    def destroy(self) -> None:
        self.pulumi("destroy", "--yes", "--skip-preview")

    def automation_up(self) -> None:
        assert_verified(self.stack.up(color="never").outputs)

    def remove(self) -> None:
        self.stack.workspace.remove_stack(self.stack.name, force=True)
        dockercli.remove_objects(dockercli.labelled_objects(self.stack.name))
        teststacks.release(self.stack.name)


class PlainDocker:
    """The same two services with docker CLI commands, as a shell script would do it."""

    def __init__(self):
        self.prefix = f"bench-plain-{secrets.token_hex(3)}"
        self.config = teststacks.isolated_config(stack=self.prefix)
        self.password = secrets.token_urlsafe(24)

    def names(self) -> dict[str, str]:
        p = self.prefix
        return {"network": f"{p}-net", "pg_volume": f"{p}-pg", "redis_volume": f"{p}-redis",
                "pg": f"{p}-postgres", "redis": f"{p}-redis"}

    def up(self) -> None:
        n, c, image = self.names(), self.config, stacks.local_images()
        dockercli.docker("network", "create", "--subnet", c["networkSubnet"], "--gateway", c["networkGateway"],
                         "--ip-range", c["networkIpRange"], n["network"])
        dockercli.docker("volume", "create", n["pg_volume"])
        dockercli.docker("volume", "create", n["redis_volume"])
        common = ["--network", n["network"], "--restart", "unless-stopped", "--security-opt", "no-new-privileges:true"]
        dockercli.docker("create", "--name", n["pg"], *common, *memory(DEFAULTS["postgresMemoryMb"]),
                         "--ip", c["postgresIp"],
                         "-p", f"127.0.0.1:{c['postgresHostPort']}:5432", "-v", f"{n['pg_volume']}:{postgres.DATA_PATH}",
                         "-e", "POSTGRES_DB=sinsolver", "-e", "POSTGRES_USER=sinadmin",
                         "-e", f"POSTGRES_PASSWORD_FILE={postgres.PASSWORD_FILE}",
                         *health_flags(postgres.HEALTHCHECK), image["postgresImage"])
        dockercli.put_files(n["pg"], {postgres.PASSWORD_FILE: (self.password.encode(), 0o400)})
        dockercli.docker("create", "--name", n["redis"], *common, *memory(DEFAULTS["redisMemoryMb"]),
                         "--ip", c["redisIp"],
                         "-p", f"127.0.0.1:{c['redisHostPort']}:6379", "-v", f"{n['redis_volume']}:{redis.DATA_PATH}",
                         *health_flags(redis.HEALTHCHECK), image["redisImage"], redis.CONFIG_FILE)
        dockercli.put_files(n["redis"], {redis.CONFIG_FILE: (redis.render_config(self.password, int(DEFAULTS["redisMemoryMb"])).encode(), 0o444)})
        dockercli.docker("start", n["pg"], n["redis"])
        give_up = time.monotonic() + HEALTH_TIMEOUT_S
        while any(dockercli.inspect("container", n[k])["State"]["Health"]["Status"] != "healthy"
                  for k in ("pg", "redis")):
            if time.monotonic() > give_up:
                raise SystemExit("plain docker: containers did not become healthy")
            time.sleep(0.2)
        schema = migration_files.DEFAULT_DIR / "V001__adr006_schema.sql"
        dockercli.exec_from_file(n["pg"], ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "sinadmin",
                                           "-d", "sinsolver"], schema)

    def inspect_all(self) -> None:
        n = self.names()
        dockercli.docker("network", "inspect", n["network"])
        dockercli.docker("volume", "inspect", n["pg_volume"], n["redis_volume"])
        dockercli.docker("container", "inspect", n["pg"], n["redis"])

    def destroy(self, check: bool = True) -> None:
        n = self.names()
        dockercli.docker("rm", "-f", "-v", n["pg"], n["redis"], check=check)
        dockercli.docker("network", "rm", n["network"], check=check)
        dockercli.docker("volume", "rm", n["pg_volume"], n["redis_volume"], check=check)
        teststacks.release(self.prefix)


def health_flags(command: str) -> list[str]:
    """The healthcheck the components declare for ``command``, as `docker create` flags."""
    check = healthcheck(command, HEALTH_TIMEOUT_S)
    return ["--health-cmd", check.tests[1], "--health-interval", check.interval, "--health-timeout", check.timeout,
            "--health-start-period", check.start_period, "--health-retries", str(check.retries)]


def memory(mb: str) -> list[str]:
    """The stack's memory limit without swap, as `docker create` flags."""
    return ["--memory", f"{mb}m", "--memory-swap", f"{mb}m"]


def in_parallel(actions: list[Callable[[], None]]) -> float:
    """Wall time of running ``actions`` at once, one thread each; raises if any failed."""
    errors: list[str] = []

    def run(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # reported after the join
            errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"parallel run failed: {errors}")
    return wall


def parallel_up(settings: stacks.Settings) -> float:
    """Wall time of PARALLEL stacks brought up at once (each to verified)."""
    group = [PulumiStack(settings) for _ in range(PARALLEL)]
    try:
        wall = in_parallel([s.up for s in group])
        for s in group:
            s.check_verified()
    finally:
        for s in group:
            s.destroy()
            s.remove()
    return wall


def parallel_plain() -> float:
    """The same for the plain docker commands: the baseline of what this host can do at once."""
    group = [PlainDocker() for _ in range(PARALLEL)]
    try:
        return in_parallel([p.up for p in group])
    finally:
        for p in group:
            p.destroy(check=False)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sin-bench-") as tmp:
        settings = stacks.Settings(f"file://{tmp}/state", Path(tmp) / "passphrase")
        figures: dict[str, list[float]] = {k: [] for k in (
            "cold up", "no-op up", "preview", "destroy", "automation up",
            "plain up", "plain inspect", "plain destroy", "parallel up", "parallel plain")}
        cpu: dict[str, list[float]] = {"cold up": [], "plain up": []}
        for _ in range(ROUNDS):
            stack = PulumiStack(settings)
            try:
                figures["cold up"].append(timed_with_cpu(stack.up, cpu["cold up"]))
                stack.check_verified()
                figures["no-op up"].append(timed(stack.noop_up))
                figures["preview"].append(timed(stack.preview))
                figures["destroy"].append(timed(stack.destroy))
                figures["automation up"].append(timed(stack.automation_up))
                stack.destroy()
            finally:
                stack.remove()
            plain = PlainDocker()
            try:
                figures["plain up"].append(timed_with_cpu(plain.up, cpu["plain up"]))
                figures["plain inspect"].append(timed(plain.inspect_all))
                figures["plain destroy"].append(timed(plain.destroy))
            except BaseException:
                plain.destroy(check=False)
                raise
            figures["parallel up"].append(parallel_up(settings))
            figures["parallel plain"].append(parallel_plain())

    med = {k: statistics.median(v) for k, v in figures.items()}
    row = "{:<14} {:>10} {:>14} {:>7}   {}"
    print(row.format("operation", "pulumi s", "plain docker s", "ratio", f"(medians of {ROUNDS} rounds)"))
    for name, plain_key, target in (("cold up", "plain up", "ratio <= 1.5"),
                                    ("no-op up", "plain inspect", "< 2 s"),
                                    ("preview", "plain inspect", "< 2 s"),
                                    ("destroy", "plain destroy", None),
                                    ("automation up", "plain up", None)):
        ratio = med[name] / med[plain_key]
        if target == "ratio <= 1.5":
            verdict = f"target {target}: {'met' if ratio <= 1.5 else 'MISSED'}"
        elif target:
            verdict = f"target {target}: {'met' if med[name] < 2 else 'MISSED'}"
        else:
            verdict = ""
        print(row.format(name, f"{med[name]:.2f}", f"{med[plain_key]:.2f}", f"{ratio:.2f}x", verdict))
    ratio = med["parallel up"] / med["cold up"]
    plain_ratio = med["parallel plain"] / med["plain up"]
    print(f"{PARALLEL} stacks in parallel: {med['parallel up']:.2f} s wall vs {med['cold up']:.2f} s for one "
          f"({ratio:.2f}x; target <= 2x: {'met' if ratio <= 2 else 'MISSED'}); plain docker "
          f"{med['parallel plain']:.2f} s vs {med['plain up']:.2f} s ({plain_ratio:.2f}x)")
    cores = os.cpu_count() or 1
    up_cpu, plain_cpu = statistics.median(cpu["cold up"]), statistics.median(cpu["plain up"])
    print(f"host CPU per cold up: pulumi {up_cpu:.2f} s, plain docker {plain_cpu:.2f} s; on {cores} cores "
          f"{PARALLEL} at once need >= {PARALLEL * up_cpu / cores:.2f} s and {PARALLEL * plain_cpu / cores:.2f} s")

if __name__ == "__main__":
    main()
