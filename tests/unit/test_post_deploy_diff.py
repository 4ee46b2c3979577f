"""What re-runs the post-deploy step: a change of one of its triggers, nothing else."""

from __future__ import annotations

import pytest

from infra.components.postdeploy import TRIGGERS, _PostDeployProvider

DEPLOYED = {"target": {"stack": "dev", "postgres": {"port": 5432}}, "migrations": [{"version": 1, "sha256": "a" * 64}],
            "container_ids": ["pg-1", "redis-1"], "actor": "ci", "applied": ["V001__adr006_schema.sql"],
            "already_applied": 0, "checks": 24, "failed": []}


def test_the_triggers_are_the_target_the_migrations_and_the_containers():
    assert TRIGGERS == ("target", "migrations", "container_ids")


@pytest.mark.parametrize("changed", [
    {"target": {"stack": "dev", "postgres": {"port": 5433}}},
    {"migrations": [{"version": 1, "sha256": "a" * 64}, {"version": 2, "sha256": "b" * 64}]},
    {"container_ids": ["pg-2", "redis-1"]},
])
def test_a_changed_trigger_re_runs_the_step_in_place(changed):
    diff = _PostDeployProvider().diff("dev", DEPLOYED, {**DEPLOYED, **changed})
    assert (diff.changes, diff.replaces, diff.delete_before_replace) == (True, [], False)


def test_another_actor_or_fresh_outputs_alone_change_nothing():
    news = {**DEPLOYED, "actor": "someone-else", "applied": None, "already_applied": None, "checks": None}
    diff = _PostDeployProvider().diff("dev", DEPLOYED, news)
    assert (diff.changes, diff.replaces, diff.delete_before_replace) == (False, [], False)
