"""Upgrading a replicated stack (issue #27): one brought up by the previous release of main, then
`preview` and `up` with this code, under a writer: no volume replaced or deleted in the preview,
no resource deleted, the data and every acknowledged commit kept, and nothing left to change. The
stack has scheduled backups, whose agents the upgrade keeps running."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from infra.core import cluster
from infra.driver import stacks
from tests import replicated_stacks
from tests.cluster_clients import PostgresWriter
from tests.e2e.support import release_tree, resource_steps, volume_steps
from tests.backups import complete_backups, wait_for
from tests.polling import until

pytestmark = pytest.mark.e2e
# The last release of main whose replicated topology differs from this one's (its Redis took maxmemory
# from the file seeded at its first start, its Sentinels' down-after was 5 s); bump it with each release
# that changes it.
PREVIOUS_RELEASE = "eafc24a"


@pytest.fixture
def previous_tree(tmp_path) -> Path:
    return release_tree(PREVIOUS_RELEASE, tmp_path / "previous")


def test_a_replicated_stack_of_the_previous_release_upgrades_keeping_its_volumes_data_and_commits(
        three_hosts, lan_s3, tmp_path, previous_tree):
    addresses = [h.address for h in three_hosts]
    members = [f"m{a.replace('.', '_')}" for a in addresses]
    bucket = lan_s3.create_bucket()
    backups = replicated_stacks.backup_settings(lan_s3, bucket, three_hosts)
    with replicated_stacks.replicated_stack(three_hosts, tmp_path, "e2e-ha-upg", previous_tree, backups) as old:
        replicated_stacks.store_s3_keys(old, lan_s3)
        old.up(color="never")
        connect = replicated_stacks.postgres_connector(old.get_config("sin-datastores:postgresPassword").value)
        with connect(addresses[0], cluster.HAPROXY_PRIMARY_PORT) as conn:
            conn.execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
            conn.execute("INSERT INTO acked VALUES (0)")  # written by the previous release
        outputs = {k: v.value for k, v in old.outputs().items()}
        sentinels = replicated_stacks.sentinel_client(old, addresses)
        replicated_stacks.redis_master(old, sentinels, outputs["sentinelMasterName"]).set("upgrade:key", "kept")

        # This release, on the same state and configuration.
        new_file = stacks.config_file(old.name)
        new_file.write_bytes((previous_tree / f"Pulumi.{old.name}.yaml").read_bytes())
        stack = None
        try:
            stack = stacks.open_stack(old.name, replicated_stacks.settings(tmp_path))
            events: list = []
            stack.preview(color="never", on_event=events.append)
            steps = resource_steps(events)
            # Redis takes maxmemory on its command line, each Sentinel's seed has the new down-after: both
            # replaced on every host, their volumes the same; the post-deploy step runs for the new containers.
            assert set(volume_steps(events).values()) == {"same"}, steps
            assert {name: op for (_, name), op in steps.items() if op != "same"} == {
                "post-deploy-step": "update",
                **{f"member-{m}-{role}": "create-replacement" for m in members for role in ("redis", "sentinel")},
            }, steps
            running = {h.address: set(h.docker("ps", "-q", "--no-trunc", "--filter",
                                               f"name={old.name}-[ehpb]").split()) for h in three_hosts}

            writer = PostgresWriter([(a, cluster.HAPROXY_PRIMARY_PORT) for a in addresses], connect, 1)
            writer.start()
            until("the writer's first commits", lambda: len(writer.acknowledged) >= 20, 30)
            events.clear()
            result = stack.up(color="never", on_event=events.append)
            done = time.monotonic()
            until("commits after the up", lambda: writer.acknowledged[-1][1] > done, 60)
            writer.stop.set()
            writer.join(30)
            assert "delete" not in volume_steps(events).values() and "replace" not in volume_steps(events).values()
            assert result.outputs["verificationChecks"].value == 26
            with connect(addresses[1], cluster.HAPROXY_PRIMARY_PORT) as conn:
                stored = {row for (row,) in conn.execute("SELECT id FROM acked")}
                [changes] = conn.execute("SELECT changes FROM audit_trail WHERE action = 'deploy' "
                                         "ORDER BY id DESC LIMIT 1").fetchone()
            assert 0 in stored, "the previous release's row is gone"
            missing = writer.ids() - stored
            assert not missing, f"{len(missing)} acknowledged commits lost in the upgrade: {sorted(missing)[:10]}"
            assert replicated_stacks.redis_master(stack, sentinels, outputs["sentinelMasterName"]).get(
                "upgrade:key") == b"kept"
            # The Sentinels' own files (in their volumes) still say 5 s: the post-deploy step set them, and says so.
            converged = sorted(line for line in result.outputs["clusterConverged"].value
                               if line.startswith("sentinel "))
            assert converged == [f"sentinel {a}: down-after-milliseconds 5000 -> 4000" for a in sorted(addresses)]
            assert changes["cluster_converged"] == result.outputs["clusterConverged"].value, changes
            password = stack.get_config("sin-datastores:sentinelPassword").value
            for address in addresses:
                with redis.Redis(address, cluster.SENTINEL_PORT, password=password, socket_timeout=5) as sentinel:
                    assert sentinel.sentinel_master(outputs["sentinelMasterName"])["down-after-milliseconds"] == \
                        cluster.ClusterTiming().sentinel_down_after_ms, address
            assert set(stack.preview(color="never").change_summary) == {"same"}
            assert all(running[h.address] <= set(h.docker("ps", "-q", "--no-trunc").split()) for h in three_hosts), \
                "a container other than Redis and Sentinel was replaced"
            wait_for("the first base backup in the bucket", lambda: complete_backups(lan_s3, bucket, old.name), 180)
        finally:
            # Taken down by this release, whose state it is after the up.
            try:
                if stack is not None:
                    stack.destroy(color="never")
            finally:
                new_file.unlink(missing_ok=True)
