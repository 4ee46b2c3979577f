"""The post-deploy step's dynamic provider (infra.components.postdeploy._PostDeployProvider): what
re-runs the step (a change of one of its triggers, nothing else) and how (the plain step, its
failure in its own words); and the provider process as the engine starts it (`python -m
pulumi.dynamic`, spoken to over gRPC), which leaves when the engine is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from infra.components import postdeploy
from infra.components.postdeploy import StepFailed, _PostDeployProvider
from infra.deploy import provider_step
from infra.driver.teststacks import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "unit-test-password-0123456789"
DEPLOYED = {"target": {"stack": "dev", "postgres": {"port": 5432}}, "migrations": [{"version": 1, "sha256": "a" * 64}],
            "container_ids": ["pg-1", "redis-1"], "actor": "ci", "ready_timeout_s": 60,
            "applied": ["V001__adr006_schema.sql"], "already_applied": 0, "checks": 24, "failed": []}


@pytest.mark.parametrize("changed", [
    {"target": {"stack": "dev", "postgres": {"port": 5433}}},
    {"migrations": [{"version": 1, "sha256": "a" * 64}, {"version": 2, "sha256": "b" * 64}]},
    {"container_ids": ["pg-2", "redis-1"]},
])
def test_a_changed_trigger_re_runs_the_step_in_place(changed):
    answer = _PostDeployProvider().diff("dev", DEPLOYED, {**DEPLOYED, **changed})
    assert (answer.changes, answer.replaces, answer.delete_before_replace) == (True, [], False)


def test_another_actor_or_fresh_outputs_alone_change_nothing():
    news = {**DEPLOYED, "actor": "someone-else", "applied": None, "already_applied": None, "checks": None}
    assert _PostDeployProvider().diff("dev", DEPLOYED, news).changes is False


def test_create_and_update_run_the_plain_step_with_the_inputs(monkeypatch):
    ran = []
    monkeypatch.setattr(provider_step, "run", lambda inputs: ran.append(inputs) or {**inputs, "checks": 20})
    created = _PostDeployProvider().create(DEPLOYED)
    assert (created.id, created.outs["checks"], ran) == ("dev", 20, [DEPLOYED])
    news = {**DEPLOYED, "container_ids": ["pg-2", "redis-1"]}
    assert _PostDeployProvider().update("dev", DEPLOYED, news).outs["container_ids"] == ["pg-2", "redis-1"]
    assert ran[-1] is news


def test_a_failed_step_is_its_own_words_without_the_failure_s_chain(monkeypatch):
    def failing(inputs):
        raise RuntimeError("2 of 20 checks failed")

    monkeypatch.setattr(provider_step, "run", failing)
    with pytest.raises(StepFailed, match="^RuntimeError: 2 of 20 checks failed$") as failure:
        _PostDeployProvider().create(DEPLOYED)
    assert failure.value.__suppress_context__


def test_the_step_deletes_nothing():
    assert _PostDeployProvider().delete("dev", DEPLOYED) is None


def test_a_provider_outside_the_engine_s_process_watches_nothing(monkeypatch):
    started = []
    monkeypatch.setattr(postdeploy, "_leave_with_engine", lambda: started.append(True))
    _PostDeployProvider().configure(None)
    assert started == [], "a test or the program must never get a watcher that can kill its process group"


def test_only_the_engine_s_provider_process_watches_its_engine(monkeypatch):
    started = []
    monkeypatch.setattr(postdeploy, "_leave_with_engine", lambda: started.append(True))
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(
        __spec__=types.SimpleNamespace(name="pulumi.dynamic.__main__")))
    _PostDeployProvider().configure(None)
    assert started == [True]
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=types.SimpleNamespace(name="pytest")))
    assert not postdeploy._serving()
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=None))
    assert not postdeploy._serving()
    monkeypatch.delitem(sys.modules, "__main__")  # an embedding interpreter may have none
    assert not postdeploy._serving()


@pytest.fixture
def watcher(monkeypatch):
    """A fresh watch guard; the watcher's stop recorded instead of killing this process group."""
    monkeypatch.setattr(postdeploy, "_watching", threading.Lock())
    stopped = threading.Event()
    return stopped


def test_the_watcher_stops_the_provider_once_the_engine_s_end_of_the_pipe_closes(watcher):
    read_end, write_end = os.pipe()
    try:
        postdeploy._leave_with_engine(stdin=read_end, stop=watcher.set)
        postdeploy._leave_with_engine(stdin=read_end, stop=lambda: pytest.fail("a second watcher"))
        os.write(write_end, b"anything the engine writes changes nothing")
        assert not watcher.wait(0.3), "the engine is still there"
        os.close(write_end)
        assert watcher.wait(5), "the engine's end closed: the provider stops"
    finally:
        os.close(read_end)


