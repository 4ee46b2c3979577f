"""Benchmark of a stack's life cycle against the same work done with plain `docker` commands.

Same two services, same host, same run, images already present, nothing of the stack on
the Docker host before a cold bring-up. The Pulumi side is the `pulumi` command an operator
runs (`up --yes --skip-preview`, `preview`, `destroy --yes --skip-preview`) against a
throwaway stack in a private file backend. Two plain-docker baselines do the same objects
(network, two volumes, both containers with the password file and the Redis config):
  floor   what this machine can do: start, then an authenticated `SELECT 1` and Redis
          AUTH + PING polled every 50 ms from the host, then `psql -f` the schema
  plain   what a shell script waiting for Docker does: a healthcheck tuned for start-up
          (every 2 s, retried 0.1 s apart within a check), wait until Docker says healthy,
          then `psql -f`; destroy = `docker stop` (graceful) + `rm` + network and volume removal
and one Pulumi baseline:
  bare    the same Docker objects declared with pulumi_docker alone (benchmarks/bare_program):
          what the engine, the Python SDK, the provider and the refresh cost before any of ours
Pulumi runs in a private PULUMI_HOME (teststacks.private_pulumi_home): the CLI lists its log
directory at every start, so a home filled by earlier test runs would slow every command.
Prints medians over ROUNDS (env SIN_BENCH_ROUNDS) of cold up (to verified: migrate + 20
checks, or the command fails), no-op up and preview (SETTLED_REPEATS of each per round,
alternating), destroy and a cold up through the Automation API; 4 bring-ups at once of each
kind; the host CPU per cold up; the idle CPU Docker's healthchecks cost; and a profile of one
cold up (where its time goes).
Targets (issue 14): cold up <= 1.5x floor, CPU <= 1.5x plain, destroy <= 1.5x plain,
no-op up and preview < 1 s, 4 at once <= 1.3x 4 plain at once. Run: scripts/bench lifecycle
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import psycopg
import redis as redis_lib
from pulumi import automation as auto

from infra.components import postgres, redis
from infra.components.common import HEALTH_INTERVAL_S, STOP_GRACE_S, healthcheck
from infra.components.postdeploy import STEP_TYPE
from infra.core import dockercli
from infra.core.config import DEFAULTS
from infra.deploy import migration_files
from infra.driver import stacks, teststacks

# The release whose private builds the second row measures (issue 25: the last one before upstream's).
PREVIOUS_RELEASE = "b4cf473"
ROUNDS = int(os.environ.get("SIN_BENCH_ROUNDS", "3"))
SETTLED_REPEATS = 5  # no-op ups and previews per round (time_settled)
PARALLEL = 4
HEALTH_TIMEOUT_S = 90
POLL_S = 0.05
IDLE_WINDOW_S = 60
# The plain baseline's healthcheck: tuned for start-up, as the stack's own was before issue 14.
PLAIN_HEALTH_FLAGS = ["--health-interval", "2s", "--health-timeout", "5s", "--health-start-period", "5s",
                      "--health-retries", "35"]
PLAIN_HEALTH_PATIENCE = 15  # tries 0.1 s apart within one check


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


def run_pulumi(project: Path, env: dict[str, str], stack: str, *args: str) -> None:
    done = subprocess.run(["pulumi", *args, "--stack", stack, "--non-interactive", "--color", "never"],
                          cwd=project, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pulumi {args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


class OperatorCommands:
    """The `pulumi` commands the benchmark times, the same for every kind of stack."""

    def pulumi(self, *args: str) -> None:
        raise NotImplementedError

    def noop_up(self) -> None:
        self.pulumi("up", "--yes", "--skip-preview", "--expect-no-changes")

    def preview(self) -> None:
        self.pulumi("preview", "--expect-no-changes")

    def destroy(self) -> None:
        self.pulumi("destroy", "--yes", "--skip-preview")


class PulumiStack(OperatorCommands):
    """A throwaway stack in a private file backend, driven by the `pulumi` command."""

    def __init__(self, settings: stacks.Settings):
        self.env = {**os.environ, **settings.env()}
        name = teststacks.new_name()
        self.stack = teststacks.create(settings, name, config={**teststacks.isolated_config(stack=name),
                                                               "healthTimeoutSeconds": str(HEALTH_TIMEOUT_S),
                                                               **stacks.local_images()})

    def pulumi(self, *args: str) -> None:
        run_pulumi(stacks.ROOT, self.env, self.stack.name, *args)

    def up(self, *extra: str) -> None:
        teststacks.up_with_retries(self.stack, lambda: self.pulumi("up", "--yes", "--skip-preview", *extra), print)

    def check_verified(self) -> None:
        assert_verified(self.stack.outputs())

    def automation_up(self) -> None:
        assert_verified(self.stack.up(color="never").outputs)

    def post_deploy_timings(self) -> dict[str, int]:
        """The post-deploy step's phases of its last run (infra.deploy.steps.Result.timings_ms)."""
        export = subprocess.run(["pulumi", "stack", "export", "--stack", self.stack.name], cwd=stacks.ROOT,
                                env=self.env, capture_output=True, text=True, check=True)
        resources = json.loads(export.stdout)["deployment"]["resources"]
        step = next(r for r in resources if r["type"] == STEP_TYPE)
        return step["outputs"]["timings_ms"]

    def remove(self) -> None:
        self.stack.workspace.remove_stack(self.stack.name, force=True)
        dockercli.remove_objects(dockercli.labelled_objects(self.stack.name))
        teststacks.release(self.stack.name)


