"""The stack configuration as one validated, typed object.

Everything else in the project receives a :class:`StackConfig`; nothing else reads raw
configuration. :func:`parse` is pure (a mapping in, an object or a :class:`ConfigError`
out) so the rules are testable without Pulumi; :func:`from_pulumi` is the one place that
talks to ``pulumi.Config``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional
from urllib.parse import urlsplit

from infra.core.cluster import ETCD_SIZE, ClusterSecrets
from infra.core.errors import InputError
from infra.backupagent.schedule import Cron, ScheduleError
from infra.core.targets import DockerHost

PROJECT = "sin-datastores"
DEV_STACK = "dev"
MIN_PASSWORD_LENGTH = 16

# Names the ADR gives the dev stack; other stacks get them prefixed with the stack name.
ADR_NAMES = {
    "networkName": "sin-network",
    "postgresContainerName": "room-03-archiv-postgres",
    "postgresVolumeName": "postgres_data",
    "redisContainerName": "room-04-memory-redis",
    "redisVolumeName": "redis_data",
    "backupContainerName": "sin-backup-agent",
    "backupVolumeName": "sin_backups",
    "postgresArchiveVolumeName": "postgres_wal_archive",
}

# The two topologies: the ADR's one Docker host, or the cluster on replicatedHosts (docs/replicated.md).
TOPOLOGY_KEY, SINGLE, REPLICATED = "topology", "single", "replicated"
TOPOLOGIES = (SINGLE, REPLICATED)


def is_replicated(topology: object) -> bool:
    """Whether a raw ``topology`` value (from the stack file or the config, unparsed) names the cluster."""
    return str(topology or "").strip() == REPLICATED


# Every key with its default (None: required, or derived from the stack name).
DEFAULTS: dict[str, Optional[str]] = {
    "dockerHost": "",
    "dockerSshKeyFile": "",
    "dockerSshKnownHostsFile": "",
    "networkName": None,
    "networkSubnet": "172.20.0.0/16",
    "networkGateway": "172.20.0.1",
    "networkIpRange": "172.20.128.0/17",
    "bindAddress": "127.0.0.1",
    "retainVolumes": "true",
    "healthTimeoutSeconds": "120",
    "postgresImage": "postgres:16-alpine",
    "postgresContainerName": None,
    "postgresVolumeName": None,
    "postgresIp": "172.20.0.100",
    "postgresHostPort": "5432",
    "postgresDatabase": "sinsolver",
    "postgresUser": "sinadmin",
    "postgresPassword": None,
    "postgresMajorVersion": "16",
    "postgresMemoryMb": "512",
    "redisImage": "redis:7-alpine",
    "redisContainerName": None,
    "redisVolumeName": None,
    "redisIp": "172.20.0.200",
    "redisHostPort": "6379",
    "redisPassword": None,
    "redisMajorVersion": "7",
    "redisMemoryMb": "256",
    "backupSchedule": "",
    "backupKeepLast": "7",
    "backupKeepDaily": "7",
    "backupKeepWeekly": "4",
    "backupPassphrase": "",
    "backupImage": "sin-datastores/backup-agent:1",
    "backupContainerName": None,
    "backupVolumeName": None,
    "postgresArchiveVolumeName": None,
    "backupS3Bucket": "",
    "backupS3Prefix": "",
    "backupS3Endpoint": "",
    "backupS3Region": "us-east-1",
    "backupS3AccessKeyId": "",
    "backupS3SecretAccessKey": "",
    TOPOLOGY_KEY: SINGLE,
    "replicatedHosts": "",
    "replicationPassword": "",
    "patroniRestPassword": "",
    "sentinelPassword": "",
    "patroniImage": "sin-datastores/patroni:4.0.7-pg16",
    "etcdImage": "sin-datastores/etcd:3.5.16",
    "haproxyImage": "sin-datastores/haproxy:3.0",
}
# Passwords generated when missing (scripts/up, `python -m infra up`).
POSTGRES_PASSWORD_KEY, REDIS_PASSWORD_KEY = "postgresPassword", "redisPassword"
SECRET_KEYS = (POSTGRES_PASSWORD_KEY, REDIS_PASSWORD_KEY)
# Secrets of the backups: the passphrase is generated too when backups are on; the S3 keys never.
BACKUP_PASSPHRASE_KEY = "backupPassphrase"
S3_SECRET_KEYS = ("backupS3AccessKeyId", "backupS3SecretAccessKey")
# The replicated topology's own passwords, generated like the two above when it is chosen.
CLUSTER_SECRET_KEYS = ("replicationPassword", "patroniRestPassword", "sentinelPassword")
ALL_SECRET_KEYS = (*SECRET_KEYS, BACKUP_PASSPHRASE_KEY, *S3_SECRET_KEYS, *CLUSTER_SECRET_KEYS)

_DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
# repository[:tag][@digest], lower-case path components as Docker requires.
_IMAGE = re.compile(
    r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SQL_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Passwords are written into a Redis config file and a PostgreSQL password file.
_PASSWORD_FORBIDDEN = re.compile(r"[\s\"'\\]")


class ConfigError(InputError, ValueError):
    """The stack configuration is invalid; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"invalid stack configuration ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}):\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class NetworkConfig:
    """The bridge network both containers join with fixed addresses."""

    name: str
    subnet: str
    gateway: str
    ip_range: str


