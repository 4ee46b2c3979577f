"""Real PostgreSQL 16 and Redis 7 servers on loopback, started by the test suite itself.

Used by the integration tests and the post-deploy benchmark. PostgreSQL 16 comes from
``toolchain/pg16.sh`` (it refuses to run as root, so as root it runs as the ``sinpg``
user that script creates); Redis 7 is Debian's ``redis-server``
(``toolchain/host-services.sh``); the S3 server is versitygw (``toolchain/s3-server.sh``,
``$SIN_VERSITYGW``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import boto3
import botocore.config
import botocore.exceptions
import psycopg
import redis as redis_lib

from infra.core.targets import RedisTarget
from infra.driver.teststacks import free_port

ROOT = Path(__file__).resolve().parent.parent
PG_USER = os.environ.get("SIN_PG_USER", "sinpg")


class MissingServer(RuntimeError):
    """A server binary the tests need is not installed."""


class PortTaken(RuntimeError):
    """The port a server was to listen on is held by something else."""


def pg16_dir() -> Path:
    """The PostgreSQL 16 binaries: $SIN_PG16_DIR, or what toolchain/pg16.sh provides."""
    if os.environ.get("SIN_PG16_DIR"):
        return Path(os.environ["SIN_PG16_DIR"])
    try:
        out = subprocess.run([str(ROOT / "toolchain" / "pg16.sh")], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise MissingServer(f"toolchain/pg16.sh failed, so there is no PostgreSQL 16 to test against:\n{exc.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"] + cmd


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster with scram-sha-256 logins over 127.0.0.1."""

    bin_dir: Path
    workdir: Path
    port: int
    user: str
    password: str

    @classmethod
    def start(cls, user: str = "sinadmin") -> "PostgresServer":
        bin_dir = pg16_dir() / "bin"
        workdir = Path(tempfile.mkdtemp(prefix="sin-pg-"))
        password = secrets.token_urlsafe(24)
        (workdir / "pwfile").write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(workdir, PG_USER, PG_USER)
            shutil.chown(workdir / "pwfile", PG_USER, PG_USER)
        server = cls(bin_dir, workdir, free_port(), user, password)
        server._run([str(bin_dir / "initdb"), "-D", str(workdir / "data"), "-U", user,
                     f"--pwfile={workdir / 'pwfile'}", "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"])
        server._run([str(bin_dir / "pg_ctl"), "-D", str(workdir / "data"), "-l", str(workdir / "log"), "-w",
                     "-o", f"-p {server.port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off",
                     "start"])
        return server

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {proc.stdout}{proc.stderr}")

    def stop(self) -> None:
        subprocess.run(_as_pg_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.workdir / "data"),
                                    "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               dbname=dbname, autocommit=True, connect_timeout=5)

    def create_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class RedisServer:
    """A throwaway Redis server on 127.0.0.1."""

    process: subprocess.Popen
    workdir: Path
    port: int
    password: str | None

    @classmethod
    def start(cls, password: str | None = None, appendonly: bool = True, port: int | None = None,
              rdb: Path | None = None, extra: Sequence[str] = (), sentinel: bool = False) -> "RedisServer":
        """``rdb``: a snapshot for it to load (AOF off then, or Redis would read the empty AOF instead);
        ``extra``: more lines of its config file; ``sentinel``: run it as a Sentinel (``extra`` says what
        it monitors)."""
        binary = shutil.which("redis-server")
        if not binary:
            raise MissingServer("redis-server is not installed; run toolchain/host-services.sh")
        workdir = Path(tempfile.mkdtemp(prefix="sin-redis-"))
        port = port or free_port()
        if rdb is not None:
            shutil.copyfile(rdb, workdir / "dump.rdb")
            appendonly = False
        conf = [f"port {port}", "bind 127.0.0.1", f"dir {workdir}", "save ''", "daemonize no",
                f"appendonly {'yes' if appendonly else 'no'}", "logfile ''"]
        if password:
            conf.append(f"requirepass {password}")
        (workdir / "redis.conf").write_text("\n".join([*conf, *extra]) + "\n")
        (workdir / "redis.conf").chmod(0o600)
        process = subprocess.Popen([binary, str(workdir / "redis.conf"), *(["--sentinel"] if sentinel else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(process, workdir, port, password)
        try:
            server._wait_ready(password)
        except RuntimeError:
            server.stop()
            raise
        return server

    def restart(self, password: str) -> None:
        """Stop the server and start it again on the config file it may have rewritten; ``password``:
        the one it takes now."""
        self.process.terminate()
        self.process.wait(10)
        self.process = subprocess.Popen(self.process.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(password)

    def _wait_ready(self, password: str | None) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis_lib.Redis(port=self.port, password=password, socket_connect_timeout=1).ping()
                return
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")
                time.sleep(0.02)

    def target(self, major_version: int = 7) -> RedisTarget:
        """This server as the checks see the stack's Redis (the ADR's container name and address)."""
        return RedisTarget(host="127.0.0.1", port=self.port, password=self.password or "",
                           container_name="room-04-memory-redis", container_ip="172.20.0.200",
                           major_version=major_version)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class S3Server:
    """A throwaway versitygw S3 server over its own data dir (a bucket is a folder in it, an object a
    plain file), with random root credentials given to it by environment. It listens on 127.0.0.1
    of this machine, or (``wrap``: e.g. ``nsenter --net=<netns> --``) on an address inside another
    network namespace, so a remote test host and this machine reach it at the same endpoint."""

    process: Optional[subprocess.Popen]
    workdir: Path
    port: int
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    address: str = "127.0.0.1"
    wrap: tuple[str, ...] = ()
    """Prefix of the server's command line (which network namespace it runs in)."""

    BIND_ATTEMPTS = 3

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @classmethod
    def start(cls, address: str = "127.0.0.1", wrap: Sequence[str] = ()) -> "S3Server":
        """Start on ``address`` (reached from this machine as is) at a free port; inside a namespace
        the reserved port may still be taken there, so another one is tried on a bind failure."""
        binary = os.environ.get("SIN_VERSITYGW")
        if not binary or not os.access(binary, os.X_OK):
            raise MissingServer(f"SIN_VERSITYGW={binary!r} is not an executable versitygw; "
                                "run: eval \"$(toolchain/setup.sh)\" (it builds one with toolchain/s3-server.sh)")
        workdir = Path(tempfile.mkdtemp(prefix="sin-s3-"))
        (workdir / "data").mkdir()
        server = cls(None, workdir, free_port(), f"sin{secrets.token_hex(8)}", secrets.token_urlsafe(30),
                     address=address, wrap=tuple(wrap))
        for attempt in range(cls.BIND_ATTEMPTS):
            try:
                server.resume()
                return server
            except PortTaken:
                if attempt == cls.BIND_ATTEMPTS - 1:
                    server.stop()
                    raise RuntimeError(f"versitygw found every port it tried on {address} taken") from None
                server.port = free_port()

    def resume(self) -> None:
        """(Re)start the server on its port and data dir; return once it answers."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ROOT_ACCESS_KEY": self.access_key,
               "ROOT_SECRET_KEY": self.secret_key}
        log_path = self.workdir / "versitygw.log"
        logged = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.wrap, os.environ["SIN_VERSITYGW"], "--port", f"{self.address}:{self.port}", "posix",
                 str(self.data_dir)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                self.client().list_buckets()
                return
            except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.HTTPClientError):
                time.sleep(0.05)  # not listening yet (or something else holds the port and versitygw exits)
        self.halt()
        log_text = log_path.read_bytes()[logged:].decode(errors="replace")[-2000:]
        if "address already in use" in log_text.lower():
            raise PortTaken(self.port)
        self.stop()
        raise RuntimeError(f"versitygw did not answer on {self.address}:{self.port}:\n{log_text}")

    def halt(self) -> None:
        """Stop the server but keep its data: the endpoint refuses connections until :meth:`resume`."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def client(self):
        """A boto3 S3 client with the root credentials, path-style, failing fast."""
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=botocore.config.Config(s3={"addressing_style": "path"}, connect_timeout=2,
                                                          read_timeout=10, retries={"max_attempts": 1}))

    def create_bucket(self) -> str:
        name = f"sin-test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Drop the bucket and everything in it (straight from the data dir: faster than 1000 deletes)."""
        shutil.rmtree(self.data_dir / name, ignore_errors=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)