class PreviousRelease(OperatorCommands):
    """The stack as release PREVIOUS_RELEASE made it, on that release's own builds (its patched CLI and
    language host, its docker provider build and its sin-postdeploy plugin): what leaving the private
    builds for upstream's cost. Its tree, venv and plugin cache live in ``scratch``; its builds are the
    ones its toolchain cached under $SIN_CACHE (built from nothing when missing)."""

    def __init__(self, settings: stacks.Settings, scratch: Path):
        tree = scratch / "tree"
        if not tree.is_dir():
            tree.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(stacks.ROOT), "archive", PREVIOUS_RELEASE],
                                     capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        home = scratch / "pulumi-home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "PULUMI_HOME": str(home), "SIN_SETUP_SKIP": "images host docker"}
        setup = subprocess.run(["bash", "-c", 'eval "$(toolchain/setup.sh)" && echo "$PATH"'], cwd=tree, env=env,
                               capture_output=True, text=True)
        if setup.returncode != 0:
            raise RuntimeError(f"the toolchain of {PREVIOUS_RELEASE} failed:\n{setup.stderr[-2000:]}")
        self.tree = tree
        self.env = {**os.environ, **settings.env(), "PULUMI_HOME": str(home), "PATH": setup.stdout.strip()}
        self.name = teststacks.new_name()
        teststacks.mark_in_use(self.name)
        self.stack = auto.create_or_select_stack(self.name, work_dir=str(tree), opts=auto.LocalWorkspaceOptions(
            work_dir=str(tree), env_vars=self.env, pulumi_home=str(home)))
        stacks.configure(self.stack, {**teststacks.isolated_config(stack=self.name),
                                      "healthTimeoutSeconds": str(HEALTH_TIMEOUT_S), **stacks.local_images()})
        stacks.ensure_secrets(self.stack)

    def pulumi(self, *args: str) -> None:
        run_pulumi(self.tree, self.env, self.name, *args)

    def up(self) -> None:
        self.pulumi("up", "--yes", "--skip-preview")
        assert_verified(self.stack.outputs())

    def remove(self) -> None:
        self.pulumi("stack", "rm", "--yes", "--force")
        dockercli.remove_objects(dockercli.labelled_objects(self.name))
        teststacks.release(self.name)


