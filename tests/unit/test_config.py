"""Validation of the stack configuration: every bad input gets one exact message."""

from __future__ import annotations

import ipaddress
import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.core.config import ADR_NAMES, DEFAULTS, ConfigError, docker_host, parse
from infra.core.targets import DockerHost

GOOD = {"postgresPassword": "p" * 16, "redisPassword": "r" * 16}


def problems(overrides: dict, stack: str = "dev", **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse({**GOOD, **overrides}, stack, **kwargs)
    return caught.value.problems


def test_defaults_are_the_adr_values_on_dev():
    cfg = parse(GOOD, "dev")
    assert (cfg.network.name, cfg.network.subnet, cfg.network.gateway) == ("sin-network", "172.20.0.0/16", "172.20.0.1")
    assert (cfg.postgres.container_name, cfg.postgres.ip, cfg.postgres.host_port) == (
        "room-03-archiv-postgres", "172.20.0.100", 5432)
    assert (cfg.postgres.database, cfg.postgres.user, cfg.postgres.image) == ("sinsolver", "sinadmin", "postgres:16-alpine")
    assert (cfg.redis.container_name, cfg.redis.ip, cfg.redis.host_port, cfg.redis.image) == (
        "room-04-memory-redis", "172.20.0.200", 6379, "redis:7-alpine")
    assert cfg.bind_address == "127.0.0.1" and cfg.retain_volumes is True


def test_passwords_never_show_in_the_repr():
    text = repr(parse(GOOD, "dev"))
    assert "p" * 16 not in text and "r" * 16 not in text


P = "sin-datastores:"
BAD = [
    ({"networkSubnet": "172.20.0.0/33"},
     P + "networkSubnet: '172.20.0.0/33' is not a valid IPv4 CIDR ('33' is not a valid netmask); "
         "fix: pulumi config set networkSubnet <a.b.c.d/n>, e.g. 172.20.0.0/16"),
    ({"networkSubnet": "172.20.0.1/16"},
     P + "networkSubnet: '172.20.0.1/16' is not a valid IPv4 CIDR (172.20.0.1/16 has host bits set); "
         "fix: pulumi config set networkSubnet <a.b.c.d/n>, e.g. 172.20.0.0/16"),
    ({"networkGateway": "10.0.0.1"},
     P + "networkGateway: 10.0.0.1 is outside networkSubnet 172.20.0.0/16; "
         "fix: pulumi config set networkGateway <an address in 172.20.0.0/16>"),
    ({"postgresIp": "172.21.0.100"},
     P + "postgresIp: 172.21.0.100 is outside networkSubnet 172.20.0.0/16; "
         "fix: pulumi config set postgresIp <an address in 172.20.0.0/16>"),
    ({"redisIp": "172.20.255.255"},
     P + "redisIp: 172.20.255.255 is the network or broadcast address of 172.20.0.0/16; "
         "fix: pulumi config set redisIp <a host address in 172.20.0.0/16>"),
    ({"postgresIp": "172.20.0.0"},
     P + "postgresIp: 172.20.0.0 is the network or broadcast address of 172.20.0.0/16; "
         "fix: pulumi config set postgresIp <a host address in 172.20.0.0/16>"),
    ({"redisIp": "172.20.0.100"},
     P + "redisIp: 172.20.0.100 is already used by postgresIp; fix: pulumi config set redisIp <a different address>"),
    ({"postgresIp": "172.20.0.1"},
     P + "postgresIp: 172.20.0.1 is already used by networkGateway; "
         "fix: pulumi config set postgresIp <a different address>"),
    ({"redisIp": "172.20.130.5"},
     P + "redisIp: 172.20.130.5 is inside networkIpRange 172.20.128.0/17, where Docker hands out automatic "
         "addresses; fix: pick an address outside 172.20.128.0/17 or shrink networkIpRange"),
    ({"networkIpRange": "172.21.0.0/24"},
     P + "networkIpRange: 172.21.0.0/24 is not inside networkSubnet 172.20.0.0/16; "
         "fix: pulumi config set networkIpRange <a range inside 172.20.0.0/16>"),
    ({"postgresIp": "not-an-ip"},
     P + "postgresIp: 'not-an-ip' is not a valid IPv4 address; fix: pulumi config set postgresIp <a.b.c.d>"),
    ({"postgresHostPort": "0"},
     P + "postgresHostPort: 0 is outside 1-65535; fix: pulumi config set postgresHostPort <1-65535>"),
    ({"redisHostPort": "65536"},
     P + "redisHostPort: 65536 is outside 1-65535; fix: pulumi config set redisHostPort <1-65535>"),
    ({"redisHostPort": "abc"},
     P + "redisHostPort: 'abc' is not a whole number; fix: pulumi config set redisHostPort <1-65535>"),
    ({"redisHostPort": "5432"},
     P + "redisHostPort: 5432 equals postgresHostPort; fix: pulumi config set redisHostPort <a different port>"),
    ({"postgresImage": ""},
     P + "postgresImage: is empty; fix: pulumi config set postgresImage <repository:tag>"),
    ({"redisImage": "Redis:7"},
     P + "redisImage: 'Redis:7' is not a valid image reference; "
         "fix: pulumi config set redisImage <repository:tag>, e.g. postgres:16-alpine"),
    ({"postgresImage": "postgres:16 alpine"},
     P + "postgresImage: 'postgres:16 alpine' is not a valid image reference; "
         "fix: pulumi config set postgresImage <repository:tag>, e.g. postgres:16-alpine"),
    ({"postgresPassword": ""},
     P + "postgresPassword: is required but not set; fix: pulumi config set --secret postgresPassword <password>"),
    ({"redisPassword": "short"},
     P + "redisPassword: is 5 characters long, shorter than 16; "
         "fix: pulumi config set --secret redisPassword <at least 16 characters>"),
    ({"redisPassword": "has a space in it 12345"},
     P + "redisPassword: contains whitespace, a quote or a backslash; "
         "fix: pulumi config set --secret redisPassword <password without those characters>"),
    ({"redisPassword": "p" * 16},
     P + "redisPassword: equals postgresPassword; fix: pulumi config set --secret redisPassword <a different password>"),
    ({"bindAddress": "localhost"},
     P + "bindAddress: 'localhost' is not an IP address; fix: pulumi config set bindAddress 127.0.0.1"),
    ({"postgresContainerName": "bad name"},
     P + "postgresContainerName: 'bad name' is not a valid Docker object name; "
         "fix: use letters, digits, '_', '.', '-', starting with a letter or digit"),
    ({"redisVolumeName": "postgres_data"},
     P + "redisVolumeName: 'postgres_data' equals postgresVolumeName; "
         "fix: pulumi config set redisVolumeName <a different name>"),
    ({"postgresUser": "Sin-Admin"},
     P + "postgresUser: 'Sin-Admin' is not a plain lower-case SQL identifier; "
         "fix: use a-z, 0-9 and '_', starting with a letter, at most 63 characters"),
    ({"retainVolumes": "maybe"},
     P + "retainVolumes: 'maybe' is not true or false; fix: pulumi config set retainVolumes true"),
    ({"postgresMemoryMb": "16"},
     P + "postgresMemoryMb: 16 is outside 64-1048576; fix: pulumi config set postgresMemoryMb <64-1048576>"),
    ({"postgresPort": "5432"},
     P + "postgresPort: is not a known setting; fix: pulumi config rm postgresPort (see docs/configuration.md)"),
    ({"dockerHost": "http://db-1"},
     P + "dockerHost: 'http://db-1' is not a unix://, tcp:// or ssh:// address; fix: pulumi config set dockerHost "
         "ssh://<user>@<host>[:port] (or leave it unset for DOCKER_HOST)"),
    ({"dockerHost": "ssh://"},
     P + "dockerHost: 'ssh://' names no host; fix: pulumi config set dockerHost ssh://<user>@<host>[:port]"),
    ({"dockerHost": "tcp://db-1:2376"},
     P + "dockerHost: 'tcp://db-1:2376' is a remote engine over TCP, whose services cannot be reached from here; "
         "fix: pulumi config set dockerHost ssh://<user>@<host> (the engine over SSH)"),
    ({"dockerSshKeyFile": "/keys/deploy"},
     P + "dockerSshKeyFile: is set but dockerHost is not an ssh:// address; fix: pulumi config rm dockerSshKeyFile, "
         "or set dockerHost to ssh://<user>@<host>"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[next(iter(o)) + "=" + str(next(iter(o.values())))[:20]
                                                        for o, _ in BAD])
def test_bad_configuration_is_refused_with_one_exact_message(overrides, message):
    assert problems(overrides) == [message]


def test_every_problem_is_reported_at_once():
    found = problems({"postgresHostPort": "0", "redisPassword": "", "postgresImage": ""})
    assert [p.split(":")[1] for p in found] == ["postgresHostPort", "postgresImage", "redisPassword"]


def test_missing_password_on_a_new_stack_names_the_secret_command():
    with pytest.raises(ConfigError) as caught:
        parse({}, "dev")
    assert str(caught.value).splitlines()[1:] == [
        "  - sin-datastores:postgresPassword: is required but not set; "
        "fix: pulumi config set --secret postgresPassword <password>",
        "  - sin-datastores:redisPassword: is required but not set; "
        "fix: pulumi config set --secret redisPassword <password>",
    ]


def test_password_stored_in_plain_text_is_refused():
    assert problems({}, secret_keys={"redisPassword"}) == [
        P + "postgresPassword: is stored in plain text in the stack configuration; "
            "fix: pulumi config set --secret postgresPassword <password>"]


def test_non_dev_stack_names_are_prefixed_unless_pinned():
    cfg = parse({**GOOD, "postgresVolumeName": "pinned"}, "pr-42")
    assert cfg.network.name == "pr-42-sin-network"
    assert cfg.postgres.container_name == "pr-42-room-03-archiv-postgres"
    assert cfg.redis.volume_name == "pr-42-redis_data"
    assert cfg.postgres.volume_name == "pinned"


# Property: any address the parser accepts is a usable host address of the subnet, outside the
# automatic range, and distinct from the gateway and the other fixed address.
subnets = st.builds(lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
                    st.integers(0, 2 ** 32 - 1).map(ipaddress.IPv4Address), st.integers(16, 28))


@settings(max_examples=300, deadline=None)
@given(subnet=subnets, data=st.data())
def test_accepted_addresses_are_usable_and_distinct(subnet, data):
    hosts = st.integers(0, subnet.num_addresses - 1).map(lambda i: subnet.network_address + i)
    gateway, pg_ip, redis_ip = data.draw(hosts), data.draw(hosts), data.draw(hosts)
    ip_range = data.draw(st.sampled_from(list(subnet.subnets(prefixlen_diff=1))))
    raw = {**GOOD, "networkSubnet": str(subnet), "networkGateway": str(gateway),
           "networkIpRange": str(ip_range), "postgresIp": str(pg_ip), "redisIp": str(redis_ip)}
    try:
        parse(raw, "prop")
    except ConfigError as exc:
        assert all(p.startswith(P) and "; fix: " in p for p in exc.problems)
        return
    special = {subnet.network_address, subnet.broadcast_address}
    assert len({gateway, pg_ip, redis_ip}) == 3
    assert not {gateway, pg_ip, redis_ip} & special
    assert pg_ip not in ip_range and redis_ip not in ip_range


@settings(max_examples=200, deadline=None)
@given(octets=st.lists(st.integers(0, 255), min_size=4, max_size=4), prefix=st.integers(0, 40))
def test_any_subnet_string_is_accepted_only_when_it_is_a_network_address(octets, prefix):
    text = ".".join(map(str, octets)) + f"/{prefix}"
    try:
        expected_ok = str(ipaddress.IPv4Network(text, strict=True)) == text
    except ValueError:
        expected_ok = False
    try:
        parse({**GOOD, "networkSubnet": text}, "prop")
        subnet_ok = True
    except ConfigError as exc:
        subnet_ok = not any(p.startswith(P + "networkSubnet:") for p in exc.problems)
    assert subnet_ok == expected_ok


def test_docker_host_defaults_to_docker_host_of_the_environment_then_the_local_socket(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert parse(GOOD, "dev").docker.url == ""
    monkeypatch.setenv("DOCKER_HOST", "ssh://deploy@db-1")
    assert parse(GOOD, "dev").docker.url == "ssh://deploy@db-1"
    assert parse({**GOOD, "dockerHost": "ssh://ops@db-2:2222"}, "dev").docker.url == "ssh://ops@db-2:2222"


def test_a_local_engine_over_tcp_is_accepted():
    assert parse({**GOOD, "dockerHost": "tcp://127.0.0.1:2375"}, "dev").docker.url == "tcp://127.0.0.1:2375"


def test_the_error_counts_its_problems_in_its_first_line():
    assert str(ConfigError(["one"])) == "invalid stack configuration (1 problem):\n  - one"
    assert str(ConfigError(["one", "two"])) == "invalid stack configuration (2 problems):\n  - one\n  - two"


# (key, lowest accepted, highest accepted)
RANGES = [("postgresHostPort", 1, 65535), ("redisHostPort", 1, 65535), ("postgresMajorVersion", 10, 99),
          ("postgresMemoryMb", 64, 1 << 20), ("redisMajorVersion", 2, 99), ("redisMemoryMb", 32, 1 << 20),
          ("healthTimeoutSeconds", 5, 3600)]


@pytest.mark.parametrize("key, low, high", RANGES, ids=[r[0] for r in RANGES])
def test_whole_numbers_are_accepted_exactly_within_their_range(key, low, high):
    other_port = {"redisHostPort": "6380"} if key == "postgresHostPort" else {"postgresHostPort": "5433"}
    for accepted in (low, high):
        parse({**GOOD, **other_port, key: str(accepted)}, "dev")
    for refused in (low - 1, high + 1):
        assert problems({**other_port, key: str(refused)}) == [
            f"{P}{key}: {refused} is outside {low}-{high}; fix: pulumi config set {key} <{low}-{high}>"]


def test_settings_are_read_into_their_fields_with_surrounding_spaces_trimmed():
    cfg = parse({**GOOD, "postgresDatabase": " app ", "postgresUser": "owner", "postgresMajorVersion": "17",
                 "postgresMemoryMb": " 1024", "redisMajorVersion": "8", "redisMemoryMb": "300",
                 "healthTimeoutSeconds": "60", "retainVolumes": "False", "networkName": "net-a",
                 "redisVolumeName": "cache", "redisImage": "redis:8"}, "dev")
    assert (cfg.postgres.database, cfg.postgres.user, cfg.postgres.major_version, cfg.postgres.memory_mb) == (
        "app", "owner", 17, 1024)
    assert (cfg.redis.major_version, cfg.redis.memory_mb, cfg.redis.volume_name, cfg.redis.image) == (
        8, 300, "cache", "redis:8")
    assert (cfg.health_timeout_seconds, cfg.retain_volumes, cfg.network.name) == (60, False, "net-a")
    assert (cfg.postgres.password, cfg.redis.password) == ("p" * 16, "r" * 16)
    assert (cfg.project, cfg.stack, cfg.network.ip_range) == ("sin-datastores", "dev", "172.20.128.0/17")
    assert (cfg.redis.container_name, cfg.redis.ip, cfg.postgres.volume_name) == (
        "room-04-memory-redis", "172.20.0.200", "postgres_data")
    assert parse({**GOOD, "retainVolumes": "TRUE"}, "dev").retain_volumes is True


def test_the_project_name_given_is_the_one_the_configuration_carries():
    assert parse(GOOD, "dev", project="other-project").project == "other-project"


def test_a_password_of_exactly_the_minimum_length_is_accepted():
    assert parse({**GOOD, "redisPassword": "x" * 16}, "dev").redis.password == "x" * 16
    assert problems({"redisPassword": "x" * 15}) == [
        P + "redisPassword: is 15 characters long, shorter than 16; "
            "fix: pulumi config set --secret redisPassword <at least 16 characters>"]


@pytest.mark.parametrize("password", ["quote'in-the-middle-1", 'double"quote-inside-1', "back\\slash-inside-12",
                                      "tab\tinside-the-password"])
def test_passwords_with_quotes_backslashes_or_whitespace_are_refused(password):
    assert problems({"postgresPassword": password}) == [
        P + "postgresPassword: contains whitespace, a quote or a backslash; "
            "fix: pulumi config set --secret postgresPassword <password without those characters>"]


def test_equal_container_names_are_refused():
    assert problems({"redisContainerName": "room-03-archiv-postgres"}) == [
        P + "redisContainerName: 'room-03-archiv-postgres' equals postgresContainerName; "
            "fix: pulumi config set redisContainerName <a different name>"]


def test_an_invalid_database_name_is_refused():
    assert problems({"postgresDatabase": "1db"}) == [
        P + "postgresDatabase: '1db' is not a plain lower-case SQL identifier; "
            "fix: use a-z, 0-9 and '_', starting with a letter, at most 63 characters"]


def test_an_empty_redis_image_is_refused():
    assert problems({"redisImage": " "}) == [P + "redisImage: is empty; fix: pulumi config set redisImage <repository:tag>"]


@pytest.mark.parametrize("bind, reached_at", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
                                              ("192.0.2.10", "192.0.2.10"), ("::", "127.0.0.1")])
def test_the_host_reaches_the_published_ports_at_the_bind_address_or_loopback_for_a_wildcard(bind, reached_at):
    assert parse({**GOOD, "bindAddress": bind}, "dev").host_address == reached_at


@pytest.mark.parametrize("url", ["unix:///var/run/docker.sock", "tcp://localhost:2375", "tcp://[::1]:2375",
                                 "ssh://deploy@db-1"])
def test_local_engines_and_engines_over_ssh_are_accepted(url):
    assert parse({**GOOD, "dockerHost": url}, "dev").docker.url == url


def test_ssh_key_and_known_hosts_files_go_with_an_ssh_docker_host():
    cfg = parse({**GOOD, "dockerHost": "ssh://deploy@db-1", "dockerSshKeyFile": "/keys/id",
                 "dockerSshKnownHostsFile": "/keys/known"}, "dev")
    assert (cfg.docker.url, cfg.docker.ssh_key_file, cfg.docker.ssh_known_hosts_file) == (
        "ssh://deploy@db-1", "/keys/id", "/keys/known")
    assert problems({"dockerSshKnownHostsFile": "/keys/known"}) == [
        P + "dockerSshKnownHostsFile: is set but dockerHost is not an ssh:// address; "
            "fix: pulumi config rm dockerSshKnownHostsFile, or set dockerHost to ssh://<user>@<host>"]


def test_commands_needing_only_the_docker_host_read_just_that(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker_host({"dockerHost": "ssh://ops@db-2", "postgresHostPort": "not checked here"}) == DockerHost(
        "ssh://ops@db-2", "", "")
    with pytest.raises(ConfigError) as caught:
        docker_host({"dockerHost": "ftp://db-2"})
    assert [p.split(":")[1] for p in caught.value.problems] == ["dockerHost"]


def test_every_bad_address_is_reported_not_only_the_first():
    assert problems({"networkGateway": "10.0.0.1", "postgresIp": "172.20.0.0", "redisIp": "172.20.130.5"}) == [
        P + "networkGateway: 10.0.0.1 is outside networkSubnet 172.20.0.0/16; "
            "fix: pulumi config set networkGateway <an address in 172.20.0.0/16>",
        P + "postgresIp: 172.20.0.0 is the network or broadcast address of 172.20.0.0/16; "
            "fix: pulumi config set postgresIp <a host address in 172.20.0.0/16>",
        P + "redisIp: 172.20.130.5 is inside networkIpRange 172.20.128.0/17, where Docker hands out automatic "
            "addresses; fix: pick an address outside 172.20.128.0/17 or shrink networkIpRange"]
    assert [p.split(":")[1] for p in problems({"postgresIp": "x", "redisIp": "172.20.130.5"})] == [
        "postgresIp", "redisIp"]
    assert [p.split(":")[1] for p in problems({"postgresIp": "172.20.0.1", "redisIp": "172.20.130.5"})] == [
        "postgresIp", "redisIp"]


def test_the_gateway_may_sit_inside_the_automatic_range():
    assert parse({**GOOD, "networkGateway": "172.20.128.1"}, "dev").network.gateway == "172.20.128.1"


ROOT = Path(__file__).resolve().parents[2]


def documented_config_table() -> dict[str, str]:
    """Key -> the default docs/configuration.md gives it, from its key table (a cell naming
    several keys `a` / `b` gives one default per key, or one for all)."""
    lines = (ROOT / "docs" / "configuration.md").read_text().splitlines()
    start = lines.index("| key | default | meaning |") + 2
    table: dict[str, str] = {}
    for line in itertools.takewhile(lambda l: l.startswith("|"), lines[start:]):
        keys_cell, default_cell = line.split(" | ")[:2]
        keys = re.findall(r"`(\w+)`", keys_cell)
        defaults = default_cell.split(" / ")
        assert len(defaults) in (1, len(keys)), line
        table.update(zip(keys, defaults * len(keys) if len(defaults) == 1 else defaults))
    return table


def test_the_documented_configuration_table_gives_the_code_s_defaults():
    table = documented_config_table()
    assert set(table) == set(DEFAULTS)
    for key, default in DEFAULTS.items():
        value = ADR_NAMES.get(key) if default is None else default
        if value:
            assert table[key].startswith(f"`{value}`"), (key, table[key])
        else:  # unset, generated or required: described in words, no value claimed
            assert not table[key].startswith("`"), (key, table[key])


def test_the_readme_names_every_configuration_key_at_a_glance_and_no_other():
    # The README lists the keys in its Configuration section and links the table for the rest.
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    listed = {key for line in section.splitlines() if line.startswith(("- ", "  "))
              for key in re.findall(r"`(\w+)`", line)}
    assert listed == set(DEFAULTS), (sorted(set(DEFAULTS) - listed), sorted(listed - set(DEFAULTS)))
    assert "(docs/configuration.md)" in section


def test_a_value_that_is_not_a_number_is_reported_once_without_follow_on_complaints():
    # The unreadable port must not stand in as a number that then "equals" the other port.
    assert problems({"postgresHostPort": "abc", "redisHostPort": "1"}) == [
        "sin-datastores:postgresHostPort: 'abc' is not a whole number; fix: pulumi config set postgresHostPort <1-65535>"]


REPLICATED = {"topology": "replicated", "replicatedHosts": "ssh://root@10.9.0.2,ssh://root@10.9.0.3,ssh://root@10.9.0.4",
              "replicationPassword": "a" * 16, "patroniRestPassword": "b" * 16, "sentinelPassword": "c" * 16}
HOSTS_FIX = "fix: pulumi config set replicatedHosts ssh://root@10.0.0.1,ssh://root@10.0.0.2,ssh://root@10.0.0.3"


def test_the_replicated_topology_reads_its_hosts_and_passwords():
    cfg = parse({**GOOD, **REPLICATED, "dockerSshKeyFile": "/k"}, "prod")
    assert cfg.cluster.addresses == ("10.9.0.2", "10.9.0.3", "10.9.0.4")
    assert [h.docker.url for h in cfg.cluster.hosts][1] == "ssh://root@10.9.0.3"
    assert all(h.docker.ssh_key_file == "/k" for h in cfg.cluster.hosts)
    assert (cfg.cluster.secrets.superuser, cfg.cluster.secrets.sentinel) == ("p" * 16, "c" * 16)
    assert parse(GOOD, "dev").cluster is None
    # Any number from three: etcd stays on the first three, so a host is added or removed one at a time.
    four = parse({**GOOD, **REPLICATED, "replicatedHosts": REPLICATED["replicatedHosts"] + ",ssh://root@10.9.0.5"},
                 "prod")
    assert four.cluster.addresses == ("10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5")


@pytest.mark.parametrize("overrides, expected", [
    ({"replicatedHosts": "ssh://root@10.9.0.2,ssh://root@10.9.0.3"},
     [P + "replicatedHosts: lists 2 hosts; the cluster needs at least 3: its first 3 run etcd, whose majority "
          "must survive losing one; " + HOSTS_FIX]),
    ({"replicatedHosts": "ssh://root@10.9.0.2,ssh://admin@10.9.0.2:2222,ssh://root@10.9.0.4"},
     [P + "replicatedHosts: 10.9.0.2 is listed twice: two members on one host do not survive losing it; "
          "fix: list each host once"]),
    ({"replicatedHosts": "ssh://root@db1,tcp://10.9.0.3:2375,ssh://root@10.9.0.4"},
     [P + "replicatedHosts: 'ssh://root@db1' is not ssh://<user>@<IPv4 address>: the address is also the one its "
          "containers listen on and announce to the others; " + HOSTS_FIX,
      P + "replicatedHosts: 'tcp://10.9.0.3:2375' is not an ssh:// address; " + HOSTS_FIX]),
    ({"dockerHost": "ssh://root@10.9.0.9"},
     [P + "dockerHost: is set but topology is replicated, whose hosts are replicatedHosts; "
          "fix: pulumi config rm dockerHost"]),
    ({"topology": "triple"},
     [P + "topology: 'triple' is not one of single, replicated; fix: pulumi config set topology single "
          "(the ADR's one host) or replicated"]),
    ({"topology": "single"},
     [P + f"{key}: is set but topology is single; fix: pulumi config rm {key}, or pulumi config set topology "
          "replicated" for key in ("replicatedHosts", "replicationPassword", "patroniRestPassword", "sentinelPassword")]),
    ({"sentinelPassword": "p" * 16},
     [P + "sentinelPassword: equals postgresPassword; fix: pulumi config set --secret sentinelPassword "
          "<a different password>"]),
])
def test_bad_replicated_settings_are_named_with_their_fix(overrides, expected):
    assert problems({**REPLICATED, **overrides}, "prod") == expected
