"""The migration files: names, order, checksums and how a file splits into statements. No database."""

from __future__ import annotations

import hashlib

import pytest

from infra.deploy.migration_files import MigrationError, fingerprint, load, split_statements


def write(directory, name: str, text: str):
    path = directory / name
    path.write_text(text)
    return path


def test_files_are_ordered_by_version_number_not_by_name(tmp_path):
    write(tmp_path, "V10__tenth.sql", "SELECT 10;\n")
    write(tmp_path, "V9__ninth.sql", "SELECT 9;\n")
    write(tmp_path, "V002__second_one.sql", "SELECT 2;\n")

    assert [(m.version, m.name, m.description) for m in load(tmp_path)] == [
        (2, "V002__second_one.sql", "second one"), (9, "V9__ninth.sql", "ninth"), (10, "V10__tenth.sql", "tenth")]


def test_a_migration_carries_its_text_path_and_the_sha256_of_its_bytes(tmp_path):
    path = write(tmp_path, "V1__init.sql", "CREATE TABLE t (id INT);\n")

    [migration] = load(tmp_path)

    assert migration.path == path
    assert migration.sql_text == "CREATE TABLE t (id INT);\n"
    assert migration.checksum == hashlib.sha256(b"CREATE TABLE t (id INT);\n").hexdigest()
    assert migration.transactional is True
    assert fingerprint([migration]) == [{"version": 1, "file": "V1__init.sql", "sha256": migration.checksum}]


def test_the_no_transaction_marker_on_the_first_line_runs_a_file_outside_a_transaction(tmp_path):
    write(tmp_path, "V1__plain.sql", "SELECT 1;\n-- sin:no-transaction\n")
    write(tmp_path, "V2__concurrent.sql", "\n  -- sin:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);\n")

    assert [m.transactional for m in load(tmp_path)] == [True, False]


def test_files_that_are_not_sql_are_ignored(tmp_path):
    write(tmp_path, "README.md", "not a migration\n")
    write(tmp_path, "V1__init.sql", "SELECT 1;\n")

    assert [m.name for m in load(tmp_path)] == ["V1__init.sql"]


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(MigrationError) as caught:
        load(tmp_path / "nowhere")
    assert str(caught.value) == (f"migration directory {tmp_path / 'nowhere'} does not exist; the migrations ship in "
                                  f"the project's sql/ folder: run from a complete checkout")


@pytest.mark.parametrize("name", ["v1__lower.sql", "V1_single_underscore.sql", "V1__with-dash.sql", "Vx__x.sql",
                                  "V1__.sql", "notes.sql"])
