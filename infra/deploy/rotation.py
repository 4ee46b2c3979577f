"""The passwords of a running replicated cluster changed to the configured ones (rotation). Plain
Python, no Pulumi: the program's rotation resource runs :func:`rotate` before any container of the
cluster is replaced.

The servers keep the passwords they were created with: PostgreSQL's roles in its data, Redis and
Sentinel in the files they rewrite in their volumes. A changed setting reaches only the files
uploaded to new containers, whose servers would then be refused by the others and never pass their
health checks. So each changed password is set on the running servers first, in an order in which
no server refuses what another one uses:

- ``postgresPassword``, ``replicationPassword``: ``ALTER ROLE`` on the leader (through an endpoint)
  with a SCRAM verifier computed here; the replicas get it with the WAL. Patroni's open connections
  stay; each Patroni reads the new one from its file when its container is replaced, one host at a
  time.
- ``redisPassword``: every member takes both passwords (ACL), then uses the new one towards its
  master (``masterauth``), the Sentinels use it (``auth-pass``), then every member keeps only the
  new one and rewrites its file.
- ``sentinelPassword``: every Sentinel takes both, uses the new one towards the others
  (``sentinel-pass``), then keeps only the new one and writes its file.
- ``patroniRestPassword`` is only in Patroni's file: the rolling replacement is all it takes.

Every step sets the configured value whatever it finds, and a server is reached with the previous
password or the configured one: a rotation cut short is finished by the next run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional, Sequence

import psycopg
import redis
from psycopg import sql

from infra.core.cluster import REPLICATION_USER, SECRET_SETTINGS, ClusterSecrets
from infra.core.connect import AuthRejected, ConnectError, connect_postgres, connect_redis, first_line
from infra.core.errors import OperationFailed
from infra.core.targets import Target
from infra.deploy.credentials import scram_verifier
from infra.deploy.replicated import MAINTENANCE_DB


class RotationRefused(OperationFailed):
    """A running server refuses the passwords the stack has for it, or a server whose password is to
    change does not answer; nothing was changed."""


class RotationFailed(OperationFailed):
    """A server refused a step of the rotation; the next run finishes it."""


def changed_fields(previous: Optional[ClusterSecrets], configured: ClusterSecrets) -> list[str]:
    """The fields of ``configured`` that differ from ``previous`` (none without a previous)."""
    if previous is None:
        return []
    names = [f.name for f in dataclasses.fields(ClusterSecrets)]
    return [name for name in names if getattr(previous, name) != getattr(configured, name)]


def rotate(target: Target, configured: ClusterSecrets, previous: Optional[ClusterSecrets]) -> list[str]:
    """Set every password of ``configured`` that differs from ``previous`` on the running servers of
    ``target.cluster``; return those settings. Every server concerned is reached first (with either
    password), so a refusal or a server out of reach changes nothing. Without ``previous`` (a new
    cluster, or a stack made before rotation was there) nothing is changed, and every server that
    answers must take the configured passwords."""
    changed = changed_fields(previous, configured)

    def passwords(field: str) -> list[str]:
        return [getattr(configured, field), *([getattr(previous, field)] if field in changed else [])]

    secrets = [getattr(s, f.name) for s in (configured, previous) if s for f in dataclasses.fields(ClusterSecrets)]
    cl = target.cluster
    roles = [field for field in ("superuser", "replication") if field in changed]
    leader, members, sentinels = None, {}, {}
    try:
        leader = _reach(cl.members, "superuser", passwords("superuser"), bool(roles),
                        lambda address, password: _postgres(target, address, password),
                        f"PostgreSQL (port {target.postgres.port})")
        _reach_each(members, cl.members, "redis", passwords("redis"), "redis" in changed,
                    lambda address, password: _redis(target, address, target.redis.port, password),
                    f"Redis (port {target.redis.port})")
        _reach_each(sentinels, cl.members, "sentinel", passwords("sentinel"),
                    "redis" in changed or "sentinel" in changed,
                    lambda address, password: _redis(target, address, cl.sentinel_port, password),
                    f"Sentinel (port {cl.sentinel_port})")
        if "sentinel" in changed:
            _step(secrets, _rotate_sentinels, sentinels.values(), configured.sentinel)
        if "redis" in changed:
            _step(secrets, _rotate_redis, members.values(), sentinels.values(), cl.master_name, configured.redis)
        if roles:
            _step(secrets, _rotate_roles, leader, [(target.postgres.user if field == "superuser" else REPLICATION_USER,
                                                    getattr(configured, field)) for field in roles])
    finally:
        for client in [*members.values(), *sentinels.values(), *([leader] if leader is not None else [])]:
            client.close()
    return [SECRET_SETTINGS[field] for field in changed]


def _postgres(target: Target, address: str, password: str) -> psycopg.Connection:
    where = dataclasses.replace(target.postgres, host=address, database=MAINTENANCE_DB)
    return connect_postgres(where, 0, password=password)


def _redis(target: Target, address: str, port: int, password: str) -> redis.Redis:
    return connect_redis(dataclasses.replace(target.redis, host=address, port=port), 0, password=password)


def _reach(addresses: Sequence[str], field: str, passwords: Sequence[str], required: bool,
           connect: Callable, what: str):
    """A client of the first server at ``addresses`` that answers; None if none does and none is required."""
    for address in addresses:
        client = _with_either(address, field, passwords, connect, what)
        if client is not None:
            return client
    if required:
        raise RotationRefused(f"{what} answers on none of {', '.join(addresses)}, and changing "
                              f"{SECRET_SETTINGS[field]} needs it: nothing was changed on any host. Bring the cluster "
                              f"back (`python -m infra status` shows it), then run up again.")
    return None


def _reach_each(found: dict, addresses: Sequence[str], field: str, passwords: Sequence[str], required: bool,
                connect: Callable, what: str) -> None:
    """Into ``found``, a client of every server at ``addresses`` that answers; each must when ``required``."""
    for address in addresses:
        client = _with_either(address, field, passwords, connect, what)
        if client is not None:
            found[address] = client
        elif required:
            raise RotationRefused(
                f"{what} on {address} does not answer, and changing {SECRET_SETTINGS[field]} needs every one: "
                f"nothing was changed on any host. Bring it back (`python -m infra status` shows the cluster), "
                f"then run up again.")


def _with_either(address: str, field: str, passwords: Sequence[str], connect: Callable, what: str):
    """A client of the server at ``address`` with the first of ``passwords`` it takes; None when it does
    not answer."""
    for password in passwords:
        try:
            return connect(address, password)
        except AuthRejected:
            continue
        except ConnectError:
            return None
    setting = SECRET_SETTINGS[field]
    if len(passwords) == 1:
        fix = (f"the running cluster keeps the passwords it was created with, and this stack has no earlier value "
               f"of it to change it from: set {setting} back to the cluster's (the earlier value is in "
               f"Pulumi.<stack>.yaml's history, encrypted as it is now), run up, then change it")
    else:
        fix = (f"it was changed other than by this stack: set {setting} to the password it takes, run up, then "
               f"change it again")
    raise RotationRefused(f"{what} on {address} refuses the configured {setting}"
                          f"{' and the previous one' if len(passwords) > 1 else ''}, so nothing was changed on any "
                          f"host: {fix}.")


def _step(secrets: Sequence[str], rotation: Callable, *args) -> None:
    """Run one rotation; a server's refusal is reported in its words, without a password."""
    try:
        rotation(*args)
    except (redis.RedisError, psycopg.Error) as exc:
        text = first_line(exc)
        for secret in secrets:
            text = text.replace(secret, "***")
        raise RotationFailed(f"changing the cluster's passwords stopped half-way ({text}); the servers take the "
                             f"previous or the configured ones: run up again to finish it") from None


