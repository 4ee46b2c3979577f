"""The Pulumi program: one function used by `__main__.py` and by the Automation API."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Optional
from urllib.parse import quote

import pulumi
import pulumi_docker as docker

from infra.core import config as stack_config, conflicts, dockerhost
from infra.core.dockerhost import DockerHostError
from infra.core.engine import Engine, EngineError
from infra.deploy import migration_files
from infra.components.backupagent import BackupAgent, BackupAgentArgs
from infra.components.common import labels
from infra.components.network import NetworkArgs, SinNetwork
from infra.components.membership import Membership, MembershipArgs
from infra.components.postdeploy import PostDeploy, PostDeployArgs
from infra.components.postgres import PostgresArgs, PostgresService
from infra.components.rotation import PasswordRotation, PasswordRotationArgs
from infra.components.redis import RedisArgs, RedisService
from infra.core import cluster
from infra.components.cluster import ClusterMember, ClusterMemberArgs
from infra.core.targets import (CLIENT_SETTINGS, POSTGRES_PORT, REDIS_PORT, ClusterTarget, DockerHost, PostgresTarget,
                                RedisTarget, Target)
from infra.deploy.registry import default_actor


# Enough for gzip and encryption streams of 1 MiB blocks and boto3's multipart buffers.
BACKUP_AGENT_MEMORY_MB = 256


def target_for(cfg: stack_config.StackConfig) -> Target:
    """How the post-deploy step reaches this stack's services: through the ports published on the
    Docker host (on a remote host, through an SSH tunnel: infra.core.dockerhost.reach)."""
    pg, rd, remote = cfg.postgres, cfg.redis, cfg.docker.is_ssh
    return Target(
        stack=cfg.stack,
        postgres=PostgresTarget(cfg.host_address, pg.host_port, pg.database, pg.user, pg.password,
                                pg.container_name, pg.ip, pg.major_version, tunnel_required=remote),
        redis=RedisTarget(cfg.host_address, rd.host_port, rd.password, rd.container_name, rd.ip,
                          rd.major_version, tunnel_required=remote),
        docker=cfg.docker,
    )


def docker_provider(host: DockerHost, name: str = "docker-host") -> docker.Provider:
    """A Docker host named in the stack's configuration, so `preview` in a pull request and `up`
    talk to the same engine (unset: DOCKER_HOST, then the local socket)."""
    return docker.Provider(name, host=host.url or None, ssh_opts=host.ssh_options() if host.is_ssh else None)


def agent_settings(cfg: stack_config.StackConfig, host: str, postgres_port: int, redis_port: int) -> dict:
    """agent.json without the mount paths (infra.backupagent.agent.AgentConfig) for an agent that
    reaches PostgreSQL and Redis on ``host``; no secrets."""
    bk, pg = cfg.backup, cfg.postgres
    return {
        "stack": cfg.stack, "schedule": bk.schedule,
        "keep_last": bk.keep_last, "keep_daily": bk.keep_daily, "keep_weekly": bk.keep_weekly,
        "postgres_host": host, "postgres_port": postgres_port,
        "postgres_user": pg.user, "postgres_database": pg.database,
        "redis_host": host, "redis_port": redis_port,
        "s3": ({"bucket": bk.s3.bucket, "prefix": bk.s3.prefix, "endpoint": bk.s3.endpoint, "region": bk.s3.region}
               if bk.s3 else None),
        **({"replicated": True} if cfg.cluster else {}),
    }


def agent_secrets(cfg: stack_config.StackConfig) -> dict[str, str]:
    """The agent's secret files by name."""
    bk = cfg.backup
    secrets = {"postgres-password": cfg.postgres.password, "redis-password": cfg.redis.password,
               "backup-passphrase": bk.passphrase}
    if bk.s3:
        secrets.update({"s3-access-key-id": bk.s3.access_key_id, "s3-secret-access-key": bk.s3.secret_access_key})
    return secrets


def backup_agent(cfg: stack_config.StackConfig, postgres: PostgresService, redis: RedisService,
                 on_host: pulumi.ResourceOptions) -> BackupAgent:
    """The agent that takes the scheduled backups and ships the WAL archive, on the same host."""
    bk = cfg.backup
    return BackupAgent("backup", BackupAgentArgs(
        image=bk.image, container_name=bk.container_name, volume_name=bk.volume_name,
        postgres_volume=postgres.data_volume_name, archive_volume=postgres.archive_volume_name,
        redis_volume=redis.data_volume_name,
        settings=agent_settings(cfg, cfg.host_address, cfg.postgres.host_port, cfg.redis.host_port),
        secrets=agent_secrets(cfg), memory_mb=BACKUP_AGENT_MEMORY_MB,
        retain_volume=cfg.retain_volumes, labels=labels(cfg.project, cfg.stack, "backup"),
    ), pulumi.ResourceOptions.merge(on_host, pulumi.ResourceOptions(depends_on=[postgres, redis])))


