"""An environment a team shares (issue 28): one state in an S3 bucket (a real versitygw server), one
team passphrase, two operators with Pulumi homes and passphrase files of their own, one Docker host."""

from __future__ import annotations

import time

import pytest

from infra.driver import stacks, teststacks
from tests import teams
from tests.e2e.support import KEPT, cli, data_of, inspect, objects_of, put_data, stack_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def team(tmp_path, monkeypatch):
    with teams.team(tmp_path, monkeypatch) as made:
        yield made


def test_two_operators_share_one_state_one_passphrase_and_its_lock(team):
    ana, ben = team.operator("ana"), team.operator("ben")
    name = team.new_stack_name()
    teststacks.create(ana.settings, name, stack_config(stack=name))

    up = ana.cli("up", "--stack", name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert any(key.startswith(".pulumi/stacks/") for key in team.keys()), "the state lives in the bucket"

    # Ben, on his machine: the same stack, nothing to change.
    seen = ben.cli("preview", "--stack", name)
    assert seen.returncode == 0, seen.stdout + seen.stderr
    assert set(teams.preview_summary(seen)) == {"same"}, seen.stderr

    # Someone with another passphrase: refused before anything, naming where the passphrase came from.
    eve = team.operator("eve", "not-the-team-passphrase")
    for command in ("preview", "up"):
        refused = eve.cli(command, "--stack", name)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"the passphrase from the file {eve.settings.passphrase_file}" in refused.stderr
        assert "does not open the secrets of stack" in refused.stderr and "Traceback" not in refused.stderr
        assert "pulumi failed" not in refused.stderr

    # Two `up`s at once: Ana's holds the lock (a change that replaces a container keeps it for seconds),
    # Ben's stops within seconds naming her, and touches nothing.
    stacks.configure(stacks.open_stack(name, ana.settings), {"postgresMemoryMb": "640"})
    first = ana.start("up", "--stack", name)
    deadline = time.monotonic() + 60
    while not any(k.startswith(".pulumi/locks/") for k in team.keys()):
        assert first.poll() is None and time.monotonic() < deadline, "ana's `up` never took the lock"
        time.sleep(0.05)
    started = time.monotonic()
    second = ben.cli("up", "--stack", name)
    took = time.monotonic() - started
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"stack '{name}' is locked by another command: " in second.stderr and " since " in second.stderr
    assert f"`pulumi cancel --stack {name} --yes`" in second.stderr
    assert took < 15, f"the second `up` took {took:.1f} s to stop"
    after = ben.cli("preview", "--stack", name)
    assert after.returncode == 0 and set(teams.preview_summary(after)) == {"same"}, after.stderr



def test_an_environment_on_local_state_moves_to_the_bucket_with_its_history_and_data_untouched(team, tmp_path):
    ben = team.operator("ben")
    local = stacks.Settings(f"file://{tmp_path / 'ana-state'}", ben.settings.passphrase_file)
    name = team.new_stack_name()
    stack = teststacks.create(local, name, stack_config(stack=name))
    for _ in range(2):  # two updates: a history of more than one entry
        assert cli(local, "up", "--stack", name).returncode == 0
    target = stacks.target_from_outputs(name, stack.outputs())
    put_data(target)
    containers = [target.postgres.container_name, target.redis.container_name]
    started = [inspect("container", c)["State"]["StartedAt"] for c in containers]
    history = len(list((tmp_path / "ana-state" / ".pulumi" / "history").rglob("*.json")))
    assert history >= 2

    # What `pulumi stack rm` of an earlier stack of that name leaves in the bucket does not stop the move.
    team.s3.client().put_object(Bucket=team.bucket, Key=f".pulumi/stacks/sin-datastores/{name}.json.bak", Body=b"{}")
    moved = cli(local, "move-state", "--stack", name, "--to", ben.settings.backend_url)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert len([k for k in team.keys() if k.startswith(f".pulumi/history/sin-datastores/{name}/")]) == history
    for command in ("preview", "up"):  # the local copy is no longer a stack, and `up` makes no new one there
        gone = cli(local, command, "--stack", name)
        assert gone.returncode == 2, gone.stdout + gone.stderr
        assert f"was moved from {local.backend_url} to {ben.settings.backend_url}" in gone.stderr, gone.stderr
        assert f"set PULUMI_BACKEND_URL='{ben.settings.backend_url}'" in gone.stderr
    seen = ben.cli("preview", "--stack", name)
    assert seen.returncode == 0 and set(teams.preview_summary(seen)) == {"same"}, seen.stdout + seen.stderr
    assert [inspect("container", c)["State"]["StartedAt"] for c in containers] == started
    assert data_of(target) == KEPT

    again = cli(local, "move-state", "--stack", name, "--to", ben.settings.backend_url)
    assert again.returncode == 2 and "has no state in" in again.stderr, again.stderr


def test_up_from_a_state_that_does_not_know_the_running_environment_is_refused_and_creates_nothing(team, tmp_path):
    ana = team.operator("ana")
    name = team.new_stack_name()
    teststacks.create(ana.settings, name, stack_config(stack=name))
    assert ana.cli("up", "--stack", name).returncode == 0
    before = sorted(objects_of(name).items())

    # The state gone (the bucket emptied), or an operator who forgot PULUMI_BACKEND_URL: an empty state.
    forgot = stacks.Settings(f"file://{tmp_path / 'empty-state'}", ana.settings.passphrase_file)
    refused = cli(forgot, "up", "--stack", name)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"postgresContainerName {name}-room-03-archiv-postgres: container " in refused.stderr
    assert "this state of the stack does not know it" in refused.stderr and "PULUMI_BACKEND_URL" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(objects_of(name).items()) == before, "nothing created beside the running environment"
    assert not any((tmp_path / "empty-state").rglob(f"{name}.json")), "no second state of the stack was made"
