"""A lowered redisMemoryMb against what Redis holds (infra.deploy.redis_memory), on INFO readings made
up here; and where `up` and `preview` look: `python -m infra` for a single host
(infra.driver.stacks.refuse_lowered_redis_memory), the program for a replicated stack
(infra.program.refuse_redis_too_full)."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from infra import program
from infra.core import config as stack_config
from infra.core.connect import AuthRejected, ConnectError
from infra.core.targets import redis_maxmemory_mb
from infra.deploy import redis_memory
from infra.driver import stacks
from tests.unit.program_mocks import BASE_CONFIG

MB = 1 << 20


@pytest.mark.parametrize("used_mb", [0.5, 1, 10, 95.9, 96, 96.1, 240, 1000.3, 4096])
def test_the_smallest_fitting_limit_holds_the_data_and_one_less_does_not(used_mb):
    used = int(used_mb * MB)
    fitting = redis_memory.smallest_fitting_mb(used)
    assert redis_maxmemory_mb(fitting) * MB >= used
    assert fitting == 1 or redis_maxmemory_mb(fitting - 1) * MB < used


def test_a_limit_lowered_below_what_redis_uses_is_refused_with_the_setting_and_the_fix():
    info = {"used_memory": 150 * MB, "maxmemory": 240 * MB}
    said = redis_memory.problem(info, 128, "dev", "Redis 127.0.0.1:6380")
    assert said is not None
    assert said.startswith("redisMemoryMb 128: Redis 127.0.0.1:6380 holds 150.0 MB, more than the 96 MB maxmemory")
    assert "Nothing was changed" in said and "`pulumi config set redisMemoryMb 200 --stack dev`" in said


@pytest.mark.parametrize("info, memory_mb", [
    ({"used_memory": 90 * MB, "maxmemory": 240 * MB}, 128),   # lowered, and it still fits
    ({"used_memory": 96 * MB, "maxmemory": 240 * MB}, 128),   # exactly fits
    ({"used_memory": 300 * MB, "maxmemory": 240 * MB}, 320),  # raised: already over is verify's to say
    ({"used_memory": 300 * MB, "maxmemory": 240 * MB}, 321),
    ({"used_memory": 300 * MB, "maxmemory": 96 * MB}, 128),   # the same limit
])
def test_a_limit_that_holds_the_data_or_is_not_lowered_passes(info, memory_mb):
    assert redis_memory.problem(info, memory_mb, "dev", "here") is None


def test_redis_is_asked_its_memory_within_the_deadline(monkeypatch):
    asked = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def info(self, section):
            asked.append(section)
            return {"used_memory": 150 * MB, "maxmemory": 240 * MB}

    def connect_redis(target, deadline_s):
        asked.append((target, deadline_s))
        return Client()

    monkeypatch.setattr(redis_memory, "connect_redis", connect_redis)
    target = SimpleNamespace(describe=lambda: "Redis 10.9.0.3:6379")
    redis_memory.refuse_if_too_full(target, 256, "dev", deadline_s=2.5)
    with pytest.raises(redis_memory.RedisTooFull, match="`pulumi config set redisMemoryMb 200 --stack dev`"):
        redis_memory.refuse_if_too_full(target, 128, "dev")
    assert asked == [(target, 2.5), "memory", (target, redis_memory.READ_DEADLINE_S), "memory"]


def test_an_unlimited_redis_is_lowered_by_any_limit():
    assert redis_memory.problem({"used_memory": 50 * MB, "maxmemory": 0}, 64, "dev", "here") is not None
    assert redis_memory.problem({"used_memory": 40 * MB, "maxmemory": 0}, 64, "dev", "here") is None


def deployment(*memories: tuple[str, int]) -> dict:
    return {"resources": [
        {"type": "docker:index/container:Container", "urn": f"urn:{i}", "id": f"id{i}",
         "outputs": {"name": f"c{i}", "memory": memory, "labels": [{"label": "sin-datastores.role", "value": role}]}}
        for i, (role, memory) in enumerate(memories)]}


@pytest.fixture
def reads(monkeypatch):
    """What refuse_lowered_redis_memory read, with Redis answering as ``reads.answer`` says."""
    seen = SimpleNamespace(calls=[], answer=None)

    @contextmanager
    def reaching(target):
        yield target

    def refuse_if_too_full(target, memory_mb, stack):
        seen.calls.append((target, memory_mb, stack))
        if seen.answer:
            raise seen.answer

    monkeypatch.setattr(stacks.dockerhost, "reach", reaching)
    monkeypatch.setattr(stacks, "target_of", lambda stack: SimpleNamespace(redis="the deployed redis"))
    monkeypatch.setattr(redis_memory, "refuse_if_too_full", refuse_if_too_full)
    return seen


def config(memory_mb: int, cluster=None) -> SimpleNamespace:
    return SimpleNamespace(redis=SimpleNamespace(memory_mb=memory_mb), cluster=cluster)


STACK = SimpleNamespace(name="dev")
DEPLOYED = deployment(("postgres", 1024), ("redis", 320), ("backup", 256))


@pytest.mark.parametrize("memory_mb, state", [(320, DEPLOYED), (512, DEPLOYED), (64, {"resources": []}),
                                              (64, deployment(("postgres", 1024), ("backup", 256)))])
def test_redis_is_not_read_unless_the_configuration_lowers_its_limit(reads, memory_mb, state):
    said = []
    stacks.refuse_lowered_redis_memory(STACK, config(memory_mb), state, said.append)
    assert reads.calls == [] and said == []


def test_a_replicated_stack_is_left_to_its_program_which_reads_the_cluster(reads):
    stacks.refuse_lowered_redis_memory(STACK, config(64, cluster="three hosts"), DEPLOYED, print)
    assert reads.calls == []


def test_a_lowered_limit_reads_the_deployed_redis_and_a_refusal_stops_the_command(reads):
    stacks.refuse_lowered_redis_memory(STACK, config(256), DEPLOYED, print)
    assert reads.calls == [("the deployed redis", 256, "dev")]
    reads.answer = redis_memory.RedisTooFull("redisMemoryMb 256: ...")
    with pytest.raises(redis_memory.RedisTooFull):
        stacks.refuse_lowered_redis_memory(STACK, config(256), DEPLOYED, print)


def test_a_redis_that_does_not_answer_is_said_and_not_checked(reads):
    reads.answer = ConnectError("127.0.0.1:6380 did not answer within 5 s")
    said = []
    stacks.refuse_lowered_redis_memory(STACK, config(256), DEPLOYED, said.append)
    assert said == ["redisMemoryMb lowered from 320 to 256; what Redis holds could not be read, so whether it fits "
                    "was not checked: 127.0.0.1:6380 did not answer within 5 s"]


def replicated_config(**changes: str):
    raw = {**BASE_CONFIG, "topology": "replicated", "replicatedHosts": "ssh://root@10.9.0.2,ssh://root@10.9.0.3,"
           "ssh://root@10.9.0.4", "replicationPassword": "replication-unit-password-01",
           "patroniRestPassword": "patroni-rest-unit-password-01", "sentinelPassword": "sentinel-unit-password-0123",
           **changes}
    return stack_config.parse(raw, "prod")


@pytest.fixture
def program_reads(monkeypatch):
    seen = SimpleNamespace(calls=[], answer=None, warned=[])

    def refuse_if_too_full(target, memory_mb, stack):
        seen.calls.append((target.host, target.port, memory_mb, stack))
        if seen.answer:
            raise seen.answer

    monkeypatch.setattr(redis_memory, "refuse_if_too_full", refuse_if_too_full)
    monkeypatch.setattr(program.pulumi.log, "warn", seen.warned.append)
    return seen


def test_the_replicated_program_reads_the_master_and_refuses_before_declaring(program_reads):
    cfg = replicated_config(redisMemoryMb="64")
    program.refuse_redis_too_full(cfg, None)  # no cluster yet
    assert program_reads.calls == []
    program.refuse_redis_too_full(cfg, "10.9.0.3")
    assert program_reads.calls == [("10.9.0.3", 6379, 64, "prod")]
    program_reads.answer = redis_memory.RedisTooFull("redisMemoryMb 64: Redis 10.9.0.3:6379 holds 60.4 MB, ...")
    with pytest.raises(program.pulumi.RunError, match="^redisMemoryMb 64: Redis 10.9.0.3:6379 holds 60.4 MB"):
        program.refuse_redis_too_full(cfg, "10.9.0.3")


def test_a_master_that_refuses_the_configured_password_is_said_and_not_checked(program_reads):
    program_reads.answer = AuthRejected("Redis 10.9.0.3:6379 rejected the password")
    program.refuse_redis_too_full(replicated_config(), "10.9.0.3")
    assert program_reads.warned == ["whether what the Redis master holds fits redisMemoryMb 256 was not checked: "
                                    "Redis 10.9.0.3:6379 rejected the password"]
