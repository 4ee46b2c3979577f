"""Bring the PostgreSQL password stored in the data in line with the stack configuration.

The configuration is the source of truth for passwords. A retained volume attached by a
re-created stack, or a rotated password, leaves the data holding another password than the
configured one. Over the container's local socket (trusted inside the container, so no
password is needed) the role's password is set to the configured one, as a SCRAM verifier
computed here: the plain password never reaches the server, its log or a command line.
Redis needs nothing of the kind: its password lives in its config file, never in its data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata
from typing import Optional

from infra.core import dockercli
from infra.core.connect import AuthRejected, ConnectError, connect_postgres
from infra.core.targets import POSTGRES_DATA_PATH, POSTGRES_SOCKET_DIR, PostgresTarget

# PostgreSQL's own default (scram_iterations).
SCRAM_ITERATIONS = 4096
# A database every cluster has, to connect to whatever the configured database is.
MAINTENANCE_DB = "template1"


class CredentialsMismatch(ConnectError):
    """The data cannot be brought in line with the configuration; nothing was changed."""


def scram_verifier(password: str, salt: Optional[bytes] = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    NFKC is SASLprep's normalisation; the other SASLprep steps change nothing for the
    passwords the configuration accepts (no whitespace, quotes or backslashes)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", unicodedata.normalize("NFKC", password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731 - local shorthand
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


def data_volume(container: str) -> str:
    """The volume mounted at the PostgreSQL data path of ``container``, for messages."""
    for mount in (dockercli.inspect("container", container) or {}).get("Mounts") or []:
        if mount.get("Destination") == POSTGRES_DATA_PATH:
            return mount.get("Name") or mount.get("Source") or "?"
    return "?"


def _socket_psql(target: PostgresTarget, script: str) -> str:
    """Run a psql script inside the container on its Unix socket; the script goes in on stdin."""
    argv = ["exec", "-i", target.container_name, "psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1",
            f"--host={POSTGRES_SOCKET_DIR}", f"--username={target.user}", f"--dbname={MAINTENANCE_DB}"]
    return dockercli.docker(*argv, input_text=script)


def reconcile_postgres(target: PostgresTarget, deadline_s: float = 30.0) -> bool:
    """Make the configured password the one the data holds; True when it had to be set.

    Raises :class:`CredentialsMismatch` (naming the volume, what it found and the fix) when
    the configured role or database is not in the data."""
    try:
        connect_postgres(target, deadline_s).close()
        return False
    except AuthRejected:
        pass
    volume = data_volume(target.container_name)
    try:
        databases = _socket_psql(target, "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1;")
    except dockercli.DockerError as exc:
        raise CredentialsMismatch(
            f"{target.describe()} refuses the configured password, and the password cannot be set over the "
            f"local socket of container {target.container_name} (volume {volume}): {_reason(exc)}; set "
            f"postgresUser to the role the volume was created with, or restore a backup into a new stack "
            f"(`python -m infra restore`). Nothing was changed") from None
    found = databases.split()
    if target.database not in found:
        raise CredentialsMismatch(
            f"volume {volume} holds no database '{target.database}' (it holds: {', '.join(found) or 'none'}); "
            f"set postgresDatabase to the one the volume was created with. Nothing was changed")
    _socket_psql(target, f"\\set role {_psql_quote(target.user)}\n\\set secret {_psql_quote(scram_verifier(target.password))}\n"
                         "ALTER ROLE :\"role\" PASSWORD :'secret';\n")
    try:
        connect_postgres(target, deadline_s).close()
    except AuthRejected:
        raise CredentialsMismatch(
            f"{target.describe()} still refuses the configured password after it was set on volume {volume}; "
            f"check pg_hba.conf in that volume for rules other than scram-sha-256/md5") from None
    return True


def _psql_quote(value: str) -> str:
    """A psql \\set value in single quotes (the values here have no quotes or backslashes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _reason(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
