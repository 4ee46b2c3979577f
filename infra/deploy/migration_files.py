"""The migration files in ``sql/``: names, order, checksums, statements. No database.

Files are named ``V<version>__<description>.sql``; a file whose first line is
``-- sin:no-transaction`` runs outside a transaction (for CREATE INDEX CONCURRENTLY).
The Pulumi program reads them here to fingerprint them; :mod:`infra.deploy.migrations` applies them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from infra.core.errors import OperationFailed

NO_TRANSACTION_MARKER = "-- sin:no-transaction"
FILE_NAME = re.compile(r"^V(?P<version>[0-9]+)__(?P<description>[A-Za-z0-9_]+)\.sql$")
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "sql"


class MigrationError(OperationFailed):
    """Migrations cannot run or one failed; the message names the file and the fix."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    description: str
    path: Path
    sql_text: str
    checksum: str
    transactional: bool

    @property
    def name(self) -> str:
        return self.path.name


def load(directory: Path = DEFAULT_DIR) -> list[Migration]:
    """Read and check every migration file, ordered by version."""
    if not directory.is_dir():
        raise MigrationError(f"migration directory {directory} does not exist; the migrations ship in the project's sql/ "
                             f"folder: run from a complete checkout")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: not a migration file name; rename it to V<number>__<description>.sql")
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"{path.name}: version {version} is also used by {migrations[version].name}; renumber one of them")
        if not text.strip():
            raise MigrationError(f"{path.name}: the file is empty; put its SQL in it, or delete it")
        migrations[version] = Migration(
            version=version,
            description=match["description"].replace("_", " "),
            path=path,
            sql_text=text,
            checksum=hashlib.sha256(raw).hexdigest(),
            transactional=not text.lstrip().startswith(NO_TRANSACTION_MARKER),
        )
    return [migrations[v] for v in sorted(migrations)]


def fingerprint(migrations: list[Migration]) -> list[dict]:
    """The version, file and checksum of each migration: what a preview diffs."""
    return [{"version": m.version, "file": m.name, "sha256": m.checksum} for m in migrations]


def split_statements(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, statement) for each SQL statement, honouring quotes and comments."""
    i, n, start = 0, len(text), 0
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c in ("'", '"'):
            i += 1
            while i < n:
                if text[i] == c and text.startswith(c * 2, i):
                    i += 2
                elif text[i] == c:
                    i += 1
                    break
                else:
                    i += 1
        elif c == "$":
            tag = re.match(r"\$[A-Za-z_]*\$", text[i:])
            if tag:
                end = text.find(tag.group(0), i + len(tag.group(0)))
                i = n if end < 0 else end + len(tag.group(0))
            else:
                i += 1
        elif c == ";":
            yield from _statement(text, start, i)
            i += 1
            start = i
        else:
            i += 1
    yield from _statement(text, start, n)


def _statement(text: str, start: int, end: int) -> Iterator[tuple[int, str]]:
    chunk = text[start:end]
    body = _strip_comments(chunk).strip()
    if body:
        offset = start + (len(chunk) - len(chunk.lstrip()))
        yield text.count("\n", 0, offset) + 1, chunk.strip()


def _strip_comments(chunk: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", chunk, flags=re.S)
