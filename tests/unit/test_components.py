"""What each component declares, registers and waits for, with backups on (the agent, WAL archiving)."""

from __future__ import annotations

import base64
import json

import dill
import pytest
from pulumi.dynamic import ResourceProvider

from infra.backupagent import layout
from infra.components import backupagent
from infra.components.common import container_labels, labels
from tests.unit.program_mocks import is_secret, output_value, run_program, unwrap

# `__provider` of the step in the state of a stack made by release 4cf03c7 or earlier: a reference to
# the class by name (dill, as pulumi.dynamic serialises it).
STATE_OF_4CF03C7 = (b"\x80\x04\x95:\x00\x00\x00\x00\x00\x00\x00\x8c\x1binfra.components.postdeploy\x94"
                    b"\x8c\x13_PostDeployProvider\x94\x93\x94)\x81\x94.")

S3 = {"backupS3Bucket": "sin-backups", "backupS3AccessKeyId": "AKIAEXAMPLE", "backupS3SecretAccessKey": "s" * 30}
STACK = "pulumi:pulumi:Stack"


@pytest.fixture
def backed_up():
    return run_program({"backupSchedule": "*/15 * * * *", "backupPassphrase": "b" * 20, "retainVolumes": "false",
                        **S3})


def labels_of(resource) -> dict[str, str]:
    return {entry["label"]: entry["value"] for entry in resource.inputs["labels"]}


def role(name: str) -> dict[str, str]:
    return {"sin-datastores.project": "sin-datastores", "sin-datastores.stack": "dev", "sin-datastores.role": name}


def test_labels_name_project_stack_and_role_and_go_on_containers_sorted():
    assert labels("p", "s", "r") == {"sin-datastores.project": "p", "sin-datastores.stack": "s",
                                     "sin-datastores.role": "r"}
    assert [(a.label, a.value) for a in container_labels({"b": "2", "a": "1"})] == [("a", "1"), ("b", "2")]


def test_components_register_their_outputs(backed_up):
    assert backed_up.component_outputs["sin-network"] == {"network_name": "sin-network",
                                                          "network_id": "sin-network-network-id"}
    assert backed_up.component_outputs["postgres"] == {"container_id": "postgres-container-id",
                                                       "container_name": "room-03-archiv-postgres"}
    assert backed_up.component_outputs["redis"] == {"container_id": "redis-container-id",
                                                    "container_name": "room-04-memory-redis"}
    assert backed_up.component_outputs["backup"] == {"container_name": "sin-backup-agent"}


def test_the_archive_and_agent_resources_belong_to_their_components(backed_up):
    declared = {name: (backed_up.resources[name].typ, backed_up.parent_type(name))
                for name in ("postgres-archive", "backup", "backup-image", "backup-copies", "backup-container")}
    assert declared == {
        "postgres-archive": ("docker:index/volume:Volume", "sin-datastores:index:PostgresService"),
        "backup": ("sin-datastores:index:BackupAgent", STACK),
        "backup-image": ("docker:index/remoteImage:RemoteImage", "sin-datastores:index:BackupAgent"),
        "backup-copies": ("docker:index/volume:Volume", "sin-datastores:index:BackupAgent"),
        "backup-container": ("docker:index/container:Container", "sin-datastores:index:BackupAgent"),
    }


def test_every_volume_and_the_network_carry_their_role_and_go_only_where_retained(backed_up, dev):
    for name, owner in (("postgres-data", "postgres"), ("postgres-archive", "postgres"), ("redis-data", "redis"),
                        ("backup-copies", "backup"), ("sin-network-network", "network")):
        assert labels_of(backed_up.resources[name]) == role(owner), name
    for name in ("postgres-archive", "backup-copies", "postgres-data"):
        assert backed_up.options[name].retain_on_delete is False, name
    assert dev.options["postgres-data"].retain_on_delete is True


def test_containers_wait_for_their_image_and_volumes(backed_up):
    waits = {name: sorted(r._name for r in backed_up.options[name].depends_on)
             for name in ("postgres-container", "redis-container", "backup-container", "backup")}
    assert waits == {"postgres-container": ["postgres-archive", "postgres-data", "postgres-image"],
                     "redis-container": ["redis-data", "redis-image"],
                     "backup-container": ["backup-copies", "backup-image"],
                     "backup": ["postgres", "redis"]}


def test_postgresql_archives_finished_wal_segments_into_the_archive_volume(backed_up):
    container = backed_up.resources["postgres-container"].inputs
    assert container["command"] == ["postgres", "-c", "archive_mode=on",
                                    "-c", f"archive_command={layout.ARCHIVE_COMMAND}", "-c", "archive_timeout=30"]
    assert container["volumes"] == [
        {"volumeName": "postgres_data", "containerPath": "/var/lib/postgresql/data"},
        {"volumeName": "postgres_wal_archive", "containerPath": "/var/lib/postgresql"}]
    assert backed_up.resources["postgres-archive"].inputs["name"] == "postgres_wal_archive"


