"""What the end-to-end tests read of the backup agent's work: the objects in a bucket of the
test S3 server, and waiting for the agent, which runs on its own schedule."""

from __future__ import annotations

import time

from infra.backupagent import layout
from tests.servers import S3Server


def keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix``, relative to it."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return sorted(obj["Key"][len(prefix) + 1:] for page in pages for obj in page.get("Contents", []))


def complete_backups(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    """Names of the base backups that have their manifest (written last)."""
    found = keys(s3, bucket, prefix)
    return [n for n in layout.backup_names(found) if layout.backup_key(n, layout.MANIFEST) in found]


def wait_for(what: str, check, timeout_s: float):
    """``check()``'s first truthy value, polled every 0.5 s; AssertionError naming ``what`` after the timeout."""
    give_up = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.5)
