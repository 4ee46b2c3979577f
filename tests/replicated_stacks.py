"""A replicated stack on hosts of the remote-host harness, as the end-to-end test and the failover
benchmark make it: the hosts with the local images loaded, the stack over them, and its clients."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Optional

import psycopg
from pulumi import automation as auto
from redis import CredentialProvider
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from infra.core import cluster
from infra.driver import stacks, teststacks
from tests.polling import until
from tests.remote_host import RemoteHostGroup

# The backup agent's image, which a stack with backups runs on every host too.
BACKUP_IMAGE = {"backupImage": stacks.LOCAL_IMAGE_ENV["backupImage"]}


def local_images(names: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The stack's image settings (default: the cluster's): the images toolchain/setup.sh built and named
    in its environment."""
    names = names or stacks.LOCAL_CLUSTER_IMAGE_ENV
    found = stacks.local_images(names)
    for key, image in found.items():
        if not stacks.image_present(image):
            raise RuntimeError(f"{names[key]} names no local image: run this through scripts/test or scripts/bench")
    return found


def backup_settings(s3, bucket: str, hosts: RemoteHostGroup) -> dict[str, str]:
    """Scheduled backups into ``bucket`` of the test S3 server ``s3`` (a base backup when the agents start,
    then yearly), the agent's image copied to ``hosts``; the S3 keys go in with :func:`store_s3_keys`."""
    image = local_images(BACKUP_IMAGE)
    hosts.load_image(image["backupImage"])
    return {"backupSchedule": "0 0 1 1 *", "backupS3Bucket": bucket, "backupS3Endpoint": s3.endpoint, **image}


def store_s3_keys(stack: auto.Stack, s3) -> None:
    """The test S3 server's keys as the stack's secrets (before its first `up` with backups)."""
    stacks.set_secret(stack, "backupS3AccessKeyId", s3.access_key)
    stacks.set_secret(stack, "backupS3SecretAccessKey", s3.secret_key)


@contextlib.contextmanager
def hosts_with_images(count: int) -> Iterator[RemoteHostGroup]:
    """``count`` SSH-only Docker hosts on one LAN, each with the local images; closed afterwards."""
    images = local_images()
    group = RemoteHostGroup(count)
    try:
        group.start()
        for image in set(images.values()):
            group.load_image(image)
        yield group
    finally:
        group.close()


def settings(state_dir: Path) -> stacks.Settings:
    """A private state backend and passphrase under ``state_dir``."""
    return stacks.Settings(backend_url=f"file://{state_dir / 'state'}", passphrase_file=state_dir / "passphrase")


@contextlib.contextmanager
def replicated_stack(hosts: RemoteHostGroup, state_dir: Path, prefix: str,
                     program_dir: Optional[Path] = None,
                     extra: Optional[dict[str, str]] = None) -> Iterator[auto.Stack]:
    """A replicated stack over ``hosts`` (state under ``state_dir``), of the program in ``program_dir``
    (default: this checkout's; another: e.g. an earlier release's, whose stack file stays there), with
    ``extra`` settings besides the hosts and images;
    destroyed and removed afterwards, failing or not (a fault left in place undone first, or the
    destroy cannot reach that host)."""
    config = {"topology": "replicated", "replicatedHosts": ",".join(h.docker_host for h in hosts),
              "dockerSshKeyFile": str(hosts.identity_file), "dockerSshKnownHostsFile": str(hosts.known_hosts_file),
              "retainVolumes": "false", "healthTimeoutSeconds": "240", **local_images(), **(extra or {})}
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    if program_dir is None:
        stack = teststacks.create(settings(state_dir), name, config)
    else:
        stack = auto.create_or_select_stack(name, work_dir=str(program_dir), opts=auto.LocalWorkspaceOptions(
            work_dir=str(program_dir), env_vars=settings(state_dir).env()))
        teststacks.mark_in_use(name)
        stacks.configure(stack, config)
        stacks.ensure_secrets(stack)
    try:
        yield stack
    finally:
        try:
            for host in hosts:
                host.heal()
            stack.destroy(color="never")
        finally:
            stack.workspace.remove_stack(stack.name, force=True)
            stacks.config_file(stack.name).unlink(missing_ok=True)
            teststacks.release(stack.name)


def started(host, stack: str, role: str) -> datetime:
    """When the stack's container of ``role`` on ``host`` last started."""
    stamp = host.docker("inspect", "--format", "{{.State.StartedAt}}", cluster.container_name(stack, role)).strip()
    return datetime.fromisoformat(stamp[:26].rstrip("Z"))


def objects_on(host, stack: Optional[str] = None, running_only: bool = False) -> list[str]:
    """The names of the containers and volumes on ``host`` (only the stack's, given ``stack``); with
    ``running_only``, the running containers' ids."""
    only = ["--filter", f"label=sin-datastores.stack={stack}"] if stack is not None else []
    if running_only:
        return host.docker("ps", "-q", "--no-trunc", *only).split()
    found = []
    for listing in (["ps", "-a"], ["volume", "ls"]):
        found += host.docker(*listing, *only, "--format", "{{.Names}}" if listing[0] == "ps" else "{{.Name}}").split()
    return found


def postgres_connector(password: str | Callable[[], str]) -> Callable[[str, int], psycopg.Connection]:
    """Connections as a client makes them (``password`` may be read at each connection, as from a secret
    store); a failure says where and why, without psycopg's frames (their arguments, which a report
    shows, hold the password). A dead peer is given up by the socket (tcp_user_timeout), never by
    cancelling a commit (see cluster_clients.Writer)."""
    def connect(address: str, port: int) -> psycopg.Connection:
        try:
            return psycopg.connect(host=address, port=port, user="sinadmin", dbname="sinsolver",
                                   password=password() if callable(password) else password,
                                   connect_timeout=2, tcp_user_timeout=5000, autocommit=True)
        except psycopg.Error as exc:
            raise psycopg.OperationalError(f"{address}:{port}: {str(exc).strip().splitlines()[0]}") from None
    return connect