@dataclass(frozen=True)
class PostgresConfig:
    """PostgreSQL container settings."""

    image: str
    container_name: str
    volume_name: str
    ip: str
    host_port: int
    database: str
    user: str
    password: str = field(repr=False)
    major_version: int
    memory_mb: int


@dataclass(frozen=True)
class RedisConfig:
    """Redis container settings."""

    image: str
    container_name: str
    volume_name: str
    ip: str
    host_port: int
    password: str = field(repr=False)
    major_version: int
    memory_mb: int


@dataclass(frozen=True)
class S3Config:
    """Where the backups' off-host copies go."""

    bucket: str
    prefix: str
    endpoint: str
    """Empty: AWS's own endpoint for the region."""
    region: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class BackupConfig:
    """Scheduled backups on the Docker host: what runs when, what is kept, where copies go.
    With only the S3 settings (no schedule) it serves restores: a new host restores from the
    bucket before its own agent starts writing there."""

    schedule: str
    """Cron expression, UTC; empty: no agent, no WAL archiving."""
    keep_last: int
    keep_daily: int
    keep_weekly: int
    passphrase: str = field(repr=False)
    image: str
    container_name: str
    volume_name: str
    """The local copies, on the Docker host."""
    archive_volume_name: str
    """PostgreSQL's WAL archive, which the agent ships and empties."""
    s3: Optional[S3Config]

    @property
    def scheduled(self) -> bool:
        return bool(self.schedule)


@dataclass(frozen=True)
class ClusterHost:
    """One Docker host of the replicated topology; its containers listen on ``address``."""

    docker: DockerHost
    address: str


@dataclass(frozen=True)
class ClusterConfig:
    """The replicated topology: its hosts (three or more), images and passwords."""

    hosts: tuple[ClusterHost, ...]
    patroni_image: str
    etcd_image: str
    haproxy_image: str
    secrets: ClusterSecrets

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(host.address for host in self.hosts)


@dataclass(frozen=True)
class StackConfig:
    """Everything one stack declares."""

    project: str
    stack: str
    docker: DockerHost
    bind_address: str
    retain_volumes: bool
    health_timeout_seconds: int
    network: NetworkConfig
    postgres: PostgresConfig
    redis: RedisConfig
    backup: Optional[BackupConfig] = None
    """None when neither backupSchedule nor backupS3Bucket is set."""
    cluster: Optional[ClusterConfig] = None
    """None for the ADR's single host (topology single, the default)."""

    @property
    def host_address(self) -> str:
        """Where this host reaches the published ports (loopback for a wildcard bind)."""
        return "127.0.0.1" if ipaddress.ip_address(self.bind_address).is_unspecified else self.bind_address


def default_name(key: str, stack: str) -> str:
    """The ADR's name on the dev stack, prefixed with the stack name elsewhere."""
    base = ADR_NAMES[key]
    return base if stack == DEV_STACK else f"{stack}-{base}"


