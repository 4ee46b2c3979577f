"""Where backup objects are kept: a prefix of an S3 bucket, or a local directory, behind one interface.

Keys are relative to the store's prefix or directory ("base/<stamp>/manifest.json"). Every
``put`` reads the stored object back and compares its size and sha256 with what was sent; a
mismatch deletes the object and raises, so a key that exists was stored intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Optional

import boto3
import botocore.config
import botocore.exceptions

from . import BackupAgentError

CHUNK = 1024 * 1024
# Objects up to this size go in one PUT, bigger ones as multipart uploads of parts this big.
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
DELETE_BATCH = 1000
PROBE_PREFIX = ".sin-backup-probe-"
_TEMP_PREFIX = ".tmp-"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# botocore >= 1.36 checks a GET against the checksum S3 stored at upload, at the end of the body.
_CHECKSUM_ERRORS = tuple(getattr(botocore.exceptions, name) for name in ("FlexibleChecksumError",)
                         if hasattr(botocore.exceptions, name))
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "AuthorizationHeaderMalformed", "InvalidClientTokenId"}


class StoreError(BackupAgentError):
    """A backup store cannot be reached, refused an operation, or holds something other than what was written."""


class S3UrlError(StoreError, ValueError):
    """An s3:// URL that does not name a bucket (and optional prefix)."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "some/prefix") from "s3://bucket/some/prefix"; the prefix has no leading or trailing "/"."""
    match = re.fullmatch(r"s3://([^/]*)/*(.*)", url.strip()) if isinstance(url, str) else None
    if not match:
        raise S3UrlError(f"backup store URL {url!r} is not of the form s3://BUCKET[/PREFIX]; "
                         "write it like s3://my-backups/sin-datastores")
    bucket, prefix = match.group(1), match.group(2).strip("/")
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise S3UrlError(f"backup store URL {url!r} names bucket {bucket!r}, expected an S3 bucket name "
                         "(3-63 characters: lowercase letters, digits, '.', '-'); fix the bucket part")
    if "//" in prefix:
        raise S3UrlError(f"backup store URL {url!r} has an empty path segment in prefix {prefix!r}; remove the '//'")
    return bucket, prefix


