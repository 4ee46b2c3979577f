"""Take over the ADR's compose-style deployment into a stack, keeping every row and key.

The ADR runs PostgreSQL with its password in the container's environment, Redis with
``--requirepass`` on its command line, volumes and a network created (and labelled) by
compose, and the schema applied by ``docker-entrypoint-initdb.d``. :func:`inspect_host`
checks all of it against the stack's configuration and refuses, naming what it found, what
it expected and the fix, before anything is touched. :func:`take_over` then stores the
passwords as the stack's secrets (or new ones), baselines V001 in the old database, stops
the old containers and keeps them as ``<name>-pre-adopt``, copies each compose volume into
a volume labelled exactly as the stack declares it (Docker labels cannot change, so taking
the compose volume itself would show its replacement in every later preview), removes the
compose network and runs ``up``. A failing step undoes the ones before it. The compose
volumes are not written to once their containers stop: they stay as a second fallback.
"""

from __future__ import annotations

import secrets
import shlex
from dataclasses import dataclass, replace
from typing import Callable, Optional

from pulumi import automation as auto


from infra.core.config import POSTGRES_PASSWORD_KEY, REDIS_PASSWORD_KEY
from infra.core.targets import MAXMEMORY_SHARE, POSTGRES_PORT, REDIS_PORT, redis_maxmemory_mb
from infra.core.errors import InputError, OperationFailed
from infra.core import dockercli
from infra.deploy import migration_files, migrations
from infra.driver import stacks
from infra.ops.backup.postgres_dump import schema_objects, table_counts
from infra.components.common import labels
from infra.components.postgres import DATA_PATH as POSTGRES_DATA
from infra.components.redis import DATA_PATH as REDIS_DATA
from infra.core.config import PROJECT, SECRET_KEYS, ConfigError, StackConfig
from infra.core.connect import ConnectError, connect_postgres, connect_redis
from infra.deploy.registry import default_actor
from infra.core.targets import PostgresTarget, RedisTarget

FALLBACK_SUFFIX = "-pre-adopt"
STOP_TIMEOUT_S = 60
BASELINE_VERSION = 1
# The image contract's defaults when the container's environment does not set them.
POSTGRES_DEFAULT_USER = "postgres"


class AdoptRefused(InputError):
    """The host does not look as the takeover expects; nothing was changed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("cannot take over this deployment; nothing was changed:\n"
                         + "\n".join(f"  - {p}" for p in problems))


class AdoptFailed(OperationFailed):
    """A takeover step failed; the steps before it were undone (the message says which were not)."""


@dataclass(frozen=True)
class OldService:
    """One container of the old deployment, as found."""

    role: str
    container: str
    image: str
    volume: str
    target_volume: str
    data_path: str
    size_kb: int
    restart_policy: str
    ip: str
    aliases: tuple[str, ...]
    version: str
    password_source: str
    contents: dict[str, int]

    @property
    def fallback(self) -> str:
        return self.container + FALLBACK_SUFFIX


@dataclass(frozen=True)
class OldNetwork:
    """The compose network, with what it takes to create it again."""

    name: str
    driver: str
    subnet: str
    gateway: str
    ip_range: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Found:
    """The old deployment and how to reach it; the passwords are never printed."""

    stack: str
    postgres: OldService
    redis: OldService
    network: OldNetwork
    postgres_target: PostgresTarget
    redis_target: RedisTarget

    @property
    def services(self) -> tuple[OldService, OldService]:
        return self.postgres, self.redis


# ------------------------------------------------------------------ reading docker inspect

def env_of(container: dict) -> dict[str, str]:
    """The container's configured environment as a mapping."""
    return dict(item.split("=", 1) for item in (container.get("Config") or {}).get("Env") or [] if "=" in item)


