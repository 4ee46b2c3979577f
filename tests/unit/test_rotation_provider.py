"""The rotation resource's dynamic provider (infra.components.rotation._RotationProvider): it runs
the plain rotation with the previous passwords (its state) and the configured ones, only when a
password changed, and reports a refusal in its own words."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from infra.components.postdeploy import StepFailed
from infra.components.rotation import _RotationProvider
from infra.core.cluster import ClusterSecrets
from infra.deploy import rotation
from infra.deploy.rotation import RotationRefused
from tests.unit.replicated_target import TARGET

SECRETS = ClusterSecrets(superuser="s" * 20, replication="r" * 20, patroni_rest="p" * 20, redis="d" * 20,
                         sentinel="n" * 20)
DEPLOYED = {"target": TARGET, "secrets": asdict(SECRETS)}
ROTATED = {**DEPLOYED, "secrets": {**asdict(SECRETS), "redis": "e" * 20}}


@pytest.fixture
def rotations(monkeypatch):
    ran = []
    monkeypatch.setattr(rotation, "rotate", lambda target, configured, previous: ran.append(
        (target.cluster.members, configured, previous)) or [])
    return ran


def test_a_changed_password_is_an_update_in_place_and_nothing_else_is():
    answer = _RotationProvider().diff("prod", DEPLOYED, ROTATED)
    assert (answer.changes, answer.replaces, answer.delete_before_replace) == (True, [], False)
    moved = {**DEPLOYED, "target": {**TARGET, "postgres": {**TARGET["postgres"], "host": "10.9.0.3"}}}
    assert _RotationProvider().diff("prod", DEPLOYED, moved).changes is False


def test_update_rotates_from_the_state_s_passwords_to_the_configured_ones(rotations):
    outs = _RotationProvider().update("prod", DEPLOYED, ROTATED).outs
    assert outs == ROTATED  # the next diff compares with what was set
    members, configured, previous = rotations[-1]
    assert members == ("10.9.0.2", "10.9.0.3", "10.9.0.4")
    assert (previous, configured.redis, configured.superuser) == (SECRETS, "e" * 20, "s" * 20)


def test_create_has_no_previous_passwords_to_rotate_from(rotations):
    created = _RotationProvider().create(DEPLOYED)
    assert (created.id, created.outs) == ("prod", DEPLOYED)
    assert rotations == [(("10.9.0.2", "10.9.0.3", "10.9.0.4"), SECRETS, None)]


def test_a_refusal_is_its_own_words_without_the_chain(monkeypatch):
    def refusing(target, configured, previous):
        raise RotationRefused("Redis (port 6379) on 10.9.0.3 refuses the configured redisPassword")

    monkeypatch.setattr(rotation, "rotate", refusing)
    with pytest.raises(StepFailed, match="^RotationRefused: Redis .port 6379. on 10.9.0.3 refuses") as failure:
        _RotationProvider().update("prod", DEPLOYED, ROTATED)
    assert failure.value.__suppress_context__


def test_deleting_it_touches_no_server(rotations):
    _RotationProvider().delete("prod", DEPLOYED)
    assert rotations == []


def test_new_passwords_with_a_changed_host_list_are_refused_by_the_check():
    """A joining host has no server to take them yet, and a leaving one is forgotten with the passwords its
    state last had: one change per run."""
    grown = {**ROTATED, "target": {**TARGET, "cluster": {**TARGET["cluster"],
                                                          "members": [*TARGET["cluster"]["members"], "10.9.0.5"]}}}
    checked = _RotationProvider().check(DEPLOYED, grown)
    assert checked.inputs == grown
    assert [(f.property, f.reason) for f in checked.failures] == [("secrets", (
        "passwords changed in the same run as replicatedHosts (10.9.0.2, 10.9.0.3, 10.9.0.4 -> 10.9.0.2, 10.9.0.3, "
        "10.9.0.4, 10.9.0.5); nothing was changed. Set the previous passwords back and run `up` for the hosts, then "
        "set the new ones and run `up` again."))]
    same_passwords = {**grown, "secrets": DEPLOYED["secrets"]}
    passed = _RotationProvider().check(DEPLOYED, same_passwords)
    assert (passed.inputs, passed.failures) == (same_passwords, [])
    assert _RotationProvider().check(DEPLOYED, ROTATED).failures == []
    assert _RotationProvider().check({}, grown).failures == [], "created: nothing to compare"
