"""Volumes and credentials over a stack's life: teardown and return, re-attach with other
passwords, rotation, a volume that cannot be reconciled, and configurations refused before
anything is touched. Real engine, real Docker, through the command line where operators use it."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

from infra.core import statecopy
from infra.core.config import PROJECT
from infra.driver import stacks, teststacks
from tests.e2e.support import cli, objects_of

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PREFIX = "sin-datastores:"




def passwords(test_stack) -> dict[str, str]:
    config = test_stack.stack.get_all_config()
    return {key: config[PREFIX + key].value for key in ("postgresPassword", "redisPassword")}


def pg_login(test_stack, password: str) -> bool:
    """Whether PostgreSQL accepts ``password`` on the published port (a refusal is False)."""
    try:
        psycopg.connect(host="127.0.0.1", port=int(test_stack.config["postgresHostPort"]), dbname="sinsolver",
                        user="sinadmin", password=password, connect_timeout=5).close()
        return True
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return False


def redis_login(test_stack, password: str) -> bool:
    client = redis_lib.Redis(port=int(test_stack.config["redisHostPort"]), password=password, socket_timeout=5)
    try:
        return client.ping()
    except redis_lib.AuthenticationError:
        return False
    finally:
        client.close()


def write_marker(test_stack, value: str) -> None:
    pw = passwords(test_stack)
    with psycopg.connect(host="127.0.0.1", port=int(test_stack.config["postgresHostPort"]), dbname="sinsolver",
                         user="sinadmin", password=pw["postgresPassword"], autocommit=True) as conn:
        conn.execute("INSERT INTO logs (level, message) VALUES ('info', %s)", (value,))
    client = redis_lib.Redis(port=int(test_stack.config["redisHostPort"]), password=pw["redisPassword"])
    client.rpush("queue:marker", value)
    client.set("session:marker", value, ex=3600)
    client.close()


def read_markers(test_stack) -> tuple[list[str], list[str], int]:
    """Marker rows, the marker queue and the session key's remaining TTL."""
    pw = passwords(test_stack)
    with psycopg.connect(host="127.0.0.1", port=int(test_stack.config["postgresHostPort"]), dbname="sinsolver",
                         user="sinadmin", password=pw["postgresPassword"]) as conn:
        rows = [r[0] for r in conn.execute("SELECT message FROM logs WHERE message LIKE 'marker%' ORDER BY id")]
    client = redis_lib.Redis(port=int(test_stack.config["redisHostPort"]), password=pw["redisPassword"],
                             decode_responses=True)
    try:
        return rows, client.lrange("queue:marker", 0, -1), client.ttl("session:marker")
    finally:
        client.close()


def volume_names(test_stack) -> list[str]:
    """The stack's data volumes (not the copy of its state that `python -m infra` keeps beside them)."""
    copy = statecopy.volume_name(PROJECT, test_stack.name)
    return [v for v in objects_of(test_stack.name)["volumes"] if v != copy]


def volume_steps(events: list) -> set[str]:
    """The engine's steps on data volumes during an update ('same' when untouched; the refresh
    before every update reads them first)."""
    return {str(getattr(e.resource_pre_event.metadata.op, "value", e.resource_pre_event.metadata.op))
            for e in events if e.resource_pre_event
            and e.resource_pre_event.metadata.type == "docker:index/volume:Volume"} - {"refresh"}


def test_down_remove_keeps_the_config_file_and_up_returns_onto_the_retained_volumes(make_stack, settings):
    test_stack = make_stack(retain_volumes=True)
    test_stack.up()
    write_marker(test_stack, "marker-before-teardown")
    config_file = stacks.config_file(test_stack.name)
    before = config_file.read_bytes()
    volumes = volume_names(test_stack)

    down = cli(settings, "down", "--stack", test_stack.name, "--remove")
    assert down.returncode == 0, down.stderr
    assert config_file.read_bytes() == before, "the stack's config file is kept byte for byte"
    assert f"Pulumi.{test_stack.name}.yaml is kept" in down.stderr
    assert volume_names(test_stack) == volumes and objects_of(test_stack.name)["containers"] == []

    up = cli(settings, "up", "--stack", test_stack.name)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "generated" not in up.stderr, "the kept file still holds both passwords"
    assert volume_names(test_stack) == volumes
    rows, queue, ttl = read_markers(test_stack)
    assert rows == ["marker-before-teardown"] and queue == ["marker-before-teardown"] and ttl > 3000