def test_a_badly_named_sql_file_is_refused_with_the_fix(tmp_path, name):
    write(tmp_path, name, "SELECT 1;\n")
    with pytest.raises(MigrationError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{name}: not a migration file name; rename it to V<number>__<description>.sql"


def test_two_files_with_one_version_are_refused(tmp_path):
    write(tmp_path, "V1__first.sql", "SELECT 1;\n")
    write(tmp_path, "V01__again.sql", "SELECT 1;\n")
    with pytest.raises(MigrationError) as caught:
        load(tmp_path)
    assert str(caught.value) == "V1__first.sql: version 1 is also used by V01__again.sql; renumber one of them"


def test_an_empty_file_is_refused(tmp_path):
    write(tmp_path, "V1__blank.sql", " \n\t\n")
    with pytest.raises(MigrationError) as caught:
        load(tmp_path)
    assert str(caught.value) == "V1__blank.sql: the file is empty; put its SQL in it, or delete it"


def statements(text: str) -> list[tuple[int, str]]:
    return list(split_statements(text))


def test_statements_are_split_on_semicolons_with_their_first_line():
    assert statements("SELECT 1;\n\nSELECT\n  2;\nSELECT 3") == [(1, "SELECT 1"), (3, "SELECT\n  2"), (5, "SELECT 3")]


def test_semicolons_inside_quotes_identifiers_and_comments_do_not_split():
    text = ("INSERT INTO t VALUES ('a;b', 'it''s; fine');\n"
            'CREATE TABLE "odd;name" ("x""y;" INT);\n'
            "SELECT 1 -- a comment; not a statement\n;\n"
            "SELECT /* one; /* nested; */ still; */ 2;\n")
    assert statements(text) == [
        (1, "INSERT INTO t VALUES ('a;b', 'it''s; fine')"),
        (2, 'CREATE TABLE "odd;name" ("x""y;" INT)'),
        (3, "SELECT 1 -- a comment; not a statement"),
        (5, "SELECT /* one; /* nested; */ still; */ 2"),
    ]


def test_dollar_quoted_bodies_keep_their_semicolons():
    text = ("CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql;\n"
            "DO $body$ BEGIN PERFORM 1; END $body$;\n"
            "SELECT $1;\n")
    assert statements(text) == [
        (1, "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql"),
        (2, "DO $body$ BEGIN PERFORM 1; END $body$"),
        (3, "SELECT $1"),
    ]


def test_a_statement_after_comments_starts_at_the_comment_and_comment_only_chunks_are_dropped():
    text = "-- header; with a semicolon\n/* block; */\n;\n  -- about the next one\nSELECT 1;\n-- trailing\n"
    assert statements(text) == [(4, "-- about the next one\nSELECT 1")]


@pytest.mark.parametrize("text, last", [
    ("SELECT 'never closed; ;", "SELECT 'never closed; ;"),
    ('SELECT "never closed; ;', 'SELECT "never closed; ;'),
    ("SELECT $$ never closed; ;", "SELECT $$ never closed; ;"),
    ("SELECT 1 /* never closed; ;", "SELECT 1 /* never closed; ;"),
    ("SELECT 1 -- no newline; ;", "SELECT 1 -- no newline; ;"),
])
def test_an_unterminated_quote_or_comment_runs_to_the_end_of_the_file(text, last):
    assert statements("SELECT 0;\n" + text) == [(1, "SELECT 0"), (2, last)]


@pytest.mark.parametrize("text, expected", [
    ("SELECT /**/ 1; SELECT 2", [(1, "SELECT /**/ 1"), (1, "SELECT 2")]),
    ("SELECT /* /**/ */ 1; SELECT 2", [(1, "SELECT /* /**/ */ 1"), (1, "SELECT 2")]),
    ("SELECT 1 /* c */; SELECT 2", [(1, "SELECT 1 /* c */"), (1, "SELECT 2")]),
    ("SELECT 'it'''; SELECT 2", [(1, "SELECT 'it'''"), (1, "SELECT 2")]),
    ('SELECT "a"""; SELECT 2', [(1, 'SELECT "a"""'), (1, "SELECT 2")]),
    ("SELECT $;\nSELECT 2;", [(1, "SELECT $"), (2, "SELECT 2")]),
    ("SELECT $$a$$;SELECT 2", [(1, "SELECT $$a$$"), (1, "SELECT 2")]),
    ("SELECT $$a$$;SELECT $$b$$", [(1, "SELECT $$a$$"), (1, "SELECT $$b$$")]),
    ("DO $Body$ a; $Body$;SELECT 2", [(1, "DO $Body$ a; $Body$"), (1, "SELECT 2")]),
    ("'';SELECT 2", [(1, "''"), (1, "SELECT 2")]),
    ("\nSELECT 1;", [(2, "SELECT 1")]),
    ("-- c\n;SELECT 2", [(2, "SELECT 2")]),
    ("SELECT 1 -- a quote'\n;SELECT 2", [(1, "SELECT 1 -- a quote'"), (2, "SELECT 2")]),
])
def test_quotes_and_comments_end_exactly_where_they_close(text, expected):
    assert statements(text) == expected


def test_a_chunk_holding_only_a_block_comment_over_several_lines_is_dropped():
    assert statements("SELECT 1;\n/* a comment\n   over lines */;\nSELECT 2;") == [(1, "SELECT 1"), (4, "SELECT 2")]
