"""The membership resources' dynamic provider (infra.components.membership._MembershipProvider): an
update records the cluster as it is and, on the first host's resource, stops the servers of the
hosts that leave and moves etcd's member when its hosts changed; the delete makes the hosts that stay
forget this one; failures in their own words."""

from __future__ import annotations

import pytest

from infra.components.membership import _MembershipProvider
from infra.components.postdeploy import StepFailed
from infra.deploy import membership
from infra.deploy.replicated import ClusterNotReady
from tests.unit.replicated_target import TARGET

GROWN = {**TARGET, "cluster": {**TARGET["cluster"], "members": [*TARGET["cluster"]["members"], "10.9.0.5"]}}


def engines(target: dict) -> dict:
    return {a: {"url": f"ssh://root@{a}", "ssh_key_file": "/k", "ssh_known_hosts_file": ""}
            for a in target["cluster"]["members"]}


def seat(address: str, target: dict = TARGET, hosts: dict | None = None) -> dict:
    return {"address": address, "target": target, "hosts": engines(target) if hosts is None else hosts,
            "deadline_s": 240}


@pytest.fixture
def steps(monkeypatch):
    ran = []
    monkeypatch.setattr(membership, "hand_over", lambda target, leaving, deadline: ran.append(
        ("hand_over", target.cluster.members, leaving, deadline)))
    monkeypatch.setattr(membership, "leave", lambda target, address, deadline: ran.append(
        ("leave", target.cluster.members, address, deadline)))
    monkeypatch.setattr(membership, "move_etcd", lambda target, deadline: ran.append(
        ("move_etcd", target.cluster.members, deadline)))
    return ran


def test_a_changed_cluster_or_password_is_recorded_in_place():
    provider = _MembershipProvider()
    for changed in (seat("10.9.0.3", GROWN), seat("10.9.0.3", hosts={**engines(TARGET), "10.9.0.2": {"url": ""}}),
                    {**seat("10.9.0.3"), "deadline_s": 60}):
        answer = provider.diff("10.9.0.3", seat("10.9.0.3"), changed)
        assert (answer.changes, answer.replaces, answer.delete_before_replace) == (True, [], False), changed
    assert provider.diff("10.9.0.3", seat("10.9.0.3"), seat("10.9.0.3")).changes is False


def test_created_it_touches_no_server(steps):
    created = _MembershipProvider().create(seat("10.9.0.5", GROWN))
    assert (created.id, created.outs) == ("10.9.0.5", seat("10.9.0.5", GROWN))
    assert steps == []


def test_the_first_hosts_update_stops_a_leaving_hosts_servers_reached_as_its_state_says(steps):
    from infra.core.targets import DockerHost

    outs = _MembershipProvider().update("10.9.0.2", seat("10.9.0.2", GROWN), seat("10.9.0.2")).outs
    assert outs == seat("10.9.0.2")
    assert steps == [("hand_over", ("10.9.0.2", "10.9.0.3", "10.9.0.4"),
                      {"10.9.0.5": DockerHost("ssh://root@10.9.0.5", "/k", "")}, 240)]


def test_other_hosts_updates_and_a_growing_list_move_nothing(steps):
    provider = _MembershipProvider()
    assert provider.update("10.9.0.3", seat("10.9.0.3", GROWN), seat("10.9.0.3")).outs == seat("10.9.0.3")
    provider.update("10.9.0.2", seat("10.9.0.2"), seat("10.9.0.2", GROWN))
    provider.update("10.9.0.2", seat("10.9.0.2"), {**seat("10.9.0.2"), "deadline_s": 60})
    assert steps == []


def test_an_etcd_host_leaving_has_its_servers_stopped_then_its_member_moved_to_the_host_taking_its_place(steps):
    from infra.core.targets import DockerHost

    moved = {**TARGET, "cluster": {**TARGET["cluster"], "members": ["10.9.0.2", "10.9.0.3", "10.9.0.5"]}}
    _MembershipProvider().update("10.9.0.2", seat("10.9.0.2", GROWN), seat("10.9.0.2", moved))
    assert steps == [("hand_over", ("10.9.0.2", "10.9.0.3", "10.9.0.5"),
                      {"10.9.0.4": DockerHost("ssh://root@10.9.0.4", "/k", "")}, 240),
                     ("move_etcd", ("10.9.0.2", "10.9.0.3", "10.9.0.5"), 240)]
    steps.clear()
    # Its first host leaving: the next one's resource is the first of the new list; the others move nothing.
    without_first = {**TARGET, "cluster": {**TARGET["cluster"], "members": ["10.9.0.3", "10.9.0.4", "10.9.0.5"]}}
    _MembershipProvider().update("10.9.0.5", seat("10.9.0.5", GROWN), seat("10.9.0.5", without_first))
    assert steps == []
    _MembershipProvider().update("10.9.0.3", seat("10.9.0.3", GROWN), seat("10.9.0.3", without_first))
    assert [step[0] for step in steps] == ["hand_over", "move_etcd"] and "10.9.0.2" in steps[0][2]
    steps.clear()
    # Reordered etcd hosts (the same three), or a host forgotten from the state (none leaves): nothing stops;
    # etcd moves only when its hosts changed.
    reordered = {**TARGET, "cluster": {**TARGET["cluster"], "members": ["10.9.0.3", "10.9.0.2", "10.9.0.4"]}}
    _MembershipProvider().update("10.9.0.3", seat("10.9.0.3"), seat("10.9.0.3", reordered))
    assert steps == []
    _MembershipProvider().update("10.9.0.2", seat("10.9.0.2", GROWN, engines(moved)), seat("10.9.0.2", moved))
    assert steps == [("move_etcd", ("10.9.0.2", "10.9.0.3", "10.9.0.5"), 240)]


def test_delete_makes_the_others_forget_the_host_with_the_recorded_cluster(steps):
    _MembershipProvider().delete("10.9.0.5", seat("10.9.0.5", GROWN))
    assert steps == [("leave", ("10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"), "10.9.0.5", 240)]


def test_a_failure_is_its_own_words_without_the_chain(monkeypatch):
    def stuck(target, address, deadline):
        raise ClusterNotReady("the Sentinels on 10.9.0.2 did not agree on a master")

    monkeypatch.setattr(membership, "leave", stuck)
    with pytest.raises(StepFailed, match="^ClusterNotReady: the Sentinels on 10.9.0.2 did not agree") as failure:
        _MembershipProvider().delete("10.9.0.5", seat("10.9.0.5", GROWN))
    assert failure.value.__suppress_context__