def _check_key(key: str, where: str) -> str:
    """The key itself if it is a relative path below the store's prefix, else a StoreError."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise StoreError(f"object key {key!r} for {where} is not a relative path like "
                         "'base/<stamp>/manifest.json' (no leading '/', no empty, '.' or '..' segments)")
    return key


def file_digest(path: Path) -> dict:
    """Size and sha256 of a file's content."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(dest: Path, source: BinaryIO) -> dict:
    """Copy a stream into dest via a temp file in the same directory, fsync and rename; size and sha256 of what was written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX + dest.name + ".", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return {"size": size, "sha256": digest.hexdigest()}


def _mismatch(where: str, key: str, sent: dict, stored: dict) -> StoreError:
    return StoreError(f"object {key!r} in {where} does not match what was uploaded: expected "
                      f"{sent['size']} bytes sha256 {sent['sha256']}, found {stored['size']} bytes sha256 "
                      f"{stored['sha256']}; the object was deleted. Check the storage for faults and retry the backup")


class S3Store:
    """Objects under a prefix of an S3 bucket (AWS or an S3-compatible server at ``endpoint``), path-style."""

    def __init__(self, endpoint: Optional[str], region: str, bucket: str, prefix: str, access_key: str,
                 secret_key: str):
        self.endpoint = endpoint or None
        self.region = region
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._secrets = [s for s in (access_key, secret_key) if s]
        config = botocore.config.Config(s3={"addressing_style": "path"}, connect_timeout=3, read_timeout=10,
                                        retries={"total_max_attempts": 3, "mode": "standard"})
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, config=config)

    def __repr__(self) -> str:
        return f"S3Store({self.describe()})"

    def describe(self) -> str:
        url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{url} (endpoint {self.endpoint})" if self.endpoint else f"{url} (AWS S3, region {self.region})"

    def _key(self, key: str) -> str:
        _check_key(key, self.describe())
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, action: str) -> StoreError:
        """A StoreError naming this store, what failed and the fix, without any credential."""
        where = self.describe()
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
            if code in _BAD_CREDENTIALS:
                text = (f"S3 rejected the credentials ({code}) while {action} in {where}: expected a valid "
                        "access key id and secret access key for it; set backupS3AccessKeyId and "
                        "backupS3SecretAccessKey (pulumi config set --secret) to a working key pair")
            elif code in ("AccessDenied", "403"):
                text = (f"S3 denied access ({code}) while {action} in {where}: the key needs s3:ListBucket on "
                        "the bucket and s3:GetObject, s3:PutObject, s3:DeleteObject under the prefix; grant "
                        "them, or check backupS3AccessKeyId/backupS3SecretAccessKey")
            elif code in ("NoSuchBucket",):
                text = (f"bucket {self.bucket!r} does not exist ({code}) while {action} in {where}: create "
                        "the bucket, or set backupS3Bucket to an existing one")
            elif code in ("NoSuchKey", "404", "NotFound"):
                text = f"object not found ({code}) while {action} in {where}: it was deleted or never written"
            else:
                text = (f"S3 answered {code} while {action} in {where}: {error.get('Message', '')}; "
                        "check the endpoint, bucket and credentials settings (backupS3*)")
        elif isinstance(exc, _CHECKSUM_ERRORS):
            text = (f"the object read while {action} from {where} does not match the checksum S3 stored "
                    "at upload: the stored copy is damaged; use another backup, and check the storage")
        elif isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
            text = (f"cannot reach S3 while {action} in {where}: {type(exc).__name__}; expected an S3 server "
                    "answering there; check backupS3Endpoint/backupS3Region and that the server is up and reachable")
        else:
            text = f"S3 client error while {action} in {where}: {exc}; check the backupS3* settings"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return StoreError(text)

    def check(self) -> None:
        """The bucket exists and this key may list, write and delete under the prefix (a probe object)."""
        probe = PROBE_PREFIX + secrets.token_hex(8)
        try:
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(probe), MaxKeys=1)
            self._client.put_object(Bucket=self.bucket, Key=self._key(probe), Body=b"probe\n")
            self._client.delete_object(Bucket=self.bucket, Key=self._key(probe))
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "checking the bucket with a probe object") from None
        except botocore.exceptions.ClientError as exc:
            raise self._error(exc, "checking the bucket with a probe object") from None

    def put(self, key: str, source: Path) -> dict:
        """Upload a file (multipart when bigger than PART_SIZE), then read it back: {"size", "sha256"} of it."""
        full = self._key(key)
        try:
            size = source.stat().st_size
            with open(source, "rb") as stream:
                if size <= PART_SIZE:
                    body = stream.read()
                    self._client.put_object(Bucket=self.bucket, Key=full, Body=body)
                    sent = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
                else:
                    sent = self._put_multipart(full, stream, max(PART_SIZE, -(-size // MAX_PARTS)))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, f"uploading {key!r}") from None
        stored = self.digest(key)
        if stored != sent:
            self.delete([key])
            raise _mismatch(self.describe(), key, sent, stored)
        return sent

    def _put_multipart(self, full_key: str, stream: BinaryIO, part_size: int) -> dict:
        """Upload a stream in parts; the upload is aborted if any part fails. Size and sha256 of what was sent."""
        upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=full_key)["UploadId"]
        digest, size, parts = hashlib.sha256(), 0, []
        try:
            for number, chunk in enumerate(iter(lambda: stream.read(part_size), b""), start=1):
                digest.update(chunk)
                size += len(chunk)
                etag = self._client.upload_part(Bucket=self.bucket, Key=full_key, UploadId=upload_id,
                                                PartNumber=number, Body=chunk)["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
            self._client.complete_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                pass  # the original error is the one to report; a lifecycle rule reaps leftover parts
            raise
        return {"size": size, "sha256": digest.hexdigest()}

    def digest(self, key: str) -> dict:
        """{"size", "sha256"} of the object as stored, by reading it back."""
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, f"reading back {key!r}") from None
        digest, size = hashlib.sha256(), 0
        try:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
        except _CHECKSUM_ERRORS:
            # Raised by the read that hits the end, so every byte is hashed; were it ever raised
            # earlier, the shorter hash still differs from what was sent, which is what counts.
            pass
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, f"reading back {key!r}") from None
        finally:
            body.close()
        return {"size": size, "sha256": digest.hexdigest()}

    def get(self, key: str, dest: Path) -> dict:
        """Download an object to dest atomically (nothing at dest unless complete): {"size", "sha256"}."""
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                return _write_atomically(dest, body)
            finally:
                body.close()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, f"downloading {key!r}") from None

    def list(self, subprefix: str = "") -> dict[str, int]:
        """Key -> size of every object whose key starts with subprefix, over all pages."""
        base = f"{self.prefix}/" if self.prefix else ""
        found: dict[str, int] = {}
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + subprefix)
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"][len(base):]] = item["Size"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, f"listing {subprefix or 'all objects'!r}") from None
        return found

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects (missing ones are fine), up to 1000 per request."""
        full = [self._key(k) for k in keys]
        try:
            for start in range(0, len(full), DELETE_BATCH):
                batch = [{"Key": k} for k in full[start:start + DELETE_BATCH]]
                errors = self._client.delete_objects(Bucket=self.bucket,
                                                     Delete={"Objects": batch, "Quiet": True}).get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StoreError(f"S3 did not delete {len(errors)} of {len(batch)} objects in {self.describe()}, "
                                     f"e.g. {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}; "
                                     "the key needs s3:DeleteObject under the prefix")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "deleting objects") from None

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except botocore.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, f"looking for {key!r}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, f"looking for {key!r}") from None


