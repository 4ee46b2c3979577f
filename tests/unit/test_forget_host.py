"""Forgetting a replicated stack's host that is gone (infra.ops.forget_host): what leaves the state,
what stays, and when nothing is changed. The real engine and servers:
tests/remote/test_replicated_hosts.py."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from infra.core.targets import DockerHost, Target
from infra.driver import stacks
from infra.ops import forget_host
from tests.unit.replicated_target import TARGET

GONE, STAYING = "10.9.0.5", ("10.9.0.2", "10.9.0.3", "10.9.0.4")
ENGINES = {a: {"url": f"ssh://deploy@{a}", "ssh_key_file": "/keys/id"} for a in (*STAYING, GONE)}
# As the last `up` left the stack's outputs: the gone host among the members.
DEPLOYED = Target.from_dict({**TARGET, "cluster": {**TARGET["cluster"], "members": [*STAYING, GONE]}})
# The cluster that stays.
THREE = Target.from_dict(TARGET)


def urn(kind: str, name: str) -> str:
    return f"urn:pulumi:prod::sin-datastores::{kind}::{name}"


def member(address: str) -> str:
    return urn("sin-datastores:index:ClusterMember", "member-m" + address.replace(".", "_"))


def provider(address: str) -> str:
    return urn("pulumi:providers:docker", "docker-m" + address.replace(".", "_"))


def resource(kind: str, name: str, parent: str = "", on: str = "", **fields) -> dict:
    return {"urn": urn(kind, name), "type": kind, "custom": kind != "sin-datastores:index:ClusterMember",
            **({"parent": parent} if parent else {}), **({"provider": f"{on}::0a1b"} if on else {}), **fields}


def membership(address: str, hosts: dict) -> dict:
    name = "m" + address.replace(".", "_")
    return resource("pulumi-python:dynamic:Resource", f"member-{name}-membership", member(address),
                    inputs={"address": address, "hosts": hosts}, outputs={"address": address, "hosts": hosts},
                    dependencies=[urn("pulumi-python:dynamic:Resource", "member-m10_9_0_2-membership")])


def deployment() -> dict:
    """Two hosts' members (and the provider of a host whose address starts like the gone one's) and the step."""
    gone_backup = urn("sin-datastores:index:BackupAgent", "member-m10_9_0_5-backup")
    resources = [
        resource("pulumi:pulumi:Stack", "sin-datastores-prod"),
        resource("pulumi:providers:docker", "docker-m10_9_0_2", inputs={"host": "ssh://deploy@10.9.0.2"}),
        resource("pulumi:providers:docker", "docker-m10_9_0_5", inputs={"host": "ssh://deploy@10.9.0.5"}),
        resource("pulumi:providers:docker", "docker-m10_9_0_50"),
        resource("sin-datastores:index:ClusterMember", "member-m10_9_0_2"),
        resource("sin-datastores:index:ClusterMember", "member-m10_9_0_5"),
        membership("10.9.0.2", ENGINES),
        resource("docker:index/container:Container", "member-m10_9_0_2-redis", member("10.9.0.2"),
                 provider("10.9.0.2")),
        resource("docker:index/container:Container", "member-m10_9_0_5-redis", member(GONE), provider(GONE)),
        membership(GONE, ENGINES),
        {**resource("sin-datastores:index:BackupAgent", "member-m10_9_0_5-backup", member(GONE)), "custom": False},
        resource("docker:index/container:Container", "prod-backup", gone_backup, provider(GONE)),
        resource("pulumi-python:dynamic:Resource", "post-deploy",
                 dependencies=[member("10.9.0.2"), member(GONE)],
                 propertyDependencies={"services": [member("10.9.0.2"), member(GONE)], "target": []}),
    ]
    pending = [{"type": "creating", "resource": resources[8]}, {"type": "updating", "resource": resources[-1]}]
    return {"manifest": {}, "resources": resources, "pending_operations": pending}


GONE_URNS = [provider(GONE), member(GONE), urn("docker:index/container:Container", "member-m10_9_0_5-redis"),
             urn("pulumi-python:dynamic:Resource", "member-m10_9_0_5-membership"),
             urn("sin-datastores:index:BackupAgent", "member-m10_9_0_5-backup"),
             urn("docker:index/container:Container", "prod-backup")]


def test_the_members_urns_are_its_component_everything_under_it_and_its_provider_in_the_states_order():
    assert forget_host.member_urns(deployment(), GONE) == GONE_URNS
    assert forget_host.member_urns(deployment(), "10.9.0.9") == []


def test_without_the_member_nothing_refers_to_it_and_no_membership_records_its_engine():
    before = deployment()
    after = forget_host.without_member(before, GONE)
    assert before == deployment(), "the exported deployment is not changed in place"
    names = [r["urn"] for r in after["resources"]]
    assert names == [r["urn"] for r in before["resources"] if r["urn"] not in GONE_URNS]
    step = after["resources"][-1]
    assert step["dependencies"] == [member("10.9.0.2")]
    assert step["propertyDependencies"] == {"services": [member("10.9.0.2")], "target": []}
    staying = next(r for r in after["resources"] if r["urn"].endswith("member-m10_9_0_2-membership"))
    for side in ("inputs", "outputs"):
        assert set(staying[side]["hosts"]) == set(STAYING), side
        assert staying[side]["address"] == "10.9.0.2"
    assert [op["resource"]["urn"] for op in after["pending_operations"]] == [step["urn"]]
    assert after["manifest"] == {}


def test_a_resource_on_the_members_provider_but_outside_it_is_refused():
    state = deployment()
    state["resources"].append(resource("docker:index/volume:Volume", "stray", on=provider(GONE)))
    with pytest.raises(forget_host.ForgetRefused, match="stray reaches 10.9.0.5 but is not part of its member"):
        forget_host.without_member(state, GONE)


def test_the_engine_is_read_from_the_memberships_record():
    assert forget_host.recorded_engine(deployment(), GONE) == DockerHost(**ENGINES[GONE])
    assert forget_host.recorded_engine(deployment(), "10.9.0.9") is None


class Stack:
    name = "prod"


@pytest.fixture
def forgetting(monkeypatch):
    """forget_host against a stand-in state and cluster of stack 'prod' (each stand-in checks it is asked
    about that stack): what it imported and reset, in ``done``."""
    done = SimpleNamespace(imported=[], left=[], said=[], running=None, remembered=[], state=deployment(),
                           addresses=STAYING, locked_checks=0, etcd=STAYING, order=[])

    def prod(name, value):
        assert name == "prod", name
        return value

    def locked(stack, say):
        done.locked_checks += prod(stack.name, 1)

    def running_there(docker, stack):
        assert docker == DockerHost(**ENGINES[GONE]), "the engine the memberships recorded"
        return prod(stack, done.running)

    def remembered_by(target, address):
        assert (target, address) == (THREE, GONE)
        return done.remembered

    def imported(stack, state, doing):
        done.imported.append(prod(stack.name, state))
        done.order.append("state")
        assert doing == f"forgetting {GONE} in"

    def listed(addresses):
        assert tuple(addresses) == done.addresses, "etcd asked of the listed hosts"
        return ("10.9.0.2", tuple(forget_host.etcd.EtcdMember(str(n), a) for n, a in enumerate(done.etcd))) \
            if done.etcd else (None, ())

    def forget_member(address, asking, deadline_s):
        assert (address, tuple(asking), deadline_s) == (GONE, done.addresses, 7)
        done.order.append("etcd")
        return [f"etcd: the member on {address} removed"] if address in done.etcd else []

    monkeypatch.setattr(stacks, "stack_config", lambda name: prod(name, SimpleNamespace(
        cluster=SimpleNamespace(addresses=done.addresses), health_timeout_seconds=7)))
    monkeypatch.setattr(stacks, "refuse_while_locked", locked)
    monkeypatch.setattr(stacks, "exported_deployment", lambda stack: prod(stack.name, copy.deepcopy(done.state)))
    monkeypatch.setattr(stacks, "import_deployment", imported)
    monkeypatch.setattr(stacks, "deployed_target", lambda name: prod(name, DEPLOYED))
    monkeypatch.setattr(forget_host, "running_there", running_there)
    monkeypatch.setattr(forget_host.membership, "remembered_by", remembered_by)
    monkeypatch.setattr(forget_host.etcd, "listed", listed)
    monkeypatch.setattr(forget_host.etcd, "forget", forget_member)

    def leave(target, address, deadline_s):
        done.left.append((target, address, deadline_s))
        return list(STAYING)

    def converge(target, deadline_s):
        done.left.append((target, "converged", deadline_s))
        return ["sentinel 10.9.0.2: quorum 3 -> 2"]

    monkeypatch.setattr(forget_host.membership, "leave", leave)
    monkeypatch.setattr(forget_host.membership, "converge", converge)
    return done


def run(done, address: str = GONE) -> forget_host.Forgotten:
    return forget_host.forget_host(Stack(), address, done.said.append)


def test_a_host_out_of_reach_leaves_the_state_then_the_sentinels_forget_it(forgetting):
    forgotten = run(forgetting)
    assert forgotten == forget_host.Forgotten(tuple(GONE_URNS), STAYING)
    assert forgetting.imported == [forget_host.without_member(deployment(), GONE)]
    assert forgetting.left == [(THREE, GONE, 7), (THREE, "converged", 7)]
    assert forgetting.locked_checks == 1
    assert forgetting.said == [
        "dropped 6 resources of 10.9.0.5 from the state of stack 'prod' (nothing was done on the host: its engine "
        "cannot be reached)",
        "the Sentinels on 10.9.0.2, 10.9.0.3, 10.9.0.4 reset: they forgot 10.9.0.5",
        "sentinel 10.9.0.2: quorum 3 -> 2"]


def test_a_member_whose_engine_no_membership_recorded_is_taken_for_out_of_reach(forgetting):
    for resource in forgetting.state["resources"]:
        for side in ("inputs", "outputs"):
            if "hosts" in resource.get(side, {}):
                resource[side]["hosts"] = {}
    run(forgetting)
    assert len(forgetting.imported) == 1 and forgetting.said[0].endswith("its engine cannot be reached)")


def test_a_host_that_ran_no_etcd_is_forgotten_while_etcd_answers_nowhere(forgetting):
    forgetting.etcd = ()
    assert run(forgetting).urns == tuple(GONE_URNS)
    assert len(forgetting.imported) == 1 and forgetting.order == ["etcd", "state"]


def test_a_host_that_answers_without_the_stacks_containers_is_forgotten_too(forgetting):
    forgetting.running = []
    run(forgetting)
    assert len(forgetting.imported) == 1 and forgetting.said[0].endswith("(nothing was done on the host: it runs "
                                                                          "none of them)")


@pytest.mark.parametrize("case, message", [
    ("listed", "10.9.0.5 is still in replicatedHosts of stack 'prod'; take it off the list first"),
    ("running", "10.9.0.5 answers and runs the stack's prod-haproxy, prod-redis: with the host off the list, "
                "`pulumi up --stack prod` stops them"),
    ("etcd", "10.9.0.5 ran one of the stack's etcd members, and no etcd member on 10.9.0.2, 10.9.0.3, 10.9.0.4 "
             "answers to remove it: etcd changes its members only with a majority of them up. Bring the other etcd "
             "hosts back, then run forget-host again; nothing was changed"),
    ("unknown", "neither the state of stack 'prod', etcd nor its Sentinels know 10.9.0.5: nothing to forget (its "
                "hosts: 10.9.0.2, 10.9.0.3, 10.9.0.4)"),
    ("single", "stack 'prod' is not replicated"),
])
def test_refused_with_nothing_changed(forgetting, monkeypatch, case, message):
    if case == "listed":
        forgetting.addresses = (*STAYING, GONE)
    elif case == "running":
        forgetting.running = ["prod-haproxy", "prod-redis"]
    elif case == "etcd":
        forgetting.state["resources"].append(resource("docker:index/container:Container", "member-m10_9_0_5-etcd",
                                                      member(GONE), provider(GONE)))
        forgetting.etcd = ()
    elif case == "unknown":
        forgetting.state = {"resources": []}
    else:
        monkeypatch.setattr(stacks, "stack_config", lambda name: SimpleNamespace(cluster=None))
    with pytest.raises(forget_host.ForgetRefused, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        run(forgetting)
    assert refused.value.exit_code == 2
    assert forgetting.imported == [] and forgetting.left == [] and forgetting.order == []


def test_a_host_the_state_dropped_but_the_sentinels_still_know_is_only_reset(forgetting):
    """It came back after it was forgotten, and its containers were removed there."""
    forgetting.state = {"resources": []}
    forgetting.remembered = ["10.9.0.3"]
    assert run(forgetting) == forget_host.Forgotten((), STAYING)
    assert forgetting.said[0] == "the state of stack 'prod' holds nothing of 10.9.0.5; the cluster still knows it"
    assert forgetting.imported == [] and forgetting.left == [(THREE, GONE, 7), (THREE, "converged", 7)]


def test_an_etcd_host_leaves_etcds_members_before_the_state_is_touched(forgetting):
    """Its member removed, the next `up` adds one on the host that took its place among the first three."""
    forgetting.state["resources"].append(resource("docker:index/container:Container", "member-m10_9_0_5-etcd",
                                                  member(GONE), provider(GONE)))
    forgetting.etcd = ("10.9.0.2", "10.9.0.3", GONE)
    forgotten = run(forgetting)
    assert len(forgotten.urns) == len(GONE_URNS) + 1
    assert forgetting.order == ["etcd", "state"]
    assert forgetting.said[:2] == ["etcd: the member on 10.9.0.5 removed",
                                   "dropped 7 resources of 10.9.0.5 from the state of stack 'prod' (nothing was done "
                                   "on the host: its engine cannot be reached)"]
    # Run again after a failure that came after the state was changed: only etcd still lists it.
    forgetting.state, forgetting.order, forgetting.said = {"resources": []}, [], []
    assert run(forgetting) == forget_host.Forgotten((), STAYING)
    assert forgetting.order == ["etcd"] and forgetting.said[:2] == [
        "the state of stack 'prod' holds nothing of 10.9.0.5; the cluster still knows it",
        "etcd: the member on 10.9.0.5 removed"]


@pytest.mark.parametrize("answering, said", [
    ([], "the Sentinels on no other host reset and forgot 10.9.0.5; the others did not answer: run forget-host "
         "again once they do"),
    (["10.9.0.2", "10.9.0.4"], "the Sentinels on 10.9.0.2, 10.9.0.4 reset and forgot 10.9.0.5; the others did not "
                               "answer: run forget-host again once they do")])
def test_sentinels_that_do_not_answer_are_said_and_no_quorum_is_set_without_them(forgetting, monkeypatch,
                                                                                 answering, said):
    monkeypatch.setattr(forget_host.membership, "leave", lambda target, address, deadline_s: answering)
    assert run(forgetting) == forget_host.Forgotten(tuple(GONE_URNS), tuple(answering))
    assert forgetting.said[1:] == [said]
    assert forgetting.left == [], "converge would fail on a Sentinel that does not answer"
