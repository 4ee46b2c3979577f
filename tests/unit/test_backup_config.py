"""The backup settings: validated with the rest of the configuration, declared as the agent
container, PostgreSQL's WAL archiving and their volumes; nothing when backups are off."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.core.config import ADR_NAMES, BACKUP_PASSPHRASE_KEY, CLUSTER_SECRET_KEYS, DEFAULTS, S3_SECRET_KEYS, ConfigError, parse
from tests.unit.program_mocks import is_secret, run_program, unwrap

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"postgresPassword": "p" * 16, "redisPassword": "r" * 16}
ON = {**GOOD, "backupSchedule": "0 3 * * *", "backupPassphrase": "b" * 20}
S3 = {"backupS3Bucket": "sin-backups", "backupS3AccessKeyId": "AKIAEXAMPLE", "backupS3SecretAccessKey": "s" * 30}
P = "sin-datastores:"


def problems(values: dict, stack: str = "dev", **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(values, stack, **kwargs)
    return caught.value.problems


def test_backups_are_off_unless_scheduled_or_a_bucket_is_named():
    assert parse(GOOD, "dev").backup is None


def test_scheduled_backups_get_the_policy_defaults_and_names_of_their_stack():
    on_dev, on_ci = parse(ON, "dev").backup, parse(ON, "ci").backup
    assert (on_dev.schedule, on_dev.keep_last, on_dev.keep_daily, on_dev.keep_weekly) == ("0 3 * * *", 7, 7, 4)
    assert (on_dev.container_name, on_dev.volume_name, on_dev.archive_volume_name) == (
        "sin-backup-agent", "sin_backups", "postgres_wal_archive")
    assert (on_ci.container_name, on_ci.volume_name, on_ci.archive_volume_name) == (
        "ci-sin-backup-agent", "ci-sin_backups", "ci-postgres_wal_archive")
    assert on_dev.scheduled and on_dev.s3 is None


def test_the_bucket_prefix_defaults_to_the_stack_name_and_secrets_stay_out_of_the_repr():
    backup = parse({**ON, **S3}, "prod").backup
    assert backup.s3.url == "s3://sin-backups/prod" and backup.s3.region == "us-east-1"
    assert "b" * 20 not in repr(backup) and "s" * 30 not in repr(backup) and "AKIAEXAMPLE" not in repr(backup)


def test_a_bucket_without_a_schedule_serves_restores_and_needs_the_passphrase_the_backups_used():
    backup = parse({**GOOD, **S3, "backupPassphrase": "b" * 20}, "dev").backup
    assert not backup.scheduled and backup.s3.bucket == "sin-backups"
    assert problems({**GOOD, **S3}) == [
        P + "backupPassphrase: is required when backupS3Bucket is set; fix: pulumi config set --secret "
            "backupPassphrase <at least 16 characters> (with backupSchedule `python -m infra up` generates one; "
            "to restore, the one the backups were taken with)"]


BAD = [
    ({**ON, "backupSchedule": "61 * * * *"}, P + "backupSchedule: "),
    ({**ON, "backupPassphrase": "short"},
     P + "backupPassphrase: is 5 characters long, shorter than 16; fix: pulumi config set --secret "
         "backupPassphrase <at least 16 characters>"),
    ({**ON, "backupKeepLast": "-1"}, P + "backupKeepLast: -1 is outside 0-10000; fix: pulumi config set backupKeepLast <0-10000>"),
    ({**ON, **S3, "backupS3Bucket": "Not_A_Bucket"}, P + "backupS3Bucket: 'Not_A_Bucket' is not a valid S3 bucket name"),
    ({**ON, **S3, "backupS3Endpoint": "127.0.0.1:9000"},
     P + "backupS3Endpoint: '127.0.0.1:9000' is not an http:// or https:// URL; fix: pulumi config set "
         "backupS3Endpoint https://<host>[:port] (unset for AWS)"),
    ({**ON, "backupS3Bucket": "sin-backups"},
     P + "backupS3AccessKeyId: is required when backupS3Bucket is set; fix: pulumi config set --secret "
         "backupS3AccessKeyId <value>"),
    ({**ON, "backupS3Prefix": "x"},
     P + "backupS3Prefix: is set but backupS3Bucket is not; fix: pulumi config set backupS3Bucket <bucket>"),
    ({**ON, "backupVolumeName": "postgres_data"},
     P + "backupVolumeName: 'postgres_data' equals postgresVolumeName; fix: pulumi config set backupVolumeName "
         "<a different name>"),
]


@pytest.mark.parametrize("values, message", BAD)
def test_bad_backup_settings_are_named_with_the_fix(values, message):
    found = problems(values)
    assert any(p.startswith(message) for p in found), found


def test_a_schedule_that_never_matches_is_refused():
    assert any(p.startswith(P + "backupSchedule: ") for p in problems({**ON, "backupSchedule": "0 0 31 2 *"}))


def test_s3_keys_and_the_passphrase_stored_in_plain_text_are_refused():
    found = problems({**ON, **S3}, secret_keys={"postgresPassword", "redisPassword", "backupPassphrase"})
    assert [p.split(":")[1] for p in found] == ["backupS3AccessKeyId", "backupS3SecretAccessKey"]


def test_pulumi_yaml_declares_the_same_defaults_as_the_code():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == set(DEFAULTS) - {BACKUP_PASSPHRASE_KEY, *S3_SECRET_KEYS, *CLUSTER_SECRET_KEYS}
    for key, spec in declared.items():
        if "default" in spec:
            default = spec["default"]
            text = str(default).lower() if isinstance(default, bool) else str(default)
            assert (DEFAULTS[key] or "") == text, key
            assert DEFAULTS[key] is not None or key in ADR_NAMES, key
        else:
            assert DEFAULTS[key] is None and spec.get("secret"), key


def _container(mocks, name):
    return next(r for r in mocks.of_type("docker:index/container:Container") if r.name == name)


def test_without_backups_no_agent_and_postgresql_runs_its_image_default(dev):
    names = {r.name for r in dev.resources.values()}
    assert not any(n.startswith("backup") for n in names)
    assert "command" not in _container(dev, "postgres-container").inputs


def test_scheduled_backups_declare_the_agent_and_wal_archiving():
    mocks = run_program({"backupSchedule": "*/15 * * * *", "backupPassphrase": "b" * 20, **S3})
    pg = _container(mocks, "postgres-container").inputs
    assert pg["command"][:3] == ["postgres", "-c", "archive_mode=on"]
    assert "archive_timeout=30" in pg["command"]
    assert {(v["volumeName"], v["containerPath"]) for v in pg["volumes"]} >= {
        ("postgres_wal_archive", "/var/lib/postgresql")}
    agent = _container(mocks, "backup-container").inputs
    assert agent["networkMode"] == "host" and "envs" not in agent
    assert "/backups/heartbeat" in agent["healthcheck"]["tests"][1]
    assert {k: agent["healthcheck"][k] for k in ("interval", "timeout", "startPeriod", "retries")} == {
        "interval": "10s", "timeout": "5s", "startPeriod": "10s", "retries": 3}, "as declared before: no replacement"
    options = mocks.options["backup-container"]
    assert options.delete_before_replace is True and options.replace_on_changes == ["healthcheck"]
    mounts = {v["containerPath"]: (v["volumeName"], v.get("readOnly", False)) for v in agent["volumes"]}
    assert mounts == {"/sources/postgres/data": ("postgres_data", True),
                      "/sources/postgres-archive": ("postgres_wal_archive", False),
                      "/sources/redis": ("redis_data", True), "/backups": ("sin_backups", False)}
    uploads = {u["file"]: u["content"] for u in unwrap(agent["uploads"])}
    assert "/opt/sin-backup/backupagent/agent.py" in uploads and "/etc/sin-backup/agent.json" in uploads
    assert is_secret(agent["uploads"])  # encrypted in the state, as the password files are
    assert {f"/run/secrets/{name}" for name in ("postgres-password", "redis-password", "backup-passphrase",
                                                "s3-access-key-id", "s3-secret-access-key")} <= set(uploads)
    settings = unwrap(uploads["/etc/sin-backup/agent.json"])
    assert "b" * 20 not in settings and "s" * 30 not in settings and "AKIAEXAMPLE" not in settings
    assert '"prefix": "dev"' in settings and '"schedule": "*/15 * * * *"' in settings


def test_backup_settings_are_read_into_their_fields():
    backup = parse({**ON, **S3, "backupKeepLast": "3", "backupKeepDaily": "10", "backupKeepWeekly": "0",
                    "backupImage": "registry.example:5000/agent:2", "backupS3Prefix": "/Xteam/prod-X/",
                    "backupS3Endpoint": "http://127.0.0.1:9000", "backupS3Region": "eu-central-1"}, "dev").backup
    assert (backup.keep_last, backup.keep_daily, backup.keep_weekly, backup.image) == (
        3, 10, 0, "registry.example:5000/agent:2")
    assert backup.passphrase == "b" * 20
    assert (backup.s3.bucket, backup.s3.prefix, backup.s3.endpoint, backup.s3.region) == (
        "sin-backups", "Xteam/prod-X", "http://127.0.0.1:9000", "eu-central-1")
    assert (backup.s3.access_key_id, backup.s3.secret_access_key) == ("AKIAEXAMPLE", "s" * 30)


@pytest.mark.parametrize("key", ["backupKeepLast", "backupKeepDaily", "backupKeepWeekly"])
def test_retention_counts_run_from_0_to_10000(key):
    assert getattr(parse({**ON, key: "10000"}, "dev").backup, key.replace("backupKeep", "keep_").lower()) == 10000
    assert problems({**ON, key: "10001"}) == [
        f"{P}{key}: 10001 is outside 0-10000; fix: pulumi config set {key} <0-10000>"]


def test_a_passphrase_of_the_minimum_length_is_accepted():
    assert parse({**ON, "backupPassphrase": "b" * 16}, "dev").backup.passphrase == "b" * 16
    assert problems({**ON, "backupPassphrase": "b" * 15}) == [
        P + "backupPassphrase: is 15 characters long, shorter than 16; fix: pulumi config set --secret "
            "backupPassphrase <at least 16 characters>"]


def test_a_schedule_without_a_passphrase_names_the_schedule():
    assert problems({**GOOD, "backupSchedule": "@daily"}) == [
        P + "backupPassphrase: is required when backupSchedule is set; fix: pulumi config set --secret "
            "backupPassphrase <at least 16 characters> (with backupSchedule `python -m infra up` generates one; "
            "to restore, the one the backups were taken with)"]


def test_an_invalid_schedule_says_why_and_how_to_write_one():
    assert problems({**ON, "backupSchedule": "61 * * * *"}) == [
        P + 'backupSchedule: backupSchedule "61 * * * *": minute 61 is outside 0-59; e.g. "0 3 * * *" for 03:00 '
            'UTC daily; fix: pulumi config set backupSchedule "0 3 * * *" (cron, UTC)']


@pytest.mark.parametrize("key, value, taken", [
    ("postgresArchiveVolumeName", "redis_data", "redisVolumeName"),
    ("postgresArchiveVolumeName", "sin_backups", "backupVolumeName"),
])
def test_backup_volumes_may_not_share_a_name(key, value, taken):
    assert problems({**ON, key: value}) == [
        f"{P}{key}: '{value}' equals {taken}; fix: pulumi config set {key} <a different name>"]


@pytest.mark.parametrize("key", ["backupS3Endpoint", "backupS3AccessKeyId", "backupS3SecretAccessKey"])
def test_s3_settings_without_a_bucket_are_refused(key):
    assert problems({**ON, key: "x"}) == [
        f"{P}{key}: is set but backupS3Bucket is not; fix: pulumi config set backupS3Bucket <bucket>"]


def test_a_bucket_needs_both_s3_keys_and_a_valid_name():
    assert problems({**ON, "backupS3Bucket": "ab"}) == [
        P + "backupS3Bucket: 'ab' is not a valid S3 bucket name; fix: use 3-63 characters: a-z, 0-9, '.', '-', "
            "starting and ending with a letter or digit",
        P + "backupS3AccessKeyId: is required when backupS3Bucket is set; fix: pulumi config set --secret "
            "backupS3AccessKeyId <value>",
        P + "backupS3SecretAccessKey: is required when backupS3Bucket is set; fix: pulumi config set --secret "
            "backupS3SecretAccessKey <value>"]


def test_a_plain_text_passphrase_is_refused_naming_a_value_not_a_password():
    assert problems(ON, secret_keys={"postgresPassword", "redisPassword"}) == [
        P + "backupPassphrase: is stored in plain text in the stack configuration; "
            "fix: pulumi config set --secret backupPassphrase <value>"]


def test_an_https_endpoint_is_accepted():
    assert parse({**ON, **S3, "backupS3Endpoint": "https://s3.example.net"}, "dev").backup.s3.endpoint == (
        "https://s3.example.net")


REPLICATED = {"topology": "replicated",
              "replicatedHosts": "ssh://root@10.9.0.2,ssh://root@10.9.0.3,ssh://root@10.9.0.4",
              "replicationPassword": "replication-unit-password-01", "patroniRestPassword": "patroni-rest-unit-pw-01",
              "sentinelPassword": "sentinel-unit-password-0123"}


def test_scheduled_backups_of_a_replicated_stack_need_a_bucket_no_host_holds_them_all():
    assert problems({**ON, **REPLICATED}) == [
        P + "backupS3Bucket: is required with backupSchedule on topology replicated: every host ships the WAL its "
            "PostgreSQL archives and the leader of the moment takes the base backups, so only a bucket holds all "
            "of them; fix: pulumi config set backupS3Bucket <bucket> (and backupS3Endpoint, backupS3AccessKeyId, "
            "backupS3SecretAccessKey; see docs/backups.md)"]
    assert parse({**ON, **S3, **REPLICATED}, "prod").backup.s3.url == "s3://sin-backups/prod"
    assert parse({**GOOD, **S3, **REPLICATED, "backupPassphrase": "b" * 20}, "prod").backup.s3  # restores only