class BarePulumi(OperatorCommands):
    """benchmarks/bare_program as a throwaway stack, driven by the same commands as PulumiStack:
    the same Docker objects declared with pulumi_docker alone, i.e. what Pulumi itself costs.
    Its objects carry the test stack's name, so a crashed run's leftovers are swept."""

    PROJECT = Path(__file__).resolve().parent / "bare_program"

    def __init__(self, settings: stacks.Settings, step: bool = False):
        self.name = teststacks.new_name()
        config = teststacks.isolated_config(stack=self.name)
        images = stacks.local_images()
        spec = {"prefix": self.name, "label": dockercli.STACK_LABEL, "subnet": config["networkSubnet"],
                "gateway": config["networkGateway"], "ip_range": config["networkIpRange"], "stop_grace_s": STOP_GRACE_S,
                "postgres": {"image": images["postgresImage"], "ip": config["postgresIp"],
                             "data_path": postgres.DATA_PATH, "envs": ["POSTGRES_HOST_AUTH_METHOD=trust"]},
                "redis": {"image": images["redisImage"], "ip": config["redisIp"], "data_path": redis.DATA_PATH,
                          "envs": []}, "step": step}
        self.env = {**os.environ, **settings.env(), "SIN_BENCH_BARE": json.dumps(spec)}
        self.pulumi("stack", "init")

    def pulumi(self, *args: str) -> None:
        run_pulumi(self.PROJECT, self.env, self.name, *args)

    def up(self) -> None:
        self.pulumi("up", "--yes", "--skip-preview")

    def remove(self) -> None:
        self.pulumi("stack", "rm", "--yes", "--force")
        dockercli.remove_objects(dockercli.labelled_objects(self.name))
        teststacks.release(self.name)


class PlainDocker:
    """The same two services with docker CLI commands, as a shell script would do it; ``floor``
    polls the services from the host, otherwise it waits for Docker's start-up healthcheck."""

    def __init__(self, floor: bool, healthcheck: bool = True):
        self.floor = floor
        self.healthcheck = healthcheck
        self.prefix = f"bench-{'floor' if floor else 'plain'}-{secrets.token_hex(3)}"
        self.config = teststacks.isolated_config(stack=self.prefix)
        self.password = secrets.token_urlsafe(24)

    def names(self) -> dict[str, str]:
        p = self.prefix
        return {"network": f"{p}-net", "pg_volume": f"{p}-pg", "redis_volume": f"{p}-redis",
                "pg": f"{p}-postgres", "redis": f"{p}-redis"}

    def health(self, command: str) -> list[str]:
        if not self.healthcheck:
            return ["--no-healthcheck"]
        if self.floor:
            return health_flags(command)
        patient = (f"n=0; until {command}; do n=$((n+1)); [ $n -ge {PLAIN_HEALTH_PATIENCE} ] && exit 1; "
                   f"sleep 0.1; done")
        return ["--health-cmd", patient, *PLAIN_HEALTH_FLAGS]

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
                         *self.health(postgres.HEALTHCHECK), image["postgresImage"])
        dockercli.put_files(n["pg"], {postgres.PASSWORD_FILE: (self.password.encode(), 0o400)})
        dockercli.docker("create", "--name", n["redis"], *common, *memory(DEFAULTS["redisMemoryMb"]),
                         "--ip", c["redisIp"],
                         "-p", f"127.0.0.1:{c['redisHostPort']}:6379", "-v", f"{n['redis_volume']}:{redis.DATA_PATH}",
                         *self.health(redis.HEALTHCHECK), image["redisImage"], redis.CONFIG_FILE)
        dockercli.put_files(n["redis"], {redis.CONFIG_FILE: (redis.render_config(self.password, int(DEFAULTS["redisMemoryMb"])).encode(), 0o444)})
        dockercli.docker("start", n["pg"], n["redis"])
        if self.floor:
            self.poll_services()
        else:
            self.wait_healthy()
        schema = migration_files.DEFAULT_DIR / "V001__adr006_schema.sql"
        dockercli.exec_from_file(n["pg"], ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "sinadmin",
                                           "-d", "sinsolver"], schema)

    def poll_services(self) -> None:
        """An authenticated SELECT 1 and an authenticated PING, each tried every POLL_S."""
        give_up = time.monotonic() + HEALTH_TIMEOUT_S

        def until(answers: Callable[[], None]) -> None:
            while True:
                try:
                    return answers()
                except (psycopg.OperationalError, redis_lib.ConnectionError):
                    if time.monotonic() > give_up:
                        raise SystemExit("floor: the services did not answer")
                    time.sleep(POLL_S)

        def select_one() -> None:
            with psycopg.connect(host="127.0.0.1", port=int(self.config["postgresHostPort"]), dbname="sinsolver",
                                 user="sinadmin", password=self.password, connect_timeout=2) as conn:
                conn.execute("SELECT 1")

        def ping() -> None:
            client = redis_lib.Redis(host="127.0.0.1", port=int(self.config["redisHostPort"]),
                                     password=self.password, socket_connect_timeout=2)
            try:
                client.ping()
            finally:
                client.close()

        until(select_one)
        until(ping)

    def wait_healthy(self) -> None:
        n = self.names()
        give_up = time.monotonic() + HEALTH_TIMEOUT_S
        while any(dockercli.inspect("container", n[k])["State"]["Health"]["Status"] != "healthy"
                  for k in ("pg", "redis")):
            if time.monotonic() > give_up:
                raise SystemExit("plain docker: containers did not become healthy")
            time.sleep(0.1)

    def inspect_all(self) -> None:
        n = self.names()
        dockercli.docker("network", "inspect", n["network"])
        dockercli.docker("volume", "inspect", n["pg_volume"], n["redis_volume"])
        dockercli.docker("container", "inspect", n["pg"], n["redis"])

    def destroy(self, check: bool = True) -> None:
        """Graceful, as `destroy` is: stop (PostgreSQL shuts down cleanly), remove, then network and volumes."""
        n = self.names()
        dockercli.docker("stop", n["pg"], n["redis"], check=check)
        dockercli.docker("rm", "-v", n["pg"], n["redis"], check=check)
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
        except BaseException as exc:  # reported after the join
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


