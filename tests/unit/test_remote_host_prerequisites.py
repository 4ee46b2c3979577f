"""The remote-host harness refuses loudly, never skips, when this machine lacks what it needs."""

from __future__ import annotations

import pytest

from tests import remote_host


def test_a_missing_sshd_fails_the_test_naming_the_package_and_the_script(monkeypatch):
    monkeypatch.setattr(remote_host, "_which", lambda cmd: None if cmd == "sshd" else f"/usr/bin/{cmd}")
    monkeypatch.setattr(remote_host.os, "geteuid", lambda: 0)

    with pytest.raises(pytest.fail.Exception) as failure:
        remote_host.require_prerequisites()

    assert "`sshd` (Debian package openssh-server)" in str(failure.value)
    assert "toolchain/remote-host.sh" in str(failure.value)


def test_without_root_the_harness_says_so(monkeypatch):
    monkeypatch.setattr(remote_host, "_which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr(remote_host.os, "geteuid", lambda: 1000)

    assert remote_host.missing_prerequisites() == ["root (network namespaces, veth pairs and a second dockerd need it)"]