def member_backup_agent(cfg: stack_config.StackConfig, member: ClusterMember, name: str,
                        after: list[pulumi.Resource]) -> BackupAgent:
    """One host's agent of a replicated stack: it ships what its PostgreSQL archives and, while that
    is the leader, takes the scheduled base backups (infra.backupagent.agent); over loopback."""
    container = cluster.container_name(cfg.stack, cluster.BACKUP_ROLE)
    return BackupAgent(name, BackupAgentArgs(
        image=cfg.backup.image, container_name=container, volume_name=f"{container}-data",
        postgres_volume=member.volumes["patroni-data"].name, archive_volume=member.volumes["patroni-archive"].name,
        redis_volume=member.volumes["redis-data"].name,
        settings=agent_settings(cfg, "127.0.0.1", cluster.POSTGRES_PORT, cluster.REDIS_PORT),
        secrets=agent_secrets(cfg), memory_mb=BACKUP_AGENT_MEMORY_MB, retain_volume=cfg.retain_volumes,
        labels=labels(cfg.project, cfg.stack, cluster.BACKUP_ROLE),
        data_dir_in_volume=cluster.PATRONI_DATA_DIR.removeprefix(cluster.PATRONI_VOLUME_PATH + "/"), after=after,
    ), pulumi.ResourceOptions(parent=member))


def postgres_url(user: str, password: str, host: str, port: Optional[int], database: str) -> str:
    """``host`` may list several ``address:port`` (libpq's multi-host form) with ``port`` None."""
    where = host if port is None else f"{host}:{port}"
    return f"postgresql://{quote(user)}:{quote(password, safe='')}@{where}/{quote(database)}"


def redis_url(password: str, host: str, port: int) -> str:
    return f"redis://:{quote(password, safe='')}@{host}:{port}/0"


def look_at_host(cfg: stack_config.StackConfig) -> Optional[cluster.Primaries]:
    """Refuse, before anything is declared, what the stack would collide with on its Docker host
    (the engine shows the error once, without a Python traceback). `python -m infra` has looked
    already, knowing the names the stack's state declares. Replicated: :func:`look_at_cluster_hosts`."""
    if cfg.cluster:
        return look_at_cluster_hosts(cfg)
    if os.environ.get(conflicts.LOOKED_ENV) == cfg.stack:
        return
    try:
        looked = conflicts.check_host(cfg)
    except (conflicts.HostConflicts, DockerHostError, EngineError) as exc:
        raise pulumi.RunError(str(exc)) from None
    if not looked:
        pulumi.log.warn(f"{cfg.docker.describe()}: could not look for conflicts before creating (a TLS or "
                        f"context address); a taken name, port or subnet shows as Docker's error")
    return None


class HostLook(NamedTuple):
    """What the look at one host of the cluster found."""

    unreachable: Optional[str]
    """Why the host cannot be reached; None: it can."""
    taken: tuple[str, ...] = ()
    """What a new member there would collide with."""
    left: tuple[str, ...] = ()
    """The stack's data volumes there with none of its containers (a member that left)."""


def look_at_cluster_host(cfg: stack_config.StackConfig, host: stack_config.ClusterHost) -> HostLook:
    everyone = cluster.members(cfg.cluster.addresses)
    me = cluster.Member(host.address)
    try:
        with dockerhost.session(host.docker) as current:
            engine = Engine.of(current.docker_env)
            if engine is None:
                return HostLook(None)
            return HostLook(None, tuple(conflicts.member_conflicts(
                engine, cfg.stack, cfg.project, me, cfg.cluster.patroni_image, me in cluster.etcd_hosts(everyone))),
                tuple(conflicts.left_volumes(engine, cfg.stack)))
    except (DockerHostError, EngineError) as exc:
        return HostLook(str(exc))


