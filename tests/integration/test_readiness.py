"""`up` waits for the services themselves (infra.core.connect.wait_until_answering), not for
Docker's healthcheck: against real PostgreSQL 16 and Redis 7."""

from __future__ import annotations

import dataclasses
import itertools
import threading

import pytest

from infra.core import connect
from infra.core.connect import ConnectError, wait_until_answering
from infra.deploy import provider_step
from infra.driver.teststacks import free_port
from tests.servers import RedisServer


def test_running_services_answer(target):
    wait_until_answering(target, deadline_s=10)


def test_a_rejected_password_is_an_answer_the_step_then_deals_with(target):
    wrong = dataclasses.replace(target, postgres=dataclasses.replace(target.postgres, password="x" * 20),
                                redis=dataclasses.replace(target.redis, password="y" * 20))
    wait_until_answering(wrong, deadline_s=10)


def test_a_service_that_starts_late_is_waited_for(target):
    port = free_port()
    late = dataclasses.replace(target, redis=dataclasses.replace(target.redis, port=port))
    started: list[RedisServer] = []
    starter = threading.Timer(0.5, lambda: started.append(RedisServer.start(password=target.redis.password, port=port)))
    starter.start()
    try:
        wait_until_answering(late, deadline_s=30)
    finally:
        starter.join()
        for server in started:
            server.stop()
    assert started, "the wait returned before the server was there"


def test_a_service_that_never_answers_fails_the_wait_naming_it(target):
    silent = dataclasses.replace(target, redis=dataclasses.replace(target.redis, port=free_port()))
    with pytest.raises(ConnectError, match=f"Redis 127.0.0.1:{silent.redis.port} did not answer within 0.5 s"):
        wait_until_answering(silent, deadline_s=0.5)


def test_a_starting_service_is_asked_every_poll_not_at_the_backoff_s_growing_steps():
    assert list(itertools.islice(connect._delays(connect.READY_POLL_S), 5)) == [0.05] * 5
    assert list(itertools.islice(connect._delays(None), 3)) == pytest.approx([0.05, 0.1, 0.15])


def test_the_post_deploy_step_waits_as_long_as_the_stack_says(target):
    silent = dataclasses.replace(target, redis=dataclasses.replace(target.redis, port=free_port()))
    props = {"target": silent.to_dict(), "migrations": [], "container_ids": ["pg", "redis"], "actor": "tester",
             "ready_timeout_s": 1}
    with pytest.raises(ConnectError, match=f"Redis 127.0.0.1:{silent.redis.port} did not answer within 1 s"):
        provider_step.run(props)
