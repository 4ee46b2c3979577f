"""What a killed `up` leaves: the lock of a process that is gone, and objects created but not recorded."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta, timezone

from infra.driver import drift, locks


def write_lock(root, stack: str, pid: int, hostname: str, taken: datetime):
    folder = root / ".pulumi" / "locks" / "organization" / "sin-datastores" / stack
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}-{taken.timestamp()}.json"
    path.write_text(json.dumps({"pid": pid, "username": "root", "hostname": hostname,
                                "timestamp": taken.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"}))
    return path


def test_only_a_lock_of_this_machine_whose_process_is_gone_is_removed(tmp_path):
    now = datetime.now(timezone.utc)
    gone = write_lock(tmp_path, "dev", 2 ** 22 + 7, socket.gethostname(), now)           # no such pid
    reused = write_lock(tmp_path, "dev", os.getpid(), socket.gethostname(), now - timedelta(days=400))
    running = write_lock(tmp_path, "dev", os.getpid(), socket.gethostname(), now)      # this process holds it
    elsewhere = write_lock(tmp_path, "dev", 2 ** 22 + 8, "another-machine", now)
    other_stack = write_lock(tmp_path, "prod", 2 ** 22 + 9, socket.gethostname(), now)
    said = []
    locks.clear_stale(f"file://{tmp_path}", "sin-datastores", "dev", said.append)
    assert not gone.exists() and not reused.exists()
    assert running.exists() and elsewhere.exists() and other_stack.exists()
    assert len(said) == 2 and all("removed the lock a killed command left on stack 'dev'" in s for s in said)


def test_a_lock_names_who_holds_it_and_since_when(tmp_path):
    write_lock(tmp_path, "dev", 4242, "ops-laptop", datetime(2026, 12, 6, 4, 12, 1, tzinfo=timezone.utc))
    (lock,) = locks.locks_of(f"file://{tmp_path}", "sin-datastores", "dev")
    assert lock.describe() == "root@ops-laptop (pid 4242) since 2026-12-06 04:12:01 UTC"
    assert locks.locks_of("s3://bucket", "sin-datastores", "dev") == []


def test_pending_creates_of_docker_objects_are_what_a_killed_up_may_have_made():
    deployment = {"pending_operations": [
        {"type": "creating", "resource": {"type": drift.CONTAINER_TYPE, "inputs": {"name": "x-postgres"}}},
        {"type": "creating", "resource": {"type": drift.NETWORK_TYPE, "inputs": {"name": "x-net"}}},
        {"type": "creating", "resource": {"type": drift.VOLUME_TYPE, "inputs": {"name": "x-data"}}},
        {"type": "updating", "resource": {"type": drift.CONTAINER_TYPE, "inputs": {"name": "x-redis"}}},
        {"type": "creating", "resource": {"type": "pulumi-python:dynamic:Resource", "inputs": {}}},
    ]}
    assert drift.interrupted(deployment) == [drift.Interrupted("container", "x-postgres"),
                                            drift.Interrupted("network", "x-net"),
                                            drift.Interrupted("volume", "x-data")]
    assert drift.interrupted({}) == []


def test_a_pending_create_a_later_up_completed_is_not_a_leftover():
    """The engine keeps a pending create until a refresh clears it, also after the next `up` created and
    recorded the resource: that object is the stack's own and must never be removed as a leftover."""
    urn = "urn:pulumi:dev::sin-datastores::docker:index/container:Container::redis-container"
    pending = {"type": "creating", "resource": {"urn": urn, "type": drift.CONTAINER_TYPE, "inputs": {"name": "x-redis"}}}
    assert drift.interrupted({"pending_operations": [pending]}) == [drift.Interrupted("container", "x-redis")]
    assert drift.interrupted({"pending_operations": [pending], "resources": [{"urn": urn, "id": "abc"}]}) == []


def test_a_lock_taken_on_a_machine_whose_clock_is_not_utc_is_named_in_utc():
    assert locks.parse_time("2026-12-06T05:12:01.5+01:00") == datetime(2026, 12, 6, 4, 12, 1, 500000, tzinfo=timezone.utc)
    assert locks.parse_time("2026-12-06T04:12:01Z") == datetime(2026, 12, 6, 4, 12, 1, tzinfo=timezone.utc)
