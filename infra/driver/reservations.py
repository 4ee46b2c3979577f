"""Host-wide reservations of the ports and subnets test stacks use, so stacks chosen at the
same moment by any number of processes never get the same ones.

One JSON file of records (kind, value, owner pid and its start time, stack, expiry) in a
well-known directory, read and rewritten only under an exclusive ``flock`` of a lock file
beside it. A record counts while its owner process is alive and its lease has not expired;
anything else is dropped the next time the file is read, so a crashed run frees what it held.
Nothing here knows Pulumi or Docker.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import random
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence
from infra.core.errors import InputError

# Where every process on this host looks (SIN_RESERVATIONS_DIR overrides it, e.g. for tests).
DEFAULT_DIR = Path("/run/lock/sin-datastores")
# Test ports come from here, minus the kernel's ephemeral range (outgoing connections draw from that).
PORT_POOL = range(20000, 32768)
# A record of a live owner still lapses after this long (e.g. an owner in another pid namespace).
LEASE_S = 12 * 3600
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


class ReservationError(InputError):
    """Nothing left to reserve, or the reservation file cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Record:
    kind: str  # "port", "subnet" or "stack" (a stack in use)
    value: str
    pid: int
    started: int  # the owner's start time (clock ticks since boot), so a reused pid is not mistaken for it
    stack: str  # "" until a stack claims it
    expires: float


def process_start(pid: int) -> Optional[int]:
    """Start time of ``pid`` from /proc, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int) -> bool:
    """Whether the process that made a record still runs (the same process, not a reused pid)."""
    return process_start(pid) == started


def current_owner() -> tuple[int, int]:
    pid = os.getpid()
    return pid, process_start(pid) or 0


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> range:
    """The kernel's range for the local ports of outgoing connections."""
    low, high = (int(v) for v in path.read_text().split())
    return range(low, high + 1)


def port_pool(pool: range = PORT_POOL, ephemeral: Optional[range] = None) -> list[int]:
    """The ports of ``pool`` outside the ephemeral range, lowest first."""
    ephemeral = ephemeral_range() if ephemeral is None else ephemeral
    ports = [p for p in pool if p not in ephemeral]
    if not ports:
        raise ReservationError(
            f"every port of {pool.start}-{pool.stop - 1} is in the ephemeral range "
            f"{ephemeral.start}-{ephemeral.stop - 1} ({EPHEMERAL_RANGE_FILE}); outgoing connections could take any "
            f"of them: narrow it, e.g. `sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"`")
    return ports


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing on this host holds ``host:port`` (listening, bound, or in TIME_WAIT) right now."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def live(records: Iterable[Record], now: float) -> list[Record]:
    return [r for r in records if r.expires > now and alive(r.pid, r.started)]


def pick_ports(count: int, candidates: Sequence[int], taken: set[int],
               usable: Callable[[int], bool] = bindable) -> list[int]:
    """The lowest ``count`` candidates that are not taken and pass ``usable``."""
    chosen: list[int] = []
    for port in candidates:
        if len(chosen) == count:
            return chosen
        if port not in taken and usable(port):
            chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise ReservationError(f"no {count} free ports left in {candidates[0]}-{candidates[-1]} outside the ephemeral "
                           f"range; {len(taken)} are reserved by running test stacks: wait for them or sweep old ones "
                           f"(`python -m infra test-stack sweep`)")


def pick_subnet(pool: str, prefix: int, taken: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random /``prefix`` of ``pool`` overlapping none of ``taken``."""
    candidates = list(ipaddress.IPv4Network(pool).subnets(new_prefix=prefix))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(t) for t in taken):
            return net
    raise ReservationError(f"no free /{prefix} left in {pool}: {len(taken)} are used by Docker networks or reserved; "
                           f"remove unused networks or sweep old test stacks (`python -m infra test-stack sweep`)")


class Registry:
    """The reservation file of this host (or of ``directory``)."""

    def __init__(self, directory: Optional[Path] = None):
        self.directory = Path(directory or os.environ.get("SIN_RESERVATIONS_DIR") or default_dir())
        self.path = self.directory / "reservations.json"

    @contextmanager
    def locked(self) -> Iterator[list[Record]]:
        """The live records, under the host-wide lock; changes to the list are written back on success."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = open(self.directory / "reservations.lock", "a")
        except OSError as exc:
            raise ReservationError(f"cannot use the reservation directory {self.directory} ({exc.strerror}); "
                                   f"make it writable or point SIN_RESERVATIONS_DIR at one that is") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = live(self._read(), time.time())
            yield records
            self._write(records)

    def _read(self) -> list[Record]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:  # torn by hand: nothing in it can be trusted, every holder re-checks by bind/Docker
            return []
        return [Record(**r) for r in data.get("records", [])]

    def _write(self, records: list[Record]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".reservations.", dir=self.directory)
        with os.fdopen(fd, "w") as handle:
            json.dump({"records": [asdict(r) for r in records]}, handle, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)

    def records(self) -> list[Record]:
        with self.locked() as records:
            return list(records)


def default_dir() -> Path:
    """/run/lock/sin-datastores where /run/lock exists (Linux), else a folder in the temp directory."""
    return DEFAULT_DIR if DEFAULT_DIR.parent.is_dir() else Path(tempfile.gettempdir()) / "sin-datastores-locks"


def new_record(kind: str, value: str, stack: str = "", lease_s: float = LEASE_S) -> Record:
    pid, started = current_owner()
    return Record(kind, value, pid, started, stack, time.time() + lease_s)
