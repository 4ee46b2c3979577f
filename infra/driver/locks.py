"""The lock the Pulumi CLI keeps on a stack while it changes it, and the one a killed command leaves.

A self-managed backend (``file://`` here) holds one JSON file per lock under
``.pulumi/locks/<org>/<project>/<stack>/``, naming the process that took it. A command killed
mid-update never removes its file, and every later `up` or `down` then stops on it. A lock taken on
this machine by a process that is gone is stale for certain: `up` and `down` remove it, saying so.
Any other lock is left alone and named: who holds it, since when, and the command that clears it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from infra.driver.backends import Bucket, file_root
from infra.driver.reservations import process_start

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Lock:
    """One lock file of a stack."""

    path: Optional[Path]  # the file of a file:// backend's lock; None for a bucket's
    pid: int
    username: str
    hostname: str
    taken: datetime

    def describe(self) -> str:
        return f"{self.username}@{self.hostname} (pid {self.pid}) since {self.taken:%Y-%m-%d %H:%M:%S} UTC"


def lock_dir(backend_url: str) -> Optional[Path]:
    """Where a ``file://`` backend keeps the stack's locks; None for other backends."""
    if not backend_url.startswith("file://"):
        return None
    return file_root(backend_url) / ".pulumi" / "locks"


def locks_of(backend_url: str, project: str, stack: str) -> list[Lock]:
    """The stack's locks in a ``file://`` or ``s3://`` backend (none known for other backends)."""
    if backend_url.startswith("s3://"):
        return _s3_locks(backend_url, project, stack)
    root = lock_dir(backend_url)
    found = []
    for path in sorted(root.glob(f"*/{project}/{stack}/*.json")) if root and root.is_dir() else []:
        try:
            found.append(_lock(path, path.read_text()))
        except (OSError, ValueError, KeyError):
            continue
    return found


def _lock(where: Optional[Path], text: str) -> Lock:
    data = json.loads(text)
    return Lock(where, int(data["pid"]), data.get("username", "?"), data.get("hostname", "?"),
                parse_time(data["timestamp"]))


def _s3_locks(backend_url: str, project: str, stack: str) -> list[Lock]:
    import botocore.exceptions

    try:
        bucket = Bucket.of(backend_url)
        return [_lock(None, bucket.read(key).decode()) for key in bucket.keys(".pulumi/locks/")
                if key.split("/")[-3:-1] == [project, stack]]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError, KeyError):
        return []  # Pulumi's own check names what is wrong with the bucket


_RFC3339 = re.compile(r"(?P<whole>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<zone>[Zz]|[+-]\d\d:\d\d)?")


def parse_time(text: str) -> datetime:
    """Go's RFC 3339 time with up to nanoseconds (``2026-12-06T04:12:01.885639042Z``, or with an offset
    where the locking machine's clock is not UTC), as UTC."""
    found = _RFC3339.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    zone = found["zone"] if found["zone"] not in (None, "Z", "z") else ""
    moment = datetime.fromisoformat(found["whole"] + (f".{found['fraction'][:6]}" if found["fraction"] else "") + zone)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _started_at(pid: int) -> Optional[float]:
    """When ``pid`` started (seconds since the epoch), or None when there is no such process."""
    ticks = process_start(pid)
    if ticks is None:
        return None
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / _CLOCK_TICKS


def stale(lock: Lock, hostname: Optional[str] = None) -> bool:
    """Taken on this machine by a process that is gone (its pid free, or reused by a later process)."""
    if lock.hostname != (hostname or socket.gethostname()):
        return False
    started = _started_at(lock.pid)
    return started is None or started > lock.taken.timestamp() + 1


def clear_stale(backend_url: str, project: str, stack: str, say: Callable[[str], None]) -> None:
    """Remove the locks a killed command of this machine left on the stack, saying so."""
    for lock in locks_of(backend_url, project, stack):
        if lock.path is not None and stale(lock):
            lock.path.unlink(missing_ok=True)
            say(f"removed the lock a killed command left on stack '{stack}' ({lock.describe()}, no longer running)")
