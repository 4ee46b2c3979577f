"""The whole life cycle of a stack: preview, up, no-op up, replacement, secrets, parallel
stacks, destroy. Real Pulumi engine, real language host and docker provider, real Docker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

from infra.deploy import redis_memory
from infra.driver import stacks
from tests.e2e.support import docker, inspect, objects_of, state_files, wait_healthy

pytestmark = pytest.mark.e2e

EXPECTED_CREATES = {
    "pulumi:pulumi:Stack", "sin-datastores:index:SinNetwork", "docker:index/network:Network",
    "sin-datastores:index:PostgresService", "sin-datastores:index:RedisService",
    "docker:index/remoteImage:RemoteImage", "docker:index/volume:Volume", "docker:index/container:Container",
    "sin-datastores:index:PostDeploy", "pulumi-python:dynamic:Resource",
    "pulumi:providers:docker", "pulumi:providers:pulumi-python",
}


def collect_ops(events: list) -> set[tuple[str, str]]:
    ops = set()
    for event in events:
        if event.resource_pre_event:
            meta = event.resource_pre_event.metadata
            ops.add((meta.type, str(getattr(meta.op, "value", meta.op))))
    return ops


@pytest.fixture(scope="module")
def deployed(make_stack):
    """One stack, brought up once for the module (the up itself is asserted in a test)."""
    test_stack = make_stack()
    events: list = []
    preview = test_stack.stack.preview(on_event=events.append, color="never")
    objects_after_preview = objects_of(test_stack.name)
    result = test_stack.up()
    return test_stack, preview, events, objects_after_preview, result


def secrets_of(test_stack) -> tuple[str, str]:
    config = test_stack.stack.get_all_config()
    return config["sin-datastores:postgresPassword"].value, config["sin-datastores:redisPassword"].value


def test_preview_of_a_new_stack_lists_every_create_and_touches_nothing(deployed):
    test_stack, preview, events, objects_after_preview, _ = deployed
    ops = collect_ops(events)
    assert {t for t, op in ops if op == "create"} == EXPECTED_CREATES
    assert {op for _, op in ops} == {"create"}
    assert set(preview.change_summary) == {"create"}
    assert objects_after_preview == {"containers": [], "networks": [], "volumes": []}


def test_up_brings_both_services_up_healthy_at_fixed_ips_on_loopback_ports(deployed):
    test_stack, _, _, _, result = deployed
    config = test_stack.config
    assert result.summary.result == "succeeded"
    network = result.outputs["networkName"].value
    assert network == f"{test_stack.name}-sin-network"
    for role, ip_key, port_key, internal in (("postgres", "postgresIp", "postgresHostPort", "5432/tcp"),
                                             ("redis", "redisIp", "redisHostPort", "6379/tcp")):
        container = wait_healthy(result.outputs[f"{role}ContainerName"].value)
        assert container["NetworkSettings"]["Networks"][network]["IPAMConfig"]["IPv4Address"] == config[ip_key]
        assert container["NetworkSettings"]["Networks"][network]["IPAddress"] == config[ip_key]
        assert container["HostConfig"]["PortBindings"] == {
            internal: [{"HostIp": "127.0.0.1", "HostPort": config[port_key]}]}
        assert container["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert "no-new-privileges:true" in container["HostConfig"]["SecurityOpt"]


def test_up_applied_the_schema_and_verified_both_services(deployed):
    test_stack, _, _, _, result = deployed
    assert result.outputs["migrationsApplied"].value == ["V001__adr006_schema.sql"]
    assert result.outputs["verificationChecks"].value == 20
    # Checked again, independently, through the published ports.
    pg_password, redis_password = secrets_of(test_stack)
    with psycopg.connect(host="127.0.0.1", port=int(test_stack.config["postgresHostPort"]), dbname="sinsolver",
                         user="sinadmin", password=pg_password, connect_timeout=5) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"services", "configurations", "logs", "audit_trail", "sin_schema_history"} <= tables
        assert conn.execute("SELECT count(*) FROM services WHERE status = 'active'").fetchone()[0] == 2
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("16")
    client = redis_lib.Redis(port=int(test_stack.config["redisHostPort"]), password=redis_password)
    assert client.ping() and client.info("persistence")["aof_enabled"] == 1
    with pytest.raises(redis_lib.AuthenticationError):
        redis_lib.Redis(port=int(test_stack.config["redisHostPort"])).ping()


def test_second_up_changes_nothing(deployed):
    test_stack, *_ = deployed
    result = test_stack.up()
    assert set(result.summary.resource_changes) == {"same"}, result.stdout
    test_stack.stack.preview(expect_no_changes=True, color="never")


def test_secrets_appear_neither_in_docker_inspect_nor_in_the_state(deployed, settings):
    test_stack, _, _, _, result = deployed
    pg_password, redis_password = secrets_of(test_stack)
    for role in ("postgres", "redis"):
        text = docker("inspect", result.outputs[f"{role}ContainerName"].value)
        assert pg_password not in text and redis_password not in text, role
    files = state_files(settings)
    assert files, "the file backend holds the state"
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        assert pg_password not in text and redis_password not in text, path


def test_data_survives_a_replaced_redis_and_a_postgresql_updated_in_place(make_stack):
    test_stack = make_stack()  # its own: this test changes the stack
    first = test_stack.up()
    pg_password, redis_password = secrets_of(test_stack)
    pg_port, redis_port = int(test_stack.config["postgresHostPort"]), int(test_stack.config["redisHostPort"])
    with psycopg.connect(host="127.0.0.1", port=pg_port, dbname="sinsolver", user="sinadmin",
                         password=pg_password, autocommit=True) as conn:
        conn.execute("INSERT INTO logs (level, message) VALUES ('info', 'survives replacement')")
    redis_lib.Redis(port=redis_port, password=redis_password).set("e2e:survivor", "still here")
    ids_before = {r: inspect("container", first.outputs[f"{r}ContainerName"].value)["Id"] for r in ("postgres", "redis")}

    # A new Redis config file forces a new Redis container; a new limit updates PostgreSQL in place.
    stacks.configure(test_stack.stack, {"postgresMemoryMb": "640", "redisMemoryMb": "320"})
    result = test_stack.up()

    assert result.summary.resource_changes.get("replace", 0) >= 1, result.summary.resource_changes
    ids_after = {r: inspect("container", result.outputs[f"{r}ContainerName"].value)["Id"] for r in ("postgres", "redis")}
    assert ids_before["redis"] != ids_after["redis"]
    assert ids_before["postgres"] == ids_after["postgres"], "a new memory limit is applied in place"
    with psycopg.connect(host="127.0.0.1", port=pg_port, dbname="sinsolver", user="sinadmin",
                         password=pg_password) as conn:
        assert conn.execute("SELECT count(*) FROM logs WHERE message = 'survives replacement'").fetchone()[0] == 1
    assert redis_lib.Redis(port=redis_port, password=redis_password).get("e2e:survivor") == b"still here"

    # Lowered below what Redis now holds (60 MB of queue entries, no TTL): `up` and `preview` refuse it
    # before anything is touched.
    with redis_lib.Redis(port=redis_port, password=redis_password) as client:
        for batch in range(6):
            client.mset({f"e2e:queue:{batch}:{i}": b"q" * 10_000 for i in range(1_000)})
    stacks.configure(test_stack.stack, {"redisMemoryMb": "64"})
    said: list[str] = []
    for command in (stacks.up, stacks.preview):
        with pytest.raises(redis_memory.RedisTooFull) as refused:
            command(test_stack.stack, "auto", said.append)
        assert str(refused.value).startswith("redisMemoryMb 64: Redis 127.0.0.1:"), refused.value
        assert "more than the 48 MB maxmemory" in str(refused.value) and redis_password not in str(refused.value)
    assert inspect("container", result.outputs["redisContainerName"].value)["Id"] == ids_after["redis"]
    assert inspect("container", result.outputs["redisContainerName"].value)["HostConfig"]["Memory"] == 320 * 2**20
    with redis_lib.Redis(port=redis_port, password=redis_password) as client:
        assert client.get("e2e:survivor") == b"still here" and client.exists("e2e:queue:5:999") == 1


def test_two_more_stacks_run_at_the_same_time_without_colliding(deployed, make_stack):
    first, *_ = deployed
    others = [make_stack(), make_stack()]
    results, errors = {}, []

    def bring_up(test_stack):
        try:
            results[test_stack.name] = test_stack.up()
        except Exception as exc:  # reported by the assertion below
            errors.append(f"{test_stack.name}: {exc}")

    threads = [threading.Thread(target=bring_up, args=(s,)) for s in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    names = set()
    for test_stack in [first] + others:
        found = objects_of(test_stack.name)
        assert len(found["containers"]) == 2 and len(found["networks"]) == 1 and len(found["volumes"]) == 2
        names.update(found["containers"] + found["networks"] + found["volumes"])
        for container in found["containers"]:
            wait_healthy(container)
    assert len(names) == 15, "every stack's objects have names of their own"
    for test_stack in others:
        test_stack.destroy_and_remove()


def test_destroy_removes_every_object_and_the_stack(make_stack, settings):
    test_stack = make_stack()  # its own: the module's stack stays for the other tests, in any order
    test_stack.up()
    test_stack.destroy_and_remove()
    assert objects_of(test_stack.name) == {"containers": [], "networks": [], "volumes": []}
    with pytest.raises(stacks.StackError, match="does not exist"):
        stacks.open_stack(test_stack.name, settings)


def _stat(pid: int) -> list[str]:
    """State and parent of a process ([] when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return []


def alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


def descendants_of(pid: int) -> list[int]:
    parents = {int(e.name): _stat(int(e.name))[1:2] for e in Path("/proc").iterdir() if e.name.isdigit()}
    found, todo = [], [pid]
    while todo:
        parent = str(todo.pop())
        children = [child for child, up in parents.items() if up == [parent]]
        found += children
        todo += children
    return found


def is_step_provider_serving(pid: int) -> bool:
    """A `python -m pulumi.dynamic` one of whose threads is blocked in read(0, ...) (x86-64: syscall 0
    on fd 0): it has served the step and watches the engine's pipe."""
    try:
        return b"pulumi.dynamic" in Path(f"/proc/{pid}/cmdline").read_bytes() and any(
            (task / "syscall").read_text().split()[:2] == ["0", "0x0"] for task in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False


def test_a_killed_cli_leaves_no_post_deploy_provider_behind(deployed, settings):
    """A CLI that dies without ending its plugins (killed, or by SIGPIPE once whoever read its output
    went away) leaves them running (the docker provider was seen an hour later), and
    `python -m pulumi.dynamic` never left either. The step's provider now reads the end
    of the pipe the engine held as its stdin and leaves, with anything it started."""
    test_stack, *_ = deployed
    cli = subprocess.Popen(["pulumi", "preview", "--stack", test_stack.name, "--non-interactive"], cwd=stacks.ROOT,
                           env={**os.environ, **settings.env()}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    started: list[int] = []
    try:
        give_up, provider = time.monotonic() + 120, None
        while provider is None and cli.poll() is None and time.monotonic() < give_up:
            started = descendants_of(cli.pid)
            provider = next((pid for pid in started if is_step_provider_serving(pid)), None)
            time.sleep(0.05)
        assert provider, "no post-deploy provider of the preview watched the engine's pipe (its stdin)"
        started = descendants_of(cli.pid)
        cli.kill()
        cli.wait()
        give_up = time.monotonic() + 10
        while alive(provider) and time.monotonic() < give_up:
            time.sleep(0.1)
        assert not alive(provider), "the post-deploy provider outlived the engine"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for pid in started:  # the language host, the program, the docker provider: ours to end
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_destroy_reads_the_host_first_and_finishes_when_objects_were_removed_by_hand(make_stack):
    """Pulumi.yaml's `refresh: always` applies to `destroy` too (upstream's CLI): the refresh drops
    what was removed by hand from the state, and the destroy deletes the rest."""
    test_stack = make_stack()
    test_stack.up()
    made = objects_of(test_stack.name)
    docker("rm", "-f", *made["containers"])
    docker("network", "rm", *made["networks"])
    docker("volume", "rm", made["volumes"][0])

    events: list = []
    test_stack.stack.destroy(on_event=events.append, color="never")
    assert "refresh" in {op for _, op in collect_ops(events)}
    assert objects_of(test_stack.name) == {"containers": [], "networks": [], "volumes": []}
    assert not test_stack.stack.export_stack().deployment.get("resources")


def test_destroy_of_a_protected_stack_keeps_its_volumes(make_stack):
    test_stack = make_stack(retain_volumes=True)
    test_stack.up()
    test_stack.stack.destroy(color="never")
    left = objects_of(test_stack.name)
    assert left["containers"] == [] and left["networks"] == []
    assert sorted(left["volumes"]) == sorted([f"{test_stack.name}-postgres_data", f"{test_stack.name}-redis_data"])

    # PostgreSQL was stopped, not killed: started again on its volume, it finds a clean shutdown.
    again = test_stack.up()
    log = subprocess.run(["docker", "logs", again.outputs["postgresContainerName"].value],
                         capture_output=True, text=True, check=True)
    startup = log.stdout + log.stderr
    assert "database system was shut down at" in startup, startup[-2000:]
    assert "not properly shut down" not in startup and "automatic recovery" not in startup, startup[-2000:]
