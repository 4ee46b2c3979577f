"""Reach a stack's Docker host: this machine's engine, or a remote one over SSH.

For an ``ssh://`` host, one SSH connection per command carries everything: the remote
engine's socket, forwarded to a Unix socket in a private temporary directory for the docker
CLI, and the ports the services publish on the remote's loopback, forwarded to free ports on
this machine's loopback for the database clients. Nothing is published beyond the remote's
own addresses, and nothing falls back to this machine's loopback at the configured ports:
without the tunnel there is no address to connect to. Plain Python, no Pulumi.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

from infra.core.errors import InputError
from infra.core.targets import SSH_CONNECT_TIMEOUT_S, DockerHost, Target

# How long the SSH tunnel may take to come up.
READY_TIMEOUT_S = 15


class DockerHostError(InputError):
    """The stack's Docker host cannot be reached or used; the message names the host and the fix."""


@dataclass
class Session:
    """How this process reaches the host for the duration of one command."""

    host: DockerHost
    docker_env: dict[str, str] = field(default_factory=dict)
    ports: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    control: Optional[Path] = None
    """The SSH control socket of the tunnel, for forwards added later (:meth:`endpoint`)."""

    def endpoint(self, address: str, port: int) -> tuple[str, int]:
        """Where to connect for a port the host publishes on ``address``: the port itself on a
        local engine; on a remote one, a forward through the tunnel (added on first use)."""
        if (address, port) in self.ports or self.control is None:
            return self.ports.get((address, port), (address, port))
        for _attempt in range(3):
            local = _free_port()
            proc = subprocess.run(["ssh", "-S", str(self.control), "-O", "forward", "-L",
                                   f"127.0.0.1:{local}:{address}:{port}", self.host.ssh_destination()],
                                  capture_output=True, text=True, timeout=SSH_CONNECT_TIMEOUT_S * 2)
            if proc.returncode == 0:
                self.ports[(address, port)] = ("127.0.0.1", local)
                return self.ports[(address, port)]
        raise DockerHostError(f"{self.host.describe()}: forwarding port {port} failed: {proc.stderr.strip()}")


# The session of the command running in this process (set by :func:`reach`): code that starts a
# container of its own on the stack's host (a scratch Redis) reaches its port through it.
_active: Optional[Session] = None


