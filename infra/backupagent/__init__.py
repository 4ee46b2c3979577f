"""Code that runs inside the backup-agent container (package ``backupagent`` there); stdlib + boto3, cryptography, psycopg, redis only."""


class BackupAgentError(RuntimeError):
    """A backup-agent step failed; the message names the object, what was expected vs found, and the fix."""