def sentinel_client(stack: auto.Stack, addresses: list[str], password: Optional[CredentialProvider] = None) -> Sentinel:
    """The Sentinels as a client asks them: short timeouts, so a dead host costs a second, not the
    kernel's TCP retries; no retries inside redis-py (its default, 10 with backoff, spends ~20 s on a
    dead Sentinel at every new connection), the caller retries. ``password``: read at each new
    connection (default: the stack's sentinelPassword)."""
    credentials = {"credential_provider": password} if password else {
        "password": stack.get_config("sin-datastores:sentinelPassword").value}
    timeouts = {"socket_timeout": 2, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0)}
    return Sentinel([(a, cluster.SENTINEL_PORT) for a in addresses], sentinel_kwargs={**credentials, **timeouts},
                    **timeouts)


def redis_master(stack: auto.Stack, sentinels: Sentinel, master_name: str,
                 password: Optional[CredentialProvider] = None):
    """A client of whichever server the Sentinels name master (found again after a failover).
    ``password``: read at each new connection (default: the stack's redisPassword)."""
    credentials = {"credential_provider": password} if password else {
        "password": stack.get_config("sin-datastores:redisPassword").value}
    return sentinels.master_for(master_name, socket_timeout=2, socket_connect_timeout=1, **credentials)


def adr_node_clients(stack: auto.Stack, postgres_endpoint: str) -> dict:
    """The ADR's Node clients (pg's Pool through ``postgres_endpoint``, ioredis through the Sentinels;
    tests/adr_clients.cjs) against the stack: what they read and wrote. Passwords on stdin only."""
    modules = os.environ.get("SIN_NODE_CLIENTS", "")
    if not modules or not Path(modules, "ioredis").is_dir():
        raise RuntimeError("SIN_NODE_CLIENTS names no node_modules with pg and ioredis: run this through "
                           "scripts/test (toolchain/node-clients.sh installs them)")
    outputs = {k: v.value for k, v in stack.outputs().items()}
    settings = {"postgresEndpoint": postgres_endpoint, "sentinels": outputs["sentinels"],
                "masterName": outputs["sentinelMasterName"]}
    secrets = {key: stack.get_config(f"sin-datastores:{key}Password").value
               for key in ("postgres", "redis", "sentinel")}
    done = subprocess.run(["node", str(Path(__file__).with_name("adr_clients.cjs")), json.dumps(settings)],
                          input=json.dumps(secrets), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NODE_PATH": modules})
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"error": done.stderr[-500:]}


def start_writers(stack: auto.Stack, sentinels: Sentinel, endpoints: list[str], connect, first_id: int, key: str):
    """A PostgreSQL writer through the HAProxy of each of ``endpoints`` (from ``first_id``) and a Redis
    writer on the master the Sentinels name (list ``key``), returned once both had writes acknowledged."""
    from tests.cluster_clients import PostgresWriter, RedisWriter

    pg_writer = PostgresWriter([(a, cluster.HAPROXY_PRIMARY_PORT) for a in endpoints], connect, first_id)
    redis_writer = RedisWriter(redis_master(stack, sentinels, cluster.SENTINEL_MASTER_NAME), key)
    for writer in (pg_writer, redis_writer):
        writer.start()
    until("both writers' first writes", lambda: min(len(pg_writer.acknowledged),
                                                     len(redis_writer.acknowledged)) >= 20, 30)
    return pg_writer, redis_writer


def up_while_writing(stack, pg_writer, redis_writer, what: str):
    """`up` while both writers write, until both wrote after it; then they stop. The result, when `up`
    began, and a report of what the writers saw (printed)."""
    began = time.monotonic()
    result = stack.up(color="never")
    took, done = time.monotonic() - began, time.monotonic()
    until(f"writes after the {what} change", lambda: min(pg_writer.acknowledged[-1][1],
                                                         redis_writer.acknowledged[-1][1]) > done, 60)
    for writer in (pg_writer, redis_writer):
        writer.stop.set()
        writer.join(30)
    report = (f"{what}: up took {took:.1f} s; {writer_summary('PostgreSQL', pg_writer, began)}; "
              f"{writer_summary('Redis', redis_writer, began)}")
    print(report)
    return result, began, report


def nothing_lost(connect, address: str, pg_writer, redis_writer, report: str) -> None:
    """Every commit and write the writers saw acknowledged is there (PostgreSQL read through ``address``)."""
    with connect(address, cluster.HAPROXY_PRIMARY_PORT) as conn:
        stored = {row for (row,) in conn.execute("SELECT id FROM acked")}
    missing = pg_writer.ids() - stored
    assert not missing, f"{len(missing)} acknowledged commits lost: {sorted(missing)[:10]}; {report}"
    assert not redis_writer.lost(), f"acknowledged Redis writes lost: {sorted(redis_writer.lost())[:10]}; {report}"


def writer_summary(name: str, writer, since: float) -> str:
    return (f"{name}: {len(writer.acknowledged)} acknowledged, {len([t for t in writer.failed_at if t > since])} "
            f"failed ({writer.failures_in_a_row(since)} in a row at most), longest wait "
            f"{writer.longest_gap(since):.1f} s ({writer.outage(since)})")
