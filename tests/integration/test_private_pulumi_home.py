"""A test stack's private PULUMI_HOME (infra.driver.teststacks), with the real `pulumi` CLI writing
into it."""

from __future__ import annotations

import os
import subprocess

from infra.driver import teststacks


def test_a_private_pulumi_home_takes_the_logs_shares_the_plugins_and_goes_away(tmp_path, monkeypatch):
    user_home = tmp_path / "user-pulumi-home"
    monkeypatch.setenv("PULUMI_HOME", str(user_home))
    with teststacks.private_pulumi_home() as home:
        assert os.environ["PULUMI_HOME"] == str(home)
        subprocess.run(["pulumi", "version"], check=True, capture_output=True)
        assert [p.suffix for p in (home / "logs").iterdir()] == [".log"]
        assert (home / "plugins").resolve() == (user_home / "plugins").resolve()
    assert os.environ["PULUMI_HOME"] == str(user_home)
    assert not home.exists()
    assert not (user_home / "logs").exists()
