"""The SCRAM verifier computed here is one PostgreSQL 16 accepts as the role's password."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from infra.deploy.credentials import scram_verifier


@pytest.fixture
def role(pg_server, pg_target):
    name = "scram_probe"
    with psycopg.connect(host="127.0.0.1", port=pg_server.port, dbname=pg_target.database, user=pg_server.user,
                         password=pg_server.password, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        try:
            yield admin, name
        finally:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def login(pg_server, pg_target, user: str, password: str) -> bool:
    try:
        psycopg.connect(host="127.0.0.1", port=pg_server.port, dbname=pg_target.database, user=user,
                        password=password, connect_timeout=5).close()
        return True
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return False


@pytest.mark.parametrize("password", ["aB3-_xYz0123456789abcdef", "pässwörd-with-ümlauts-0123"])
def test_postgres_accepts_the_password_of_a_verifier_computed_here_and_refuses_others(
        pg_server, pg_target, role, password):
    admin, name = role
    verifier = scram_verifier(password)
    admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(verifier)))
    stored = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)).fetchone()[0]
    assert stored == verifier, "the server keeps the verifier as given: it never saw the password"
    assert login(pg_server, pg_target, name, password)
    assert not login(pg_server, pg_target, name, password + "x")


def test_verifier_matches_the_rfc_7677_construction_for_a_fixed_salt():
    # Same password and salt give the same verifier; another salt gives another one.
    salt = bytes(range(16))
    assert scram_verifier("secret-password-123", salt) == scram_verifier("secret-password-123", salt)
    assert scram_verifier("secret-password-123", salt) != scram_verifier("secret-password-123", bytes(16))
    assert scram_verifier("secret-password-123", salt).startswith("SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$")