class _Reader:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self, raw: Mapping[str, str], stack: str):
        self.raw = raw
        self.stack = stack
        self.problems: list[str] = []

    def fail(self, key: str, message: str, fix: str) -> None:
        self.problems.append(f"{PROJECT}:{key}: {message}; fix: {fix}")

    def text(self, key: str) -> str:
        value = self.raw.get(key)
        if value is None:
            value = DEFAULTS[key]
        # Pulumi.yaml declares the names with an empty default: derive them from the stack.
        if not value and key in ADR_NAMES:
            value = default_name(key, self.stack)
        if value is None:
            hint = " --secret" if key in ALL_SECRET_KEYS else ""
            self.fail(key, "is required but not set", f"pulumi config set{hint} {key} <value>")
            return ""
        return str(value).strip()

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.text(key)
        try:
            number = int(value)
        except ValueError:
            self.fail(key, f"'{value}' is not a whole number", f"pulumi config set {key} <{low}-{high}>")
            return 0
        if not low <= number <= high:
            self.fail(key, f"{number} is outside {low}-{high}", f"pulumi config set {key} <{low}-{high}>")
        return number

    def boolean(self, key: str) -> bool:
        value = self.text(key).lower()
        if value not in ("true", "false"):
            self.fail(key, f"'{value}' is not true or false", f"pulumi config set {key} true")
        return value == "true"

    def docker_name(self, key: str) -> str:
        value = self.text(key)
        if value and not _DOCKER_NAME.match(value):
            self.fail(key, f"'{value}' is not a valid Docker object name",
                      "use letters, digits, '_', '.', '-', starting with a letter or digit")
        return value

    def image(self, key: str) -> str:
        value = self.text(key)
        if not value:
            self.fail(key, "is empty", f"pulumi config set {key} <repository:tag>")
        elif not _IMAGE.match(value):
            self.fail(key, f"'{value}' is not a valid image reference",
                      f"pulumi config set {key} <repository:tag>, e.g. postgres:16-alpine")
        return value

    def identifier(self, key: str) -> str:
        value = self.text(key)
        if value and not _SQL_IDENTIFIER.match(value):
            self.fail(key, f"'{value}' is not a plain lower-case SQL identifier",
                      "use a-z, 0-9 and '_', starting with a letter, at most 63 characters")
        return value

    def password(self, key: str) -> str:
        value = self.raw.get(key) or ""
        if not value:
            self.fail(key, "is required but not set", f"pulumi config set --secret {key} <password>")
        elif len(value) < MIN_PASSWORD_LENGTH:
            self.fail(key, f"is {len(value)} characters long, shorter than {MIN_PASSWORD_LENGTH}",
                      f"pulumi config set --secret {key} <at least {MIN_PASSWORD_LENGTH} characters>")
        elif _PASSWORD_FORBIDDEN.search(value):
            self.fail(key, "contains whitespace, a quote or a backslash",
                      f"pulumi config set --secret {key} <password without those characters>")
        return value

    def network(self, key: str) -> Optional[ipaddress.IPv4Network]:
        value = self.text(key)
        try:
            return ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            self.fail(key, f"'{value}' is not a valid IPv4 CIDR ({exc})",
                      f"pulumi config set {key} <a.b.c.d/n>, e.g. 172.20.0.0/16")
            return None

    def docker_host(self) -> DockerHost:
        # Unset: the DOCKER_HOST of whoever runs the command, then the local socket.
        url = self.text("dockerHost") or os.environ.get("DOCKER_HOST", "")
        key_file, known_hosts = self.text("dockerSshKeyFile"), self.text("dockerSshKnownHostsFile")
        parts = urlsplit(url)
        if url and parts.scheme not in ("unix", "tcp", "ssh"):
            self.fail("dockerHost", f"'{url}' is not a unix://, tcp:// or ssh:// address",
                      "pulumi config set dockerHost ssh://<user>@<host>[:port] (or leave it unset for DOCKER_HOST)")
        elif parts.scheme == "ssh" and not parts.hostname:
            self.fail("dockerHost", f"'{url}' names no host", "pulumi config set dockerHost ssh://<user>@<host>[:port]")
        elif parts.scheme == "tcp" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            # Its published ports sit on that host's loopback, which only an SSH tunnel reaches.
            self.fail("dockerHost", f"'{url}' is a remote engine over TCP, whose services cannot be reached from here",
                      "pulumi config set dockerHost ssh://<user>@<host> (the engine over SSH)")
        replicated = is_replicated(self.raw.get(TOPOLOGY_KEY))  # they serve replicatedHosts then
        for key, value in (("dockerSshKeyFile", key_file), ("dockerSshKnownHostsFile", known_hosts)):
            if value and parts.scheme != "ssh" and not replicated:
                self.fail(key, "is set but dockerHost is not an ssh:// address",
                          f"pulumi config rm {key}, or set dockerHost to ssh://<user>@<host>")
        return DockerHost(url, key_file, known_hosts)

    def address(self, key: str) -> Optional[ipaddress.IPv4Address]:
        value = self.text(key)
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(key, f"'{value}' is not a valid IPv4 address", f"pulumi config set {key} <a.b.c.d>")
            return None


