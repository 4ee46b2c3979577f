"""A second Docker Engine that this machine reaches only over SSH, built and torn down by the tests.

Issue #11's suite needs a "remote" Docker host. ``RemoteDockerHost`` makes one from nothing:
a network namespace joined to this machine by a veth pair (a free /30 in 10.213.0.0/16),
a ``dockerd`` in that namespace's network with its own data root, exec root, socket, bridge
range, cgroup parent and hostname, and Debian's ``sshd`` listening on the namespace side of
the veth with a host key and a client key generated per run. Clients use
``DOCKER_HOST=ssh://root@<namespace address>`` with an ``ssh`` wrapper first on PATH that
adds ``-F <its own config>`` (pinned host key, that key only, batch mode, one multiplexed
connection), so ~/.ssh is never read or written. Only loopback and the namespace's two
addresses are ever contacted; the local Docker Engine is never touched.

Issue #27's replicated topology needs several hosts that reach each other. ``RemoteHostGroup(n)``
builds ``n`` such hosts on one private LAN (``PrivateLan``): a Linux bridge in a network namespace
of its own, each host's only interface a veth into it with an address in a free /24 of
10.215.0.0/16 (its SSH address, and the address its host-networked containers listen on), and
this machine one more port with the /24's first address, so it reaches every host directly;
nothing is routed or forwarded by this machine. The hosts share one client key and one known-hosts
file, and start and close in parallel. Two faults, on any host: ``cut_link()`` /
``restore_link()`` (the far end of its link down: the host keeps running and reaches nobody,
nobody reaches it, SSH included) and ``stop_engine()`` / ``start_engine()`` (the host lost: its
dockerd, containerd, shims and every container process SIGKILLed at once, then the engine started
again on the same data root, so containers with a restart policy come back as after a reboot).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

from infra.driver.teststacks import free_port

# command -> the Debian package that provides it (toolchain/remote-host.sh installs them)
PREREQUISITES = {
    "ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux", "sshd": "openssh-server",
    "ssh": "openssh-client", "ssh-keygen": "openssh-client", "dockerd": "docker.io", "docker": "docker.io",
}
VETH_POOL = ipaddress.IPv4Network("10.213.0.0/16")
BRIDGE_POOL = ipaddress.IPv4Network("10.214.0.0/16")
LAN_POOL = ipaddress.IPv4Network("10.215.0.0/16")
PREFIX = "sinrh"
NETNS_DIR = Path("/run/netns")
PRIVSEP_DIR = Path("/run/sshd")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where a process that ignores DOCKER_HOST looks for an engine; sshd's sessions see the remote one there.
DEFAULT_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock")


class RemoteHostError(RuntimeError):
    """The remote host could not be built, used or torn down; the message says which step."""


def _which(cmd: str) -> Optional[str]:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")


def missing_prerequisites() -> list[str]:
    """What this machine lacks to build a remote host, one line each with the fix."""
    missing = [f"`{cmd}` (Debian package {pkg})" for cmd, pkg in PREREQUISITES.items() if not _which(cmd)]
    if os.geteuid() != 0:
        missing.append("root (network namespaces, veth pairs and a second dockerd need it)")
    return missing


def require_prerequisites() -> None:
    """Fail the test, never skip it, when the harness cannot run here."""
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the remote Docker host harness needs " + ", ".join(missing)
                    + "; run `toolchain/remote-host.sh` as root (or the tests through scripts/test)", pytrace=False)


def _run(argv: Sequence[str], what: str, timeout_s: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv``; raise naming ``what`` with its stderr when it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, **kwargs)
    if proc.returncode != 0:
        raise RemoteHostError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address or a route in."""
    nets = []
    for entry in json.loads(_run(["ip", "-4", "-j", "addr"], "ip addr").stdout):
        for info in entry.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(_run(["ip", "-4", "-j", "route"], "ip route").stdout):
        if route.get("dst", "default") != "default":
            nets.append(ipaddress.IPv4Network(route["dst"], strict=False))
    return nets


def _free_network(pool: ipaddress.IPv4Network, prefix: int) -> ipaddress.IPv4Network:
    used = _used_networks()
    candidates = list(pool.subnets(new_prefix=prefix))
    for _ in range(200):
        net = secrets.choice(candidates)
        if not any(net.overlaps(u) for u in used):
            return net
    raise RemoteHostError(f"no free /{prefix} in {pool}: every one tried overlaps an address or route here")


