"""A team sharing environments (issue 28): one state bucket on a real S3-compatible server (versitygw),
operators with Pulumi homes and passphrase files of their own."""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from infra.driver import stacks, teststacks
from tests.e2e.support import ROOT, cli, sweep
from tests.servers import S3Server

TEAM_PASSPHRASE = "the-team-passphrase-from-the-secret-store"


@dataclass
class Operator:
    """One operator's machine: their own Pulumi home and passphrase file, the team's state bucket."""

    settings: stacks.Settings
    home: Path

    def env(self) -> dict[str, str]:
        return {"PULUMI_HOME": str(self.home)}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return cli(self.settings, *args, env=self.env())

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "infra", *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, **self.settings.env(), **self.env()})


@dataclass
class Team:
    s3: S3Server
    bucket: str
    base: Path
    stacks_made: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}?endpoint={self.s3.endpoint}&region={self.s3.region}&use_path_style=true"

    def operator(self, name: str, passphrase: str = TEAM_PASSPHRASE) -> Operator:
        base = self.base / name
        (base / "pulumi-home").mkdir(parents=True, exist_ok=True)
        plugins = base / "pulumi-home" / "plugins"
        if not plugins.exists():
            plugins.symlink_to(Path(os.environ["PULUMI_HOME"]) / "plugins")
        (base / "passphrase").write_text(passphrase + "\n")
        return Operator(stacks.Settings(self.url, base / "passphrase"), base / "pulumi-home")

    def new_stack_name(self) -> str:
        """A test stack's name; the stack is brought down and removed at the end, with its file."""
        name = teststacks.new_name()
        self.stacks_made.append(name)
        return name

    def keys(self) -> list[str]:
        return [item["Key"] for page in self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
                for item in page.get("Contents") or []]


@contextlib.contextmanager
def team(base: Path, monkeypatch) -> Iterator[Team]:
    """A bucket on a new versitygw server; every stack made is brought down and removed afterwards."""
    s3 = S3Server.start()
    made = Team(s3, s3.create_bucket(), base)
    for key, value in (("AWS_ACCESS_KEY_ID", s3.access_key), ("AWS_SECRET_ACCESS_KEY", s3.secret_key)):
        monkeypatch.setenv(key, value)
    try:
        yield made
    finally:
        cleanup = made.operator("cleanup")
        for name in made.stacks_made:
            cleanup.cli("down", "--stack", name, "--remove")
            sweep(name)
            teststacks.release(name)
            stacks.config_file(name).unlink(missing_ok=True)
        s3.stop()


def preview_summary(done: subprocess.CompletedProcess) -> dict:
    """What `python -m infra preview` counted, e.g. {'same': 15}."""
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("sin-datastores: preview: ")]
    return ast.literal_eval(line.split("preview: ", 1)[1])
