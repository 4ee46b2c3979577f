"""Code that runs inside the backup-agent container (stdlib, cryptography, boto3, psycopg, redis only)."""


class BackupAgentError(RuntimeError):
    """A failure the agent or the operator-side restore reports as a sentence, never with a secret."""