def postgres_password(container: dict, read_file: Callable[[str], str]) -> tuple[str, str]:
    """The superuser password the container was started with, and where it came from
    (POSTGRES_PASSWORD, or the file POSTGRES_PASSWORD_FILE names, read with ``read_file``)."""
    env = env_of(container)
    name = container["Name"].lstrip("/")
    if env.get("POSTGRES_PASSWORD") and env.get("POSTGRES_PASSWORD_FILE"):
        raise AdoptRefused([f"container {name} sets both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE; the image "
                            f"refuses that, so this is not the deployment the data was created with"])
    if env.get("POSTGRES_PASSWORD"):
        return env["POSTGRES_PASSWORD"], "POSTGRES_PASSWORD"
    if env.get("POSTGRES_PASSWORD_FILE"):
        path = env["POSTGRES_PASSWORD_FILE"]
        value = read_file(path).rstrip("\r\n")
        if value:
            return value, f"the file {path} (POSTGRES_PASSWORD_FILE)"
        raise AdoptRefused([f"container {name}: the file {path} that POSTGRES_PASSWORD_FILE names is empty"])
    raise AdoptRefused([f"container {name} has neither POSTGRES_PASSWORD nor POSTGRES_PASSWORD_FILE in its "
                        f"environment, so its password is unknown; start it as the ADR describes"])


def redis_password(container: dict) -> str:
    """The ``--requirepass`` value on the container's command line."""
    argv = [container.get("Path") or "", *(container.get("Args") or [])]
    for i, arg in enumerate(argv):
        if arg == "--requirepass" and i + 1 < len(argv):
            return argv[i + 1]
    name = container["Name"].lstrip("/")
    raise AdoptRefused([f"container {name} has no --requirepass on its command line ({_shown_command(argv)}); "
                        f"the takeover expects the ADR's `redis-server --appendonly yes --requirepass ...`"])


def _shown_command(argv: list[str]) -> str:
    """A command line for messages, with any --requirepass value masked."""
    masked = ["***" if i and argv[i - 1] == "--requirepass" else a for i, a in enumerate(argv)]
    return shlex.join(a for a in masked if a)


