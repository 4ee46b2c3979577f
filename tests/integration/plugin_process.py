"""One of our own Pulumi plugins (toolchain/pulumi-build/cmd/...) started as the engine starts
it, for tests that speak to it over gRPC."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import grpc


@contextlib.contextmanager
def serving(binary: Path, cwd: Optional[Path] = None, env: Optional[dict[str, str]] = None) -> Iterator[grpc.Channel]:
    """Start ``binary`` with no engine address, connect to the port it prints, stop it afterwards."""
    proc = subprocess.Popen([str(binary)], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        proc.kill()
        proc.wait()