def _check_addresses(r: _Reader, subnet, ip_range, addresses: dict) -> None:
    """Gateway and fixed IPs inside the subnet, usable, distinct, outside the automatic range."""
    if subnet is None:
        return
    if ip_range is not None and not ip_range.subnet_of(subnet):
        r.fail("networkIpRange", f"{ip_range} is not inside networkSubnet {subnet}",
               f"pulumi config set networkIpRange <a range inside {subnet}>")
        ip_range = None
    seen: dict = {}
    for key, ip in addresses.items():
        if ip is None:
            continue
        if ip not in subnet:
            r.fail(key, f"{ip} is outside networkSubnet {subnet}", f"pulumi config set {key} <an address in {subnet}>")
            continue
        if ip in (subnet.network_address, subnet.broadcast_address):
            r.fail(key, f"{ip} is the network or broadcast address of {subnet}",
                   f"pulumi config set {key} <a host address in {subnet}>")
            continue
        if ip in seen:
            r.fail(key, f"{ip} is already used by {seen[ip]}", f"pulumi config set {key} <a different address>")
            continue
        seen[ip] = key
        if key != "networkGateway" and ip_range is not None and ip in ip_range:
            r.fail(key, f"{ip} is inside networkIpRange {ip_range}, where Docker hands out automatic addresses",
                   f"pick an address outside {ip_range} or shrink networkIpRange")


def parse(raw: Mapping[str, str], stack: str, project: str = PROJECT,
          secret_keys: Optional[set[str]] = None) -> StackConfig:
    """Validate the whole configuration; raise :class:`ConfigError` listing every problem.

    ``secret_keys`` names the keys stored encrypted; when given, a password stored in
    plain text is a problem too.
    """
    r = _Reader(raw, stack)
    for key in sorted(set(raw) - set(DEFAULTS)):
        r.fail(key, "is not a known setting", f"pulumi config rm {key} (see docs/configuration.md)")
    if secret_keys is not None:
        for key in ALL_SECRET_KEYS:
            if raw.get(key) and key not in secret_keys:
                r.fail(key, "is stored in plain text in the stack configuration",
                       f"pulumi config set --secret {key} <{'password' if key in SECRET_KEYS else 'value'}>")

    subnet = r.network("networkSubnet")
    ip_range = r.network("networkIpRange")
    gateway = r.address("networkGateway")
    postgres_ip = r.address("postgresIp")
    redis_ip = r.address("redisIp")
    _check_addresses(r, subnet, ip_range,
                     {"networkGateway": gateway, "postgresIp": postgres_ip, "redisIp": redis_ip})

    bind = r.text("bindAddress")
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        r.fail("bindAddress", f"'{bind}' is not an IP address", "pulumi config set bindAddress 127.0.0.1")

    postgres_port = r.integer("postgresHostPort", 1, 65535)
    redis_port = r.integer("redisHostPort", 1, 65535)
    if postgres_port and postgres_port == redis_port:
        r.fail("redisHostPort", f"{redis_port} equals postgresHostPort",
               "pulumi config set redisHostPort <a different port>")

    names = {key: r.docker_name(key) for key in ADR_NAMES}
    for a, b in (("postgresContainerName", "redisContainerName"), ("postgresVolumeName", "redisVolumeName")):
        if names[a] and names[a] == names[b]:
            r.fail(b, f"'{names[b]}' equals {a}", f"pulumi config set {b} <a different name>")

    network = NetworkConfig(names["networkName"], str(subnet), str(gateway), str(ip_range))
    postgres = PostgresConfig(
        image=r.image("postgresImage"),
        container_name=names["postgresContainerName"],
        volume_name=names["postgresVolumeName"],
        ip=str(postgres_ip),
        host_port=postgres_port,
        database=r.identifier("postgresDatabase"),
        user=r.identifier("postgresUser"),
        password=r.password(POSTGRES_PASSWORD_KEY),
        major_version=r.integer("postgresMajorVersion", 10, 99),
        memory_mb=r.integer("postgresMemoryMb", 64, 1 << 20),
    )
    redis = RedisConfig(
        image=r.image("redisImage"),
        container_name=names["redisContainerName"],
        volume_name=names["redisVolumeName"],
        ip=str(redis_ip),
        host_port=redis_port,
        password=r.password(REDIS_PASSWORD_KEY),
        major_version=r.integer("redisMajorVersion", 2, 99),
        memory_mb=r.integer("redisMemoryMb", 32, 1 << 20),
    )
    if postgres.password and postgres.password == redis.password:
        r.fail("redisPassword", "equals postgresPassword",
               "pulumi config set --secret redisPassword <a different password>")
    backup, cluster = _backup(r, stack, names), _cluster(r, postgres.password, redis.password)
    if cluster and backup and backup.scheduled and backup.s3 is None:
        r.fail("backupS3Bucket", "is required with backupSchedule on topology replicated: every host ships the WAL its "
               "PostgreSQL archives and the leader of the moment takes the base backups, so only a bucket holds all "
               "of them", "pulumi config set backupS3Bucket <bucket> (and backupS3Endpoint, backupS3AccessKeyId, "
               "backupS3SecretAccessKey; see docs/backups.md)")
    config = StackConfig(
        project=project,
        stack=stack,
        docker=r.docker_host(),
        bind_address=bind,
        retain_volumes=r.boolean("retainVolumes"),
        health_timeout_seconds=r.integer("healthTimeoutSeconds", 5, 3600),
        network=network,
        postgres=postgres,
        redis=redis,
        backup=backup,
        cluster=cluster,
    )
    if r.problems:
        raise ConfigError(r.problems)
    return config


