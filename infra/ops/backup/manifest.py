"""The backup folder: its files and manifest, checked before anything is touched."""

from __future__ import annotations

import json
from pathlib import Path

from infra.backupagent.store import file_digest
from infra.ops.backup import BackupRefused


FORMAT = 1


MANIFEST = "manifest.json"


PG_DUMP = "postgres.dump"


REDIS_RDB = "redis-dump.rdb"


REDIS_AOF = "redis-appendonlydir.tar"


FILES = (PG_DUMP, REDIS_RDB, REDIS_AOF)


_REQUIRED = {"postgres": ("major", "tables", "schema_sha256"), "redis": ("major", "keys"), "files": FILES}




def load_manifest(folder: Path) -> dict:
    """The manifest of a complete, untampered backup; BackupRefused naming every problem otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BackupRefused(f"backup folder {folder} does not exist; list backups with `ls {folder.parent}`")
    path = folder / MANIFEST
    if not path.is_file():
        raise BackupRefused(f"{folder} has no {MANIFEST}: the backup is incomplete (interrupted?); "
                          f"use another backup or take a new one with `backup --stack NAME`")
    try:
        manifest = json.loads(path.read_text())
        missing = [f"{section}.{key}" for section, keys in _REQUIRED.items() for key in keys
                   if key not in manifest[section]]
    except (ValueError, KeyError, TypeError) as exc:
        missing = [f"unreadable ({type(exc).__name__}: {exc})"]
    if missing:
        raise BackupRefused(f"{path} is not a sin-datastores manifest: {', '.join(missing)}; nothing was restored")
    files = manifest["files"]
    if manifest.get("format") != FORMAT:
        raise BackupRefused(f"{path} has format {manifest.get('format')!r}; this version reads format {FORMAT}")
    problems = []
    for name in FILES:
        want, file = files.get(name), folder / name
        if want is None:
            problems.append(f"{name} is not listed in the manifest")
        elif not file.is_file():
            problems.append(f"{name} is missing")
        elif (got := file_digest(file)) != {"size": want.get("size"), "sha256": want.get("sha256")}:
            problems.append(f"{name} does not match the manifest (size {got['size']} vs {want.get('size')}, "
                            f"sha256 {got['sha256'][:12]} vs {str(want.get('sha256'))[:12]})")
    if problems:
        raise BackupRefused(f"backup {folder} is incomplete or was modified: {'; '.join(problems)}; "
                          f"nothing was restored")
    return manifest