def look_at_cluster_hosts(cfg: stack_config.StackConfig) -> cluster.Primaries:
    """Refuse a run that cannot reach every host of the cluster, before anything is declared, naming
    each host and why (the project's refresh fails on such a host first, in the docker provider's
    words; this speaks for a run without it). Nothing changes anywhere, so no healthy member is
    touched because another host is down. The hosts are reached at once. Refused too, first: etcd's
    hosts changed other than by the one move `up` makes (:func:`refuse_moved_etcd`), a host list
    changed by more than one host (:func:`refuse_hosts_changed_at_once`); then a host where a new
    server's names or ports are taken, a joining host with a departed member's data
    (:func:`refuse_old_data_joining`), a ``redisMemoryMb`` lowered below what the Redis master holds
    (:func:`refuse_redis_too_full`). What it read: where the cluster takes writes, which a change
    reaches last, and who is in it (Patroni's members, etcd's)."""
    from infra.deploy import etcd, replicated  # the clients load for a replicated stack only
    hosts = cfg.cluster.hosts
    # A changed list first, read from the servers' own ports: a host added or swapped in is often
    # one not set up yet.
    _, in_etcd = etcd.listed(cfg.cluster.addresses)
    running_etcd = frozenset(m.address for m in in_etcd)
    refuse_moved_etcd(cfg, running_etcd)
    primaries = replicated.primaries(cluster_target(cfg))
    refuse_hosts_changed_at_once(cfg, primaries.members)
    with ThreadPoolExecutor(len(hosts)) as pool:
        found = list(pool.map(lambda host: look_at_cluster_host(cfg, host), hosts))
    taken = [f"{host.docker.describe()}: {conflict}" for host, seen in zip(hosts, found) for conflict in seen.taken]
    if taken:
        raise pulumi.RunError(
            f"the hosts of the replicated cluster already have what its new members would take, so nothing was "
            f"previewed or changed on any host ({len(taken)} conflict{'s' if len(taken) != 1 else ''}):\n"
            + "\n".join(f"  - {line}" for line in taken)
            + "\nFree them on those hosts (stop the process or remove the object), then run again.")
    unseen = [seen.unreachable for seen in found if seen.unreachable]
    if unseen:
        raise pulumi.RunError(
            f"{len(unseen)} of the {len(hosts)} hosts of the replicated cluster cannot be reached, so nothing was "
            f"previewed or changed on any host: {'; '.join(unseen)}. The members there (etcd, Patroni with "
            f"PostgreSQL, HAProxy, Redis, Sentinel) cannot be read; the others keep serving (`python -m infra "
            f"status --stack {cfg.stack}` shows the cluster). Bring the host or SSH to it back, then run again; a "
            f"host that is gone for good: take it off replicatedHosts, run `python -m infra "
            f"forget-host --stack {cfg.stack} --host <address>`, then `up` (docs/replicated.md).")
    refuse_old_data_joining(cfg, primaries.members, {host: seen.left for host, seen in zip(hosts, found)})
    refuse_redis_too_full(cfg, primaries.redis)
    return dataclasses.replace(primaries, etcd=running_etcd)


def _set_hosts_hint(cfg: stack_config.StackConfig) -> str:
    return f"`pulumi config set replicatedHosts ssh://<user>@<address>,... --stack {cfg.stack}`"


def refuse_moved_etcd(cfg: stack_config.StackConfig, running: frozenset[str]) -> None:
    """Refuse a host list whose first hosts, which run etcd (:func:`infra.core.cluster.etcd_hosts`),
    differ from the hosts in etcd's member list (``running``; empty: no etcd yet) other than by the
    move `up` makes: one etcd host taken off the list, the next host taking its place (the first
    host's membership resource moves the member: :func:`infra.deploy.membership.move_etcd`). An
    etcd host kept on the list but after the first ones would lose its member with its data in
    place, and two at once would leave etcd without a majority of its members while they move."""
    wanted = frozenset(cluster.etcd_addresses(cfg.cluster.addresses))
    gone, new = sorted(running - wanted), sorted(wanted - running)
    still_listed = [address for address in gone if address in cfg.cluster.addresses]
    if running and (still_listed or len(gone) > 1 or len(new) > 1):
        raise pulumi.RunError(
            f"replicatedHosts lists {', '.join(cfg.cluster.addresses)}, whose first {cluster.ETCD_SIZE} would run "
            f"etcd, but etcd's members are on {', '.join(sorted(running))}, so nothing was previewed or changed on "
            f"any host: etcd moves one host per `up`, and only off a host taken off the list (the next host takes "
            f"its place). Keep the hosts that run etcd first, in any order; to move etcd off one of them, take "
            f"that host off the list ({_set_hosts_hint(cfg)}).")


