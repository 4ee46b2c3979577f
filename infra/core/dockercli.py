"""The few Docker Engine operations the day-2 commands need, through the `docker` CLI.

The CLI is what operators have and already point at their host (DOCKER_HOST, contexts);
nothing here assumes the daemon is local. Secrets never go on a command line: data moves
through stdin/stdout and `docker cp`.
"""

from __future__ import annotations

import io
import ipaddress
import json
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Mapping, Optional, Sequence, Union
from infra.core.errors import OperationFailed

# Every Docker object a stack declares carries this label (see components/common.py).
# The label scheme of every Docker object a stack owns: <prefix>.project, .stack, .role.
LABEL_PREFIX = "sin-datastores"
STACK_LABEL = f"{LABEL_PREFIX}.stack"
ROLE_LABEL = f"{LABEL_PREFIX}.role"
# Containers a command creates for a while (scratch databases, copiers) carry this one too.
SCRATCH_LABEL = f"{ROLE_LABEL}=scratch"


# How long `destroy`, a replacement and a leaving cluster host wait for a container to stop before
# killing it: long enough for PostgreSQL's shutdown checkpoint and Redis' final AOF write; they
# usually take well under a second, and the wait ends when the container does.
STOP_GRACE_S = 60


class DockerError(OperationFailed):
    """A docker command failed; the message carries its stderr."""


def docker(*args: str, stdin: Optional[IO[bytes]] = None, stdout: Optional[IO[bytes]] = None,
           check: bool = True, timeout_s: Optional[float] = None, input_text: Optional[str] = None) -> str:
    """Run `docker ARGS`; return stdout as text unless it is streamed to ``stdout``.
    ``input_text`` goes to its stdin (the way secrets travel: never in ARGS)."""
    try:
        proc = subprocess.run(["docker", *args], stdin=stdin, stdout=stdout or subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout_s,
                              input=input_text.encode() if input_text is not None else None)
    except FileNotFoundError:
        raise DockerError("the docker CLI is not on PATH; install it (toolchain/docker-engine.sh does)") from None
    if check and proc.returncode != 0:
        raise DockerError(f"docker {' '.join(args[:3])} failed: {proc.stderr.decode(errors='replace').strip()}")
    return "" if stdout is not None else proc.stdout.decode(errors="replace")


def logs(container: str, tail: int) -> str:
    """The last ``tail`` lines the container wrote, stdout and stderr as they came (`docker logs`
    passes the container's stderr to its own: a server's log is mostly there)."""
    proc = subprocess.run(["docker", "logs", "--tail", str(tail), container], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    return proc.stdout.decode(errors="replace")


def inspect(kind: str, name: str) -> Optional[dict]:
    """`docker KIND inspect NAME`, or None when there is no such object."""
    proc = subprocess.run(["docker", kind, "inspect", name], capture_output=True, text=True)
    if proc.returncode != 0:
        if "no such" in proc.stderr.lower() or "not found" in proc.stderr.lower():
            return None
        raise DockerError(f"docker {kind} inspect {name} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)[0]


def exec_to_file(container: str, argv: Sequence[str], path: Path) -> None:
    """Run ``argv`` inside ``container`` and stream its stdout into ``path``."""
    with open(path, "wb") as out:
        docker("exec", container, *argv, stdout=out)


def exec_from_file(container: str, argv: Sequence[str], path: Path) -> str:
    """Run ``argv`` inside ``container`` with ``path`` on its stdin; return its stdout."""
    with open(path, "rb") as source:
        return docker("exec", "-i", container, *argv, stdin=source)


def copy_out(container: str, source: str, tar_path: Path) -> None:
    """`docker cp CONTAINER:SOURCE -`: the path as a tar archive (works on remote hosts)."""
    with open(tar_path, "wb") as out:
        docker("cp", f"{container}:{source}", "-", stdout=out)


def copy_in(container: str, tar_path: Path, dest_dir: str) -> None:
    """Extract a tar archive into ``dest_dir`` of a (possibly stopped) container."""
    with open(tar_path, "rb") as source:
        docker("cp", "-", f"{container}:{dest_dir}", stdin=source)


def put_files(container: str, files: Mapping[str, tuple[Union[bytes, Path], int]]) -> None:
    """Write files into a (possibly stopped) container: {absolute path: (content or local file, mode)}.

    Goes through `docker cp` from a tar stream, so content never appears on a command line."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "files.tar"
        with tarfile.open(archive, "w") as tar:
            for path, (content, mode) in files.items():
                data = content if isinstance(content, bytes) else None
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size = len(data) if data is not None else content.stat().st_size
                info.mode, info.mtime = mode, int(time.time())
                with (io.BytesIO(data) if data is not None else open(content, "rb")) as source:
                    tar.addfile(info, source)
        copy_in(container, archive, "/")


def labelled_objects(label_value: Optional[str] = None) -> dict[str, dict[str, str]]:
    """Containers, networks and volumes carrying the stack label: {kind: {name: stack}}."""
    selector = f"label={STACK_LABEL}" + (f"={label_value}" if label_value else "")
    label = '{{.Label "' + STACK_LABEL + '"}}'
    commands = {
        "containers": ("ps", "-a", "--filter", selector, "--format", "{{.Names}}\t" + label),
        "networks": ("network", "ls", "--filter", selector, "--format", "{{.Name}}\t" + label),
        "volumes": ("volume", "ls", "--filter", selector, "--format", "{{.Name}}\t" + label),
    }
    return {kind: dict(line.split("\t", 1) for line in docker(*cmd).splitlines() if "\t" in line)
            for kind, cmd in commands.items()}


def remove_objects(objects: dict[str, dict[str, str]]) -> None:
    """Force-remove the given containers (with their anonymous volumes), then networks, then volumes."""
    if objects.get("containers"):
        docker("rm", "-f", "-v", *objects["containers"], check=False)
    if objects.get("networks"):
        docker("network", "rm", *objects["networks"], check=False)
    if objects.get("volumes"):
        docker("volume", "rm", "-f", *objects["volumes"], check=False)


def used_subnets() -> list[ipaddress.IPv4Network]:
    ids = docker("network", "ls", "-q").split()
    nets = []
    for net in json.loads(docker("network", "inspect", *ids)) if ids else []:
        for conf in (net.get("IPAM") or {}).get("Config") or []:
            if conf.get("Subnet") and ":" not in conf["Subnet"]:
                nets.append(ipaddress.IPv4Network(conf["Subnet"]))
    return nets
