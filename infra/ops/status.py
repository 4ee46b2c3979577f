"""The state of a deployed stack, for people, cron jobs and probes; without Pulumi.

Container state, health, uptime and restarts from Docker; the ADR's monitoring figures
(connection count, table sizes, Redis memory and clients); pending migrations and the
last audit entries. ``problems`` lists whatever is unhealthy; it is empty when all is well.
Pending migrations are a warning, not a problem: they are normal during a rollout. A replicated
stack has members instead of containers: each as Patroni and its Sentinel see it, the cluster's own
problems (a member absent, no leader or synchronous standby, a replica behind, Sentinels in dispute),
etcd's members against the list's first hosts, a Patroni member on a host off the list, and the
figures from the leader and the master.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Optional, Sequence

from infra.core import dockercli
from infra.core.cluster import container_name, etcd_addresses
from infra.deploy import etcd, migration_files, migrations, replicated
from infra.ops import agentstatus
from infra.core.connect import ConnectError, connect_postgres, connect_redis
from infra.driver.drift import Finding
from infra.core.report import columns
from infra.core.targets import Target
from infra.deploy.checks import TABLE_SIZES_SQL

AUDIT_SQL = """
SELECT to_char(timestamp, 'YYYY-MM-DD"T"HH24:MI:SS'), actor, action, resource_type, coalesce(resource_id, '')
FROM audit_trail ORDER BY id DESC LIMIT %s
"""


ARCHIVER_SQL = "SELECT last_archived_time, last_failed_time, last_failed_wal FROM pg_stat_archiver"
LAST_ARCHIVED_SQL = ("SELECT (SELECT system_identifier FROM pg_control_system()), last_archived_wal, "
                     "last_archived_time FROM pg_stat_archiver")


def archiver_problems(row: tuple) -> list[str]:
    """PostgreSQL's own view of its WAL archiving: failing when the last attempt failed."""
    archived, failed, wal = row
    if failed is not None and (archived is None or failed > archived):
        return [f"postgres: WAL archiving fails since {failed.isoformat(timespec='seconds')} (segment {wal}); "
                f"PostgreSQL keeps the WAL until it succeeds: see `docker logs` of the PostgreSQL container"]
    return []


@dataclass
class Container:
    name: str
    state: str
    health: str
    uptime_s: Optional[int]
    restarts: Optional[int]
    image: str


@dataclass
class Member:
    """One member of a replicated stack: Patroni's view of it, and what its own Sentinel says."""

    address: str
    role: str
    """leader, sync_standby, replica; absent when Patroni does not list it."""
    state: str
    lag_bytes: Optional[int]
    sentinel_master: Optional[str]
    """The master this member's Sentinel names (None: it did not answer)."""
    quorum: bool