def refuse_hosts_changed_at_once(cfg: stack_config.StackConfig, members: frozenset[str]) -> None:
    """Refuse a host list that adds or removes more than one host of the running cluster (``members``:
    Patroni's; empty: no cluster yet): each host joins or leaves in an `up` of its own, so that a new
    replica copies a whole cluster and the Sentinels' majority moves by one host at a time."""
    added = [a for a in cfg.cluster.addresses if members and a not in members]
    removed = sorted(members - frozenset(cfg.cluster.addresses))
    if len(added) + len(removed) > 1:
        raise pulumi.RunError(
            f"replicatedHosts adds {', '.join(added) or 'no host'} and removes {', '.join(removed) or 'no host'} "
            f"at once, so nothing was previewed or changed on any host: change one host per `up` "
            f"({_set_hosts_hint(cfg)}, then `pulumi up`, for each).")


def refuse_redis_too_full(cfg: stack_config.StackConfig, master: Optional[str]) -> None:
    """Refuse a ``redisMemoryMb`` lowered below what the running master (``master``; None: no cluster
    yet) holds (:mod:`infra.deploy.redis_memory`); a master that does not take the configured password
    (it is about to change) is not checked, and that is said."""
    if master is None:
        return
    from infra.core.connect import ConnectError
    from infra.deploy import redis_memory
    try:
        redis_memory.refuse_if_too_full(dataclasses.replace(cluster_target(cfg).redis, host=master),
                                        cfg.redis.memory_mb, cfg.stack)
    except redis_memory.RedisTooFull as exc:
        raise pulumi.RunError(str(exc)) from None
    except ConnectError as exc:
        pulumi.log.warn(f"whether what the Redis master holds fits redisMemoryMb {cfg.redis.memory_mb} was not "
                        f"checked: {exc}")


def refuse_old_data_joining(cfg: stack_config.StackConfig, members: frozenset[str],
                            left: dict[stack_config.ClusterHost, tuple[str, ...]]) -> None:
    """Refuse a host joining the running cluster (``members``) with the data volumes a member of this
    stack left there (``left``): its PostgreSQL and Redis would start on their old data beside the
    cluster's. Nothing is deleted: the operator removes them, after keeping what they need."""
    stale = {host: names for host, names in left.items() if names and members and host.address not in members}
    if stale:
        host, names = next(iter(stale.items()))
        raise pulumi.RunError(
            f"{host.docker.describe()} joins the running cluster but still has the data volumes a member of this "
            f"stack left there when the host was taken off the list ({', '.join(names)}), so nothing was previewed "
            f"or changed on any host: a joining member starts empty and copies the cluster. Keep what you need from "
            f"them, remove them on that host (`docker volume rm {' '.join(names)}`), then run again.")


