"""Back up, prove and restore a stack's data, without Pulumi (the ADR's backup strategy):
manifest (the folder and its checks), postgres_dump, redis_snapshot, commands (take, verify, restore).

A backup is a folder ``<root>/<stack>/<UTC time>/`` with
  postgres.dump              ``pg_dump -Fc`` run inside the PostgreSQL container
  redis-dump.rdb             the RDB snapshot written by ``BGSAVE``
  redis-appendonlydir.tar    a copy of the AOF directory (kept for manual recovery)
  manifest.json              sizes, sha256, server versions, row and key counts
It is assembled in a hidden ``.partial-*`` folder and renamed into place only after the
manifest is written, so a folder with a manifest is always complete.

Row counts are taken in the snapshot pg_dump dumps (``--snapshot``), and key counts in
the same ``MULTI`` as ``BGSAVE``, so both describe exactly what the files hold.

Restore is all-or-nothing: everything is loaded and compared in scratch places first (a
scratch database in the live server, a scratch Redis container from the live image); only
then is the live data switched, PostgreSQL by renaming databases in one transaction (the
previous database is kept, renamed), Redis by one ``MULTI``/``EXEC``.
"""

from infra.core.errors import InputError, OperationFailed


class BackupRefused(InputError):
    """The backup folder or the stack cannot be used as asked; nothing was changed."""


class BackupFailed(OperationFailed):
    """A backup, verification or restore step failed; the live data was left as it was."""
