"""Record a verified deployment in the ADR's own tables, without Pulumi."""

from __future__ import annotations

import getpass
import json
import socket
from typing import TYPE_CHECKING

from infra.core.targets import POSTGRES_PORT, REDIS_PORT, Target

if TYPE_CHECKING:  # the Pulumi program imports this module for default_actor only
    import psycopg

UPSERT_SERVICE = """
INSERT INTO services (name, category, container_name, ip_address, port, status)
VALUES (%(name)s, %(category)s, %(container_name)s, %(ip)s, %(port)s, 'active')
ON CONFLICT (name) DO UPDATE SET
    category = EXCLUDED.category, container_name = EXCLUDED.container_name,
    ip_address = EXCLUDED.ip_address, port = EXCLUDED.port, status = 'active',
    updated_at = CURRENT_TIMESTAMP
"""


def default_actor() -> str:
    """Who runs the deployment, as recorded in the migration history and the audit trail."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def services(target: Target) -> list[dict]:
    """The two rows the services registry holds for a stack (addresses on its network)."""
    return [
        {"name": target.postgres.container_name, "category": "database",
         "container_name": target.postgres.container_name, "ip": target.postgres.container_ip, "port": POSTGRES_PORT},
        {"name": target.redis.container_name, "category": "cache",
         "container_name": target.redis.container_name, "ip": target.redis.container_ip, "port": REDIS_PORT},
    ]


def register(conn: psycopg.Connection, target: Target, actor: str, changes: dict) -> None:
    """Upsert both services as active and append one audit row, in one transaction."""
    with conn.transaction():
        for row in services(target):
            conn.execute(UPSERT_SERVICE, row)
        conn.execute(
            "INSERT INTO audit_trail (action, actor, resource_type, resource_id, changes) "
            "VALUES ('deploy', %s, 'stack', %s, %s::jsonb)",
            (actor, target.stack, json.dumps(changes)))
