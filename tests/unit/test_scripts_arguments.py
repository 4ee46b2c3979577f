"""The scripts' first argument is a stack only when it is not a flag: `scripts/down --remove` is dev's,
as the README's `scripts/down [STACK] [--remove]` says. Run against a stand-in setup and python."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the scripts whose setup puts a python on PATH that prints its arguments."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "toolchain").mkdir()
    (tmp_path / "bin").mkdir()
    for name in ("up", "preview", "down"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    setup = tmp_path / "toolchain" / "setup.sh"
    setup.write_text(f"#!/bin/sh\necho \"export PATH='{tmp_path / 'bin'}':\\\"\\$PATH\\\"\"\n")
    python = tmp_path / "bin" / "python"
    python.write_text('#!/bin/sh\necho "$@"\n')
    for path in (setup, python):
        path.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("script, args, expected", [
    ("down", [], "-m infra down --stack dev"),
    ("down", ["--remove"], "-m infra down --stack dev --remove"),
    ("down", ["prod", "--remove"], "-m infra down --stack prod --remove"),
    ("preview", ["--fail-on-risk"], "-m infra preview --stack dev --fail-on-risk"),
    ("preview", ["prod"], "-m infra preview --stack prod"),
    ("up", ["--images", "local"], "-m infra up --stack dev --images local"),
])
def test_a_flag_first_means_the_dev_stack(tree, script, args, expected):
    done = subprocess.run([str(tree / "scripts" / script), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "HOME": str(tree)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected
