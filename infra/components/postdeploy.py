"""The thin adapter that runs the post-deploy step inside `pulumi up`.

A dynamic resource (``pulumi.dynamic``, which every Pulumi install ships for Python programs)
whose inputs are the migration files' checksums, both containers' ids and the connection
target: `pulumi preview` diffs those (so pending migrations show up, and no database is
touched), and `pulumi up` runs :func:`infra.deploy.provider_step.run` whenever one of them
changed. A second `up` with nothing changed does nothing.

The engine runs the provider in a Python process of its own (``python -m pulumi.dynamic``),
which unpickles :class:`_PostDeployProvider` from the step's state by module and class name.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import pulumi
import pulumi.dynamic as dynamic

# The dynamic provider's package, and the type of every dynamic resource of a Python program.
PROVIDER_PACKAGE = "pulumi-python"
STEP_TYPE = f"{PROVIDER_PACKAGE}:dynamic:Resource"
# Inputs whose change re-runs the step (the step's outputs repeat them: infra.deploy.provider_step).
TRIGGERS = ("target", "migrations", "container_ids")


class StepFailed(Exception):
    """A dynamic resource's plain step failed; the message is the step's own (no password in it)."""


@contextmanager
def in_its_own_words() -> Iterator[None]:
    """A plain step's failure as the engine shows it for the resource: its type and message, without
    the chain of frames (whose arguments would hold the passwords)."""
    try:
        yield
    except Exception as exc:
        raise StepFailed(f"{type(exc).__name__}: {exc}") from None


class EngineBoundProvider(dynamic.ResourceProvider):
    """A dynamic provider whose process ends with the engine that started it."""

    def configure(self, req: dynamic.ConfigureRequest) -> None:
        """Called once in each provider process: leave with the engine (see :func:`_leave_with_engine`)."""
        if _serving():
            _leave_with_engine()


class _PostDeployProvider(EngineBoundProvider):
    """The step's provider. Its name and module are in the state of every stack (pulumi.dynamic
    pickles it by reference), the stacks of release 4cf03c7 and earlier included, whose step was
    this very class: keep both, and keep it free of instance state (the pickle stays ~60 bytes,
    and equal across releases, so the engine sees no change)."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=props["target"]["stack"], outs=_run(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        """Re-run the step in place when a trigger changed; the actor or fresh outputs alone change nothing."""
        changed = [k for k in TRIGGERS if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=_run(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the schema lives in the data volume."""


def _run(props: dict[str, Any]) -> dict[str, Any]:
    """Run the plain step (imported here, in the provider's process only); a failure is its own words."""
    from infra.deploy import provider_step

    with in_its_own_words():
        return provider_step.run(props)


_watching = threading.Lock()


def _serving() -> bool:
    """This process is the engine's dynamic provider (``python -m pulumi.dynamic``), not a test or a program."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "pulumi.dynamic.__main__"


def _leave_with_engine(poll_s: float = 1.0, stdin: int = 0, stop: Optional[Callable[[], None]] = None) -> None:
    """Stop this provider process when the engine that started it is gone.

    The engine ends its plugins when it finishes (SIGINT, SIGKILL 5 s later). A CLI that dies
    without that (killed, or by SIGPIPE when whoever read its output went away) leaves them
    running (the docker provider was seen an hour later); ``python -m pulumi.dynamic`` waits
    forever. The engine holds the write end of our stdin (a pipe): its end of file means
    the engine is gone; without such a pipe, being handed to another parent means the same.
    ``stdin`` and ``stop`` (default: :func:`_stop_group`) are there for the tests.
    """
    if not _watching.acquire(blocking=False):
        return  # already watching
    try:
        piped = stat.S_ISFIFO(os.fstat(stdin).st_mode)
    except OSError:
        piped = False
    parent = os.getppid()

    def watch() -> None:
        if piped:
            while os.read(stdin, 4096):  # the raw fd: no lock of sys.stdin held at the interpreter's exit
                pass
        else:
            while os.getppid() == parent:
                time.sleep(poll_s)
        (stop or _stop_group)()

    threading.Thread(target=watch, name="leave-with-engine", daemon=True).start()


def _stop_group() -> None:
    """Kill this process and what it started (an SSH tunnel of the step): its process group, when
    it is the provider's own (the engine starts each plugin in a group of its own, led by the
    plugin or by the shell script that started this interpreter); else this process alone."""
    group = os.getpgrp()
    if group in (os.getpid(), os.getppid()):
        os.killpg(group, signal.SIGKILL)
    os._exit(1)


@dataclass
class PostDeployArgs:
    """Arguments of :class:`PostDeploy`."""

    target: pulumi.Input[dict]
    """:meth:`infra.core.connect.Target.to_dict` of the stack; carries both passwords."""
    migrations: list[dict]
    """:func:`infra.deploy.migration_files.fingerprint` of the migration files."""
    container_ids: pulumi.Input[list[str]]
    """Both containers' ids: a replaced container is verified again."""
    actor: str
    """Who runs the deployment, for the history and the audit trail."""
    ready_timeout_s: int
    """How long the step waits for containers just (re)started to answer (healthTimeoutSeconds)."""
    services: list[pulumi.Resource]
    """The services the step runs after. Only the step depends on them: a dependency of the
    component would hold back its provider too (see :class:`PostDeploy`)."""


class PostDeployStep(dynamic.Resource):
    applied: pulumi.Output[list[str]]
    checks: pulumi.Output[int]
    converged: pulumi.Output[list[str]]

    def __init__(self, name: str, args: PostDeployArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(
            _PostDeployProvider(), name,
            {"target": pulumi.Output.secret(args.target), "migrations": args.migrations,
             "container_ids": args.container_ids, "actor": args.actor, "ready_timeout_s": args.ready_timeout_s,
             "applied": None, "already_applied": None, "checks": None, "failed": None, "timings_ms": None,
             "converged": None},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["target"])),
        )


class PostDeploy(pulumi.ComponentResource):
    """Apply the schema and verify both services as soon as the containers answer."""

    applied: pulumi.Output[list[str]]
    checks: pulumi.Output[int]
    converged: pulumi.Output[list[str]]

    def __init__(self, name: str, args: PostDeployArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("sin-datastores:index:PostDeploy", name, None, opts)
        # The step registers only once the containers exist (its inputs hold their ids), and the
        # engine would start its provider process (a Python interpreter importing the SDK, ~0.3 s)
        # only then. This provider has no inputs and depends on nothing, so it registers at once and
        # that process starts while the rest of the program runs. (Its URN and the step's are those
        # of release 4cf03c7 and earlier, whose stacks therefore keep their step.)
        provider = pulumi.ProviderResource(PROVIDER_PACKAGE, f"{name}-provider",
                                           opts=pulumi.ResourceOptions(parent=self))
        step = PostDeployStep(f"{name}-step", args, pulumi.ResourceOptions(
            parent=self, provider=provider, depends_on=args.services))
        self.applied = step.applied
        self.checks = step.checks
        self.converged = step.converged
        self.register_outputs({"applied": self.applied, "checks": self.checks, "converged": self.converged})
