"""Day-2 operations on a deployed stack, plain Python: backups and restores, status, the takeover."""
