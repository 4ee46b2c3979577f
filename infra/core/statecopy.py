"""A copy of a stack's Pulumi state kept on its Docker host, beside the environment it describes.

The state lives with an operator (a directory) or a team (a bucket), the environment on the Docker
host. A copy on the host, written after every command that changed the state, lets `take-back` put a
lost state back exactly as it was (Pulumi's import cannot rebuild a container's state:
docs/upstream-defects.md), and its volume's label says which state made the environment, so no other
state claims its volumes. The copy is the deployment as `pulumi stack export` gives it: its secrets
stay encrypted with the stack's passphrase.

The volume is written and read without running anything: a container of an empty image is created
(never started) with the volume mounted, takes or gives the file through `docker cp`, and is removed.
Two slots, written in turn, so a write cut short leaves the previous copy whole. Plain Python, no
Pulumi; Docker through the `docker` CLI (a remote host through :func:`infra.core.dockerhost.using`).
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from infra.core import dockercli
from infra.core.dockercli import LABEL_PREFIX, SCRATCH_LABEL, STACK_LABEL

FORMAT = 1
STATE_ID_LABEL = f"{LABEL_PREFIX}.state-id"
ROLE = "state-copy"
# A container needs an image, even one that is never started: an empty one, made on the host itself.
EMPTY_IMAGE = f"{LABEL_PREFIX}/state-copy:empty"
MOUNT = "/state"
SLOTS = ("copy-0.json", "copy-1.json")


class StateCopyError(dockercli.DockerError):
    """The copy on the Docker host cannot be read or written."""


@dataclass(frozen=True)
class StateCopy:
    """What the volume holds: the state of one stack, and which state it is."""

    project: str
    stack: str
    state_id: str
    serial: int
    written_at: str
    written_by: str
    deployment: dict

    def describe(self) -> str:
        return f"written by {self.written_by} at {self.written_at}"

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "StateCopy":
        raw = json.loads(data)
        if raw.pop("format", None) != FORMAT:
            raise ValueError("not a state copy of this format")
        return cls(**raw)


def volume_name(project: str, stack: str) -> str:
    return f"{project}-state-{stack}"


def owner(volume: dict) -> Optional[str]:
    """The state id a state-copy volume (as `docker volume inspect` or the Engine API lists it) names."""
    return (volume.get("Labels") or {}).get(STATE_ID_LABEL)


def find(project: str, stack: str) -> Optional[dict]:
    """The stack's state-copy volume on the host, or None."""
    return dockercli.inspect("volume", volume_name(project, stack))


def write(copy: StateCopy, labels: dict[str, str]) -> None:
    """Write ``copy`` into its volume (created, labelled with ``labels`` and its state id, when missing),
    into the slot its serial picks. Raises :class:`StateCopyError` for a volume of another state."""
    name = volume_name(copy.project, copy.stack)
    volume = find(copy.project, copy.stack)
    if volume is None:
        args = [f"{k}={v}" for k, v in sorted({**labels, STATE_ID_LABEL: copy.state_id}.items())]
        dockercli.docker("volume", "create", *(x for a in args for x in ("--label", a)), name)
    elif owner(volume) != copy.state_id:
        raise StateCopyError(f"volume {name} holds the state copy of another state ({owner(volume)}), "
                             f"not of this one ({copy.state_id})")
    with _mounted(copy.project, copy.stack) as helper:
        dockercli.put_files(helper, {f"{MOUNT}/{SLOTS[copy.serial % len(SLOTS)]}": (copy.to_bytes(), 0o600)})


def read(project: str, stack: str) -> Optional[StateCopy]:
    """The newest whole copy in the stack's volume; None when there is no volume or no copy in it."""
    if find(project, stack) is None:
        return None
    found = []
    with _mounted(project, stack) as helper, tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "state.tar"
        dockercli.copy_out(helper, f"{MOUNT}/.", archive)  # both slots at once
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and Path(member.name).name in SLOTS:
                    try:
                        found.append(StateCopy.from_bytes(tar.extractfile(member).read()))
                    except (ValueError, TypeError):
                        continue  # a write cut short: the other slot holds the copy
    return max(found, key=lambda c: c.serial, default=None)


def remove(project: str, stack: str) -> None:
    """Remove the volume, and the helper a killed command may have left holding it."""
    dockercli.docker("rm", "-f", _helper_name(project, stack), check=False)
    dockercli.docker("volume", "rm", volume_name(project, stack), check=False)


def _helper_name(project: str, stack: str) -> str:
    return f"{volume_name(project, stack)}-io"


def _ensure_empty_image() -> None:
    if dockercli.inspect("image", EMPTY_IMAGE) is not None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "empty.tar"
        tarfile.open(archive, "w").close()
        with open(archive, "rb") as source:
            dockercli.docker("import", "--change", f"LABEL {dockercli.ROLE_LABEL}={ROLE}", "-", EMPTY_IMAGE,
                             stdin=source)


@contextmanager
def _mounted(project: str, stack: str) -> Iterator[str]:
    """A never-started container with the stack's state-copy volume at MOUNT, removed on exit. One name
    per stack: the one a command killed in between left is removed first, not left holding the volume."""
    _ensure_empty_image()
    name = _helper_name(project, stack)
    create = ("create", "--name", name, "--label", SCRATCH_LABEL, "--label", f"{STACK_LABEL}={stack}",
              "--network", "none", "--volume", f"{volume_name(project, stack)}:{MOUNT}", EMPTY_IMAGE, "none")
    try:
        dockercli.docker(*create)
    except dockercli.DockerError as exc:
        if "already in use" not in str(exc):
            raise
        dockercli.docker("rm", "-f", name)
        dockercli.docker(*create)
    try:
        yield name
    finally:
        dockercli.docker("rm", name, check=False)