def published(container: dict, port: int) -> Optional[tuple[str, int]]:
    """Where this host reaches the container's ``port``/tcp, or None when it is not published."""
    bindings = ((container.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        host = binding.get("HostIp") or "0.0.0.0"
        if ":" in host and host != "::":
            continue
        return ("127.0.0.1" if host in ("0.0.0.0", "::") else host), int(binding["HostPort"])
    return None


def data_mount(container: dict, path: str) -> Optional[dict]:
    return next((m for m in container.get("Mounts") or [] if m.get("Destination") == path), None)


# ------------------------------------------------------------------ checks (change nothing)

def _containers_using(filter_: str) -> list[str]:
    return sorted(dockercli.docker("ps", "-a", "--filter", filter_, "--format", "{{.Names}}").split())


def _find_container(name: str, role: str, problems: list[str]) -> Optional[dict]:
    container = dockercli.inspect("container", name)
    if container is None:
        problems.append(f"no container {name} ({role}) on this Docker host; the stack's {role}ContainerName names "
                        f"the container to take over: set it to the old container's name")
        return None
    owner = (container["Config"].get("Labels") or {}).get(dockercli.STACK_LABEL)
    if owner:
        problems.append(f"container {name} already belongs to stack '{owner}' (label {dockercli.STACK_LABEL}); "
                        f"there is nothing to take over")
        return None
    if not container["State"].get("Running"):
        problems.append(f"container {name} is {container['State'].get('Status')}, not running; start it "
                        f"(`docker start {name}`) so its data can be checked, then run adopt again")
        return None
    return container


def _check_volume(container: dict, path: str, target: str, key: str, problems: list[str]) -> Optional[str]:
    name = container["Name"].lstrip("/")
    mount = data_mount(container, path)
    if mount is None or mount.get("Type") != "volume":
        kind = "nothing" if mount is None else f"a {mount.get('Type')} mount of {mount.get('Source')}"
        problems.append(f"container {name} has {kind} at {path}, expected a named volume; move the data into "
                        f"a named volume first")
        return None
    volume = mount["Name"]
    others = [c for c in _containers_using(f"volume={volume}") if c != name]
    if others:
        problems.append(f"volume {volume} (mounted by {name}) is also used by {', '.join(others)}; stop and "
                        f"remove {'them' if len(others) > 1 else 'it'} (`docker rm {' '.join(others)}`) or "
                        f"mount another volume there")
    if dockercli.inspect("volume", target) is not None:
        problems.append(f"volume {target} ({key}, the stack's volume) already exists; the takeover copies {volume} "
                        f"into a new volume of that name: remove it (`docker volume rm {target}`) if it holds "
                        f"nothing you need, or set {key} to another name")
    return volume


def _size_kb(container: str, path: str) -> int:
    return int(dockercli.docker("exec", container, "du", "-sk", path).split()[0])


def _check_postgres_data(container: dict, cfg: StackConfig, problems: list[str]) -> Optional[str]:
    """The data directory's major version (PG_VERSION), which the server binary must match."""
    name = container["Name"].lstrip("/")
    found = dockercli.docker("exec", name, "cat", f"{POSTGRES_DATA}/PG_VERSION", check=False).strip()
    if found != str(cfg.postgres.major_version):
        problems.append(f"container {name}: the data in {POSTGRES_DATA} is PostgreSQL {found or '(no PG_VERSION)'}, "
                        f"the stack expects {cfg.postgres.major_version} (postgresMajorVersion); upgrade the "
                        f"data first (pg_upgrade or dump and restore), or set postgresMajorVersion and "
                        f"postgresImage to {found or 'its version'}")
    return found


def _check_redis_version(container: dict, cfg: StackConfig, problems: list[str]) -> str:
    name = container["Name"].lstrip("/")
    out = dockercli.docker("exec", name, "redis-server", "--version", check=False)
    version = next((word[2:] for word in out.split() if word.startswith("v=")), "")
    if version.split(".")[0] != str(cfg.redis.major_version):
        problems.append(f"container {name} runs Redis {version or '(unknown)'}, the stack expects "
                        f"{cfg.redis.major_version} (redisMajorVersion); set redisMajorVersion and redisImage to "
                        f"match it, or upgrade it first")
    return version


def _check_network(cfg: StackConfig, containers: dict[str, dict], problems: list[str]) -> Optional[OldNetwork]:
    name = cfg.network.name
    for container_name, container in containers.items():
        attached = sorted((container["NetworkSettings"].get("Networks") or {}))
        if name not in attached:
            problems.append(f"container {container_name} is attached to {', '.join(attached) or 'no network'}, "
                            f"not to {name} (networkName); set networkName to the network it uses")
    network = dockercli.inspect("network", name)
    if network is None:
        return None
    owner = (network.get("Labels") or {}).get(dockercli.STACK_LABEL)
    if owner:
        problems.append(f"network {name} already belongs to stack '{owner}'; take over the containers only "
                        f"once they are on their own network")
    others = [c for c in _containers_using(f"network={name}") if c not in containers]
    if others:
        detach = "; ".join(f"docker network disconnect {name} {c}" for c in others)
        problems.append(f"network {name} is removed and created again by the takeover, and other containers are "
                        f"attached to it: {', '.join(others)}; detach them first ({detach}) and attach them "
                        f"again afterwards (`docker network connect {name} <container>`)")
    ipam = ((network.get("IPAM") or {}).get("Config") or [{}])[0]
    return OldNetwork(name, network.get("Driver") or "bridge", ipam.get("Subnet", ""), ipam.get("Gateway", ""),
                      ipam.get("IPRange", ""), dict(network.get("Labels") or {}))


def _check_schema(target: PostgresTarget, problems: list[str]) -> dict[str, int]:
    """The database must hold exactly V001 (compared with V001 applied in a scratch database on
    the same server, dropped again) and no migration history; returns its row counts."""
    with connect_postgres(target, deadline_s=10) as conn:
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (migrations.HISTORY_TABLE,)).fetchone()[0]:
            problems.append(f"database {target.database} in {target.container_name} already has "
                            f"{migrations.HISTORY_TABLE}: it is managed by sin-datastores already; bring its "
                            f"stack up instead (`python -m infra up --stack NAME`)")
            return table_counts(conn)
        found = schema_objects(conn)
        counts = table_counts(conn)
    differences = schema_differences(_v001_objects(target), found)
    if differences:
        first = migration_files.load()[0].name
        problems.append(f"database {target.database} in {target.container_name} does not hold exactly the schema "
                        f"of {first}: {'; '.join(differences)}; bring it to {first} by hand first, or restore a "
                        f"backup into a new stack instead")
    return counts


def schema_differences(expected: list[tuple], found: list[tuple], limit: int = 5) -> list[str]:
    """What differs between two :func:`infra.ops.backup.postgres_dump.schema_objects` lists, at most ``limit`` lines."""
    want, got = {(k, n): d for k, n, d in expected}, {(k, n): d for k, n, d in found}
    lines = [f"missing {k} {n}" for k, n in sorted(want.keys() - got.keys())]
    lines += [f"unexpected {k} {n}" for k, n in sorted(got.keys() - want.keys())]
    lines += [f"{k} {n} is '{got[(k, n)]}', expected '{want[(k, n)]}'" for k, n in sorted(want.keys() & got.keys())
              if want[(k, n)] != got[(k, n)]]
    return lines[:limit] + ([f"and {len(lines) - limit} more"] if len(lines) > limit else [])


def _v001_objects(target: PostgresTarget) -> list[tuple]:
    scratch = f"sin_adopt_check_{secrets.token_hex(4)}"
    with connect_postgres(replace(target, database="postgres"), deadline_s=10) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            with connect_postgres(replace(target, database=scratch), deadline_s=10) as conn:
                for _, statement in migration_files.split_statements(migration_files.load()[0].sql_text):
                    conn.execute(statement, prepare=False)
                return schema_objects(conn)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def _redis_contents(target: RedisTarget, memory_mb: int, problems: list[str]) -> dict[str, int]:
    """Key counts; the old Redis must persist to an AOF and fit the stack's memory limit."""
    client = connect_redis(target, deadline_s=10)
    try:
        if str(client.info("persistence").get("aof_enabled")) != "1":
            problems.append(f"{target.container_name} runs without --appendonly yes; the takeover expects the ADR's "
                            f"command (its data would not be in the AOF the stack's Redis loads)")
        used_mb, limit_mb = int(client.info("memory")["used_memory"]) / 2**20, redis_maxmemory_mb(memory_mb)
        if used_mb > limit_mb:
            problems.append(f"{target.container_name} holds {used_mb:.0f} MB, more than the stack's Redis may use "
                            f"({limit_mb:.0f} MB, {MAXMEMORY_SHARE:.0%} of redisMemoryMb {memory_mb}): it would "
                            f"refuse writes; pulumi config set redisMemoryMb "
                            f"{int(used_mb / MAXMEMORY_SHARE * 1.5) + 1}")
        return {db: stats["keys"] for db, stats in client.info("keyspace").items()}
    finally:
        client.close()


def _secret_problems(found_passwords: dict[str, str], raw: dict[str, auto.ConfigValue], name: str,
                     overrides: dict[str, str]) -> list[str]:
    """The found passwords must pass the stack's own password rules."""
    config = {**raw, **{f"{PROJECT}:{key}": auto.ConfigValue(value, secret=True)
                        for key, value in found_passwords.items()}}
    try:
        stacks.validate(name, config, overrides)
    except ConfigError as exc:
        return [f"the password the old deployment uses does not fit the stack ({p.split('; fix:')[0].strip()}); "
                f"run adopt with --rotate-passwords to give the stack new passwords" for p in exc.problems]
    return []


def inspect_host(stack: auto.Stack, images: str, rotate: bool, say: Callable[[str], None]) -> Found:
    """Everything the takeover needs, checked; :class:`AdoptRefused` lists every problem."""
    raw = stack.get_all_config()
    overrides = stacks.image_overrides(raw, images, say)
    # Both passwords come from the old deployment (or are new); a missing backup passphrase is generated.
    pending = [*SECRET_KEYS, *(key for key in stacks.missing_passwords(raw) if key not in SECRET_KEYS)]
    cfg = stacks.validate(stack.name, raw, overrides, passwords_pending=pending)
    if cfg.docker.is_ssh:
        raise AdoptRefused([f"dockerHost is {cfg.docker.describe()}: the takeover reads the old services through "
                            f"their published ports from this machine, which works on the Docker host itself only; "
                            f"run it there with dockerHost unset, then set dockerHost for the stack"])
    problems: list[str] = []
    resources = stacks.managed_resources(stacks.exported_deployment(stack))
    if resources:
        problems.append(f"stack '{stack.name}' already manages {len(resources)} resources; adopt only brings a "
                        f"host under a stack that has none (use `python -m infra up --stack {stack.name}`)")
    pg_name, rd_name = cfg.postgres.container_name, cfg.redis.container_name
    found_containers = {name: c for name, role in ((pg_name, "postgres"), (rd_name, "redis"))
                        if (c := _find_container(name, role, problems)) is not None}
    for name in (pg_name, rd_name):
        if dockercli.inspect("container", name + FALLBACK_SUFFIX) is not None:
            problems.append(f"container {name + FALLBACK_SUFFIX} exists already (a fallback of an earlier takeover?); "
                            f"remove or rename it first")
    if problems or len(found_containers) < 2:
        raise AdoptRefused(problems)
    pg, rd = found_containers[pg_name], found_containers[rd_name]
    pg_volume = _check_volume(pg, POSTGRES_DATA, cfg.postgres.volume_name, "postgresVolumeName", problems)
    rd_volume = _check_volume(rd, REDIS_DATA, cfg.redis.volume_name, "redisVolumeName", problems)
    network = _check_network(cfg, found_containers, problems)
    pg_env = env_of(pg)
    user = pg_env.get("POSTGRES_USER") or POSTGRES_DEFAULT_USER
    database = pg_env.get("POSTGRES_DB") or user
    for key, want, got in (("postgresUser", cfg.postgres.user, user), ("postgresDatabase", cfg.postgres.database,
                                                                       database)):
        if want != got:
            problems.append(f"container {pg_name} was created with {key} '{got}', the stack has '{want}'; "
                            f"pulumi config set {key} {got}")
    pg_port, rd_port = published(pg, POSTGRES_PORT), published(rd, REDIS_PORT)
    for name, port, where in ((pg_name, pg_port, str(POSTGRES_PORT)), (rd_name, rd_port, str(REDIS_PORT))):
        if port is None:
            problems.append(f"container {name} does not publish port {where} on an IPv4 host address; the checks "
                            f"and the baseline connect through it: publish it (the ADR does, `ports: {where}:{where}`)")
    pg_version = _check_postgres_data(pg, cfg, problems)
    rd_version = _check_redis_version(rd, cfg, problems)
    try:
        pg_password, pg_source = postgres_password(pg, lambda path: dockercli.docker("exec", pg_name, "cat", path))
        rd_password = redis_password(rd)
    except AdoptRefused as exc:
        raise AdoptRefused(problems + exc.problems) from None
    if not rotate:
        problems += _secret_problems({POSTGRES_PASSWORD_KEY: pg_password, REDIS_PASSWORD_KEY: rd_password}, raw,
                                     stack.name, overrides)
    if problems:
        raise AdoptRefused(problems)

    pg_target = PostgresTarget(pg_port[0], pg_port[1], database, user, pg_password, pg_name, _ip(pg, cfg),
                               cfg.postgres.major_version)
    rd_target = RedisTarget(rd_port[0], rd_port[1], rd_password, rd_name, _ip(rd, cfg), cfg.redis.major_version)
    try:
        rows = _check_schema(pg_target, problems)
        keys = _redis_contents(rd_target, cfg.redis.memory_mb, problems)
    except ConnectError as exc:
        raise AdoptRefused([f"{exc}; the takeover reads the old services with the passwords their containers "
                            f"were started with (POSTGRES_PASSWORD, --requirepass): if a password was changed "
                            f"since, start the container with the current one"]) from None
    if problems:
        raise AdoptRefused(problems)

    def old(container: dict, role: str, volume: str, target_volume: str, path: str, version: str, source: str,
            contents: dict[str, int]) -> OldService:
        name = container["Name"].lstrip("/")
        aliases = container["NetworkSettings"]["Networks"][cfg.network.name].get("Aliases") or []
        restart = (container["HostConfig"].get("RestartPolicy") or {}).get("Name") or "no"
        return OldService(role, name, container["Config"]["Image"], volume, target_volume, path,
                          _size_kb(name, path), restart,
                          _ip(container, cfg), tuple(a for a in aliases if not container["Id"].startswith(a)),
                          version, source, contents)

    return Found(
        stack=stack.name,
        postgres=old(pg, "postgres", pg_volume, cfg.postgres.volume_name, POSTGRES_DATA, pg_version, pg_source, rows),
        redis=old(rd, "redis", rd_volume, cfg.redis.volume_name, REDIS_DATA, rd_version, "--requirepass", keys),
        network=network, postgres_target=pg_target, redis_target=rd_target)


def _ip(container: dict, cfg: StackConfig) -> str:
    return container["NetworkSettings"]["Networks"][cfg.network.name].get("IPAddress") or ""


# ------------------------------------------------------------------ the plan

def _size(kb: int) -> str:
    return f"{kb / 1024:.1f} MB" if kb >= 1024 else f"{kb} kB"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k.removeprefix('public.')} {v}" for k, v in sorted(counts.items())) or "none"


