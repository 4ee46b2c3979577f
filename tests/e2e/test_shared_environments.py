"""An environment a team shares (issue 28): one state in an S3 bucket (a real versitygw server), one
team passphrase, two operators with Pulumi homes and passphrase files of their own, one Docker host."""

from __future__ import annotations

import shutil
import time

import pytest

from infra.core import statecopy
from infra.driver import stacks, teststacks
from tests import teams
from tests.e2e.support import KEPT, cli, data_of, inspect, objects_of, put_data, stack_config, sweep

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


def test_a_lost_state_is_refused_then_taken_back_from_the_copy_on_the_host_without_a_restart(team, tmp_path):
    ana, ben = team.operator("ana"), team.operator("ben")
    name = team.new_stack_name()
    stack = teststacks.create(ana.settings, name, stack_config(stack=name))
    assert ana.cli("up", "--stack", name).returncode == 0
    target = stacks.target_from_outputs(name, stack.outputs())
    put_data(target)
    containers = [target.postgres.container_name, target.redis.container_name]
    running = [(inspect("container", c)["Id"], inspect("container", c)["State"]["StartedAt"]) for c in containers]
    before = sorted(objects_of(name).items())
    old, old_id = stacks.exported_deployment(stack), stacks.state_id(stack)
    assert old_id, "the first `up` gave the state an id"

    # An operator who forgot PULUMI_BACKEND_URL: an empty state, refused before anything is created.
    forgot = stacks.Settings(f"file://{tmp_path / 'empty-state'}", ana.settings.passphrase_file)
    refused = cli(forgot, "up", "--stack", name)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"the environment of stack '{name}' on this host" in refused.stderr
    assert "was made by another state of the stack" in refused.stderr and "PULUMI_BACKEND_URL" in refused.stderr
    assert f"`python -m infra take-back --stack {name}`" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(objects_of(name).items()) == before, "nothing created beside the running environment"
    assert not any((tmp_path / "empty-state").rglob(f"{name}.json")), "no second state of the stack was made"

    # The team's state is lost: the bucket holds nothing of the stack any more.
    for key in team.keys():
        if f"/{name}" in key:
            team.s3.client().delete_object(Bucket=team.bucket, Key=key)
    gone = ben.cli("up", "--stack", name)
    assert gone.returncode == 2 and "was made by another state of the stack" in gone.stderr, gone.stderr
    taken = ben.cli("take-back", "--stack", name)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert f"took the environment of stack '{name}' on the local Docker Engine back into this state" in taken.stderr
    assert "2 containers, 2 volumes, 1 network; nothing on the host was touched" in taken.stderr
    assert "preview after the take-back: no changes" in taken.stderr, taken.stderr
    seen = ana.cli("preview", "--stack", name)
    assert seen.returncode == 0 and set(teams.preview_summary(seen)) == {"same"}, seen.stdout + seen.stderr
    again = ana.cli("up", "--stack", name)
    assert again.returncode == 0 and "changes: none" in again.stderr, again.stdout + again.stderr
    assert [(inspect("container", c)["Id"], inspect("container", c)["State"]["StartedAt"]) for c in containers] \
        == running, "no container was replaced or restarted"
    assert data_of(target) == KEPT

    # Twice is refused (the state holds the environment now), and so is the lost state should it turn up again.
    twice = ben.cli("take-back", "--stack", name)
    assert twice.returncode == 2 and "it is not lost, and take-back never overwrites a state" in twice.stderr
    found = stacks.Settings(f"file://{tmp_path / 'found-state'}", ana.settings.passphrase_file)
    found_stack = teststacks.create(found, name, stack_config(stack=name))
    stacks.import_deployment(found_stack, old, "restoring")
    found_stack.set_tag(stacks.STATE_ID_TAG, old_id)
    stale = cli(found, "up", "--stack", name)
    assert stale.returncode == 2 and f"than this one ({old_id})" in stale.stderr, stale.stdout + stale.stderr
    assert [inspect("container", c)["Id"] for c in containers] == [r[0] for r in running]


def test_volumes_a_state_kept_are_not_taken_by_another_until_it_lets_them_go(team, tmp_path):
    ana = team.operator("ana")
    name = team.new_stack_name()
    stack = teststacks.create(ana.settings, name, stack_config(retain_volumes=True, stack=name))
    assert ana.cli("up", "--stack", name).returncode == 0
    target = stacks.target_from_outputs(name, stack.outputs())
    put_data(target)
    assert ana.cli("down", "--stack", name).returncode == 0
    kept = sorted(objects_of(name)["volumes"])

    other = stacks.Settings(f"file://{tmp_path / 'other-state'}", ana.settings.passphrase_file)
    refused = cli(other, "up", "--stack", name)
    assert refused.returncode == 2 and "was made by another state of the stack" in refused.stderr, refused.stderr
    assert objects_of(name) == {"containers": [], "networks": [], "volumes": kept}

    back = ana.cli("up", "--stack", name)  # the state that made them brings them back
    assert back.returncode == 0, back.stdout + back.stderr
    assert data_of(target) == KEPT
    assert ana.cli("down", "--stack", name, "--remove").returncode == 0  # lets them go
    taken = cli(other, "up", "--stack", name)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert data_of(target) == KEPT

    # Down again, and then that state is lost too: the kept volumes are taken back by a new one.
    assert cli(other, "down", "--stack", name).returncode == 0
    shutil.rmtree(tmp_path / "other-state")
    third = stacks.Settings(f"file://{tmp_path / 'third-state'}", ana.settings.passphrase_file)
    assert cli(third, "up", "--stack", name).returncode == 2
    back_again = cli(third, "take-back", "--stack", name)
    assert back_again.returncode == 0, back_again.stdout + back_again.stderr
    assert "the environment is down; the volumes it kept are this state's now" in back_again.stderr
    assert cli(third, "up", "--stack", name).returncode == 0
    assert data_of(target) == KEPT
    assert cli(third, "down", "--stack", name, "--remove").returncode == 0


def test_a_copy_a_plain_pulumi_destroy_left_protects_nothing_and_the_next_up_replaces_it(tmp_path):
    first = stacks.Settings(f"file://{tmp_path / 'first'}", tmp_path / "passphrase")
    name = teststacks.new_name()
    try:
        stack = teststacks.create(first, name, stack_config(stack=name))
        assert cli(first, "up", "--stack", name).returncode == 0
        stack.destroy(color="never")  # what a plain `pulumi destroy` does: our copy stays behind
        assert objects_of(name)["volumes"] == [statecopy.volume_name("sin-datastores", name)]

        second = stacks.Settings(f"file://{tmp_path / 'second'}", tmp_path / "passphrase")
        up = cli(second, "up", "--stack", name)
        assert up.returncode == 0, up.stdout + up.stderr
        assert statecopy.owner(statecopy.find("sin-datastores", name)) == stacks.state_id(stacks.open_stack(name, second))
        assert cli(second, "down", "--stack", name, "--remove").returncode == 0
    finally:
        sweep(name)
        teststacks.release(name)
        stacks.config_file(name).unlink(missing_ok=True)