@dataclass
class Status:
    stack: str
    containers: list[Container]
    members: list[Member] = field(default_factory=list)
    postgres: dict = field(default_factory=dict)
    redis: dict = field(default_factory=dict)
    backups: dict = field(default_factory=dict)
    pending_migrations: list[str] = field(default_factory=list)
    audit: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({"healthy": self.healthy, **asdict(self)}, indent=2)

    def table(self) -> str:
        lines = [f"stack {self.stack}: {'healthy' if self.healthy else 'UNHEALTHY'}", ""]
        if self.members:
            rows = [("member", "patroni", "state", "lag", "its sentinel's master", "quorum")] + [
                (m.address, m.role, m.state, "-" if m.lag_bytes is None else f"{m.lag_bytes} B",
                 m.sentinel_master or "no answer", "yes" if m.quorum else "no") for m in self.members]
        else:
            rows = [("container", "state", "health", "uptime", "restarts", "image")] + [
                (c.name, c.state, c.health, _duration(c.uptime_s), str(c.restarts if c.restarts is not None else "-"),
                 c.image) for c in self.containers]
        lines += columns(rows) + [""]
        pg, rd = self.postgres, self.redis
        if pg:
            lines.append(f"postgres    {pg['version']}, {pg['connections']} connections")
            lines += [f"  table {t['table']:<24} {t['size']}" for t in pg["tables"]]
        if rd:
            lines.append(f"redis       {rd['version']}, memory {rd['used_memory_human']} of "
                         f"{rd['maxmemory_human']}, {rd['connected_clients']} clients, "
                         f"aof {'on' if rd['aof_enabled'] else 'OFF'}, last bgsave {rd['last_bgsave_status']}")
        lines.append(_bucket_line(self.backups) if self.members else _backups_line(self.backups))
        lines.append(f"migrations  {len(self.pending_migrations)} pending"
                     + (f": {', '.join(self.pending_migrations)}" if self.pending_migrations else ""))
        if self.audit:
            lines += ["", "last audit entries"] + columns(
                [("time", "actor", "action", "resource")]
                + [(a["timestamp"], a["actor"], a["action"], f"{a['resource_type']} {a['resource_id']}".strip())
                   for a in self.audit])
        lines += [f"warning: {w}" for w in self.warnings] + [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _backups_line(backups: dict) -> str:
    if not backups:
        return "backups     none scheduled (set backupSchedule; see README: Backups)"
    state = backups.get("state") or {}
    last, wal = state.get("last_run") or {}, state.get("wal") or {}
    return (f"backups     schedule '{backups['schedule']}' UTC; last {last.get('name', 'none')} "
            f"{last.get('result', '-')} at {last.get('finished_at', '-')}; next {state.get('next_run_at', '-')}; "
            f"WAL shipped {wal.get('last_shipped_at', '-')}, {wal.get('pending', 0)} waiting")


def _bucket_line(backups: dict) -> str:
    if not backups:
        return "backups     none scheduled (set backupSchedule and backupS3Bucket; see docs/replicated.md)"
    return (f"backups     schedule '{backups['schedule']}' UTC; newest base backup {backups.get('newest') or 'none'} "
            f"in {backups['store']}; WAL archived last {backups.get('last_archived') or '-'}")


def _duration(seconds: Optional[int]) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days}d " if days else "") + f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def container(name: str, now: datetime) -> Container:
    data = dockercli.inspect("container", name)
    if data is None:
        return Container(name, "missing", "-", None, None, "-")
    state = data["State"]
    uptime = None
    if state.get("Running"):
        started = datetime.fromisoformat(state["StartedAt"][:26].rstrip("Z") + "+00:00")
        uptime = max(0, int((now - started).total_seconds()))
    return Container(name, state["Status"], (state.get("Health") or {}).get("Status", "none"), uptime,
                     data.get("RestartCount", 0), _image_name(data["Image"]))


def _image_name(image_id: str) -> str:
    """The image's first tag (containers are created from an image id), else the short id."""
    tags = ((dockercli.inspect("image", image_id) or {}).get("RepoTags") or [])
    return tags[0] if tags else image_id.removeprefix("sha256:")[:12]


def collect(target: Target, audit_entries: int = 5, now: Optional[datetime] = None,
           drift: Sequence[Finding] = (), backup_agent: Optional[tuple[str, str]] = None) -> Status:
    """``drift``: :func:`infra.driver.drift.find` for the stack; each finding is a problem.
    ``backup_agent``: (container, schedule) when the stack has scheduled backups."""
    now = now or datetime.now(timezone.utc)
    names = [s.container_name for s in (target.postgres, target.redis)] + ([backup_agent[0]] if backup_agent else [])
    result = Status(target.stack, [container(name, now) for name in names])
    if backup_agent:
        state = agentstatus.read(backup_agent[0])
        result.backups = {"schedule": backup_agent[1], "state": state}
        result.problems += agentstatus.problems(state, backup_agent[1], now)
    for c in result.containers:
        if c.state != "running":
            result.problems.append(f"container {c.name} is {c.state}; `python -m infra up --stack {target.stack}` "
                                   f"recreates or restarts it")
        elif c.health == "starting":
            # Docker runs its first check one interval after a start; whether the service answers
            # is what the connections below find out.
            result.warnings.append(f"container {c.name}: Docker's first health check is still to come")
        elif c.health not in ("healthy", "none"):
            result.problems.append(f"container {c.name} is {c.health}; see `docker logs {c.name}`")
    # A missing or stopped container has its line above already.
    result.problems += [f"drift: {f.line()}" for f in drift
                        if f.what != "container" or f.kind in ("foreign", "changed")]
    _services(target, result, audit_entries, archiving=bool(backup_agent))
    return result


def collect_replicated(target: Target, audit_entries: int = 5,
                       read: replicated.Reader = replicated.read_state,
                       backups: Optional[tuple[object, str]] = None, now: Optional[datetime] = None) -> Status:
    """A replicated stack: its members and the cluster's problems, then the services' figures from the
    leader (through the HAProxy on its host) and the master the Sentinels agree on. ``backups``: (the
    bucket's store, the schedule) when the stack has scheduled backups."""
    members = target.cluster.members
    state = read(target.cluster, target.redis.port, target.redis.password)
    result = Status(target.stack, [], [_member(address, state) for address in members])
    result.problems += replicated.problems(state, members) + _membership_problems(target.stack, members, state)
    if len(state.leaders) == 1:
        target = replace(target, postgres=replace(target.postgres, host=state.leaders[0]))
    if state.master:
        target = replicated.resolve(target, state)
    _services(target, result, audit_entries, archiving=backups is not None)
    if backups:
        store, schedule = backups
        result.backups, found = agentstatus.in_bucket(store, schedule, now or datetime.now(timezone.utc),
                                                      _last_archived(target))
        result.problems += found
    return result