def plan_lines(found: Found, rotate: bool) -> list[str]:
    """What the takeover will do, step by step, with names and sizes (the dry run prints this)."""
    pg, rd, net = found.postgres, found.redis, found.network
    lines = [
        f"found postgres: container {pg.container} ({pg.image}), PostgreSQL {pg.version} data in volume {pg.volume} "
        f"({_size(pg.size_kb)}), database {found.postgres_target.database}: rows {_counts(pg.contents)}",
        f"found redis:    container {rd.container} ({rd.image}), Redis {rd.version}, data in volume {rd.volume} "
        f"({_size(rd.size_kb)}), keys {_counts(rd.contents)}",
        f"found network:  {net.name} ({net.subnet or 'no subnet'}), attached: {pg.container}, {rd.container}",
    ]
    if rotate:
        first = ("generate new passwords and store them as Pulumi secrets postgresPassword and redisPassword in "
                 f"Pulumi.{found.stack}.yaml (`up` sets the new PostgreSQL password in the data)")
    else:
        first = (f"store the PostgreSQL password (from {pg.password_source} of {pg.container}) and the Redis password "
                 f"(from --requirepass of {rd.container}) as Pulumi secrets postgresPassword and redisPassword in "
                 f"Pulumi.{found.stack}.yaml")
    steps = [first,
             f"baseline {migration_files.load()[0].name} in database {found.postgres_target.database} of "
             f"{pg.container} "
             f"({migrations.HISTORY_TABLE}, kind BASELINE): the schema is there, it is not applied again"]
    for svc in found.services:
        steps.append(f"stop {svc.container} (docker stop -t {STOP_TIMEOUT_S}), set its restart policy to no (was "
                     f"{svc.restart_policy}), disconnect it from {net.name}, rename it {svc.fallback}")
    for svc in found.services:
        steps.append(f"copy volume {svc.volume} ({_size(svc.size_kb)}) into a new volume {svc.target_volume} labelled "
                     f"for stack {found.stack} (cp -a in a throwaway {svc.image} container: ownership kept)")
    steps.append(f"remove network {net.name} (compose's labels; the stack creates it with its own)")
    steps.append(f"up: network {net.name}, containers {pg.container} and {rd.container} on the copied volumes, "
                 f"passwords from the stack's secrets (none in env or command line), verification")
    lines += [f"{i:2d}. {step}" for i, step in enumerate(steps, 1)]
    lines.append(f"kept as fallbacks: containers {pg.fallback}, {rd.fallback} (stopped), volumes {pg.volume}, "
                 f"{rd.volume} (not written to after the stop)")
    return lines