def program(look: Callable[[stack_config.StackConfig], Optional[cluster.Primaries]] = look_at_host) -> None:
    """Declare network, PostgreSQL, Redis and the post-deploy step (or, replicated, the cluster:
    :func:`replicated_program`); export the contract. ``look`` checks the Docker host first (the
    unit tests, which have none, pass their own)."""
    cfg = stack_config.from_pulumi()
    primaries = look(cfg)
    if cfg.cluster:
        replicated_program(cfg, primaries or cluster.Primaries())
        return
    on_host = pulumi.ResourceOptions(providers=[docker_provider(cfg.docker)])
    common = dict(bind_address=cfg.bind_address, retain_volume=cfg.retain_volumes,
                  health_timeout_s=cfg.health_timeout_seconds)

    network = SinNetwork("sin-network", NetworkArgs(
        name=cfg.network.name, subnet=cfg.network.subnet, gateway=cfg.network.gateway,
        ip_range=cfg.network.ip_range, labels=labels(cfg.project, cfg.stack, "network")), on_host)
    # No depends_on the network: images and volumes are created beside it, and each container waits
    # for it through its input (network.network_name).
    pg, rd = cfg.postgres, cfg.redis
    scheduled = cfg.backup is not None and cfg.backup.scheduled
    postgres = PostgresService("postgres", PostgresArgs(
        image=pg.image, container_name=pg.container_name, volume_name=pg.volume_name,
        network_name=network.network_name, ip=pg.ip, host_port=pg.host_port, memory_mb=pg.memory_mb,
        labels=labels(cfg.project, cfg.stack, "postgres"), database=pg.database, user=pg.user,
        password=pulumi.Output.secret(pg.password),
        archive_volume_name=cfg.backup.archive_volume_name if scheduled else None, **common), on_host)
    redis = RedisService("redis", RedisArgs(
        image=rd.image, container_name=rd.container_name, volume_name=rd.volume_name,
        network_name=network.network_name, ip=rd.ip, host_port=rd.host_port, memory_mb=rd.memory_mb,
        labels=labels(cfg.project, cfg.stack, "redis"), password=pulumi.Output.secret(rd.password),
        **common), on_host)
    step = PostDeploy("post-deploy", PostDeployArgs(
        target=target_for(cfg).to_dict(),
        migrations=migration_files.fingerprint(migration_files.load()),
        container_ids=pulumi.Output.all(postgres.container_id, redis.container_id),
        actor=default_actor(),
        ready_timeout_s=cfg.health_timeout_seconds,
        services=[postgres, redis],
    ))

    if scheduled:
        agent = backup_agent(cfg, postgres, redis, on_host)
        pulumi.export("backupContainerName", agent.container_name)
        pulumi.export("backupSchedule", cfg.backup.schedule)
        pulumi.export("backupS3Url", cfg.backup.s3.url if cfg.backup.s3 else "")

    pulumi.export("networkName", network.network_name)
    pulumi.export("networkId", network.network_id)
    pulumi.export("networkSubnet", cfg.network.subnet)
    pulumi.export("postgresContainerName", postgres.container_name)
    pulumi.export("postgresIp", pg.ip)
    pulumi.export("postgresHost", cfg.host_address)
    pulumi.export("postgresHostPort", pg.host_port)
    pulumi.export("postgresDatabase", pg.database)
    pulumi.export("postgresUser", pg.user)
    pulumi.export("postgresMajorVersion", pg.major_version)
    pulumi.export("postgresUrl", pulumi.Output.secret(postgres_url(pg.user, pg.password, pg.ip, POSTGRES_PORT, pg.database)))
    pulumi.export("postgresHostUrl", pulumi.Output.secret(
        postgres_url(pg.user, pg.password, cfg.host_address, pg.host_port, pg.database)))
    pulumi.export("redisContainerName", redis.container_name)
    pulumi.export("redisIp", rd.ip)
    pulumi.export("redisHost", cfg.host_address)
    pulumi.export("redisHostPort", rd.host_port)
    pulumi.export("redisMajorVersion", rd.major_version)
    pulumi.export("redisUrl", pulumi.Output.secret(redis_url(rd.password, rd.ip, REDIS_PORT)))
    pulumi.export("redisHostUrl", pulumi.Output.secret(redis_url(rd.password, cfg.host_address, rd.host_port)))
    pulumi.export("clientSettings", CLIENT_SETTINGS)
    # How the day-2 commands reach the services, passwords included: one structured secret.
    pulumi.export("connection", pulumi.Output.secret(target_for(cfg).to_dict()))
    pulumi.export("migrationsApplied", step.applied)
    pulumi.export("verificationChecks", step.checks)


def cluster_target(cfg: stack_config.StackConfig) -> Target:
    """How the post-deploy step reaches a replicated stack: PostgreSQL through the first host's HAProxy
    (the leader), Redis wherever the Sentinels say its master is (resolved when the step runs)."""
    pg, rd, first = cfg.postgres, cfg.redis, cfg.cluster.addresses[0]
    return Target(
        stack=cfg.stack,
        postgres=PostgresTarget(first, cluster.HAPROXY_PRIMARY_PORT, pg.database, pg.user, pg.password,
                                cluster.container_name(cfg.stack, "patroni"), first, pg.major_version),
        redis=RedisTarget(first, cluster.REDIS_PORT, rd.password, cluster.container_name(cfg.stack, "redis"), first,
                          rd.major_version),
        cluster=ClusterTarget(cfg.cluster.addresses, cluster.PATRONI_REST_PORT, cluster.SENTINEL_PORT,
                              cfg.cluster.secrets.sentinel, cluster.SENTINEL_MASTER_NAME),
    )