def _backup(r: _Reader, stack: str, names: dict[str, str]) -> Optional[BackupConfig]:
    schedule = r.text("backupSchedule")
    s3 = _s3(r, stack)
    if not schedule and s3 is None:
        return None
    if schedule:
        try:
            Cron.parse(schedule)
        except ScheduleError as exc:
            r.fail("backupSchedule", str(exc), 'pulumi config set backupSchedule "0 3 * * *" (cron, UTC)')
    passphrase = r.raw.get("backupPassphrase") or ""
    if not passphrase:
        r.fail("backupPassphrase", f"is required when {'backupSchedule' if schedule else 'backupS3Bucket'} is set",
               "pulumi config set --secret backupPassphrase <at least 16 characters> (with backupSchedule "
               "`python -m infra up` generates one; to restore, the one the backups were taken with)")
    elif len(passphrase) < MIN_PASSWORD_LENGTH:
        r.fail("backupPassphrase", f"is {len(passphrase)} characters long, shorter than {MIN_PASSWORD_LENGTH}",
               f"pulumi config set --secret backupPassphrase <at least {MIN_PASSWORD_LENGTH} characters>")
    volumes = {key: names[key] for key in ("backupVolumeName", "postgresArchiveVolumeName")}
    taken = {names["postgresVolumeName"]: "postgresVolumeName", names["redisVolumeName"]: "redisVolumeName"}
    for key, value in volumes.items():
        if value in taken:
            r.fail(key, f"'{value}' equals {taken[value]}", f"pulumi config set {key} <a different name>")
        taken.setdefault(value, key)
    return BackupConfig(
        schedule=schedule,
        keep_last=r.integer("backupKeepLast", 0, 10000),
        keep_daily=r.integer("backupKeepDaily", 0, 10000),
        keep_weekly=r.integer("backupKeepWeekly", 0, 10000),
        passphrase=passphrase,
        image=r.image("backupImage"),
        container_name=names["backupContainerName"],
        volume_name=volumes["backupVolumeName"],
        archive_volume_name=volumes["postgresArchiveVolumeName"],
        s3=s3,
    )


def _cluster(r: _Reader, superuser_password: str, redis_password: str) -> Optional[ClusterConfig]:
    topology = r.text(TOPOLOGY_KEY)
    hosts_text = r.text("replicatedHosts")
    if topology not in TOPOLOGIES:
        r.fail(TOPOLOGY_KEY, f"'{topology}' is not one of {', '.join(TOPOLOGIES)}",
               "pulumi config set topology single (the ADR's one host) or replicated")
        return None
    if topology == SINGLE:
        for key in ("replicatedHosts", *CLUSTER_SECRET_KEYS):
            if r.raw.get(key):
                r.fail(key, "is set but topology is single", f"pulumi config rm {key}, or pulumi config set topology replicated")
        return None
    if r.raw.get("dockerHost"):
        r.fail("dockerHost", "is set but topology is replicated, whose hosts are replicatedHosts",
               "pulumi config rm dockerHost")
    hosts = _cluster_hosts(r, hosts_text)
    passwords = {key: r.password(key) for key in CLUSTER_SECRET_KEYS}
    everything = {"postgresPassword": superuser_password, "redisPassword": redis_password, **passwords}
    seen: dict[str, str] = {}
    for key, value in everything.items():
        if value and value in seen:
            r.fail(key, f"equals {seen[value]}", f"pulumi config set --secret {key} <a different password>")
        seen.setdefault(value, key)
    return ClusterConfig(
        hosts=hosts,
        patroni_image=r.image("patroniImage"),
        etcd_image=r.image("etcdImage"),
        haproxy_image=r.image("haproxyImage"),
        secrets=ClusterSecrets(superuser=superuser_password, replication=passwords["replicationPassword"],
                               patroni_rest=passwords["patroniRestPassword"], redis=redis_password,
                               sentinel=passwords["sentinelPassword"]),
    )


