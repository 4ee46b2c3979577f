"""What a preview must make impossible to miss: steps that would replace or delete a data
volume or a database container, and migrations the next `up` would apply."""

from __future__ import annotations

from dataclasses import dataclass

from pulumi import automation as auto

from infra import migrations, stacks
from infra.connect import ConnectError

DATA_TYPES = {"docker:index/volume:Volume": "data volume", "docker:index/container:Container": "database container"}
RISKY_OPS = {"replace", "create-replacement", "delete-replaced", "delete", "discard"}


@dataclass(frozen=True)
class Risk:
    kind: str
    name: str
    op: str
    because: tuple[str, ...]

    def line(self) -> str:
        why = f" (because of {', '.join(self.because)})" if self.because else ""
        if self.kind == "data volume":
            effect = "ITS DATA IS LOST unless you back it up first (`python -m infra backup --stack ...`)"
        else:
            effect = "the service is down while it is recreated; its data stays on the volume"
        return f"  {self.op.upper()} {self.kind} {self.name}{why}: {effect}"


def risks(events: list[auto.EngineEvent]) -> list[Risk]:
    """Replace or delete steps on volumes and containers, one per resource."""
    found: dict[str, Risk] = {}
    for event in events:
        pre = event.resource_pre_event
        if not pre:
            continue
        meta = pre.metadata
        op = str(getattr(meta.op, "value", meta.op))
        if meta.type in DATA_TYPES and op in RISKY_OPS and meta.urn not in found:
            found[meta.urn] = Risk(DATA_TYPES[meta.type], meta.urn.rsplit("::", 1)[-1], op,
                                   tuple(meta.keys or meta.diffs or ()))
    return list(found.values())


def banner(found: list[Risk]) -> str:
    rule = "!" * 78
    return "\n".join([rule, f"!! WARNING: this change would replace or delete {len(found)} data resource(s)",
                      *[r.line() for r in found], rule])


def pending_migrations(name: str, outputs: dict[str, auto.OutputValue]) -> list[str]:
    """The migrations the next `up` would apply, as report lines."""
    files = migrations.load()
    try:
        target = stacks.target_from_outputs(name, outputs)
    except stacks.StackError:
        return [f"migrations: stack not deployed yet; all {len(files)} would be applied: "
                f"{', '.join(m.name for m in files)}"]
    try:
        plan = migrations.plan(target.postgres, deadline_s=5)
    except ConnectError as exc:
        return [f"migrations: cannot tell which are pending, the database does not answer ({exc})"]
    except migrations.MigrationError as exc:
        return [f"migrations: `up` would FAIL: {exc}"]
    if not plan.pending:
        return [f"migrations: none pending ({len(plan.applied)} applied)"]
    return [f"migrations: {len(plan.pending)} pending, applied by the next `up`:"] + [
        f"  + {m.name}" for m in plan.pending]
