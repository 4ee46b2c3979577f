"""The host-wide reservation file and the pure choices of the test-stack allocator (no Docker)."""

from __future__ import annotations

import dataclasses
import ipaddress
import multiprocessing
import socket
import subprocess
import sys
import time

import pytest

from infra.driver import reservations, teststacks
from infra.driver.reservations import Record, Registry, ReservationError


def dead_owner() -> tuple[int, int]:
    """The pid and start time of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = reservations.process_start(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, started


def test_ports_come_from_the_pool_minus_the_ephemeral_range_lowest_first():
    ports = reservations.port_pool(range(100, 200), ephemeral=range(150, 190))
    assert ports == list(range(100, 150)) + list(range(190, 200))


def test_a_pool_inside_the_ephemeral_range_is_refused_naming_the_sysctl():
    with pytest.raises(ReservationError) as refused:
        reservations.port_pool(range(40000, 40010), ephemeral=range(1024, 65536))
    assert "ip_local_port_range" in str(refused.value) and "40000-40009" in str(refused.value)


def test_the_kernels_ephemeral_range_is_read_from_proc(tmp_path):
    path = tmp_path / "ip_local_port_range"
    path.write_text("32768\t60999\n")
    assert reservations.ephemeral_range(path) == range(32768, 61000)


def test_ports_taken_by_records_or_by_a_listener_are_skipped():
    chosen = reservations.pick_ports(2, [10, 11, 12, 13, 14], taken={10, 12}, usable=lambda p: p != 11)
    assert chosen == [13, 14]
    assert reservations.pick_ports(0, [10], taken=set()) == []


def test_running_out_of_ports_says_how_many_are_reserved_and_what_to_do():
    with pytest.raises(ReservationError) as refused:
        reservations.pick_ports(2, [10, 11, 12], taken={10, 11})
    assert "2 are reserved" in str(refused.value) and "test-stack sweep" in str(refused.value)


def test_a_port_something_listens_on_is_not_bindable():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not reservations.bindable(port)
    assert reservations.bindable(port)


def test_a_subnet_never_overlaps_a_taken_one():
    pool = "10.99.0.0/22"
    taken = [ipaddress.IPv4Network("10.99.0.0/23"), ipaddress.IPv4Network("10.99.2.0/24")]
    for _ in range(20):
        assert reservations.pick_subnet(pool, 24, taken) == ipaddress.IPv4Network("10.99.3.0/24")
    with pytest.raises(ReservationError, match="no free /24 left in 10.99.0.0/22"):
        reservations.pick_subnet(pool, 24, taken + [ipaddress.IPv4Network("10.99.3.0/24")])


def test_records_are_kept_while_their_owner_lives_and_the_lease_runs(tmp_path):
    registry = Registry(tmp_path)
    with registry.locked() as records:
        records.append(reservations.new_record("port", "20000", "stack-a"))
    assert [(r.kind, r.value, r.stack) for r in registry.records()] == [("port", "20000", "stack-a")]
    assert Registry(tmp_path).records()[0].pid == reservations.current_owner()[0]


def test_records_of_dead_owners_reused_pids_and_expired_leases_are_dropped(tmp_path):
    registry = Registry(tmp_path)
    pid, started = dead_owner()
    mine = reservations.new_record("port", "20003")
    with registry.locked() as records:
        records.append(Record("port", "20000", pid, started, "crashed", time.time() + 3600))
        records.append(dataclasses.replace(mine, value="20001", started=mine.started + 1))  # same pid, another process
        records.append(dataclasses.replace(mine, value="20002", expires=time.time() - 1))
        records.append(mine)
    assert [r.value for r in registry.records()] == ["20003"]


def test_a_torn_reservation_file_counts_as_empty(tmp_path):
    (tmp_path / "reservations.json").write_text('{"records": [')
    assert Registry(tmp_path).records() == []


def test_a_directory_that_cannot_be_used_is_named_with_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ReservationError) as refused:
        Registry(blocker / "sub").records()
    assert str(blocker / "sub") in str(refused.value) and "SIN_RESERVATIONS_DIR" in str(refused.value)


def _reserve_ports(directory: str, count: int, out) -> None:
    """Reserve ``count`` ports one at a time, as concurrent processes do; send the choices back."""
    registry = Registry(directory)
    chosen = []
    for _ in range(count):
        with registry.locked() as records:
            taken = {int(r.value) for r in records if r.kind == "port"}
            port = reservations.pick_ports(1, range(30000, 31000), taken, usable=lambda p: True)[0]
            records.append(reservations.new_record("port", str(port)))
        chosen.append(port)
    out.put(chosen)
    time.sleep(1)  # stay alive until every process has chosen


def test_processes_reserving_at_once_never_get_the_same_port(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_reserve_ports, args=(str(tmp_path), 25, out)) for _ in range(4)]
    for p in procs:
        p.start()
    chosen = [port for _ in procs for port in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert len(chosen) == 100 and len(set(chosen)) == 100
    assert Registry(tmp_path).records() == [], "the owners have ended, so their reservations are gone"


# Docker's words as the docker provider reported them here (Docker 20.10).
PORT_TAKEN = ("Unable to start container: Error response from daemon: driver failed programming external connectivity "
              "on endpoint e2e-502d3e40-room-03-archiv-postgres (c4a0f693e802): Error starting userland proxy: "
              "listen tcp4 127.0.0.1:20001: bind: address already in use")
PORT_ALLOCATED = ("driver failed programming external connectivity on endpoint x (ab12): "
                  "Bind for 127.0.0.1:20007 failed: port is already allocated")
GATEWAY_TAKEN = ("Unable to create network: Error response from daemon: failed to allocate gateway (172.29.93.1): "
                 "Address already in use")
POOL_OVERLAPS = "Error response from daemon: Pool overlaps with other one on this address space"


def test_dockers_collision_errors_name_the_resource_to_choose_again_and_nothing_else_does():
    assert teststacks.collision(PORT_TAKEN) == ("ports", "address already in use")
    assert teststacks.collision(PORT_ALLOCATED) == ("ports", "port is already allocated")
    assert teststacks.collision(GATEWAY_TAKEN)[0] == "subnet", "the gateway's 'Address already in use' is no port"
    assert teststacks.collision(POOL_OVERLAPS)[0] == "subnet"
    assert teststacks.collision("postgresHostPort: expected a port 1-65535, found 'not-a-port'") == ("", "")
    assert teststacks.ports_named(PORT_TAKEN) == {"20001"} and teststacks.ports_named(PORT_ALLOCATED) == {"20007"}
    assert teststacks.ports_named(GATEWAY_TAKEN) == set()
