"""Test stacks created at once never collide; a port or subnet taken after it was chosen makes
`up` choose again; the sweeper spares what a live process still uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from pulumi import automation as auto

from infra.core import dockercli
from infra.driver import reservations, stacks, teststacks
from tests.e2e.support import docker, objects_of, stack_config

ROOT = stacks.ROOT


def listener(port: int) -> subprocess.Popen:
    """Another process listening on 127.0.0.1:``port``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\n"
         "s.listen()\nprint('ready', flush=True)\nsys.stdin.read()", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=10)


def test_two_processes_bringing_up_two_stacks_each_at_once_never_collide_nor_take_a_listened_port():
    run = subprocess.run([sys.executable, "-m", "benchmarks.teststacks_stress", "--processes", "2", "--stacks", "2",
                          "--rounds", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["stacks"] == 4 and result["verified"] == 4 and result["problems"] == []
    assert result["retries"] == [], "no collision happened at all"
    assert len(result["ports"]) == 8 and len(set(result["ports"])) == 8
    assert result["squatted_port"] not in result["ports"]
    low, high = (int(v) for v in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert not any(low <= port <= high for port in result["ports"]), "no port from the ephemeral range"
    for name in result["names"]:
        assert objects_of(name) == {"containers": [], "networks": [], "volumes": []}


def test_a_port_taken_after_it_was_chosen_makes_up_choose_another_and_say_so(make_stack, capsys):
    test_stack = make_stack()
    taken = int(test_stack.config["postgresHostPort"])
    squatter = listener(taken)
    try:
        outputs = test_stack.up().outputs
    finally:
        stop(squatter)
    said = capsys.readouterr().out
    assert f"port {taken} was taken after it was chosen" in said and "retry 1 of 3" in said, said
    port = outputs["postgresHostPort"].value
    assert port != taken and port == int(test_stack.config["postgresHostPort"])
    assert outputs["verificationChecks"].value == 20
    bindings = dockercli.inspect("container", outputs["postgresContainerName"].value)["HostConfig"]["PortBindings"]
    assert bindings["5432/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    assert test_stack.up(expect_no_changes=True).summary.result == "succeeded"
    test_stack.destroy_and_remove()


def test_a_subnet_taken_after_it_was_chosen_makes_up_choose_another_and_say_so(make_stack, capsys):
    test_stack = make_stack()
    taken = test_stack.config["networkSubnet"]
    squatter = f"e2e-squat-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--label", f"{dockercli.STACK_LABEL}={squatter}", "--subnet", taken, squatter)
    try:
        outputs = test_stack.up().outputs
    finally:
        docker("network", "rm", squatter)
    said = capsys.readouterr().out
    assert f"subnet {taken} was taken after it was chosen" in said and "retry 1 of 3" in said, said
    assert outputs["networkSubnet"].value not in (taken, None)
    assert outputs["networkSubnet"].value == test_stack.config["networkSubnet"]
    assert outputs["verificationChecks"].value == 20
    test_stack.destroy_and_remove()


def test_a_port_given_by_hand_that_is_taken_fails_up_without_choosing_another(make_stack, capsys):
    port = teststacks.free_port()
    squatter = listener(port)
    try:
        test_stack = make_stack(postgresHostPort=str(port))
        # The program's look finds the port taken before anything is created.
        with pytest.raises(auto.CommandError,
                           match=f"postgresHostPort 127.0.0.1:{port}: a process .* that is not a container listens"):
            test_stack.up()
    finally:
        stop(squatter)
    assert "retry" not in capsys.readouterr().out
    assert test_stack.stack.get_config("sin-datastores:postgresHostPort").value == str(port)
    test_stack.destroy_and_remove()


def test_the_sweeper_spares_an_old_stack_another_live_process_uses(settings):
    old = teststacks.create(settings, teststacks.new_name(datetime(2001, 1, 3, tzinfo=timezone.utc)), stack_config())
    volume = f"{old.name}-leftover"
    docker("volume", "create", "--label", f"{dockercli.STACK_LABEL}={old.name}", volume)
    user = subprocess.Popen([sys.executable, "-c", "import sys\nfrom infra.driver import teststacks\n"
                             "teststacks.mark_in_use(sys.argv[1])\nprint('ready', flush=True)\nsys.stdin.read()", old.name],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert user.stdout.readline().strip() == "ready"
        spared = teststacks.sweep(timedelta(days=3650), settings)
        assert old.name not in spared.stacks and volume not in spared.objects and old.name in spared.in_use
        assert dockercli.inspect("volume", volume) is not None
        assert old.name in {s.name for s in stacks.workspace(settings).list_stacks()}
        stop(user)
        swept = teststacks.sweep(timedelta(days=3650), settings)
        assert old.name in swept.stacks and volume in swept.objects and swept.in_use == []
        assert dockercli.inspect("volume", volume) is None
        assert not [r for r in reservations.Registry().records() if r.stack == old.name]
    finally:
        if user.poll() is None:
            stop(user)
        docker("volume", "rm", "-f", volume)
        if old.name in {s.name for s in stacks.workspace(settings).list_stacks()}:
            stacks.workspace(settings).remove_stack(old.name, force=True)
        teststacks.release(old.name)