def _membership_problems(stack: str, members: Sequence[str], state: replicated.ClusterState) -> list[str]:
    """What the cluster's checks do not see, as they look at the listed hosts only: etcd's members
    other than the list's first hosts (a member moved by `forget-host`, or a move an `up` left
    unfinished), and a Patroni member on a host off the list (one forgotten that came back, or
    taken off by an `up` that failed before its containers were gone)."""
    found = []
    wanted = etcd_addresses(members)
    via, listed = etcd.listed(wanted)
    if via is None:
        found.append(f"etcd: no member on {', '.join(wanted)} answers")
    elif {m.address for m in listed} != set(wanted):
        found.append(f"etcd members: {', '.join(sorted(m.address for m in listed))}, the list's first hosts: "
                     f"{', '.join(wanted)}; `up` moves them")
    strays = [m.get("host") for m in state.patroni if m.get("host") not in members]
    if strays:
        found.append(f"Patroni member on a host off the list: {', '.join(strays)}; unless an `up` is taking it off, "
                     f"remove the stack's containers there ({container_name(stack, '*')}), then run forget-host")
    return found


def _last_archived(target: Target) -> Optional[tuple[str, str, datetime]]:
    """The cluster's id and the WAL segment its leader archived last, and when (None: none yet, or no answer)."""
    try:
        with connect_postgres(target.postgres, deadline_s=5) as conn:
            sysid, segment, when = conn.execute(LAST_ARCHIVED_SQL).fetchone()
    except ConnectError:
        return None
    return (str(sysid), segment, when) if segment else None


def _member(address: str, state: replicated.ClusterState) -> Member:
    listed = next((m for m in state.patroni if m.get("host") == address), {})
    lag = listed.get("lag")
    return Member(address, listed.get("role", "absent"), listed.get("state", "-"),
                  lag if isinstance(lag, int) else None, state.masters.get(address), state.quorum.get(address, False))


def _services(target: Target, result: Status, audit_entries: int, archiving: bool) -> None:
    """The ADR's monitoring figures of PostgreSQL and Redis into ``result``; what fails is a problem."""
    try:
        with connect_postgres(target.postgres, deadline_s=5) as conn:
            result.postgres = {
                "version": conn.execute("SHOW server_version").fetchone()[0],
                "connections": conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0],
                "tables": [{"table": f"{s}.{t}", "size": size} for s, t, size in conn.execute(TABLE_SIZES_SQL)],
            }
            if archiving:
                result.problems += archiver_problems(conn.execute(ARCHIVER_SQL).fetchone())
            plan = migrations.plan(target.postgres, deadline_s=5)
            result.pending_migrations = [m.name for m in plan.pending]
            if plan.applied:
                result.audit = [dict(zip(("timestamp", "actor", "action", "resource_type", "resource_id"), row))
                                for row in conn.execute(AUDIT_SQL, (audit_entries,))]
    except (ConnectError, migration_files.MigrationError) as exc:
        result.problems.append(f"postgres: {exc}")
    if result.pending_migrations:
        result.warnings.append(f"{len(result.pending_migrations)} migrations pending; "
                               f"apply them with `python -m infra migrate --stack {target.stack}`")
    try:
        client = connect_redis(target.redis, deadline_s=5)
        try:
            info = client.info()
        finally:
            client.close()
        result.redis = {"version": info.get("redis_version"), "used_memory_human": info.get("used_memory_human"),
                        "maxmemory_human": info.get("maxmemory_human"),
                        "connected_clients": info.get("connected_clients"), "aof_enabled": info.get("aof_enabled"),
                        "last_bgsave_status": info.get("rdb_last_bgsave_status")}
        if not info.get("aof_enabled"):
            result.problems.append("redis: AOF is off; the ADR requires appendonly yes")
        if info.get("aof_last_write_status", "ok") != "ok" or result.redis["last_bgsave_status"] != "ok":
            result.problems.append("redis: the last persistence write failed; see the container's log")
    except ConnectError as exc:
        result.problems.append(f"redis: {exc}")