def test_a_recreated_stack_with_new_passwords_takes_over_the_retained_volumes_with_their_data(make_stack, settings):
    test_stack = make_stack(retain_volumes=True)
    test_stack.up()
    write_marker(test_stack, "marker-old-stack")
    old = passwords(test_stack)
    volumes = volume_names(test_stack)
    # What `git checkout Pulumi.dev.yaml` after `down --remove` leaves: the volumes, and a
    # stack file without the passwords they were made with.
    test_stack.stack.destroy(color="never")
    test_stack.stack.workspace.remove_stack(test_stack.name)
    test_stack.stack = teststacks.create(settings, test_stack.name, test_stack.config)
    new = passwords(test_stack)
    assert new != old and all(new[k] != old[k] for k in new)

    started = time.monotonic()
    result = test_stack.up()
    elapsed = time.monotonic() - started

    assert result.summary.result == "succeeded"
    assert result.outputs["verificationChecks"].value == 20
    assert elapsed < 60, f"re-attach took {elapsed:.0f} s: nothing may wait out the health timeout"
    assert volume_names(test_stack) == volumes, "the same volumes, not new ones"
    rows, queue, _ = read_markers(test_stack)
    assert rows == ["marker-old-stack"] and queue == ["marker-old-stack"]
    assert pg_login(test_stack, new["postgresPassword"]) and not pg_login(test_stack, old["postgresPassword"])
    assert redis_login(test_stack, new["redisPassword"]) and not redis_login(test_stack, old["redisPassword"])


@pytest.mark.parametrize("key", ["postgresPassword", "redisPassword"])
def test_rotating_a_password_keeps_every_row_and_key_and_refuses_the_old_one(make_stack, key):
    test_stack = make_stack()
    test_stack.up()
    write_marker(test_stack, "marker-before-rotation")
    old = passwords(test_stack)
    volumes = volume_names(test_stack)

    new_password = secrets.token_urlsafe(32)
    stacks.set_secret(test_stack.stack, key, new_password)
    events: list = []
    result = test_stack.up(on_event=events.append)

    assert result.summary.result == "succeeded"
    assert volume_steps(events) == {"same"}, "no volume is replaced by a rotation"
    assert volume_names(test_stack) == volumes
    login = pg_login if key == "postgresPassword" else redis_login
    assert login(test_stack, new_password), "the new password works"
    assert not login(test_stack, old[key]), "the old password is refused"
    rows, queue, ttl = read_markers(test_stack)
    assert rows == ["marker-before-rotation"] and queue == ["marker-before-rotation"] and ttl > 3000
    test_stack.stack.preview(expect_no_changes=True, color="never")


def test_a_volume_without_the_configured_role_stops_within_seconds_naming_the_volume(make_stack):
    test_stack = make_stack(retain_volumes=True)
    test_stack.up()
    write_marker(test_stack, "marker-other-role")
    volumes = volume_names(test_stack)
    stacks.configure(test_stack.stack, {"postgresUser": "someone_else"})

    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        test_stack.up()
    elapsed = time.monotonic() - started

    message = str(failure.value)
    volume = f"{test_stack.name}-postgres_data"
    assert volume in message and "someone_else" in message and "postgresUser" in message, message
    assert elapsed < 60, f"failed after {elapsed:.0f} s: it must not wait out the health timeout (90 s)"
    assert volume_names(test_stack) == volumes, "the volume is neither replaced nor deleted"
    stacks.configure(test_stack.stack, {"postgresUser": "sinadmin"})
    test_stack.up()
    assert read_markers(test_stack)[0] == ["marker-other-role"]


def test_a_bad_config_exits_2_with_only_the_problem_before_the_engine_starts(make_stack, settings):
    test_stack = make_stack()
    stacks.configure(test_stack.stack, {"postgresIp": test_stack.config["networkGateway"]})

    for command in ("up", "preview"):
        run = cli(settings, command, "--stack", test_stack.name)
        assert run.returncode == 2, (command, run.stderr)
        assert "Traceback" not in run.stderr + run.stdout, command
        assert f"{PREFIX}postgresIp: {test_stack.config['networkGateway']} is already used by networkGateway" \
               in run.stderr, (command, run.stderr)
        assert "Updating" not in run.stdout and "Previewing" not in run.stdout, "the engine never started"
    assert objects_of(test_stack.name) == {"containers": [], "networks": [], "volumes": []}


def test_a_bad_config_under_plain_pulumi_shows_the_problem_once_without_a_traceback(make_stack, settings):
    test_stack = make_stack()
    stacks.configure(test_stack.stack, {"postgresIp": test_stack.config["networkGateway"]})
    run = subprocess.run(["pulumi", "preview", "--stack", test_stack.name, "--non-interactive"], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, **settings.env()}, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert output.count("postgresIp: ") == 1 and output.count("is already used by networkGateway") == 1, output
    assert "Traceback" not in output, output


def test_a_new_stack_whose_config_is_bad_is_not_left_behind(settings):
    name = f"e2e-bad-{secrets.token_hex(4)}"
    config_file = stacks.config_file(name)
    config_file.write_text("config:\n  sin-datastores:postgresHostPort: 'not-a-port'\n")
    try:
        run = cli(settings, "up", "--stack", name)
        assert run.returncode == 2 and "postgresHostPort" in run.stderr and "Traceback" not in run.stderr
        assert config_file.read_text() == "config:\n  sin-datastores:postgresHostPort: 'not-a-port'\n"
        assert name not in {s.name for s in stacks.workspace(settings).list_stacks()}
    finally:
        config_file.unlink(missing_ok=True)