def fallback_cleanup(found: Found) -> str:
    """The command that removes the fallbacks once the stack has proven itself."""
    return (f"docker rm {found.postgres.fallback} {found.redis.fallback} && "
            f"docker volume rm {found.postgres.volume} {found.redis.volume}")


# ------------------------------------------------------------------ the takeover

class _Undo:
    """Undo actions of the steps done so far, run newest first when a later step fails."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.actions: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, action: Callable[[], None]) -> None:
        self.actions.append((what, action))

    def run(self) -> list[str]:
        failed = []
        for what, action in reversed(self.actions):
            self.say(f"undo: {what}")
            try:
                action()
            except Exception as exc:  # keep undoing the rest; report what could not be undone
                failed.append(f"{what}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}")
        return failed


def _drop_history(target: PostgresTarget) -> None:
    with connect_postgres(target, deadline_s=60) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {migrations.HISTORY_TABLE}")


def _set_aside(svc: OldService, network: str, undo: _Undo, say: Callable[[str], None]) -> None:
    docker = dockercli.docker
    say(f"stopping {svc.container}")
    docker("stop", "-t", str(STOP_TIMEOUT_S), svc.container, timeout_s=STOP_TIMEOUT_S + 30)
    undo.add(f"start {svc.container}", lambda: docker("start", svc.container))
    docker("update", "--restart", "no", svc.container)
    undo.add(f"restart policy of {svc.container} back to {svc.restart_policy}",
             lambda: docker("update", "--restart", svc.restart_policy, svc.container))
    docker("network", "disconnect", network, svc.container)
    reconnect = ["network", "connect", *(["--ip", svc.ip] if svc.ip else []),
                 *[arg for alias in svc.aliases for arg in ("--alias", alias)], network, svc.container]
    undo.add(f"reconnect {svc.container} to {network}", lambda: docker(*reconnect))
    docker("rename", svc.container, svc.fallback)
    undo.add(f"rename {svc.fallback} back to {svc.container}", lambda: docker("rename", svc.fallback, svc.container))


def _copy_volume(svc: OldService, stack: str, undo: _Undo, say: Callable[[str], None]) -> None:
    say(f"copying volume {svc.volume} into {svc.target_volume}")
    label_args = [arg for k, v in sorted(labels(PROJECT, stack, svc.role).items()) for arg in ("--label", f"{k}={v}")]
    dockercli.docker("volume", "create", *label_args, svc.target_volume)
    undo.add(f"remove volume {svc.target_volume}", lambda: dockercli.docker("volume", "rm", "-f", svc.target_volume))
    copier = f"{stack}-adopt-copy-{svc.role}"
    try:
        dockercli.docker("run", "--name", copier, "--network", "none", "--user", "0", "--entrypoint", "cp",
                         "-v", f"{svc.volume}:/from:ro", "-v", f"{svc.target_volume}:/to", svc.image,
                         "-a", "/from/.", "/to/")
    finally:
        dockercli.docker("rm", "-f", "-v", copier, check=False)  # -v: the image's anonymous volumes


def _remove_network(network: OldNetwork, undo: _Undo) -> None:
    dockercli.docker("network", "rm", network.name)
    create = ["network", "create", "--driver", network.driver,
              *(["--subnet", network.subnet] if network.subnet else []),
              *(["--gateway", network.gateway] if network.gateway else []),
              *(["--ip-range", network.ip_range] if network.ip_range else []),
              *[arg for k, v in sorted(network.labels.items()) for arg in ("--label", f"{k}={v}")], network.name]
    undo.add(f"create network {network.name} again", lambda: dockercli.docker(*create))


def take_over(stack: auto.Stack, found: Found, rotate: bool, images: str, say: Callable[[str], None],
              on_output: Optional[Callable[[str], None]] = None) -> auto.UpResult:
    """Run the plan of :func:`plan_lines`; on failure undo what was done and raise :class:`AdoptFailed`."""
    undo = _Undo(say)
    step = "storing the passwords"
    try:
        config_path = stacks.config_file(stack.name)
        before = config_path.read_bytes() if config_path.exists() else None
        undo.add(f"Pulumi.{stack.name}.yaml as it was", lambda: stacks.put_back(config_path, before))
        passwords = ({key: secrets.token_urlsafe(32) for key in SECRET_KEYS} if rotate else
                     {POSTGRES_PASSWORD_KEY: found.postgres_target.password,
                      REDIS_PASSWORD_KEY: found.redis_target.password})
        for key, value in passwords.items():
            stacks.set_secret(stack, key, value)
        say(f"{'generated' if rotate else 'stored'} postgresPassword and redisPassword as Pulumi secrets")

        step = "the baseline"
        done = migrations.baseline(found.postgres_target, default_actor(), BASELINE_VERSION)
        undo.add(f"drop {migrations.HISTORY_TABLE} in {found.postgres.container}",
                 lambda: _drop_history(found.postgres_target))
        say(f"baselined {', '.join(m.name for m in done)}")

        for svc in found.services:
            step = f"setting {svc.container} aside"
            _set_aside(svc, found.network.name, undo, say)
        for svc in found.services:
            step = f"copying volume {svc.volume}"
            _copy_volume(svc, stack.name, undo, say)
        step = f"removing network {found.network.name}"
        _remove_network(found.network, undo)

        step = "up"
        undo.add(f"destroy what up created in stack {stack.name}", lambda: stack.destroy(color="never"))
        return stacks.up(stack, images, say, on_output=on_output)
    except BaseException as exc:
        say(f"error: {step} failed: {_last_line(exc)}; undoing the steps before it")
        failed = undo.run()
        if failed:
            raise AdoptFailed(f"{step} failed ({_last_line(exc)}) and these steps could not be undone: "
                              f"{'; '.join(failed)}; the old data is still in volumes {found.postgres.volume} and "
                              f"{found.redis.volume}") from None
        raise AdoptFailed(f"{step} failed: {_last_line(exc)}; every step before it was undone, the old "
                          f"deployment runs as before") from None


def _last_line(exc: BaseException) -> str:
    """The line of an error that says what went wrong (for Pulumi, its last `error:` or `* ` line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line.split("error:", 1)[1].strip() if "error:" in line else line[2:] for line in lines
              if "error:" in line or line.startswith("* ")]
    return (errors or lines or [type(exc).__name__])[-1]


def summary(found: Found, outputs: dict[str, auto.OutputValue]) -> list[str]:
    """Rows and keys after the takeover beside what was found, and how to drop the fallbacks."""
    target = stacks.target_from_outputs(found.stack, outputs)
    with connect_postgres(target.postgres) as conn:
        rows = table_counts(conn)
    client = connect_redis(target.redis)
    try:
        keys = {db: stats["keys"] for db, stats in client.info("keyspace").items()}
    finally:
        client.close()
    return [f"rows before: {_counts(found.postgres.contents)}",
            f"rows after:  {_counts(rows)} (services and audit_trail gain the post-deploy step's registration)",
            f"keys before: {_counts(found.redis.contents)}; after: {_counts(keys)}",
            f"fallbacks kept: containers {found.postgres.fallback}, {found.redis.fallback} (stopped), volumes "
            f"{found.postgres.volume}, {found.redis.volume}; once the stack has proven itself: "
            f"{fallback_cleanup(found)}"]