def replicated_program(cfg: stack_config.StackConfig, primaries: cluster.Primaries) -> None:
    """Declare every host's servers and the post-deploy step; export what clients need. A server
    with a health check changes on one host at a time, its primary's host last (``primaries``):
    each waits for the one before it to be healthy again; a host joining the running cluster comes
    after them. Changed passwords are set on the running servers before any container changes; every
    container goes before every host's membership, whose delete makes the others forget that host
    (so a destroyed cluster has no server left to reset)."""
    cl, pg, rd = cfg.cluster, cfg.postgres, cfg.redis
    target = cluster_target(cfg)
    rotation = PasswordRotation("passwords", PasswordRotationArgs(target=target.to_dict(), secrets=cl.secrets))
    everyone = cluster.members(cl.addresses)
    images = {"etcd": cl.etcd_image, "patroni": cl.patroni_image, "haproxy": cl.haproxy_image, "redis": rd.image}
    backups = cfg.backup is not None and cfg.backup.scheduled
    names = {role: cluster.container_name(cfg.stack, role) for role in cluster.ROLES}
    role_labels = {role: labels(cfg.project, cfg.stack, role) for role in cluster.ROLES}
    by_member, servers, seats = {}, {}, {}
    engines = {host.address: dataclasses.asdict(host.docker) for host in cl.hosts}
    for host, me in zip(cl.hosts, everyone):
        servers[me] = {s.role: s for s in cluster.servers(everyone, me, cfg.stack, pg.user, cl.secrets,
                                                          pg.memory_mb, rd.memory_mb, archiving=backups,
                                                          etcd_running=bool(primaries.etcd))}
        by_member[me] = ClusterMember(me.component, ClusterMemberArgs(
            images={s.image: images[s.image] for s in servers[me].values()}, names=names, labels=role_labels,
            retain_volumes=cfg.retain_volumes, health_timeout_s=cfg.health_timeout_seconds),
            pulumi.ResourceOptions(providers=[docker_provider(host.docker, me.provider)]))
        seats[me] = Membership(me.membership, MembershipArgs(
            me.address, target.to_dict(), engines, cfg.health_timeout_seconds),
            pulumi.ResourceOptions(parent=by_member[me], depends_on=[seats[everyone[0]]] if seats else []))
    joining = frozenset(cl.addresses) - primaries.members if primaries.members else frozenset()
    for role in cluster.ROLES:
        before: list[pulumi.Resource] = []
        for me in cluster.rolling_order(everyone, primaries.of(role), joining):
            if role not in servers[me]:
                continue
            container = by_member[me].declare(servers[me][role], after=[rotation, *seats.values(), *before])
            before = [container] if cluster.one_at_a_time(servers[me][role], primaries) else []
    hosts = list(by_member.values())
    for member in hosts:
        member.complete()
    if backups:
        for me, member in by_member.items():
            member_backup_agent(cfg, member, f"{me.component}-backup",
                                [member.containers["patroni"], member.containers["redis"], *seats.values()])
    step = PostDeploy("post-deploy", PostDeployArgs(
        target=target.to_dict(),
        migrations=migration_files.fingerprint(migration_files.load()),
        container_ids=pulumi.Output.all(*(h.container_ids for h in hosts)).apply(
            lambda per_host: [cid for ids in per_host for cid in ids]),
        actor=default_actor(),
        ready_timeout_s=cfg.health_timeout_seconds,
        services=hosts,
    ))
    endpoints = [f"{address}:{cluster.HAPROXY_PRIMARY_PORT}" for address in cl.addresses]
    pulumi.export("topology", stack_config.REPLICATED)
    pulumi.export("postgresEndpoints", endpoints)
    pulumi.export("postgresDatabase", pg.database)
    pulumi.export("postgresUser", pg.user)
    pulumi.export("postgresMajorVersion", pg.major_version)
    pulumi.export("postgresUrl", pulumi.Output.secret(
        postgres_url(pg.user, pg.password, ",".join(endpoints), None, pg.database)))
    pulumi.export("sentinels", [f"{address}:{cluster.SENTINEL_PORT}" for address in cl.addresses])
    pulumi.export("sentinelMasterName", cluster.SENTINEL_MASTER_NAME)
    pulumi.export("redisMajorVersion", rd.major_version)
    pulumi.export("clientSettings", CLIENT_SETTINGS)
    pulumi.export("connection", pulumi.Output.secret(target.to_dict()))
    pulumi.export("migrationsApplied", step.applied)
    pulumi.export("verificationChecks", step.checks)
    pulumi.export("clusterConverged", step.converged)
    if backups:
        pulumi.export("backupSchedule", cfg.backup.schedule)
        pulumi.export("backupS3Url", cfg.backup.s3.url)