class DirStore:
    """Objects as files under a local directory (the copies kept in the local backup volume)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirStore({self.root})"

    def describe(self) -> str:
        return f"directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*PurePosixPath(_check_key(key, self.describe())).parts)

    def check(self) -> None:
        """The directory exists (it is created if missing) and a probe file can be written and removed."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / (PROBE_PREFIX + secrets.token_hex(8))
            probe.write_bytes(b"probe\n")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"cannot write into {self.describe()}: {exc.strerror} ({type(exc).__name__}); "
                             "expected a writable directory; fix its mount or permissions") from None

    def put(self, key: str, source: Path) -> dict:
        """Copy a file in atomically with fsync, then read it back: {"size", "sha256"} of it."""
        dest = self._path(key)
        try:
            with open(source, "rb") as stream:
                sent = _write_atomically(dest, stream)
        except OSError as exc:
            raise StoreError(f"cannot store {key!r} in {self.describe()}: {exc.strerror} ({exc.filename}); "
                             "check free space and permissions of the backup volume") from None
        stored = self.digest(key)
        if stored != sent:
            self.delete([key])
            raise _mismatch(self.describe(), key, sent, stored)
        return sent

    def digest(self, key: str) -> dict:
        """{"size", "sha256"} of the stored file."""
        try:
            return file_digest(self._path(key))
        except OSError as exc:
            raise StoreError(f"cannot read {key!r} back from {self.describe()}: {exc.strerror}; "
                             "it was deleted or the volume is unreadable") from None

    def get(self, key: str, dest: Path) -> dict:
        """Copy a stored file to dest atomically: {"size", "sha256"}."""
        try:
            with open(self._path(key), "rb") as stream:
                return _write_atomically(dest, stream)
        except OSError as exc:
            raise StoreError(f"cannot copy {key!r} from {self.describe()} to {dest}: {exc.strerror}; "
                             "check that the object exists and dest's directory is writable") from None

    def list(self, subprefix: str = "") -> dict[str, int]:
        """Key -> size of every stored file whose key starts with subprefix (temp and probe files left out)."""
        found: dict[str, int] = {}
        if not self.root.is_dir():
            return found
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith((_TEMP_PREFIX, PROBE_PREFIX)):
                    continue
                path = Path(directory, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(subprefix):
                    found[key] = path.stat().st_size
        return found

    def delete(self, keys: Iterable[str]) -> None:
        """Delete files (missing ones are fine) and the directories they leave empty."""
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
                parent = path.parent
                while parent != self.root and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot delete {key!r} from {self.describe()}: {exc.strerror}; "
                                 "check the permissions of the backup volume") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def read_json(store, key: str) -> dict:
    """A small JSON object (a manifest) from either store."""
    with tempfile.TemporaryDirectory() as tmp:
        store.get(key, Path(tmp) / "object")
        return json.loads((Path(tmp) / "object").read_text())
