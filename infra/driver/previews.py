"""What a preview must make impossible to miss: steps that would replace or delete a data
volume or a database container, a new (empty) volume in place of one the Docker host lost,
and migrations the next `up` would apply."""

from __future__ import annotations

from dataclasses import dataclass

from pulumi import automation as auto

from infra.core import dockerhost
from infra.deploy import migration_files, migrations
from infra.driver import stacks
from infra.core.connect import ConnectError
from infra.core.targets import DockerHost

DATA_TYPES = {"docker:index/volume:Volume": "data volume", "docker:index/container:Container": "database container"}
RISKY_OPS = {"replace", "create-replacement", "delete-replaced", "delete", "discard"}


@dataclass(frozen=True)
class Risk:
    kind: str
    name: str
    op: str
    because: tuple[str, ...]

    def line(self, stack: str) -> str:
        why = f" (because {', '.join(self.because)} changed)" if self.because else ""
        if self.kind == "data volume" and self.op == "create":
            effect = (f"DATA LOSS: the volume is gone from the Docker host and the service would start on a new, "
                      f"empty one (`python -m infra up` asks for --accept-data-loss); then restore from a backup "
                      f"with `python -m infra restore --stack {stack} --from DIR`")
        elif self.kind == "data volume":
            effect = (f"DATA LOSS: the service would start on a new, empty volume; back up first with "
                      f"`python -m infra backup --stack {stack}`")
        else:
            effect = "downtime while it is recreated; its data stays on its volume"
        return f"  {self.op.upper()} {self.kind} {self.name}{why}: {effect}"


def risks(events: list[auto.EngineEvent], gone: frozenset[str] = frozenset()) -> list[Risk]:
    """Replace or delete steps on volumes and containers, one per resource (the replace
    step wins over its delete half, which carries no reason), and creates of the data volumes
    in ``gone`` (URNs the stack had but the Docker host lost: a new volume is an empty one)."""
    found: dict[str, Risk] = {}
    for event in events:
        pre = event.resource_pre_event
        if not pre or pre.metadata.type not in DATA_TYPES:
            continue
        meta = pre.metadata
        op = str(getattr(meta.op, "value", meta.op))
        lost = op == "create" and meta.urn in gone and DATA_TYPES[meta.type] == "data volume"
        if not (op in RISKY_OPS or lost) or (meta.urn in found and op != "replace"):
            continue
        state = meta.old or meta.new
        name = ((state.outputs or {}).get("name") or (state.inputs or {}).get("name")) if state else None
        found[meta.urn] = Risk(DATA_TYPES[meta.type], name or meta.urn.rsplit("::", 1)[-1], op,
                               tuple(meta.keys or ()))
    return list(found.values())


def banner(found: list[Risk], stack: str) -> str:
    rule = "!" * 78
    verbs = "re-create empty, replace or delete" if any(r.op == "create" for r in found) else "replace or delete"
    return "\n".join([rule, f"!! WARNING: this change would {verbs} {len(found)} data resource(s)",
                      *[r.line(stack) for r in found], rule])


def pending_migrations(name: str, outputs: dict[str, auto.OutputValue], docker: DockerHost) -> list[str]:
    """The migrations the next `up` would apply, as report lines."""
    try:
        target = stacks.target_from_outputs(name, outputs, docker)
    except stacks.StackError:
        files = migration_files.load()
        return [f"migrations: stack not deployed yet; all {len(files)} would be applied: "
                f"{', '.join(m.name for m in files)}"]
    try:
        with dockerhost.reach(target) as reached:
            plan = migrations.plan(reached.postgres, deadline_s=5)
    except (ConnectError, dockerhost.DockerHostError) as exc:
        return [f"migrations: cannot tell which are pending, the database does not answer ({exc})"]
    except migration_files.MigrationError as exc:
        return [f"migrations: `up` would FAIL: {exc}"]
    if not plan.pending:
        return [f"migrations: none pending ({len(plan.applied)} applied)"]
    return [f"migrations: {len(plan.pending)} pending, applied by the next `up`:"] + [
        f"  + {m.name}" for m in plan.pending]
