"""What the stack's backup agent did and when, read from its status.json (a replicated stack's: from its
bucket, :func:`in_bucket`); without Pulumi."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Optional

from infra.core import dockercli
from infra.backupagent import layout
from infra.backupagent.schedule import Cron, overdue
from infra.backupagent.store import StoreError
from infra.components.backupagent import LOCAL_MOUNT

# A scheduled backup counts as missed once this long has passed after its scheduled time.
GRACE = timedelta(minutes=10)
# Shipping stalled: segments waiting and no success for this long.
WAL_STALL = timedelta(minutes=2)
RUN_NOW_DEADLINE_S = 3600


def read(agent: str) -> Optional[dict]:
    """status.json, or None when the agent has not written one (or its container is gone)."""
    out = dockercli.docker("exec", agent, "cat", f"{LOCAL_MOUNT}/{layout.STATUS_FILE}", check=False)
    try:
        return json.loads(out) if out.strip() else None
    except ValueError:
        return None


def _time(value: Optional[str]) -> Optional[datetime]:
    return datetime.fromisoformat(value) if value else None


def problems(status: Optional[dict], schedule: str, now: datetime) -> list[str]:
    """Why the backups cannot be trusted right now; empty when the last run is good and on time."""
    if status is None:
        return ["backups: the agent's status.json cannot be read (its container is not running, or it has not "
                "started yet); see `docker logs` of the agent's container"]
    found = []
    last_run, last_success = status.get("last_run") or {}, status.get("last_success") or {}
    if last_run.get("result") == "failed":
        found.append(f"backups: the last backup ({last_run.get('name')}, {last_run.get('started_at')}) failed: "
                     f"{last_run.get('error')}")
    started = _time(status.get("agent_started_at")) or now
    if overdue(Cron.parse(schedule), _time(last_success.get("started_at")), now, GRACE, started):
        found.append(f"backups: no successful backup since {last_success.get('started_at') or 'the agent started'}, "
                     f"although schedule '{schedule}' (UTC) called for one")
    wal = status.get("wal") or {}
    if wal.get("last_error") and wal.get("pending"):
        since = _time(wal.get("last_shipped_at"))
        if since is None or now - since > WAL_STALL:
            found.append(f"backups: {wal['pending']} WAL segments wait to be shipped since "
                         f"{wal.get('last_shipped_at') or 'the start'}: {wal['last_error']}")
    return found


def in_bucket(store, schedule: str, now: datetime,
              archived: Optional[tuple[str, str, datetime]]) -> tuple[dict, list[str]]:
    """A replicated stack's backups as its bucket shows them (every host's agent ships there, none holds
    all of it): the newest complete base backup against the schedule, and whether the WAL segment the
    leader archived last (``archived``: system identifier, segment, when; None: unknown) reached it.
    Returns what to show and the problems."""
    where = store.describe()
    try:
        keys = set(store.list())
    except StoreError as exc:
        return {"store": where, "schedule": schedule}, [f"backups: {where} cannot be read: {exc}"]
    complete = [name for name in layout.backup_names(keys) if layout.backup_key(name, layout.MANIFEST) in keys]
    newest = complete[-1] if complete else None
    shown = {"store": where, "schedule": schedule, "newest": newest, "last_archived": archived[1] if archived else None}
    found = []
    if newest is None:
        found.append(f"backups: {where} holds no complete base backup yet (the agent beside the leader takes one "
                     f"when it starts); see `docker logs` of its backup container")
    elif overdue(Cron.parse(schedule), layout.backup_time(newest), now, GRACE, layout.backup_time(newest)):
        found.append(f"backups: the newest base backup in {where} is {newest}, although schedule '{schedule}' (UTC) "
                     f"called for one since; see `docker logs` of the backup container on the leader's host")
    if archived:
        sysid, segment, when = archived
        if layout.wal_key(sysid, segment) not in keys and now - when > WAL_STALL:
            found.append(f"backups: WAL segment {segment}, archived on the leader at "
                         f"{when.isoformat(timespec='seconds')}, is not in {where}; see `docker logs` of the backup "
                         f"containers")
    return shown, found


def run_now(agent: str) -> dict:
    """Ask the agent for a backup now (SIGUSR1) and wait for its record, or for why it took none (a
    replicated stack's agent beside a replica, or beside a PostgreSQL that does not answer)."""
    before = read(agent) or {}
    dockercli.docker("kill", "--signal", "USR1", agent)
    give_up = time.monotonic() + RUN_NOW_DEADLINE_S
    while time.monotonic() < give_up:
        current = read(agent) or {}
        run = current.get("last_run") or {}
        if run and run.get("started_at") != (before.get("last_run") or {}).get("started_at") \
                and not current.get("running"):
            return run
        skipped = current.get("last_skipped")
        if skipped and skipped != before.get("last_skipped"):
            why = "is a replica now" if skipped.get("reason") == "replica" else "does not answer"
            return {"name": skipped.get("name"), "result": "skipped",
                    "error": f"PostgreSQL beside the agent {agent} {why}; run it again"}
        time.sleep(0.5)
    raise dockercli.DockerError(f"the backup agent {agent} did not finish a backup within {RUN_NOW_DEADLINE_S} s")