@pytest.mark.parametrize("stdin", ["a plain file", "a closed descriptor"])
def test_without_a_pipe_the_watcher_stops_the_provider_only_when_its_parent_changes(watcher, monkeypatch, tmp_path,
                                                                                     stdin):
    parents = [100, 100, 100, 1]  # at the start, then each poll
    asked: list[int] = []

    def getppid() -> int:
        asked.append(parents[min(len(asked), len(parents) - 1)])
        return asked[-1]

    monkeypatch.setattr(postdeploy.os, "getppid", getppid)
    with open(tmp_path / "not-a-pipe", "w+") as plain:
        fd = plain.fileno() if stdin == "a plain file" else os.dup(plain.fileno())
        if stdin == "a closed descriptor":
            os.close(fd)
        postdeploy._leave_with_engine(poll_s=0.01, stdin=fd, stop=watcher.set)
        assert watcher.wait(5), "handed to another parent: the engine is gone"
    assert asked == parents, "it stops at the first poll that sees another parent, not before"


def struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


@pytest.fixture
def engine_started():
    """`python -m pulumi.dynamic` as the engine starts it: in the project directory, in a process
    group of its own, its stdin a pipe the engine holds. Yields (process, channel)."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.dynamic"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield proc, channel
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def step_inputs(**changes) -> dict:
    return {**DEPLOYED, "__provider": serialize_provider(_PostDeployProvider()), **changes}


def test_the_engine_s_provider_process_diffs_the_step_it_unpickles_by_name(engine_started):
    _, channel = engine_started
    provider = provider_pb2_grpc.ResourceProviderStub(channel)
    provider.Configure(provider_pb2.ConfigureRequest(args=struct({})), timeout=30)
    olds, news = step_inputs(), step_inputs(container_ids=["pg-2", "redis-1"])
    checked = provider.Check(provider_pb2.CheckRequest(urn="urn:step", olds=struct(olds), news=struct(news)),
                             timeout=30)
    assert json_format.MessageToDict(checked.inputs)["container_ids"] == ["pg-2", "redis-1"]
    answer = provider.Diff(provider_pb2.DiffRequest(id="dev", urn="urn:step", olds=struct(olds), news=struct(news)),
                           timeout=30)
    assert answer.changes == provider_pb2.DiffResponse.DIFF_SOME
    same = provider.Diff(provider_pb2.DiffRequest(id="dev", urn="urn:step", olds=struct(olds), news=struct(olds)),
                         timeout=30)
    assert same.changes == provider_pb2.DiffResponse.DIFF_NONE


def test_a_step_that_fails_in_the_provider_process_says_why_and_no_password(engine_started):
    _, channel = engine_started
    provider = provider_pb2_grpc.ResourceProviderStub(channel)
    silent = free_port()
    target = {"stack": "dev",
              "postgres": {"host": "127.0.0.1", "port": silent, "database": "sinsolver", "user": "sinadmin",
                           "password": PASSWORD, "container_name": "pg", "container_ip": "172.20.0.100",
                           "major_version": 16},
              "redis": {"host": "127.0.0.1", "port": silent, "password": PASSWORD, "container_name": "redis",
                        "container_ip": "172.20.0.200", "major_version": 7}}
    with pytest.raises(grpc.RpcError) as failure:
        provider.Create(provider_pb2.CreateRequest(urn="urn:step", properties=struct(
            step_inputs(target=target, ready_timeout_s=1))), timeout=60)
    assert "StepFailed: ConnectError:" in failure.value.details() and "did not answer within 1 s" in failure.value.details()
    assert PASSWORD not in failure.value.details()


def test_the_provider_process_leaves_with_the_engine_that_started_it(engine_started):
    proc, channel = engine_started
    provider = provider_pb2_grpc.ResourceProviderStub(channel)
    provider.Configure(provider_pb2.ConfigureRequest(args=struct({})), timeout=30)
    provider.Check(provider_pb2.CheckRequest(urn="urn:step", olds=struct({}), news=struct(step_inputs())), timeout=30)
    time.sleep(0.5)
    assert proc.poll() is None, "the provider keeps serving while the engine is there"
    proc.stdin.close()  # what the kernel does when the engine's process dies, however it died
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
