"""Migrations against a real PostgreSQL 16 server."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from infra.deploy import migration_files, migrations
from infra.core.connect import connect_postgres
from infra.deploy.migration_files import MigrationError
from infra.driver.teststacks import free_port

COPY_REFUSED = "COPY cannot be used with this method; use copy() instead"
ADR_TABLES = {"services", "configurations", "logs", "audit_trail"}


def tables(target) -> set[str]:
    with connect_postgres(target) as conn:
        return {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}


def history(target) -> list[tuple]:
    with connect_postgres(target) as conn:
        return conn.execute(
            "SELECT version, script, checksum, installed_by, execution_ms >= 0, success "
            "FROM sin_schema_history ORDER BY version").fetchall()


def test_fresh_database_gets_the_adr_schema_and_a_history_row(pg_target, migration_dir):
    outcome = migrations.migrate(pg_target, "tester", migration_dir)

    assert [m.name for m, _ in outcome.applied] == ["V001__adr006_schema.sql"]
    assert tables(pg_target) == ADR_TABLES | {"sin_schema_history"}
    [row] = history(pg_target)
    file = migration_files.load(migration_dir)[0]
    assert row == (1, "V001__adr006_schema.sql", file.checksum, "tester", True, True)


def test_second_run_applies_nothing(pg_target, migration_dir):
    migrations.migrate(pg_target, "tester", migration_dir)
    outcome = migrations.migrate(pg_target, "tester", migration_dir)

    assert outcome.applied == []
    assert outcome.already_applied == 1
    assert len(history(pg_target)) == 1


def test_plan_lists_pending_files_and_changes_nothing(pg_target, migration_dir):
    plan = migrations.plan(pg_target, migration_dir)

    assert [m.name for m in plan.pending] == ["V001__adr006_schema.sql"]
    assert tables(pg_target) == set()


def test_changed_applied_file_is_refused_naming_the_file(pg_target, migration_dir):
    migrations.migrate(pg_target, "tester", migration_dir)
    path = migration_dir / "V001__adr006_schema.sql"
    path.write_text(path.read_text() + "\n-- an innocent comment\n")

    with pytest.raises(MigrationError, match=r"V001__adr006_schema\.sql was changed after it was applied"):
        migrations.migrate(pg_target, "tester", migration_dir)


def test_deleted_applied_file_is_refused(pg_target, migration_dir):
    (migration_dir / "V002__add_note.sql").write_text("ALTER TABLE services ADD COLUMN note TEXT;\n")
    migrations.migrate(pg_target, "tester", migration_dir)
    (migration_dir / "V002__add_note.sql").unlink()

    with pytest.raises(MigrationError, match=r"V2 \(add note\) was applied but its file is missing"):
        migrations.migrate(pg_target, "tester", migration_dir)


def test_new_file_sorting_before_an_applied_one_is_refused(pg_target, migration_dir):
    (migration_dir / "V003__later.sql").write_text("SELECT 1;\n")
    migrations.migrate(pg_target, "tester", migration_dir)
    (migration_dir / "V002__late_arrival.sql").write_text("SELECT 2;\n")

    with pytest.raises(MigrationError, match=r"V002__late_arrival\.sql sorts before V3"):
        migrations.migrate(pg_target, "tester", migration_dir)


def test_broken_migration_is_rolled_back_with_history_unchanged(pg_target, migration_dir):
    migrations.migrate(pg_target, "tester", migration_dir)
    (migration_dir / "V002__broken.sql").write_text(
        "CREATE TABLE half_done (id INT);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "\n"
        "INSERT INTO no_such_table VALUES (1);\n")
    before = history(pg_target)

    with pytest.raises(MigrationError) as caught:
        migrations.migrate(pg_target, "tester", migration_dir)

    message = str(caught.value)
    assert "V002__broken.sql, line 4" in message
    assert 'relation "no_such_table" does not exist' in message
    assert "INSERT INTO no_such_table VALUES (1)" in message
    assert "nothing of V002__broken.sql was applied" in message
    assert "half_done" not in tables(pg_target)
    assert history(pg_target) == before


def test_two_concurrent_runs_apply_each_migration_exactly_once(pg_target, migration_dir):
    # A slow second migration keeps the first runner inside the lock while the other waits.
    (migration_dir / "V002__slow.sql").write_text("SELECT pg_sleep(0.5);\nCREATE TABLE once (id INT);\n")
    outcomes, errors = [], []

    def run():
        try:
            outcomes.append(migrations.migrate(pg_target, "racer", migration_dir))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    racers = [threading.Thread(target=run) for _ in range(2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(30)

    assert errors == []
    assert sorted(len(o.applied) for o in outcomes) == [0, 2]
    assert [row[0] for row in history(pg_target)] == [1, 2]


def test_lock_wait_has_a_deadline(pg_target, migration_dir):
    with connect_postgres(pg_target) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrations.LOCK_KEY,))
        with pytest.raises(MigrationError, match=r"held the lock for more than 0.3 s"):
            migrations.migrate(pg_target, "tester", migration_dir, lock_wait_s=0.3)
    assert tables(pg_target) == set()


def test_no_transaction_file_runs_outside_a_transaction(pg_target, migration_dir):
    (migration_dir / "V002__concurrent_index.sql").write_text(
        "-- sin:no-transaction\nCREATE INDEX CONCURRENTLY idx_logs_message ON logs (message);\n")

    outcome = migrations.migrate(pg_target, "tester", migration_dir)

    assert [m.name for m, _ in outcome.applied] == ["V001__adr006_schema.sql", "V002__concurrent_index.sql"]
    with connect_postgres(pg_target) as conn:
        assert conn.execute("SELECT to_regclass('idx_logs_message') IS NOT NULL").fetchone()[0]


def test_failed_no_transaction_file_is_recorded_and_blocks_later_runs(pg_target, migration_dir):
    (migration_dir / "V002__bad_index.sql").write_text(
        "-- sin:no-transaction\nCREATE INDEX CONCURRENTLY idx_bad ON no_such_table (x);\n")

    with pytest.raises(MigrationError, match=r"runs outside a transaction"):
        migrations.migrate(pg_target, "tester", migration_dir)
    assert [(r[0], r[5]) for r in history(pg_target)] == [(1, True), (2, False)]
    with pytest.raises(MigrationError, match=r"V2 \(bad index\) failed outside a transaction"):
        migrations.migrate(pg_target, "tester", migration_dir)


def test_baseline_marks_an_existing_schema_as_applied(pg_target, migration_dir):
    with connect_postgres(pg_target) as conn:
        conn.execute((migration_dir / "V001__adr006_schema.sql").read_text())

    migrations.baseline(pg_target, "tester", 1, migration_dir)
    outcome = migrations.migrate(pg_target, "tester", migration_dir)

    assert outcome.applied == []
    with connect_postgres(pg_target) as conn:
        assert conn.execute("SELECT kind FROM sin_schema_history").fetchall() == [("BASELINE",)]


def test_statement_timeout_stops_a_runaway_migration(pg_target, migration_dir):
    (migration_dir / "V002__runaway.sql").write_text("SELECT pg_sleep(5);\n")

    with pytest.raises(MigrationError, match=r"statement timeout"):
        migrations.migrate(pg_target, "tester", migration_dir, statement_timeout_s=0.2)
    assert [r[0] for r in history(pg_target)] == [1]


def test_rejected_password_fails_at_once_without_retrying(pg_target, migration_dir):
    wrong = dataclasses.replace(pg_target, password="not-the-password-at-all")
    started = time.monotonic()
    with pytest.raises(Exception, match="rejected the credentials"):
        migrations.migrate(wrong, "tester", migration_dir, deadline_s=20)
    assert time.monotonic() - started < 3


def test_unreachable_server_gives_up_at_the_deadline(pg_target, migration_dir):
    nowhere = dataclasses.replace(pg_target, port=free_port())
    started = time.monotonic()
    with pytest.raises(Exception, match=r"did not answer within 1 s"):
        migrations.migrate(nowhere, "tester", migration_dir, deadline_s=1)
    assert 0.9 < time.monotonic() - started < 4


def full_history(target) -> list[tuple]:
    with connect_postgres(target) as conn:
        return conn.execute(
            "SELECT version, description, script, checksum, kind, installed_by, success "
            "FROM sin_schema_history ORDER BY version").fetchall()


def test_history_rows_describe_each_file_and_how_long_it_took(pg_target, migration_dir):
    (migration_dir / "V002__slow_step.sql").write_text("SELECT pg_sleep(0.3);\n")
    (migration_dir / "V003__slow_outside.sql").write_text("-- sin:no-transaction\nSELECT pg_sleep(0.3);\n")

    outcome = migrations.migrate(pg_target, "tester", migration_dir)

    files = {m.version: m for m in migration_files.load(migration_dir)}
    assert full_history(pg_target) == [
        (v, files[v].description, files[v].name, files[v].checksum, "SQL", "tester", True) for v in (1, 2, 3)]
    with connect_postgres(pg_target) as conn:
        recorded = dict(conn.execute("SELECT version, execution_ms FROM sin_schema_history").fetchall())
    assert [ms for _, ms in outcome.applied][1:] == [recorded[2], recorded[3]]
    assert 300 <= recorded[2] < 3000 and 300 <= recorded[3] < 3000


def test_a_failing_statement_is_named_with_its_line_first_line_and_sqlstate(pg_target, migration_dir):
    migrations.migrate(pg_target, "tester", migration_dir)
    (migration_dir / "V002__broken.sql").write_text("SELECT 1;\n\nUPDATE no_such_table\n   SET x = 1;\n")

    with pytest.raises(MigrationError) as caught:
        migrations.migrate(pg_target, "tester", migration_dir)

    assert str(caught.value) == (
        'V002__broken.sql, line 3: statement failed: relation "no_such_table" does not exist (SQLSTATE 42P01)\n'
        "    UPDATE no_such_table ...\n"
        "nothing of V002__broken.sql was applied")


def test_a_failed_file_outside_a_transaction_says_what_stays_applied(pg_target, migration_dir):
    (migration_dir / "V002__half.sql").write_text(
        "-- sin:no-transaction\nCREATE TABLE kept (id INT);\nSELECT * FROM no_such_table;\n")

    with pytest.raises(MigrationError) as caught:
        migrations.migrate(pg_target, "tester", migration_dir)

    assert str(caught.value).endswith(
        "    SELECT * FROM no_such_table\n"
        "V002__half.sql runs outside a transaction: statements before line 3 stay applied")
    assert "kept" in tables(pg_target)


def test_the_timeouts_apply_to_the_migration_s_own_transaction_only(pg_target, migration_dir):
    (migration_dir / "V002__show.sql").write_text(
        "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock, "
        "current_setting('statement_timeout') AS statement;\n")

    migrations.migrate(pg_target, "tester", migration_dir, lock_timeout_s=1.5, statement_timeout_s=2)

    with connect_postgres(pg_target) as conn:
        assert conn.execute("SELECT lock, statement FROM seen").fetchone() == ("1500ms", "2s")


def test_a_lock_held_briefly_is_waited_for(pg_target, migration_dir):
    holder = connect_postgres(pg_target)
    holder.execute("SELECT pg_advisory_lock(%s)", (migrations.LOCK_KEY,))
    release = threading.Timer(0.5, holder.close)
    release.start()
    try:
        outcome = migrations.migrate(pg_target, "tester", migration_dir, lock_wait_s=10)
    finally:
        release.join()
    assert [m.name for m, _ in outcome.applied] == ["V001__adr006_schema.sql"]


def test_the_lock_is_released_after_a_run(pg_target, migration_dir):
    migrations.migrate(pg_target, "tester", migration_dir)
    with connect_postgres(pg_target) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s)", (migrations.LOCK_KEY,)).fetchone()[0] is True


def test_a_baseline_marks_only_the_files_up_to_its_version(pg_target, migration_dir):
    with connect_postgres(pg_target) as conn:
        conn.execute((migration_dir / "V001__adr006_schema.sql").read_text())
    (migration_dir / "V002__add_note.sql").write_text("ALTER TABLE services ADD COLUMN note TEXT;\n")

    chosen = migrations.baseline(pg_target, "tester", 1, migration_dir)

    assert [m.version for m in chosen] == [1]
    file = migration_files.load(migration_dir)[0]
    assert full_history(pg_target) == [
        (1, file.description, file.name, file.checksum, "BASELINE", "tester", True)]
    with connect_postgres(pg_target) as conn:
        assert conn.execute("SELECT execution_ms FROM sin_schema_history").fetchall() == [(0,)]
    assert [m.name for m in migrations.plan(pg_target, migration_dir).pending] == ["V002__add_note.sql"]
    with connect_postgres(pg_target) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s)", (migrations.LOCK_KEY,)).fetchone()[0] is True


def test_a_baseline_needs_an_existing_version_and_a_database_never_migrated(pg_target, migration_dir):
    (migration_dir / "V003__third.sql").write_text("SELECT 3;\n")
    with pytest.raises(MigrationError) as caught:
        migrations.baseline(pg_target, "tester", 2, migration_dir)
    assert str(caught.value) == "no migration file has version 2; pick one of 1, 3"
    (migration_dir / "V003__third.sql").unlink()

    migrations.migrate(pg_target, "tester", migration_dir)
    with pytest.raises(MigrationError) as caught:
        migrations.baseline(pg_target, "tester", 1, migration_dir)
    assert str(caught.value) == ("sin_schema_history already has rows; a baseline is only for a database "
                                 "that has never been migrated by this tool")


def test_a_baseline_without_files_says_there_are_none(pg_target, tmp_path):
    with pytest.raises(MigrationError, match=r"no migration file has version 1; pick one of \(none\)$"):
        migrations.baseline(pg_target, "tester", 1, tmp_path)


def test_the_history_of_a_database_never_migrated_is_empty(pg_target):
    with connect_postgres(pg_target) as conn:
        assert migrations.read_history(conn) == []


@pytest.mark.parametrize("step", ["plan", "baseline"])
def test_plan_and_baseline_give_up_on_an_unreachable_server_at_their_deadline(pg_target, migration_dir, step):
    nowhere = dataclasses.replace(pg_target, port=free_port())
    run = {"plan": lambda: migrations.plan(nowhere, migration_dir, deadline_s=1),
           "baseline": lambda: migrations.baseline(nowhere, "tester", 1, migration_dir, deadline_s=1)}[step]
    started = time.monotonic()
    with pytest.raises(Exception, match=r"did not answer within 1 s"):
        run()
    assert time.monotonic() - started < 4



def test_an_error_raised_by_the_client_itself_is_named_without_a_sqlstate(pg_target, migration_dir):
    # psycopg refuses COPY through execute() itself: the error carries no server diagnostics.
    (migration_dir / "V002__copy.sql").write_text("COPY (SELECT 1) TO STDOUT;\n")

    with pytest.raises(MigrationError) as caught:
        migrations.migrate(pg_target, "tester", migration_dir)

    assert str(caught.value).splitlines()[0] == "V002__copy.sql, line 1: statement failed: " + COPY_REFUSED


def test_a_failed_file_outside_a_transaction_records_how_long_it_ran(pg_target, migration_dir):
    (migration_dir / "V002__slow_then_bad.sql").write_text(
        "-- sin:no-transaction\nSELECT pg_sleep(0.3);\nSELECT * FROM no_such_table;\n")

    with pytest.raises(MigrationError):
        migrations.migrate(pg_target, "tester", migration_dir)

    with connect_postgres(pg_target) as conn:
        [(ms, success)] = conn.execute(
            "SELECT execution_ms, success FROM sin_schema_history WHERE version = 2").fetchall()
    assert success is False and 300 <= ms < 3000