def parallel_plain(floor: bool) -> float:
    """The same for the plain commands: what this host can do at once."""
    group = [PlainDocker(floor) for _ in range(PARALLEL)]
    try:
        return in_parallel([p.up for p in group])
    finally:
        for p in group:
            p.destroy(check=False)


def idle_cpu() -> float:
    """Host CPU per second over IDLE_WINDOW_S with one stack's containers up and nothing else going
    on, after their first health check (one interval after the start) has passed."""
    time.sleep(HEALTH_INTERVAL_S + 1)
    busy = host_busy_s()
    time.sleep(IDLE_WINDOW_S)
    return (host_busy_s() - busy) / IDLE_WINDOW_S


class EventClock:
    """Reads `pulumi up --event-log` through a FIFO and notes when each event arrives."""

    def __init__(self, directory: Path):
        self.path = directory / "events"
        os.mkfifo(self.path)
        self.events: list[tuple[float, dict]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path) as fifo:
            for line in fifo:
                if line.strip():
                    self.events.append((time.perf_counter(), json.loads(line)))

    def first(self, kind: str, urn_end: str) -> float:
        for at, event in self.events:
            body = event.get(kind)
            if body is None:
                continue
            meta = body.get("metadata", {})
            if meta.get("urn", "").endswith(urn_end):
                return at
        raise LookupError(f"no {kind} for {urn_end} in the event log")


def profile(settings: stacks.Settings) -> list[tuple[str, float]]:
    """Where one cold up spends its time, from the engine's events as they arrive and the
    post-deploy step's own phases."""
    stack = PulumiStack(settings)
    stack.env["PULUMI_DEBUG_COMMANDS"] = "true"  # `--event-log` is a debug flag
    try:
        with tempfile.TemporaryDirectory(prefix="sin-bench-events-") as tmp:
            clock = EventClock(Path(tmp))
            started = time.perf_counter()
            stack.up("--event-log", str(clock.path))
            ended = time.perf_counter()
            clock.thread.join(5)
        stack.check_verified()
        timings = stack.post_deploy_timings()
        program = clock.first("resourcePreEvent", "::sin-datastores-" + stack.stack.name)
        containers_begin = clock.first("resourcePreEvent", "::postgres-container")
        containers_done = max(clock.first("resOutputsEvent", "::postgres-container"),
                              clock.first("resOutputsEvent", "::redis-container"))
        step_begin = clock.first("resourcePreEvent", "::post-deploy-step")
        step_done = clock.first("resOutputsEvent", "::post-deploy-step")
        in_step = sum(timings.values()) / 1000
        rows = [("CLI, engine, language host, program start (until the stack registers)", program - started),
                ("network, volumes, images (until the first container is created)", containers_begin - program),
                ("containers: create, upload, start", containers_done - containers_begin),
                ("until the post-deploy step begins", step_begin - containers_done),
                ("post-deploy: its provider process and the step's inputs", step_done - step_begin - in_step)]
        rows += [(f"post-deploy: {phase}", ms / 1000) for phase, ms in timings.items()]
        rows.append(("after the last resource: outputs, state, exit", ended - step_done))
        rows.append(("total", ended - started))
        return rows
    finally:
        stack.destroy()
        stack.remove()


