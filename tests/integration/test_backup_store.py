"""The backup stores against a real S3 server (versitygw on loopback) and a real directory:
what goes in comes out byte for byte, listings cover every page, a stored object that differs
from what was sent is deleted and reported, and an unreachable or misconfigured S3 fails fast
with a message that names the store and the fix but no credential."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from infra.backupagent.store import DirStore, S3Store, StoreError
from infra.driver.teststacks import free_port

PREFIX = "backups/itest"


@dataclass
class StoreUnderTest:
    store: S3Store | DirStore
    stored_file: Callable[[str], Path]   # where a key's bytes lie on disk (versitygw keeps plain files)


def s3_store(server, bucket: str, secret_key: str | None = None, endpoint: str | None = None) -> S3Store:
    return S3Store(endpoint=endpoint or server.endpoint, region=server.region, bucket=bucket, prefix=PREFIX,
                   access_key=server.access_key, secret_key=secret_key or server.secret_key)


@pytest.fixture(params=["s3", "dir"])
def under_test(request, tmp_path) -> StoreUnderTest:
    if request.param == "s3":
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        return StoreUnderTest(s3_store(server, bucket), lambda key: server.data_dir / bucket / PREFIX / key)
    root = tmp_path / "volume"
    return StoreUnderTest(DirStore(root), lambda key: root / key)


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_a_few_megabytes_go_in_and_come_back_identical(under_test, tmp_path):
    store = under_test.store
    store.check()
    sha = random_file(tmp_path / "postgres.tar.gz.enc", 3 * 1024 * 1024 + 17)

    put = store.put("base/20260101T000000Z/postgres.tar.gz.enc", tmp_path / "postgres.tar.gz.enc")
    got = store.get("base/20260101T000000Z/postgres.tar.gz.enc", tmp_path / "back" / "copy")

    assert put == got == {"size": 3 * 1024 * 1024 + 17, "sha256": sha}
    assert hashlib.sha256((tmp_path / "back" / "copy").read_bytes()).hexdigest() == sha
    assert os.listdir(tmp_path / "back") == ["copy"]
    assert store.exists("base/20260101T000000Z/postgres.tar.gz.enc")
    assert not store.exists("base/20260101T000000Z/redis.tar.gz.enc")
    assert store.list() == {"base/20260101T000000Z/postgres.tar.gz.enc": 3 * 1024 * 1024 + 17}


def test_a_file_over_16_mb_goes_up_in_parts_and_comes_back_identical(under_test, tmp_path, request):
    size = 17 * 1024 * 1024 + 5
    sha = random_file(tmp_path / "big", size)

    assert under_test.store.put("base/s/postgres.tar.gz.enc", tmp_path / "big") == {"size": size, "sha256": sha}
    assert under_test.store.get("base/s/postgres.tar.gz.enc", tmp_path / "big.back") == {"size": size, "sha256": sha}
    assert (tmp_path / "big.back").read_bytes() == (tmp_path / "big").read_bytes()
    if isinstance(under_test.store, S3Store):
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        etag = server.client().head_object(Bucket=bucket, Key=f"{PREFIX}/base/s/postgres.tar.gz.enc")["ETag"]
        assert etag.strip('"').endswith("-3"), f"expected a 3-part multipart upload, ETag is {etag}"


def test_listing_returns_every_key_across_pages_and_filters_by_subprefix(under_test, tmp_path, request):
    (tmp_path / "wal").write_bytes(b"w" * 10)
    (tmp_path / "manifest").write_bytes(b"{}")
    wal_keys = {f"wal/7123456789/{n:024X}.gz.enc" for n in range(1005)}
    for key in wal_keys:
        under_test.store.put(key, tmp_path / "wal")
    under_test.store.put("base/20260101T000000Z/manifest.json", tmp_path / "manifest")

    assert under_test.store.list("wal/") == {key: 10 for key in wal_keys}
    assert len(under_test.store.list()) == 1006
    assert under_test.store.list("base/") == {"base/20260101T000000Z/manifest.json": 2}
    if isinstance(under_test.store, S3Store):
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        first_page = server.client().list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/")
        assert first_page["IsTruncated"] and first_page["KeyCount"] == 1000   # so a second page was needed


def test_delete_removes_exactly_the_named_keys_and_ignores_missing_ones(under_test, tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    for key in ("base/a/manifest.json", "base/a/redis.tar.gz.enc", "base/b/manifest.json"):
        under_test.store.put(key, tmp_path / "f")

    under_test.store.delete(["base/a/manifest.json", "base/a/redis.tar.gz.enc", "base/never/written"])

    assert under_test.store.list() == {"base/b/manifest.json": 4}
    assert not under_test.store.exists("base/a/manifest.json")
    assert not under_test.stored_file("base/a").exists()


def test_an_object_changed_between_upload_and_read_back_is_deleted_and_reported(under_test, tmp_path):
    store = under_test.store
    random_file(tmp_path / "src", 2 * 1024 * 1024)
    key = "base/s/redis.tar.gz.enc"
    read_back = store.digest

    def corrupt_then_read_back(k: str) -> dict:
        stored = under_test.stored_file(k)
        data = bytearray(stored.read_bytes())
        data[1000] ^= 0xFF
        stored.write_bytes(bytes(data))
        return read_back(k)

    store.digest = corrupt_then_read_back
    with pytest.raises(StoreError) as failure:
        store.put(key, tmp_path / "src")

    message = str(failure.value)
    assert key in message and store.describe() in message and "does not match" in message
    assert "was deleted" in message
    assert not store.exists(key)
    assert not under_test.stored_file(key).exists()


def test_read_back_sees_a_stored_object_that_rotted_after_the_upload(under_test, tmp_path):
    random_file(tmp_path / "src", 4096)
    sent = under_test.store.put("wal/1/000000010000000000000001.gz.enc", tmp_path / "src")
    stored = under_test.stored_file("wal/1/000000010000000000000001.gz.enc")
    data = stored.read_bytes()
    stored.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])

    assert under_test.store.digest("wal/1/000000010000000000000001.gz.enc")["sha256"] != sent["sha256"]


def test_getting_a_missing_key_fails_and_leaves_nothing_at_dest(under_test, tmp_path):
    (tmp_path / "dest").mkdir()
    with pytest.raises(StoreError, match="base/none/manifest.json"):
        under_test.store.get("base/none/manifest.json", tmp_path / "dest" / "manifest.json")
    assert os.listdir(tmp_path / "dest") == []


def test_keys_that_escape_the_prefix_are_refused(under_test, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    for key in ("../outside", "/abs", "base//x", ""):
        with pytest.raises(StoreError, match="not a relative path"):
            under_test.store.put(key, tmp_path / "f")
    assert under_test.store.list() == {}


def test_check_leaves_no_probe_object_behind(under_test):
    under_test.store.check()
    under_test.store.check()
    assert under_test.store.list() == {}
    assert not [p for p in under_test.stored_file("").rglob("*") if p.is_file()]


def test_an_s3_endpoint_that_is_down_fails_within_seconds_naming_it(tmp_path, s3_server):
    store = s3_store(s3_server, "sin-backups", endpoint=f"http://127.0.0.1:{free_port()}")
    (tmp_path / "f").write_bytes(b"x")

    for attempt in (store.check, lambda: store.put("base/s/manifest.json", tmp_path / "f"), store.list):
        started = time.monotonic()
        with pytest.raises(StoreError) as failure:
            attempt()
        assert time.monotonic() - started < 5
        assert store.endpoint in str(failure.value) and "backupS3Endpoint" in str(failure.value)


def test_a_wrong_secret_key_is_refused_with_the_fix_and_without_the_credentials(s3_server, s3_bucket, tmp_path):
    wrong_secret = "Wrong-Secret-" + "k" * 27
    store = s3_store(s3_server, s3_bucket, secret_key=wrong_secret)
    (tmp_path / "f").write_bytes(b"x")

    for attempt in (store.check, lambda: store.put("base/s/manifest.json", tmp_path / "f")):
        with pytest.raises(StoreError) as failure:
            attempt()
        message = str(failure.value)
        assert "rejected the credentials" in message and "backupS3SecretAccessKey" in message
        assert f"s3://{s3_bucket}/{PREFIX}" in message
        assert wrong_secret not in message and s3_server.access_key not in message
        assert wrong_secret not in repr(store)
    assert not (s3_server.data_dir / s3_bucket / PREFIX).exists()


def test_a_missing_bucket_is_named_with_the_fix(s3_server):
    store = s3_store(s3_server, "sin-no-such-bucket")
    with pytest.raises(StoreError, match="bucket 'sin-no-such-bucket' does not exist.*backupS3Bucket"):
        store.check()


def test_a_directory_store_on_a_file_fails_its_check(tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    with pytest.raises(StoreError, match=r"cannot write into directory .*not-a-dir.*writable directory"):
        DirStore(tmp_path / "not-a-dir").check()
