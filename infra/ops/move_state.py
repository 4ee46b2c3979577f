"""Move a stack's state from this machine's backend (a directory) into the team's bucket, history included.

Both are Pulumi self-managed backends with the same layout under ``.pulumi/``: the stack's checkpoint
(``stacks/<project>/<stack>.json``), its update history and its checkpoint backups. The files are copied
as they are (``pulumi stack export``/``import`` would keep only the latest checkpoint), the checkpoint
last, so the bucket lists the stack only once everything is there; the copy is then read back through
Pulumi and compared with the original. Only then are the local files moved aside (into
``.pulumi/moved/``), so no one updates the old copy by mistake. Nothing on the Docker host is touched:
the secrets stay encrypted with the same passphrase in the same ``Pulumi.<stack>.yaml``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from infra.core.config import PROJECT
from infra.core.errors import InputError, OperationFailed
from infra.driver import locks, stacks
from infra.driver.backends import MOVED_TO, Bucket, file_root, moved_dir

# Where each kind of file of a stack lives under .pulumi/ (the checkpoint is copied last).
HISTORY_DIRS = ("history", "backups")


def stack_files(root: Path, stack: str) -> tuple[list[Path], list[Path]]:
    """The stack's history, backup and tag files (its tags hold the state's id, which its environment's
    state copy names), and its checkpoint files, under a file backend's ``root`` (Pulumi's ``.attrs``
    files are metadata of the local blob store, not state)."""
    history = [p for d in HISTORY_DIRS for p in sorted((root / ".pulumi" / d / PROJECT / stack).glob("*"))
               if p.is_file() and not p.name.endswith(".attrs")]
    history += [p for p in (root / ".pulumi" / "stacks" / PROJECT).glob(f"{stack}.pulumi-tags") if p.is_file()]
    checkpoint = [p for p in sorted((root / ".pulumi" / "stacks" / PROJECT).glob(f"{stack}.json*"))
                  if p.is_file() and not p.name.endswith(".attrs")]
    return history, checkpoint


def move(stack: str, source_url: str, target_url: str, say: Callable[[str], None]) -> None:
    if not source_url.startswith("file://"):
        raise InputError(f"the state of stack '{stack}' is in {source_url}, not in a directory of this machine: "
                         f"this command moves local state; between buckets, copy the .pulumi/ objects")
    if not target_url.startswith("s3://"):
        raise InputError(f"--to {target_url}: give an s3:// backend URL, e.g. "
                         f"s3://BUCKET?endpoint=https://s3.example.net&region=us-east-1&use_path_style=true "
                         f"(docs/shared-environments.md)")
    root = file_root(source_url)
    history, checkpoint = stack_files(root, stack)
    if not any(p.name == f"{stack}.json" or p.name == f"{stack}.json.gz" for p in checkpoint):
        raise InputError(f"stack '{stack}' has no state in {source_url}; nothing to move")
    held = locks.locks_of(source_url, PROJECT, stack)
    if held:
        raise InputError(f"stack '{stack}' is locked ({', '.join(lock.describe() for lock in held)}): move it once "
                         f"that command has ended")
    bucket = Bucket.of(target_url)
    checkpoints = {bucket.key(f".pulumi/stacks/{PROJECT}/{stack}.json{gz}") for gz in ("", ".gz")}
    if checkpoints & set(bucket.keys(f".pulumi/stacks/{PROJECT}/{stack}.json")):  # not the .bak a removed one left
        raise InputError(f"{target_url} already holds a stack '{stack}': nothing was copied. Compare the two "
                         f"(`pulumi stack export`) and remove the one that is not the environment's")
    if not bucket.keys(".pulumi/meta.yaml"):
        _put(bucket, root, root / ".pulumi" / "meta.yaml")
    copied: list[str] = []
    try:
        for path in history + checkpoint:
            copied.append(_put(bucket, root, path))
        _compare(stack, source_url, target_url)
    except BaseException:
        for key in copied:
            bucket.client.delete_object(Bucket=bucket.name, Key=key)
        raise
    aside = moved_dir(source_url) / f"{stack}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for path in history + checkpoint:
        dest = aside / path.relative_to(root / ".pulumi")
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
        attrs = path.with_name(path.name + ".attrs")
        if attrs.exists():
            attrs.rename(dest.with_name(dest.name + ".attrs"))
    (aside / MOVED_TO).write_text(target_url + "\n")
    say(f"moved the state of stack '{stack}' ({len(history)} history and backup files) to {target_url}; "
        f"the local copy is kept in {aside}, where Pulumi no longer lists it. Every operator now sets "
        f"PULUMI_BACKEND_URL to it (or backend.url in Pulumi.yaml)")


def _put(bucket: Bucket, root: Path, path: Path) -> str:
    key = bucket.key(path.relative_to(root).as_posix())
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=path.read_bytes())
    return key


def _compare(stack: str, source_url: str, target_url: str) -> None:
    """The bucket's copy, read through Pulumi, is the local state, with the same state id."""
    states = []
    for url in (source_url, target_url):
        opened = stacks.open_stack(stack, stacks.Settings(url, stacks.Settings.default().passphrase_file))
        states.append((stacks.exported_deployment(opened), stacks.state_id(opened)))
    if states[0] != states[1]:
        raise OperationFailed(f"the copy of stack '{stack}' in {target_url} reads back different from the local "
                              f"state; it was removed again, and the local state is as it was")