def _cluster_hosts(r: _Reader, text: str) -> tuple[ClusterHost, ...]:
    """``ssh://user@<IPv4>[:port]`` URLs, comma-separated: at least 3 distinct addresses (etcd runs on the
    first three: infra.core.cluster.ETCD_SIZE)."""
    fix = "pulumi config set replicatedHosts ssh://root@10.0.0.1,ssh://root@10.0.0.2,ssh://root@10.0.0.3"
    urls = [url.strip() for url in text.split(",") if url.strip()]
    key_file, known_hosts = r.text("dockerSshKeyFile"), r.text("dockerSshKnownHostsFile")
    hosts: list[ClusterHost] = []
    for url in urls:
        parts = urlsplit(url)
        try:
            address = str(ipaddress.IPv4Address(parts.hostname or ""))
        except ValueError:
            r.fail("replicatedHosts", f"'{url}' is not ssh://<user>@<IPv4 address>: the address is also the one "
                   "its containers listen on and announce to the others", fix)
            continue
        if parts.scheme != "ssh":
            r.fail("replicatedHosts", f"'{url}' is not an ssh:// address", fix)
            continue
        if any(host.address == address for host in hosts):
            r.fail("replicatedHosts", f"{address} is listed twice: two members on one host do not survive losing it",
                   "list each host once")
            continue
        hosts.append(ClusterHost(DockerHost(url, key_file, known_hosts), address))
    if len(urls) < ETCD_SIZE:
        r.fail("replicatedHosts", f"lists {len(urls)} host{'s' if len(urls) != 1 else ''}; the cluster needs at least "
               f"{ETCD_SIZE}: its first {ETCD_SIZE} run etcd, whose majority must survive losing one", fix)
    return tuple(hosts)


def _s3(r: _Reader, stack: str) -> Optional[S3Config]:
    bucket = r.text("backupS3Bucket")
    if not bucket:
        for key in ("backupS3Prefix", "backupS3Endpoint", *S3_SECRET_KEYS):
            if r.raw.get(key):
                r.fail(key, "is set but backupS3Bucket is not", "pulumi config set backupS3Bucket <bucket>")
        return None
    if not _BUCKET.match(bucket):
        r.fail("backupS3Bucket", f"'{bucket}' is not a valid S3 bucket name",
               "use 3-63 characters: a-z, 0-9, '.', '-', starting and ending with a letter or digit")
    prefix = r.text("backupS3Prefix").strip("/") or stack
    endpoint = r.text("backupS3Endpoint")
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        r.fail("backupS3Endpoint", f"'{endpoint}' is not an http:// or https:// URL",
               "pulumi config set backupS3Endpoint https://<host>[:port] (unset for AWS)")
    keys = {}
    for key in S3_SECRET_KEYS:
        keys[key] = r.raw.get(key) or ""
        if not keys[key]:
            r.fail(key, "is required when backupS3Bucket is set", f"pulumi config set --secret {key} <value>")
    return S3Config(bucket, prefix, endpoint, r.text("backupS3Region"),
                    keys["backupS3AccessKeyId"], keys["backupS3SecretAccessKey"])


def docker_host(raw: Mapping[str, str]) -> DockerHost:
    """Only the Docker host settings, for commands that need nothing else of the configuration."""
    r = _Reader(raw, "")
    host = r.docker_host()
    if r.problems:
        raise ConfigError(r.problems)
    return host


def from_pulumi() -> StackConfig:
    """Read the current stack's configuration once, with the project's declared defaults."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    project = pulumi.get_project()
    prefix = f"{project}:"
    everything = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    raw = {key[len(prefix):]: str(value) for key, value in everything.items() if key.startswith(prefix)}
    secret = {key for key in raw if runtime_config.is_config_secret(prefix + key)}
    try:
        return parse(raw, pulumi.get_stack(), project, secret_keys=secret)
    except ConfigError as exc:
        # RunError: the engine shows the message once, without a Python traceback.
        raise pulumi.RunError(str(exc)) from None
