"""The Pulumi CLI's failures an operator fixes by hand are said with the fix (exit 2), not dumped."""

from __future__ import annotations

from infra import cli
from infra.driver import pulumi_errors
from pulumi import automation as auto

LOCKED = ("error: the stack is currently locked by 2 lock(s). Either wait for the other process(es) to end or delete "
          "the lock file with `pulumi cancel`.\n"
          "  s3://state/.pulumi/locks/organization/sin-datastores/dev/3f.json: created by ana@ops-1 (pid 4242) at "
          "2026-12-06T05:12:01+01:00\n"
          "  s3://state/.pulumi/locks/organization/sin-datastores/dev/40.json: created by ben@ops-2 (pid 77) at "
          "2026-12-06T04:30:00Z")


def test_a_lock_names_every_holder_since_when_in_utc_and_the_command_that_clears_it():
    error = pulumi_errors.explain(LOCKED, "dev", "/home/ana/.sin-datastores/passphrase")
    assert isinstance(error, pulumi_errors.StackLocked) and error.exit_code == 2
    assert "ana@ops-1 (pid 4242) since 2026-12-06 04:12:01 UTC, ben@ops-2 (pid 77) since 2026-12-06 04:30:00 UTC" \
        in str(error)
    assert "`pulumi cancel --stack dev --yes`" in str(error) and "nothing was changed" in str(error)


def test_a_wrong_or_missing_passphrase_names_where_it_came_from(monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    wrong = pulumi_errors.explain("error: getting stack configuration: get stack secrets manager: incorrect passphrase",
                                  "prod", "/root/.sin-datastores/passphrase")
    assert isinstance(wrong, pulumi_errors.PassphraseError) and wrong.exit_code == 2
    assert "the file /root/.sin-datastores/passphrase (this machine's default" in str(wrong)
    assert "does not open the secrets of stack 'prod'" in str(wrong) and "PULUMI_CONFIG_PASSPHRASE_FILE" in str(wrong)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", "/run/team/passphrase")
    assert "from the file /run/team/passphrase does not" in str(pulumi_errors.explain(
        "could not create secrets manager for new stack: incorrect passphrase", "prod", "/run/team/passphrase"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "x")
    missing = pulumi_errors.explain("error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or "
                                    "PULUMI_CONFIG_PASSPHRASE_FILE environment variables", "prod", "/run/x")
    assert "from PULUMI_CONFIG_PASSPHRASE is not set" in str(missing)


def test_other_failures_are_left_as_they_are():
    assert pulumi_errors.explain("error: network with name sin-network already exists", "dev", "/p") is None


def test_the_command_line_says_it_once_with_exit_2_and_no_dump(monkeypatch, capsys):
    def locked(_args):
        raise auto.CommandError(auto._cmd.CommandResult(stdout="", stderr=LOCKED, code=255))
    monkeypatch.setattr(cli, "cmd_preview", locked)
    assert cli.main(["preview", "--stack", "dev"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "is locked by another command: ana@ops-1" in err and "s3://" not in err
