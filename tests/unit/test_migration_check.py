"""How the runner compares the files with the history, before it touches a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.deploy.migration_files import Migration, MigrationError
from infra.deploy.migrations import Applied, check


def migration(version: int, checksum: str = "") -> Migration:
    return Migration(version, f"step {version}", Path(f"V{version:03d}__step_{version}.sql"), "SELECT 1;",
                     checksum or f"{version}" * 64, True)


def applied(version: int, checksum: str = "", success: bool = True, kind: str = "SQL") -> Applied:
    return Applied(version, f"step {version}", checksum or f"{version}" * 64, "tester", success, kind)


def refusal(files, history) -> str:
    with pytest.raises(MigrationError) as caught:
        check(files, history)
    return str(caught.value)


def test_files_not_in_the_history_are_pending_in_order():
    files = [migration(1), migration(2), migration(3)]
    plan = check(files, [applied(1)])
    assert plan.applied == [applied(1)]
    assert [m.version for m in plan.pending] == [2, 3]


def test_on_an_empty_history_even_version_0_is_pending():
    assert [m.version for m in check([migration(0), migration(1)], []).pending] == [0, 1]


def test_a_changed_file_is_refused_with_both_checksums_and_the_fix():
    assert refusal([migration(1, "a" * 64)], [applied(1, "b" * 64)]) == (
        "V001__step_1.sql was changed after it was applied (applied sha256 bbbbbbbbbbbb, file now aaaaaaaaaaaa); "
        "restore the applied content and put the change in a new migration file")


def test_a_baselined_file_may_differ_from_what_the_schema_was_built_with():
    assert check([migration(1, "a" * 64)], [applied(1, "b" * 64, kind="BASELINE")]).pending == []


def test_a_missing_file_is_refused():
    assert refusal([migration(2)], [applied(1), applied(2)]) == (
        "V1 (step 1) was applied but its file is missing from sql/; restore it")


def test_a_failed_run_outside_a_transaction_blocks_until_cleaned_up():
    assert refusal([migration(1), migration(2)], [applied(1), applied(2, success=False)]) == (
        "V2 (step 2) failed outside a transaction in an earlier run; undo what it left behind by hand, "
        "then DELETE FROM sin_schema_history WHERE version = 2")


def test_a_new_file_sorting_before_the_newest_applied_one_is_refused():
    assert refusal([migration(1), migration(2), migration(3)], [applied(1), applied(3)]) == (
        "V002__step_2.sql sorts before V3, which is already applied; renumber it above V3")
