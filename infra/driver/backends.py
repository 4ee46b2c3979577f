"""Pulumi's self-managed backends as this project reads them directly: a directory (``file://``)
or an S3 bucket (``s3://bucket/prefix?endpoint=...&region=...&use_path_style=true``, the URL
parameters of the bucket driver Pulumi uses; credentials from the environment, as for Pulumi)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit


def file_root(backend_url: str) -> Path:
    """The directory of a ``file://`` backend."""
    return Path(os.path.expanduser(backend_url[len("file://"):].split("?", 1)[0]))


# Where `python -m infra move-state` sets a moved stack's local files aside, and the file naming where to.
MOVED_TO = "MOVED_TO"


def moved_dir(backend_url: str) -> Path:
    return file_root(backend_url) / ".pulumi" / "moved"


def moved_to(backend_url: str, stack: str) -> str:
    """The backend a stack of this ``file://`` backend was last moved to, or ''."""
    if not backend_url.startswith("file://"):
        return ""
    marks = sorted(moved_dir(backend_url).glob(f"{stack}-*/{MOVED_TO}"))
    return marks[-1].read_text().strip() if marks else ""


@dataclass(frozen=True)
class Bucket:
    """An ``s3://`` backend: a client, its bucket and the key prefix under which ``.pulumi/`` lives."""

    client: Any
    name: str
    prefix: str

    @classmethod
    def of(cls, backend_url: str) -> "Bucket":
        import boto3  # only for S3 backends
        import botocore.config

        url = urlsplit(backend_url)
        query = dict(parse_qsl(url.query))
        path_style = (query.get("use_path_style") or query.get("s3ForcePathStyle") or "").lower() == "true"
        client = boto3.client("s3", endpoint_url=query.get("endpoint"), region_name=query.get("region"),
                              config=botocore.config.Config(s3={"addressing_style": "path" if path_style else "auto"},
                                                            connect_timeout=5, retries={"max_attempts": 2}))
        return cls(client, url.netloc, url.path.strip("/"))

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (a path under the backend's root, e.g. ``.pulumi/meta.yaml``)."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def keys(self, relative_prefix: str) -> list[str]:
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name,
                                                                          Prefix=self.key(relative_prefix)):
            found += [item["Key"] for item in page.get("Contents") or []]
        return found

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
