"""`python -m infra` refuses a replicated stack, before anything runs, with exit 2 and what to use instead;
except `status`, `verify`, `plan`, `migrate`, `baseline`, `backup`, `restore` and `forget-host`."""

from __future__ import annotations

import pytest

from infra import cli
from infra.driver import stacks


def test_a_replicated_stack_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text("config:\n  sin-datastores:topology: replicated\n")
    monkeypatch.setattr(stacks, "config_file", lambda name: path)
    monkeypatch.setattr(stacks, "open_stack", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert cli.main(["take-back", "--stack", "prod"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sin-datastores: error: stack 'prod' uses the replicated topology, which `python -m infra` does not manage yet "
        "beyond `plan`, `migrate`, `verify`, `baseline`, `status`, `backup`, `restore` and `forget-host`; nothing was "
        "done. Use "
        "`pulumi preview|up|destroy --stack prod` (docs/replicated.md)")


@pytest.mark.parametrize("command", [["status"], ["verify"], ["plan"], ["migrate"], ["baseline", "--version", "1"],
                                     ["restore", "--from", "s3://sin-backups/prod"],
                                     ["forget-host", "--host", "10.0.0.14"], ["backup", "--now"]])
def test_what_works_on_a_replicated_stack_goes_on(tmp_path, monkeypatch, command):
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text("config:\n  sin-datastores:topology: replicated\n")
    monkeypatch.setattr(stacks, "config_file", lambda name: path)
    class Opened(Exception):
        pass

    monkeypatch.setattr(stacks, "open_stack", lambda *a, **k: (_ for _ in ()).throw(Opened()))
    with pytest.raises(Opened):
        cli.main([*command[:1], "--stack", "prod", *command[1:]])


def test_a_single_host_stack_goes_on(tmp_path, monkeypatch):
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text("config:\n  sin-datastores:topology: single\n")
    monkeypatch.setattr(stacks, "config_file", lambda name: path)
    stacks.refuse_replicated("dev", ["status"])  # no error
