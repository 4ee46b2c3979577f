"""take-back's decisions (infra.ops.take_back) with the state, the copy on the host and the host's answers
faked; tests/e2e/test_shared_environments.py runs it for real."""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from infra.core import statecopy
from infra.driver import drift, stacks
from infra.ops import take_back

DEPLOYMENT = {"resources": [{"urn": "urn:stack", "type": "pulumi:pulumi:Stack"},
                            {"urn": "urn:c", "type": drift.CONTAINER_TYPE, "id": "c0ffee",
                             "outputs": {"name": "room-03-archiv-postgres"}}]}
COPY = statecopy.StateCopy("sin-datastores", "dev", "a1", 4, "2026-12-06 10:00:00 UTC", "ana@laptop", DEPLOYMENT)


@pytest.fixture
def world(monkeypatch):
    """The calls take-back makes, recorded; an empty state, the copy above and a host that matches it."""
    done = SimpleNamespace(calls=[], state={"resources": [{"urn": "urn:stack", "type": "pulumi:pulumi:Stack"}]},
                           copy=COPY, findings=[])
    monkeypatch.setattr(stacks, "exported_deployment", lambda stack: done.state)
    monkeypatch.setattr(stacks, "docker_host_of", lambda stack: stacks.DockerHost())
    monkeypatch.setattr(take_back.dockerhost, "session", lambda host: nullcontext(None))
    monkeypatch.setattr(take_back.dockerhost, "using", lambda session: nullcontext(None))
    monkeypatch.setattr(statecopy, "read", lambda project, name: done.copy)
    monkeypatch.setattr(drift, "find", lambda declared: done.findings)
    monkeypatch.setattr(stacks, "import_deployment", lambda stack, deployment, doing: done.calls.append(("import", deployment)))
    monkeypatch.setattr(stacks, "new_state_id", lambda stack: done.calls.append(("new id",)) or "b2")
    monkeypatch.setattr(statecopy, "remove", lambda project, name: done.calls.append(("remove copy", name)))
    monkeypatch.setattr(stacks, "keep_state_copy", lambda stack, say: done.calls.append(("write copy",)))
    return done


STACK = SimpleNamespace(name="dev")


def test_the_copy_becomes_the_state_which_gets_a_new_id_and_the_copy_anew(world):
    said = []
    assert take_back.take_back(STACK, said.append) == COPY
    assert world.calls == [("import", DEPLOYMENT), ("new id",), ("remove copy", "dev"), ("write copy",)]
    assert said == ["took the environment of stack 'dev' on the local Docker Engine back into this state from its "
                    "copy there (written by ana@laptop at 2026-12-06 10:00:00 UTC): 1 container, 0 volumes, "
                    "0 networks; nothing on the host was touched. The lost state, should it turn up, no longer "
                    "owns the environment: remove it"]


def test_a_state_that_holds_resources_is_never_overwritten(world):
    world.state = DEPLOYMENT
    with pytest.raises(take_back.TakeBackRefused, match="holds 1 resources: it is not lost"):
        take_back.take_back(STACK, print)
    assert world.calls == []


def test_without_a_copy_there_is_nothing_to_take_back(world):
    world.copy = None
    with pytest.raises(take_back.TakeBackRefused, match="holds no state copy of stack 'dev' .volume "
                                                        "sin-datastores-state-dev"):
        take_back.take_back(STACK, print)
    assert world.calls == []


@pytest.mark.parametrize("kind", ["foreign", "changed"])
def test_a_copy_that_does_not_describe_what_runs_is_refused_naming_each_container(world, kind):
    world.findings = [drift.Finding(kind, "container", "room-03-archiv-postgres", "is not the one", "urn:c")]
    with pytest.raises(take_back.TakeBackRefused, match="does not match what runs there; nothing was changed:\n"
                                                        "  - container room-03-archiv-postgres is not the one"):
        take_back.take_back(STACK, print)
    assert world.calls == []


@pytest.mark.parametrize("kind", ["missing", "stopped"])
def test_what_is_missing_or_stopped_is_drift_said_and_left_to_up(world, kind):
    world.findings = [drift.Finding(kind, "container", "room-03-archiv-postgres", "is gone", "urn:c")]
    said = []
    take_back.take_back(STACK, said.append)
    assert world.calls[0] == ("import", DEPLOYMENT)
    assert said[-1] == "drift: container room-03-archiv-postgres is gone"


def test_an_environment_that_is_down_is_taken_back_with_the_volumes_it_kept(world):
    world.copy = statecopy.StateCopy("sin-datastores", "dev", "a1", 7, "2026-12-06 10:00:00 UTC", "ana@laptop",
                                     {"resources": []})
    said = []
    take_back.take_back(STACK, said.append)
    assert world.calls[0] == ("import", {"resources": []})
    assert "the environment is down; the volumes it kept are this state's now, and `up` comes back onto them" \
        in said[0]