def _rotate_sentinels(sentinels: Iterable[redis.Redis], password: str) -> None:
    sentinels = list(sentinels)
    for sentinel in sentinels:
        sentinel.execute_command("ACL", "SETUSER", "default", f">{password}")
    for sentinel in sentinels:
        sentinel.execute_command("SENTINEL", "CONFIG", "SET", "sentinel-pass", password)
    for sentinel in sentinels:
        sentinel.execute_command("ACL", "SETUSER", "default", "resetpass", f">{password}")
        sentinel.execute_command("SENTINEL", "FLUSHCONFIG")


def _rotate_redis(members: Iterable[redis.Redis], sentinels: Iterable[redis.Redis], master_name: str,
                  password: str) -> None:
    members = list(members)
    for member in members:
        member.execute_command("ACL", "SETUSER", "default", f">{password}")
    for member in members:
        member.config_set("masterauth", password)
    for sentinel in sentinels:
        sentinel.execute_command("SENTINEL", "SET", master_name, "auth-pass", password)
    for member in members:
        member.config_set("requirepass", password)  # the default user's only password from now
        member.config_rewrite()


def _rotate_roles(leader: psycopg.Connection, roles: Sequence[tuple[str, str]]) -> None:
    with leader.cursor() as cur:
        for role, password in roles:
            cur.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role),
                                                                   sql.Literal(scram_verifier(password))))