@contextmanager
def _closed_if_it_fails(part) -> Iterator[None]:
    """Close ``part`` (a host, the LAN, a group) when its start fails; the start's failure stays the
    error, and what the teardown could not remove rides along as a note."""
    try:
        yield
    except BaseException as failure:
        try:
            part.close()
        except RemoteHostError as teardown:
            failure.add_note(str(teardown))
        raise


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _default_sockets() -> list[str]:
    return sorted({os.path.realpath(p) for p in DEFAULT_SOCKETS if os.path.exists(p)})


def _mount_points() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _made_by_a_run(shared_dir: Path) -> Path:
    """Marks a shared directory (/run/netns, /run/sshd) as made by a run, for the last run out to remove."""
    return Path("/run") / f".{PREFIX}-made-{shared_dir.name}"


def _keygen(key: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], f"ssh-keygen ({comment})")


def _add_namespace(name: str) -> None:
    """A network namespace ``name`` with its loopback up."""
    if not NETNS_DIR.exists():
        _made_by_a_run(NETNS_DIR).touch()
    _run(["ip", "netns", "add", name], f"ip netns add {name}")
    _run(["ip", "-n", name, "link", "set", "lo", "up"], f"ip link set lo up ({name})")


def _delete_namespace(name: str) -> None:
    """Delete the namespace ``name`` (with every interface in it, and their veth peers elsewhere)."""
    if (NETNS_DIR / name).exists():
        _run(["ip", "netns", "del", name], f"ip netns del {name}")


def _ip(namespace: Optional[str]) -> list[str]:
    return ["ip", "-n", namespace] if namespace else ["ip"]


