"""A fresh remote Docker host per test, torn down even when the test fails; three on one LAN shared by
the replicated-topology tests."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests import replicated_stacks
from tests.remote_host import RemoteDockerHost
from tests.servers import S3Server


@contextmanager
def started_host() -> Iterator[RemoteDockerHost]:
    host = RemoteDockerHost()
    try:
        yield host.start()
    finally:
        host.close()


@pytest.fixture
def remote_host():
    with started_host() as host:
        yield host


@pytest.fixture(scope="module")
def remote():
    """One remote host for a module's stack tests (a host takes seconds to start)."""
    with started_host() as host:
        yield host


@pytest.fixture(scope="session")
def redis_image() -> str:
    """The local Redis 7 image toolchain/images.sh built (it exists only on this machine's engine)."""
    image = os.environ.get("SIN_LOCAL_REDIS_IMAGE")
    if not image:
        pytest.fail("SIN_LOCAL_REDIS_IMAGE is not set: run the tests through scripts/test", pytrace=False)
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.fail(f"the local image {image} is missing: run toolchain/images.sh (scripts/test does)", pytrace=False)
    return image


@pytest.fixture(scope="session")
def three_hosts():
    """Three hosts on one LAN with the replicated topology's images, shared by the replicated tests
    (each makes and destroys its own stack on them)."""
    with replicated_stacks.hosts_with_images(3) as group:
        yield group


@pytest.fixture
def lan_s3(three_hosts):
    """An S3 server on this machine's address on the three hosts' LAN: their backup agents reach it as
    they would a bucket."""
    server = S3Server.start(address=three_hosts.lan.root_address)
    try:
        yield server
    finally:
        server.stop()
