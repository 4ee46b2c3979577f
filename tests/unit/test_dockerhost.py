"""Reaching a stack's Docker host: SSH options, names and the sentence for each failure."""

from __future__ import annotations

import pytest

from infra.core.dockerhost import explain_ssh_failure, session
from infra.core.targets import DockerHost

HOST = DockerHost("ssh://deploy@db-1:2222/run/user/1000/docker.sock", "/keys/deploy", "/keys/known_hosts")


def test_ssh_options_never_prompt_check_host_keys_and_use_the_configured_files():
    options = HOST.ssh_options()
    pairs = {tuple(options[i:i + 2]) for i in range(len(options) - 1)}
    for pair in (("-o", "BatchMode=yes"), ("-o", "StrictHostKeyChecking=yes"), ("-o", "ConnectTimeout=5"),
                 ("-i", "/keys/deploy"), ("-o", "UserKnownHostsFile=/keys/known_hosts"), ("-p", "2222")):
        assert pair in pairs, pair
    assert HOST.ssh_destination() == "deploy@db-1"
    assert HOST.remote_socket() == "/run/user/1000/docker.sock"
    assert DockerHost("ssh://db-1").remote_socket() == "/var/run/docker.sock"


def test_the_host_is_named_without_the_socket_path():
    assert HOST.describe() == "ssh://deploy@db-1:2222"


@pytest.mark.parametrize("stderr, words", [
    ("ssh: Could not resolve hostname db-1: Name or service not known", ["does not resolve", "dockerHost"]),
    ("ssh: connect to host db-1 port 2222: Connection refused", ["nothing accepts SSH", "dockerHost"]),
    ("ssh: connect to host db-1 port 2222: Connection timed out", ["does not answer", "5 s"]),
    ("deploy@db-1: Permission denied (publickey).", ["/keys/deploy was refused for deploy", "authorized_keys"]),
    ("No ED25519 host key is known for [db-1]:2222 and you have requested strict checking.\n"
     "Host key verification failed.", ["not in /keys/known_hosts", "ssh-keyscan"]),
])
def test_each_ssh_failure_names_the_host_and_the_fix(stderr, words):
    sentence = explain_ssh_failure(HOST, stderr)
    assert sentence.startswith("ssh://deploy@db-1:2222: ")
    for word in words:
        assert word in sentence, (word, sentence)


def test_a_local_engine_needs_no_tunnel_and_keeps_its_address():
    with session(DockerHost("unix:///run/other.sock"), [("127.0.0.1", 5432)]) as current:
        assert current.docker_env == {"DOCKER_HOST": "unix:///run/other.sock"}
        assert current.endpoint("127.0.0.1", 5432) == ("127.0.0.1", 5432)
    with session(DockerHost(), []) as current:
        assert current.docker_env == {}