def endpoint(address: str, port: int) -> tuple[str, int]:
    """Where to connect for a port the stack's Docker host publishes on ``address``."""
    return _active.endpoint(address, port) if _active is not None else (address, port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def explain_ssh_failure(host: DockerHost, stderr: str) -> str:
    """One sentence naming the host, what went wrong and the fix, from ssh's own words."""
    name, text = host.describe(), stderr.lower()
    key = host.ssh_key_file or "your default SSH key"
    known = host.ssh_known_hosts_file or "~/.ssh/known_hosts"
    user = urlsplit(host.url).username or "the SSH user"
    if "could not resolve hostname" in text:
        return f"{name}: the host name does not resolve; fix dockerHost"
    if "host key verification failed" in text or "no matching host key" in text or "host key for" in text:
        return (f"{name}: its host key is not in {known} (or has changed); after checking the fingerprint, add it "
                f"with `ssh-keyscan -p <port> <host> >> {known}`, or set dockerSshKnownHostsFile")
    if "permission denied (publickey" in text or "permission denied (" in text:
        return (f"{name}: the SSH key {key} was refused for {user}; add its public key to that user's "
                f"~/.ssh/authorized_keys on the host, or set dockerSshKeyFile")
    if "connection refused" in text:
        return f"{name}: nothing accepts SSH connections there; start sshd on the host or fix the port in dockerHost"
    if any(s in text for s in ("timed out", "no route to host", "network is unreachable")):
        return f"{name}: the host does not answer (SSH timed out after {SSH_CONNECT_TIMEOUT_S} s); check dockerHost and the network"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"{name}: SSH failed: {last[-1] if last else 'no output'}"


@contextmanager
def session(host: DockerHost, published: list[tuple[str, int]] = ()) -> Iterator[Session]:
    """Reach ``host`` for one command: a no-op for a local engine; for ``ssh://``, a tunnel that
    forwards the engine's socket and the ``published`` (address, port) pairs, checked before use
    and closed afterwards. Raises :class:`DockerHostError` within seconds when it cannot."""
    if not host.is_ssh:
        yield Session(host, {"DOCKER_HOST": host.url} if host.url else {})
        return
    if shutil.which("ssh") is None:
        raise DockerHostError(f"{host.describe()}: the ssh client is not installed here; install openssh-client")
    workdir = Path(tempfile.mkdtemp(prefix="sin-ssh-"))
    os.chmod(workdir, 0o700)
    proc: Optional[subprocess.Popen] = None
    try:
        proc, ports = _open_tunnel(host, workdir, list(published))
        current = Session(host, {"DOCKER_HOST": f"unix://{workdir / 'docker.sock'}"}, ports, workdir / "control")
        _check_engine(current, workdir)
        yield current
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _open_tunnel(host: DockerHost, workdir: Path, published: list[tuple[str, int]]):
    """Start ``ssh -N`` with every forward; retry when a chosen local port was taken meanwhile."""
    for _attempt in range(3):
        ports = {(address, port): ("127.0.0.1", _free_port()) for address, port in published}
        forwards = ["-L", f"{workdir / 'docker.sock'}:{host.remote_socket()}"]
        for (address, port), (_, local) in ports.items():
            forwards += ["-L", f"127.0.0.1:{local}:{address}:{port}"]
        log = open(workdir / "ssh.log", "w+")
        proc = subprocess.Popen(["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                                 "-o", "ControlMaster=yes", "-S", str(workdir / "control"),
                                 *host.ssh_options(), *forwards, host.ssh_destination()],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if (workdir / "docker.sock").exists() and all(_listening(p) for _, p in ports.values()):
                return proc, ports
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise DockerHostError(f"{host.describe()}: the SSH tunnel did not come up within {READY_TIMEOUT_S} s")
        log.seek(0)
        stderr = log.read()
        if "address already in use" not in stderr.lower():
            raise DockerHostError(explain_ssh_failure(host, stderr))
    raise DockerHostError(f"{host.describe()}: no free local port for the SSH tunnel after 3 tries")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _check_engine(current: Session, workdir: Path) -> None:
    """The remote engine answers through the tunnel (a daemon that is down, or a user without
    access to its socket, shows here, before anything is done)."""
    proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                          env={**os.environ, **current.docker_env}, timeout=SSH_CONNECT_TIMEOUT_S * 3)
    if proc.returncode == 0 and proc.stdout.strip():
        return
    host = current.host
    user = urlsplit(host.url).username or "the SSH user"
    sock = host.remote_socket()
    ssh_log = (workdir / "ssh.log").read_text() if (workdir / "ssh.log").exists() else ""
    if "administratively prohibited" in ssh_log.lower():
        raise DockerHostError(f"{host.describe()}: its SSH server forbids forwarding, which the project needs for "
                              f"the Docker socket and the service ports; allow AllowTcpForwarding and "
                              f"AllowStreamLocalForwarding for {user} in its sshd_config (both are OpenSSH's defaults)")
    # The tunnel only says the socket could not be opened; ask the host why, if the user has a shell.
    quoted = shlex.quote(sock)
    probe = subprocess.run(["ssh", "-S", str(current.control), *host.ssh_options(), host.ssh_destination(), "--",
                            f"if test ! -S {quoted}; then echo missing; elif test ! -w {quoted}; then echo denied; "
                            f"else echo present; fi"], capture_output=True, text=True, timeout=SSH_CONNECT_TIMEOUT_S * 2)
    answer = probe.stdout.strip() if probe.returncode == 0 else "unknown"
    no_access = (f"{user} may not use the Docker socket {sock}; add {user} to the docker group on the host, "
                 f"or use a user that may")
    no_engine = (f"no Docker Engine answers at {sock} on the host; start it there (e.g. `systemctl start docker`) "
                 f"or fix the socket path in dockerHost")
    reason = {"denied": no_access, "missing": no_engine, "present": no_engine}.get(answer, f"{no_engine}; or {no_access}")
    raise DockerHostError(f"{host.describe()}: {reason}")


def copy_image(image: str, current: Session) -> int:
    """`docker save` on the engine this process's environment names (where toolchain/images.sh
    built the local images) piped into `docker load` on the session's engine; the image size."""
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run(["docker", "load", "--quiet"], stdin=save.stdout, capture_output=True,
                          env={**os.environ, **current.docker_env})
    save.stdout.close()
    save_err = save.stderr.read().decode(errors="replace")
    if save.wait() != 0 or load.returncode != 0:
        raise DockerHostError(f"{current.host.describe()}: copying {image} failed: "
                              f"{(save_err or load.stderr.decode(errors='replace')).strip()}")
    size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                          text=True, env={**os.environ, **current.docker_env}).stdout.strip()
    return int(size or 0)


@contextmanager
def _docker_env(values: dict[str, str]) -> Iterator[None]:
    """Point this process's docker CLI calls (infra.core.dockercli) at the session's engine."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def reach(target: Target) -> Iterator[Target]:
    """The stack's services as this process reaches them for one command. For a remote host,
    through one SSH tunnel: the returned target's endpoints are the tunnel's local ports, and
    docker CLI calls go to the remote engine until the block ends."""
    published = [(s.host, s.port) for s in (target.postgres, target.redis)]
    with session(target.docker, published) as current, using(current):
        def local(service):
            host, port = current.endpoint(service.host, service.port)
            return replace(service, host=host, port=port, tunnel_required=False)

        yield replace(target, postgres=local(target.postgres), redis=local(target.redis))


@contextmanager
def using(current: Session) -> Iterator[Session]:
    """Make ``current`` this process's session: docker CLI calls (infra.core.dockercli) and
    :func:`endpoint` go to its host until the block ends."""
    global _active
    outer, _active = _active, current
    try:
        with _docker_env(current.docker_env):
            yield current
    finally:
        _active = outer