def time_settled(stack: OperatorCommands, noop_ups: list[float], previews: list[float]) -> None:
    """SETTLED_REPEATS no-op ups and previews, alternating, of a stack just brought up: one
    sample each is at the mercy of the services' own first seconds and of the machine's
    neighbours; the median of all of them is what an operator's next command takes."""
    for _ in range(SETTLED_REPEATS):
        noop_ups.append(timed(stack.noop_up))
        previews.append(timed(stack.preview))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sin-bench-") as tmp:
        settings = stacks.Settings(f"file://{tmp}/state", Path(tmp) / "passphrase")
        figures: dict[str, list[float]] = {k: [] for k in (
            "cold up", "no-op up", "preview", "destroy", "automation up", "floor up", "plain up", "plain inspect",
            "plain destroy", "parallel up", "parallel floor", "parallel plain",
            *(f"{row} {op}" for row in PULUMI_ROWS for op in LIFE))}
        cpu: dict[str, list[float]] = {"cold up": [], "floor up": [], "plain up": []}
        for _ in range(ROUNDS):
            stack = PulumiStack(settings)
            try:
                figures["cold up"].append(timed_with_cpu(stack.up, cpu["cold up"]))
                stack.check_verified()
                time_settled(stack, figures["no-op up"], figures["preview"])
                figures["destroy"].append(timed(stack.destroy))
                figures["automation up"].append(timed(stack.automation_up))
                stack.destroy()
            finally:
                stack.remove()
            for key, make in (("bare", lambda: BarePulumi(settings)),
                              ("bare step", lambda: BarePulumi(settings, step=True)),
                              ("previous", lambda: PreviousRelease(settings, Path(tmp) / "previous"))):
                measure_life(make, key, figures)
            for floor, key in ((True, "floor up"), (False, "plain up")):
                plain = PlainDocker(floor)
                try:
                    figures[key].append(timed_with_cpu(plain.up, cpu[key]))
                    if not floor:
                        figures["plain inspect"].append(timed(plain.inspect_all))
                    destroyed = timed(plain.destroy)
                    if not floor:
                        figures["plain destroy"].append(destroyed)
                except BaseException:
                    plain.destroy(check=False)
                    raise
            figures["parallel up"].append(parallel_up(settings))
            figures["parallel floor"].append(parallel_plain(floor=True))
            figures["parallel plain"].append(parallel_plain(floor=False))

        idle = measure_idle(settings)
        steps = profile(settings)

    med = {k: statistics.median(v) for k, v in figures.items()}
    report(med, {k: statistics.median(v) for k, v in cpu.items()}, idle, steps)


# The Pulumi rows beside the stack's own, and the operations each is timed on.
PULUMI_ROWS = ("bare", "bare step", "previous")
LIFE = ("cold up", "no-op up", "preview", "destroy")


def measure_life(make: Callable[[], OperatorCommands], key: str, figures: dict[str, list[float]]) -> None:
    """Cold up, settled no-op ups and previews, and destroy of one stack ``make`` creates, as ``key``."""
    stack = make()
    try:
        figures[f"{key} cold up"].append(timed(stack.up))
        time_settled(stack, figures[f"{key} no-op up"], figures[f"{key} preview"])
        figures[f"{key} destroy"].append(timed(stack.destroy))
    finally:
        stack.remove()