def test_the_agent_runs_on_the_host_network_hardened_with_its_code_settings_and_secret_files(backed_up):
    agent = backed_up.resources["backup-container"].inputs
    assert backed_up.resources["backup-image"].inputs == {"name": "sin-datastores/backup-agent:1", "keepLocally": True}
    assert backed_up.resources["backup-copies"].inputs["name"] == "sin_backups"
    assert agent["name"] == "sin-backup-agent"
    assert agent["image"] == "sha256:backup-image"
    assert (agent["networkMode"], agent["restart"], agent["memory"], agent["memorySwap"]) == (
        "host", "unless-stopped", 256, 256)
    assert (agent["logDriver"], agent["logOpts"], agent["securityOpts"]) == (
        "json-file", {"max-size": "10m", "max-file": "3"}, ["no-new-privileges:true"])
    assert labels_of(backed_up.resources["backup-container"]) == role("backup")
    uploads = {u["file"]: (u["content"], u["permissions"]) for u in unwrap(agent["uploads"])}
    code = {f"/opt/sin-backup/backupagent/{file}": (text, "0444") for file, text in backupagent.agent_code().items()}
    assert "/opt/sin-backup/backupagent/agent.py" in code
    secrets = {"/run/secrets/postgres-password": ("pg-unit-test-password-0123", "0400"),
               "/run/secrets/redis-password": ("redis-unit-test-password-0123", "0400"),
               "/run/secrets/backup-passphrase": ("b" * 20, "0400"),
               "/run/secrets/s3-access-key-id": ("AKIAEXAMPLE", "0400"),
               "/run/secrets/s3-secret-access-key": ("s" * 30, "0400")}
    settings_text, settings_mode = uploads.pop("/etc/sin-backup/agent.json")
    assert uploads == {**code, **secrets}
    settings = json.loads(settings_text)
    assert settings_mode == "0444"
    assert list(settings) == sorted(settings), "keys sorted, so the same settings never show as a change"
    assert {k: settings[k] for k in ("pgdata", "archive", "redis_data", "local_root")} == {
        "pgdata": "/sources/postgres/data", "archive": "/sources/postgres-archive", "redis_data": "/sources/redis",
        "local_root": "/backups"}
    assert settings["stack"] == "dev" and settings["keep_weekly"] == 4


def test_the_agent_code_is_every_module_of_the_agent_package():
    code = backupagent.agent_code()
    assert sorted(code) == sorted(p.name for p in backupagent.CODE_DIR.glob("*.py"))
    assert code["agent.py"] == (backupagent.CODE_DIR / "agent.py").read_text()


def test_redis_reads_its_config_file_as_the_redis_user(dev):
    [upload] = unwrap(dev.resources["redis-container"].inputs["uploads"])
    assert (upload["file"], upload["permissions"]) == ("/usr/local/etc/redis/redis.conf", "0444")
    assert "envs" not in dev.resources["redis-container"].inputs


def test_the_post_deploy_step_is_a_dynamic_resource_whose_provider_is_pickled_by_name(dev):
    step = dev.resources["post-deploy-step"]
    assert step.typ == "pulumi-python:dynamic:Resource"
    # Its provider is in the state as a reference to its class (kept small: no instance state), the
    # same bytes as the step of release 4cf03c7 and earlier, so those stacks see no change.
    assert is_secret(step.inputs["__provider"])
    assert base64.b64decode(unwrap(step.inputs["__provider"])) == STATE_OF_4CF03C7
    assert step.inputs["actor"]
    assert dev.options["post-deploy-step"].additional_secret_outputs == ["target"]


def test_the_post_deploy_component_passes_on_what_the_step_applied_and_checked(dev):
    assert dev.component_outputs["post-deploy"] == {"applied": ["V001__adr006_schema.sql"], "checks": 20}
    assert output_value(dev.exports["migrationsApplied"]) == (["V001__adr006_schema.sql"], False)
    assert output_value(dev.exports["verificationChecks"]) == (20, False)
    assert "clusterConverged" not in dev.exports  # a single host has no Sentinels to set


def test_every_docker_resource_of_the_backups_goes_to_the_stack_s_docker_host(backed_up):
    docker_resources = [r for r in backed_up.resources.values() if r.typ.startswith("docker:index/")]
    assert len(docker_resources) == 11
    for resource in docker_resources:
        assert "pulumi:providers:docker::docker-host::" in resource.provider, resource.name


def test_the_dynamic_provider_that_older_stacks_refer_to_still_loads_and_deletes_nothing():
    # The stacks of release 4cf03c7 and earlier refresh and diff their step with this pickle.
    old = dill.loads(STATE_OF_4CF03C7)
    assert isinstance(old, ResourceProvider)
    assert old.delete("dev", {"target": {"stack": "dev"}}) is None
    assert old.read("dev", {"checks": 20}).outs == {"checks": 20}