def _add_veth(name: str, namespace: Optional[str], peer: str, peer_namespace: str) -> None:
    """A veth pair: ``name`` in ``namespace`` (None: this machine's), ``peer`` in ``peer_namespace``."""
    _run([*_ip(namespace), "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_namespace],
         f"ip link add {name} (veth pair with {peer} in {peer_namespace})")


def _configure(interface: str, namespace: Optional[str], address: Optional[str] = None,
               master: Optional[str] = None) -> None:
    """Give ``interface`` an address (with prefix) or a bridge, and bring it up."""
    where = f"{interface} in {namespace or 'this machine'}"
    if address:
        _run([*_ip(namespace), "addr", "add", address, "dev", interface], f"ip addr add {address} ({where})")
    if master:
        _run([*_ip(namespace), "link", "set", interface, "master", master], f"ip link set master {master} ({where})")
    _run([*_ip(namespace), "link", "set", interface, "up"], f"ip link set up ({where})")


def _set_link(interface: str, namespace: Optional[str], up: bool) -> None:
    state = "up" if up else "down"
    _run([*_ip(namespace), "link", "set", interface, state],
         f"ip link set {state} ({interface} in {namespace or 'this machine'})")


def _release_shared_dir(path: Path, own_name: str) -> None:
    """The last run out removes /run/netns or /run/sshd when a run made it and nothing else uses it."""
    marker = _made_by_a_run(path)
    if not marker.exists() or _other_runs(own_name):
        return
    if path.exists() and not any(path.iterdir()):
        if str(path) in _mount_points():  # `ip netns add` bind-mounts /run/netns onto itself
            _run(["umount", str(path)], f"umount {path}")
        path.rmdir()
    marker.unlink(missing_ok=True)


def _other_runs(own_name: str) -> list[Path]:
    """Base directories of other live remote hosts and LANs (they may share /run/netns and /run/sshd)."""
    return [p for p in Path("/run").glob(f"{PREFIX}-*") if not p.name.startswith(own_name)]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(process: Optional[subprocess.Popen], timeout_s: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class RemoteDockerHost:
    """A Docker Engine in its own network namespace, reachable only over SSH.

    Use as a context manager (or ``start()`` / ``close()``); every name derives from a random
    id, so runs never collide. ``close()`` is safe after a partial start and raises when it
    could not remove something.
    """

    SSH_PORT = 22
    # A login that exists on every Debian host and is not in the docker group: SSH lets it in
    # with the run's key, the engine's socket does not (for "user may not use Docker" tests).
    NO_DOCKER_USER = "nobody"

    def __init__(self, lan: Optional["PrivateLan"] = None) -> None:
        self.lan = lan  # None: a veth /30 to this machine; else the host's one interface is a port of ``lan``
        self.run_id = secrets.token_hex(3)
        self.name = f"{PREFIX}-{self.run_id}"  # namespace, hostname, cgroup parent
        self.base = Path("/run") / self.name  # 0700: keys, configs, sockets, exec root
        self.data_root = Path("/var/lib") / self.name
        self.exec_root = self.base / "exec"
        self.socket_path = self.base / "docker.sock"
        self.host_veth = f"{self.name}-h"
        self.namespace_veth = f"{self.name}-n"
        self.netns_path = NETNS_DIR / self.name
        self.ssh_dir = self.base / "ssh"
        # Readable by NO_DOCKER_USER (sshd reads authorized keys as the user); root-owned for StrictModes.
        self.users_dir = Path("/run") / f"{self.name}-users"
        self.ssh_config_path = self.ssh_dir / "config"
        # On a LAN, the LAN's: one client key every host accepts and one file pinning every host's key.
        self.identity_file = lan.identity_file if lan else self.ssh_dir / "client_ed25519"
        self.known_hosts_file = lan.known_hosts_file if lan else self.ssh_dir / "known_hosts"
        self.host_address = ""  # this machine's end: the /30's other address, or its address on the LAN
        self.address = ""  # the namespace side of the veth: where sshd listens (and, on a LAN, its containers)
        self.bridge = ""
        self._dockerd: Optional[subprocess.Popen] = None
        self._sshd: Optional[subprocess.Popen] = None
        self._forwards: list[tuple[int, str, int]] = []
        self._engine_mounts = ""  # the mount namespace of the running dockerd (its containerd and shims share it)

    # --- public surface -------------------------------------------------------------------

    @property
    def docker_host(self) -> str:
        return f"ssh://root@{self.address}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for docker/ssh commands aimed at the remote engine."""
        return self._client_env(self.base / "bin")

    def _client_env(self, wrapper_dir: Path) -> dict[str, str]:
        """Environment whose ``ssh`` is the wrapper in ``wrapper_dir`` and whose engine is the remote one."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(PATH=f"{wrapper_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", DOCKER_HOST=self.docker_host)
        return env

    def other_client_env(self, directory: Path, identity_file: Path, known_hosts_file: Path) -> dict[str, str]:
        """A separate, non-multiplexed client with the given key and known hosts; returns its env.

        For tests of what the server refuses (another key, an unpinned host key)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write_client(directory / "ssh_config", directory / "bin", identity_file, known_hosts_file,
                           multiplex=False)
        return self._client_env(directory / "bin")

    def docker(self, *args: str, input_bytes: Optional[bytes] = None, timeout_s: float = 120) -> str:
        """`docker ARGS` against the remote engine over SSH; its stdout."""
        proc = subprocess.run(["docker", *args], env=self.env, input=input_bytes, capture_output=True,
                              timeout=timeout_s)
        if proc.returncode != 0:
            raise RemoteHostError(f"docker {' '.join(args[:2])} on {self.docker_host} failed: "
                                  f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    def load_image(self, image: str) -> None:
        """Copy a local image to the remote engine: `docker save` here piped into `docker load` there."""
        local_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=local_env)
        try:
            load = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, capture_output=True, env=self.env,
                                  timeout=600)
        finally:
            save.stdout.close()
            save_err = save.stderr.read().decode(errors="replace").strip()
            save.wait(60)
        if save.returncode != 0:
            raise RemoteHostError(f"docker save {image} (local engine) failed: {save_err}")
        if load.returncode != 0:
            raise RemoteHostError(f"docker load on {self.docker_host} failed: {load.stderr.decode(errors='replace')}")

    def run_in_namespace(self, argv: Sequence[str], timeout_s: float = 30,
                         input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run ``argv`` in the namespace's network (for the tests' own checks; ``input`` on its stdin,
        e.g. a password); not checked."""
        return subprocess.run(["nsenter", f"--net={self.netns_path}", "--", *argv], capture_output=True,
                              text=True, timeout=timeout_s, input=input)

    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> int:
        """An `ssh -L` tunnel from a free port on this machine's 127.0.0.1 to ``remote_host:remote_port``
        as seen inside the namespace; returns the local port. Closed by ``close()``."""
        local_port = free_port()
        spec = f"127.0.0.1:{local_port}:{remote_host}:{remote_port}"
        _run(self._ssh("-O", "forward", "-L", spec), f"ssh -L {spec}")
        self._forwards.append((local_port, remote_host, remote_port))
        return local_port

    def start(self) -> "RemoteDockerHost":
        """Build everything; on any failure tear down what was built and re-raise."""
        require_prerequisites()
        with _closed_if_it_fails(self):
            self._make_files()
            self._make_namespace()
            self.start_daemon()
            self._start_sshd()
            self._connect()
        return self

    def start_daemon(self) -> None:
        """Start the namespace's dockerd (again, after ``stop_daemon``) and wait until it answers."""
        if self._dockerd is not None and self._dockerd.poll() is None:
            raise RemoteHostError(f"the dockerd of {self.name} is already running (pid {self._dockerd.pid})")
        # Its own mount namespace keeps its mounts off this machine, and hiding /run/containerd makes
        # dockerd start its own containerd under the exec root instead of using a system one.
        script = ('hostname "$0"; '
                  'if [ -d /run/containerd ]; then mount -t tmpfs -o mode=0700 sinrh /run/containerd; fi; '
                  'exec dockerd "$@"')
        argv = ["nsenter", f"--net={self.netns_path}", "--", "unshare", "--mount", "--uts", "--propagation", "slave",
                "--", "sh", "-c", script, self.name,
                "--config-file", str(self.base / "daemon.json"), "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root), "--pidfile", str(self.base / "dockerd.pid"),
                "-H", f"unix://{self.socket_path}", "--bip", self.bridge, "--cgroup-parent", f"/{self.name}",
                "--log-level", "warn"]
        log = open(self.base / "dockerd.log", "ab")
        try:
            self._dockerd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while not self._daemon_answers():
            if self._dockerd.poll() is not None or time.monotonic() > deadline:
                raise RemoteHostError(f"the dockerd of {self.name} did not come up: {_tail(self.base / 'dockerd.log')}")
            time.sleep(0.05)
        if not (self.exec_root / "containerd" / "containerd.sock").exists():
            raise RemoteHostError(f"the dockerd of {self.name} did not start its own containerd under "
                                  f"{self.exec_root}: {_tail(self.base / 'dockerd.log')}")
        self._engine_mounts = os.readlink(f"/proc/{self._dockerd.pid}/ns/mnt")
        if self._sshd is not None and self._sshd.poll() is None:
            self._bind_default_sockets()

    def _bind_default_sockets(self) -> None:
        """Point the default socket paths in sshd's mount namespace at the engine's socket again: a
        restarted dockerd makes a new socket file, and the bind mount made at sshd's start keeps the old one."""
        sshd_mounts, own_mounts = f"/proc/{self._sshd.pid}/ns/mnt", "/proc/self/ns/mnt"
        if os.readlink(sshd_mounts) == os.readlink(own_mounts):  # never bind over this machine's own socket
            raise RemoteHostError(f"sshd of {self.name} (pid {self._sshd.pid}) is not in a mount namespace of its own")
        for path in _default_sockets():  # the old mount is of a deleted file: nothing can be mounted onto it
            _run(["nsenter", f"--mount={sshd_mounts}", "--", "sh", "-c", 'umount "$1" && mount --bind "$0" "$1"',
                  str(self.socket_path), path], f"bind {self.socket_path} onto {path} for sshd")

    def stop_daemon(self, timeout_s: float = 30) -> None:
        """Stop the namespace's dockerd the way an operator would (SIGTERM), waiting for it to exit."""
        if self._dockerd is not None:
            _terminate(self._dockerd, timeout_s)
        containerd_pid = self.exec_root / "containerd" / "containerd.pid"
        if containerd_pid.exists():  # only after a dockerd that was killed
            try:
                os.kill(int(containerd_pid.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass

    # --- the two faults ---------------------------------------------------------------------

    def cut_link(self) -> None:
        """Pull the host's cable: the far end of its one link goes down (its port on the LAN bridge, or this
        machine's side of the /30). The host keeps running with its address; it reaches nobody and nobody
        reaches it, SSH included (a new connection fails within the client's ConnectTimeout, 5 s). The
        harness's own shared SSH connection (and its ``forward`` tunnels) is closed, so no later call hangs
        on it; the next call opens a new one."""
        self._disconnect()
        self._forwards.clear()
        _set_link(*self._far_end(), up=False)

    def restore_link(self) -> None:
        """Plug the cable back in (``cut_link`` undone)."""
        _set_link(*self._far_end(), up=True)

    def heal(self) -> None:
        """Undo whichever fault is in place (the link cut, the engine stopped), so a test that failed
        midway still leaves a host its teardown can reach; a no-op on a healthy host."""
        self.restore_link()
        if self._dockerd is not None and self._dockerd.poll() is not None:
            self.start_engine()

    def _far_end(self) -> tuple[str, Optional[str]]:
        """The interface at the other end of the host's link, and its namespace (None: this machine's)."""
        if self.lan is not None:
            return self.lan.port(self.name), self.lan.name
        return self.host_veth, None

    def stop_engine(self, timeout_s: float = 10) -> None:
        """The host lost (a power cut, not a shutdown): SIGKILL at once its dockerd, containerd, shims and
        proxies (the processes in the engine's own mount namespace and the host's network namespace) and
        every container process (those in its cgroup parent), so no container is told or saved anything;
        then empty the exec root as a reboot empties /run. sshd and the namespace stay. ``start_engine``
        starts the engine again on the same data root. The host's kernel lives on, so peers see the
        containers' connections closed (RST/FIN) at once; for a host that vanishes without a word, as in a
        power cut, call ``cut_link()`` first."""
        if self._dockerd is None or not self._engine_mounts:
            raise RemoteHostError(f"the dockerd of {self.name} was never started")
        deadline = time.monotonic() + timeout_s
        while pids := self._engine_processes():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RemoteHostError(f"processes of the engine of {self.name} outlived SIGKILL: {sorted(pids)}")
            time.sleep(0.02)
        self._dockerd.wait(timeout_s)
        inside = [m for m in _mount_points() if m.startswith(f"{self.exec_root}/")]
        if inside:
            raise RemoteHostError(f"{self.exec_root} has mounts here ({', '.join(inside)}); not emptying it")
        shutil.rmtree(self.exec_root, ignore_errors=True)
        (self.base / "dockerd.pid").unlink(missing_ok=True)

    def start_engine(self) -> None:
        """Start the engine again after ``stop_engine`` (or ``stop_daemon``), on the same data root:
        containers with a restart policy of always or unless-stopped start again, as after a reboot."""
        self.start_daemon()

    def _engine_processes(self) -> set[int]:
        """The live processes of this host's engine: dockerd and what it started (in its mount namespace
        and this host's network namespace) and the containers' (in its cgroup parent); never anything else."""
        own_mounts = os.readlink("/proc/self/ns/mnt")
        if not self._engine_mounts or self._engine_mounts == own_mounts:
            raise RemoteHostError(f"the dockerd of {self.name} is not in a mount namespace of its own")
        network = f"net:[{os.stat(self.netns_path).st_ino}]"
        pids = set()
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if (os.readlink(proc / "ns/mnt") == self._engine_mounts and os.readlink(proc / "ns/net") == network
                        and int(proc.name) != os.getpid()):
                    pids.add(int(proc.name))
            except OSError:  # gone meanwhile, or a zombie
                continue
        for parent in CGROUP_ROOT.glob(f"*/{self.name}"):
            for procs in parent.rglob("cgroup.procs"):
                try:
                    pids.update(int(pid) for pid in procs.read_text().split())
                except OSError:
                    continue
        return {pid for pid in pids if _alive(pid)}

    def close(self) -> None:
        """Tear down in dependency order; keep going past failures and report them all at the end."""
        problems: list[str] = []

        def step(what: str, action) -> None:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - every step must get its chance
                problems.append(f"{what}: {exc}")

        step("ssh tunnels", self._cancel_forwards)
        step("remote containers", self._remove_remote_containers)
        step("dockerd", self.stop_daemon)
        step("ssh connection", self._disconnect)
        step("sshd", lambda: _terminate(self._sshd, 10))
        step("network namespace", self._delete_namespace)
        step("cgroups", self._remove_cgroups)
        step("directories", self._remove_directories)
        if problems:
            raise RemoteHostError(f"tearing down the remote host {self.name} left: " + "; ".join(problems))

    def __enter__(self) -> "RemoteDockerHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- building -------------------------------------------------------------------------

    def _make_files(self) -> None:
        self.base.mkdir(mode=0o700)
        self.ssh_dir.mkdir(mode=0o700)
        self.data_root.mkdir(mode=0o700)
        # Not /etc/docker/daemon.json; its own key gives it its own engine ID (not /etc/docker/key.json's).
        (self.base / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.base / "key.json")}))
        _keygen(self.ssh_dir / "host_ed25519", f"{self.name}-host")
        if self.lan is None:
            _keygen(self.identity_file, f"{self.name}-client")
        (self.ssh_dir / "authorized_keys").write_text(Path(f"{self.identity_file}.pub").read_text())
        self.users_dir.mkdir(mode=0o755)
        (self.users_dir / self.NO_DOCKER_USER).write_text(Path(f"{self.identity_file}.pub").read_text())
        (self.users_dir / self.NO_DOCKER_USER).chmod(0o644)
        if self.lan is not None:
            self.host_address, self.address = self.lan.root_address, self.lan.lease()
        else:
            self.host_address, self.address = (str(h) for h in _free_network(VETH_POOL, 30).hosts())
        self.bridge = f"{next(_free_network(BRIDGE_POOL, 24).hosts())}/24"
        host_key = Path(self.ssh_dir / "host_ed25519.pub").read_text().split()
        with open(self.known_hosts_file, "a") as known_hosts:
            known_hosts.write(f"{self.address} {host_key[0]} {host_key[1]}\n")
        self._write_client(self.ssh_config_path, self.base / "bin", self.identity_file, self.known_hosts_file,
                           multiplex=True)

    def _write_client(self, config: Path, wrapper_dir: Path, identity_file: Path, known_hosts_file: Path,
                      multiplex: bool) -> None:
        lines = [f"Host {self.address}", "  User root", f"  Port {self.SSH_PORT}",
                 f"  IdentityFile {identity_file}", "  IdentitiesOnly yes", "  IdentityAgent none",
                 f"  UserKnownHostsFile {known_hosts_file}", "  GlobalKnownHostsFile /dev/null",
                 "  StrictHostKeyChecking yes", "  UpdateHostKeys no", "  BatchMode yes", "  ConnectTimeout 5",
                 "  ServerAliveInterval 5", "  ServerAliveCountMax 3", "  LogLevel ERROR"]
        if multiplex:
            lines += ["  ControlMaster auto", f"  ControlPath {self.base}/cm-%C", "  ControlPersist yes"]
        else:
            lines += ["  ControlMaster no", "  ControlPath none"]
        config.write_text("\n".join(lines) + "\n")
        wrapper_dir.mkdir(mode=0o700, exist_ok=True)
        wrapper = wrapper_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {_which("ssh")} -F {config} "$@"\n')
        wrapper.chmod(0o700)

    def _make_namespace(self) -> None:
        _add_namespace(self.name)
        if self.lan is not None:
            self.lan.plug(self.name, self.namespace_veth, self.address)
            return
        _add_veth(self.host_veth, None, self.namespace_veth, self.name)
        _configure(self.host_veth, None, f"{self.host_address}/30")
        _configure(self.namespace_veth, self.name, f"{self.address}/30")

    def _start_sshd(self) -> None:
        if not PRIVSEP_DIR.exists():
            _made_by_a_run(PRIVSEP_DIR).touch()
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        config = self.base / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.address}:{self.SSH_PORT}", f"HostKey {self.ssh_dir / 'host_ed25519'}",
            f"PidFile {self.base / 'sshd.pid'}", f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'} {self.users_dir}/%u",
            f"AllowUsers root {self.NO_DOCKER_USER}", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes yes",
            "AllowTcpForwarding local", "AllowAgentForwarding no",
            # OpenSSH's default; the project forwards the engine's socket (see infra/core/dockerhost.py).
            "AllowStreamLocalForwarding local",
            "X11Forwarding no", "PermitTunnel no", "PermitUserEnvironment no", "PrintMotd no",
            f"SetEnv DOCKER_HOST=unix://{self.socket_path}", "LogLevel VERBOSE",
        ]) + "\n")
        # A network namespace does not isolate Unix sockets: in sshd's own mount namespace the
        # default socket paths lead to the remote engine, so a session ignoring DOCKER_HOST lands there too.
        sockets = _default_sockets()
        script = 'sock="$1"; shift; for s in "$@"; do mount --bind "$sock" "$s" || exit 1; done; ' \
                 f'exec {_which("sshd")} -D -e -f "$0"'
        argv = ["nsenter", f"--net={self.netns_path}", "--", "unshare", "--mount", "--propagation", "slave", "--",
                "sh", "-c", script, str(config), str(self.socket_path), *sockets]
        log = open(self.base / "sshd.log", "ab")
        try:
            self._sshd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while "Server listening" not in _tail(self.base / "sshd.log", 50):
            if self._sshd.poll() is not None or time.monotonic() > deadline:
                raise RemoteHostError(f"sshd of {self.name} did not start: {_tail(self.base / 'sshd.log')}")
            time.sleep(0.02)

    def _ssh(self, *args: str) -> list[str]:
        return [str(self.base / "bin" / "ssh"), *args, self.address]

    def _connect(self) -> None:
        """Open the multiplexed connection every later ssh/docker call shares (and prove the login works)."""
        _run(self._ssh("-f", "-N", "-o", "ControlMaster=yes"), f"ssh to {self.docker_host}", timeout_s=20,
             stdin=subprocess.DEVNULL)

    def _daemon_answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        conn = http.client.HTTPConnection("localhost", timeout=2)
        conn.sock = socket.socket(socket.AF_UNIX)
        try:
            conn.sock.connect(str(self.socket_path))
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    # --- tearing down ---------------------------------------------------------------------

    def _master_running(self) -> bool:
        return any(self.base.glob("cm-*")) and subprocess.run(
            self._ssh("-O", "check"), capture_output=True, timeout=10).returncode == 0

    def _cancel_forwards(self) -> None:
        while self._forwards:
            local_port, host, port = self._forwards.pop()
            if self._master_running():
                _run(self._ssh("-O", "cancel", "-L", f"127.0.0.1:{local_port}:{host}:{port}"), "ssh -O cancel")

    def _remove_remote_containers(self) -> None:
        if not self._daemon_answers():
            return
        local = ["docker", "-H", f"unix://{self.socket_path}"]
        ids = _run([*local, "ps", "-aq"], "docker ps (remote engine)").stdout.split()
        if ids:
            _run([*local, "rm", "-f", "-v", *ids], "docker rm (remote engine)", timeout_s=120)

    def _disconnect(self) -> None:
        if not any(self.base.glob("cm-*")):
            return
        check = subprocess.run(self._ssh("-O", "check"), capture_output=True, text=True, timeout=10)
        pid = re.search(r"pid=(\d+)", check.stderr + check.stdout)
        subprocess.run(self._ssh("-O", "exit"), capture_output=True, timeout=10)
        if pid:
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid.group(1)}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            if Path(f"/proc/{pid.group(1)}").exists():
                os.kill(int(pid.group(1)), signal.SIGKILL)

    def _delete_namespace(self) -> None:
        _delete_namespace(self.name)  # takes the veth pair with it, and so the host's port on a LAN
        if Path(f"/sys/class/net/{self.host_veth}").exists():
            _run(["ip", "link", "del", self.host_veth], "ip link del (host-side veth)")
        _release_shared_dir(NETNS_DIR, self.name)

    def _remove_cgroups(self) -> None:
        for parent in CGROUP_ROOT.glob(f"*/{self.name}"):
            for directory in sorted((d for d in parent.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                directory.rmdir()
            parent.rmdir()

    def _remove_directories(self) -> None:
        mounts = _mount_points()
        for root in (self.data_root, self.base, self.users_dir):
            inside = [m for m in mounts if m == str(root) or m.startswith(f"{root}/")]
            if inside:
                raise RemoteHostError(f"{root} still has mounts ({', '.join(inside)}); not removing it")
            if root.exists():
                shutil.rmtree(root)
        _release_shared_dir(PRIVSEP_DIR, self.name)


class PrivateLan:
    """A private LAN for a group of remote hosts: a Linux bridge in a network namespace of its own.

    Each host's namespace has one interface, a veth whose other end is a port of the bridge, with an
    address in a free /24 of LAN_POOL; this machine has one more port, with the /24's first address, so
    it reaches every host directly (no route, nothing forwarded by this machine). The bridge's namespace
    has no address and no firewall rules. Its hosts share one client key (``identity_file``) and one
    known-hosts file pinning each host's own host key (``known_hosts_file``), as one stack's
    ``dockerSshKeyFile`` and ``dockerSshKnownHostsFile`` serve all its hosts.
    """

    BRIDGE = "br0"
    ROOT_PORT = "root"  # in the LAN's namespace: the peer of this machine's interface

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.name = f"{PREFIX}-lan-{self.run_id}"  # the namespace holding the bridge
        self.netns_path = NETNS_DIR / self.name
        self.base = Path("/run") / self.name  # 0700: the hosts' shared client key and known hosts
        self.identity_file = self.base / "client_ed25519"
        self.known_hosts_file = self.base / "known_hosts"
        self.root_veth = f"{PREFIX}lan-{self.run_id}"  # this machine's interface (15 characters, the maximum)
        self.network: Optional[ipaddress.IPv4Network] = None
        self.root_address = ""
        self._addresses: list[str] = []

    def start(self) -> "PrivateLan":
        """Make the namespace, the bridge and this machine's port; on failure tear down and re-raise."""
        with _closed_if_it_fails(self):
            self.base.mkdir(mode=0o700)
            _keygen(self.identity_file, f"{self.name}-client")
            self.network = _free_network(LAN_POOL, 24)
            root, *self._addresses = (str(a) for a in self.network.hosts())
            _add_namespace(self.name)
            _run(["ip", "-n", self.name, "link", "add", self.BRIDGE, "type", "bridge", "stp_state", "0",
                  "forward_delay", "0"], "ip link add (bridge)")
            _configure(self.BRIDGE, self.name)
            _add_veth(self.root_veth, None, self.ROOT_PORT, self.name)
            _configure(self.ROOT_PORT, self.name, master=self.BRIDGE)
            _configure(self.root_veth, None, f"{root}/{self.network.prefixlen}")
            self.root_address = root
        return self

    def lease(self) -> str:
        """The next free host address on the LAN."""
        if not self.root_address:
            raise RemoteHostError(f"the LAN {self.name} is not started")
        return self._addresses.pop(0)

    def port(self, host_name: str) -> str:
        """The bridge's port (in the LAN's namespace) that leads to the host named ``host_name``."""
        return host_name

    def plug(self, namespace: str, interface: str, address: str) -> None:
        """Join ``namespace`` to the LAN: its ``interface`` gets ``address``, its peer becomes a bridge port."""
        _add_veth(self.port(namespace), self.name, interface, namespace)
        _configure(self.port(namespace), self.name, master=self.BRIDGE)
        _configure(interface, namespace, f"{address}/{self.network.prefixlen}")

    def close(self) -> None:
        """Delete the namespace (the bridge and every port go with it, and so the veths' other ends) and the
        directory; call it after its hosts' ``close()``."""
        problems = []
        # While the LAN's directory exists its hosts leave /run/netns and /run/sshd to it.
        for what, action in (("this machine's port", self._delete_root_veth),  # its peer in the LAN goes with it
                             ("namespace", lambda: _delete_namespace(self.name)),
                             ("directory", lambda: self.base.exists() and shutil.rmtree(self.base)),
                             ("/run/netns", lambda: _release_shared_dir(NETNS_DIR, self.name)),
                             ("/run/sshd", lambda: _release_shared_dir(PRIVSEP_DIR, self.name))):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - every step must get its chance
                problems.append(f"{what}: {exc}")
        if problems:
            raise RemoteHostError(f"tearing down the LAN {self.name} left: " + "; ".join(problems))

    def _delete_root_veth(self) -> None:
        if Path(f"/sys/class/net/{self.root_veth}").exists():
            _run(["ip", "link", "del", self.root_veth], f"ip link del {self.root_veth}")


class RemoteHostGroup:
    """``count`` remote hosts on one private LAN (issue #27's replicated topology).

    Each host is a ``RemoteDockerHost`` whose only interface is its LAN port: ``host.address`` is both
    where its sshd listens and the address its host-networked containers listen on and announce; the hosts
    and this machine reach each other directly. A context manager (or ``start()`` / ``close()``); iterate
    it or index it for the hosts.
    """

    def __init__(self, count: int = 3) -> None:
        self.lan = PrivateLan()
        self.hosts = [RemoteDockerHost(lan=self.lan) for _ in range(count)]

    def start(self) -> "RemoteHostGroup":
        require_prerequisites()
        with _closed_if_it_fails(self):
            self.lan.start()
            with ThreadPoolExecutor(len(self.hosts)) as pool:  # independent: about as fast as one host
                for done in [pool.submit(host.start) for host in self.hosts]:
                    done.result()
        return self

    def close(self) -> None:
        """Every host (at once), then the LAN; keeps going past failures and reports them all at the end."""
        problems = []
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            closing = [pool.submit(host.close) for host in self.hosts]
        for part, done in [*zip(self.hosts, closing), (self.lan, None)]:
            try:
                done.result() if done else part.close()
            except Exception as exc:  # noqa: BLE001
                problems.append(str(exc))
        if problems:
            raise RemoteHostError("; ".join(problems))

    def load_image(self, image: str) -> None:
        """Copy a local image to every host's engine, all at once."""
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            for done in [pool.submit(host.load_image, image) for host in self.hosts]:
                done.result()

    @property
    def identity_file(self) -> Path:
        """The client key every host of the group accepts (for root, and for NO_DOCKER_USER)."""
        return self.lan.identity_file

    @property
    def known_hosts_file(self) -> Path:
        """Pins every host's own host key, at its LAN address."""
        return self.lan.known_hosts_file

    def __enter__(self) -> "RemoteHostGroup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        return iter(self.hosts)

    def __getitem__(self, index: int) -> RemoteDockerHost:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)