def measure_idle(settings: stacks.Settings) -> dict[str, float]:
    """Host CPU per second of an idle stack with its healthchecks, and of the same containers without."""
    stack = PulumiStack(settings)
    try:
        stack.up()
        with_checks = idle_cpu()
    finally:
        stack.destroy()
        stack.remove()
    bare = PlainDocker(floor=True, healthcheck=False)
    try:
        bare.up()
        without = idle_cpu()
    finally:
        bare.destroy(check=False)
    return {"with": with_checks, "without": without}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(med: dict[str, float], cpu: dict[str, float], idle: dict[str, float],
           steps: list[tuple[str, float]]) -> None:
    row = "{:<16} {:>9} {:>8} {:>8} {:>8}   {}"
    print(f"medians of {ROUNDS} rounds ({ROUNDS * SETTLED_REPEATS} no-op ups and previews); "
          f"floor = poll the services from the host every {POLL_S * 1000:.0f} ms; "
          f"plain = wait for Docker's start-up healthcheck; bare = the same objects declared with pulumi_docker "
          f"alone (benchmarks/bare_program: same engine, SDK, provider, refresh)")
    print(row.format("operation", "pulumi s", "floor s", "plain s", "bare s", "ratio and target"))
    up_floor = med["cold up"] / med["floor up"]
    print(row.format("cold up", f"{med['cold up']:.2f}", f"{med['floor up']:.2f}", f"{med['plain up']:.2f}", "",
                     f"{up_floor:.2f}x floor (target <= 1.5x: {verdict(up_floor <= 1.5)}), "
                     f"{med['cold up'] / med['plain up']:.2f}x plain"))
    for name in ("no-op up", "preview"):
        print(row.format(name, f"{med[name]:.2f}", "", f"{med['plain inspect']:.2f}", f"{med['bare ' + name]:.2f}",
                         f"target < 1 s: {verdict(med[name] < 1)}; {med[name] / med['bare ' + name]:.2f}x bare "
                         f"(plain: docker inspect of the five objects)"))
    down = med["destroy"] / med["plain destroy"]
    print(row.format("destroy", f"{med['destroy']:.2f}", "", f"{med['plain destroy']:.2f}",
                     f"{med['bare destroy']:.2f}",
                     f"{down:.2f}x plain stop + rm (target <= 1.5x: {verdict(down <= 1.5)}); "
                     f"{med['destroy'] / med['bare destroy']:.2f}x bare"))
    print(row.format("automation up", f"{med['automation up']:.2f}", f"{med['floor up']:.2f}", "", "",
                     f"{med['automation up'] / med['floor up']:.2f}x floor (reference: `python -m infra up` "
                     f"also reads outputs back)"))
    at_once = med["parallel up"] / med["parallel plain"]
    print(f"{PARALLEL} at once: pulumi {med['parallel up']:.2f} s, floor {med['parallel floor']:.2f} s, plain "
          f"{med['parallel plain']:.2f} s; {at_once:.2f}x plain (target <= 1.3x: {verdict(at_once <= 1.3)}), "
          f"{med['parallel up'] / med['parallel floor']:.2f}x floor")
    ratio = cpu["cold up"] / cpu["plain up"]
    print(f"host CPU per cold up: pulumi {cpu['cold up']:.2f} s, floor {cpu['floor up']:.2f} s, plain "
          f"{cpu['plain up']:.2f} s; {ratio:.2f}x plain (target <= 1.5x: {verdict(ratio <= 1.5)}), "
          f"{cpu['cold up'] / cpu['floor up']:.2f}x floor")
    cost = idle["with"] - idle["without"]
    print(f"idle stack, host CPU over {IDLE_WINDOW_S} s: {idle['with'] * 100:.2f}% of one core with the healthchecks "
          f"(every {HEALTH_INTERVAL_S} s), {idle['without'] * 100:.2f}% without; the checks cost "
          f"{cost * 100:.2f}% of one core, {cost * HEALTH_INTERVAL_S / 2 * 1000:.0f} ms of CPU per check")
    print(f"the stack against Pulumi baselines on the same engine: bare = benchmarks/bare_program; bare step = the "
          f"same with a dynamic resource whose provider does nothing (what Pulumi's mechanism for the post-deploy "
          f"step costs by itself); previous = release {PREVIOUS_RELEASE} on its own private builds (patched CLI and "
          f"language host, its provider plugin)")
    table = "{:<10} {:>7} {:>7} {:>10} {:>9}   {}"
    print(table.format("operation", "ours s", "bare s", "bare step", "previous", "ratios (target: ours <= 1.1x bare)"))
    for op in LIFE:
        ours, bare, step, previous = (med[op], *(med[f"{row} {op}"] for row in PULUMI_ROWS))
        print(table.format(op, f"{ours:.2f}", f"{bare:.2f}", f"{step:.2f}", f"{previous:.2f}",
                           f"{ours / bare:.2f}x bare ({verdict(ours <= 1.1 * bare)}), {ours / step:.2f}x bare step, "
                           f"{ours / previous:.2f}x previous"))
    print("one cold up, where the time goes:")
    for name, seconds in steps:
        print(f"  {seconds:6.2f} s  {name}")


if __name__ == "__main__":
    with teststacks.private_pulumi_home():
        main()
