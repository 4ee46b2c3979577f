"""Command line: `python -m infra <command> --stack NAME`.

up/preview/down and test-stack drive stacks through the Automation API; plan/migrate/
verify/baseline/status/backup/restore run plain functions against a deployed stack,
reading its outputs. Exit codes: 0 success, 1 a check or command failed (or the stack is
unhealthy), 2 bad usage or input; bad input changes nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from pulumi import automation as auto

from infra.core.targets import POSTGRES_PORT, REDIS_PORT
from infra.backupagent import BackupAgentError
from infra.core import cluster, dockerhost
from infra.core.errors import SinError
from infra.deploy import migration_files, migrations, steps
from infra.deploy.registry import default_actor
from infra.driver import previews, pulumi_errors, stacks, teststacks
from infra.ops import adopt, agentstatus, forget_host, move_state, pitr, status, take_back
from infra.ops.backup import commands


def say(message: str) -> None:
    print(f"sin-datastores: {message}", file=sys.stderr, flush=True)


def print_endpoints(outputs: dict[str, auto.OutputValue]) -> None:
    value = {k: v.value for k, v in outputs.items() if not v.secret}
    print(f"network     {value.get('networkName')} ({value.get('networkSubnet')})")
    print(f"postgres    {value.get('postgresContainerName')} at {value.get('postgresIp')}:{POSTGRES_PORT}, "
          f"published on {value.get('postgresHost')}:{value.get('postgresHostPort')}, "
          f"database {value.get('postgresDatabase')}, user {value.get('postgresUser')}")
    print(f"redis       {value.get('redisContainerName')} at {value.get('redisIp')}:{REDIS_PORT}, "
          f"published on {value.get('redisHost')}:{value.get('redisHostPort')}")
    if value.get("backupContainerName"):
        print(f"backups     {value['backupContainerName']}, schedule '{value.get('backupSchedule')}' (UTC), "
              f"copies in its volume" + (f" and {value['backupS3Url']}" if value.get("backupS3Url") else ""))
    print("secrets     pulumi stack output --show-secrets postgresHostUrl | redisHostUrl")


def cmd_up(args: argparse.Namespace) -> int:
    with stacks.new_or_existing(args.stack) as stack:
        result = stacks.up(stack, args.images, say, generate_passwords=True, accept_data_loss=args.accept_data_loss,
                           on_output=print)
    changes = {k: v for k, v in (result.summary.resource_changes or {}).items() if k != "same"}
    say(f"update {result.summary.result}; changes: {changes or 'none'}")
    print_endpoints(result.outputs)
    with dockerhost.reach(stacks.target_from_outputs(args.stack, result.outputs, stacks.docker_host_of(stack))) as target:
        report = steps.verify(target)
    print(report.table())
    return 0 if report.ok else 1


def cmd_preview(args: argparse.Namespace) -> int:
    stack = stacks.open_stack(args.stack)
    events: list = []
    result, found = stacks.preview(stack, args.images, say, on_output=print, on_event=events.append, diff=True)
    say(f"preview: {result.change_summary}")
    for line in previews.pending_migrations(args.stack, stack.outputs(), stacks.docker_host_of(stack)):
        print(line)
    for finding in found:
        print(f"drift: {finding.line()}")
    risks = previews.risks(events, frozenset(f.urn for f in found if f.what == "data volume"))
    if risks:
        print(previews.banner(risks, args.stack))
    return 1 if risks and args.fail_on_risk else 0


def cmd_down(args: argparse.Namespace) -> int:
    stack = stacks.open_stack(args.stack)
    stacks.destroy(stack, say, release=args.remove, on_output=print)
    throwaway = teststacks.created_at(args.stack) is not None and not stacks.retains_volumes(stack)
    if args.remove and throwaway:  # a test stack whose volumes are gone: its file has nothing left to open
        stacks.remove_stack(stack, keep_config=False)
        say(f"test stack {args.stack} removed, with its Pulumi.{args.stack}.yaml")
    elif args.remove:
        stacks.remove_stack(stack)
        say(f"stack {args.stack} removed; Pulumi.{args.stack}.yaml is kept, with its encrypted passwords, so "
            f"`up` brings the stack back onto any retained volumes")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    with stacks.reached(args.stack) as target:
        plan = migrations.plan(target.postgres)
    if args.json:
        print(json.dumps({"applied": [r.version for r in plan.applied], "pending": migration_files.fingerprint(plan.pending)}))
    else:
        print(f"{len(plan.applied)} applied, {len(plan.pending)} pending")
        for m in plan.pending:
            print(f"  pending  {m.name}  sha256 {m.checksum[:12]}{'' if m.transactional else '  (no transaction)'}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    with stacks.reached(args.stack) as target:
        outcome = migrations.migrate(target.postgres, default_actor())
    for migration, elapsed in outcome.applied:
        print(f"applied  {migration.name}  {elapsed} ms")
    print(f"{len(outcome.applied)} applied, {outcome.already_applied} already applied")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with stacks.reached(args.stack) as target:
        report = steps.verify(target)
    print(report.to_json() if args.json else report.table())
    return 0 if report.ok else 1


def cmd_baseline(args: argparse.Namespace) -> int:
    with stacks.reached(args.stack) as target:
        done = migrations.baseline(target.postgres, default_actor(), args.version)
    print(f"baselined {', '.join(m.name for m in done)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    stack = stacks.open_stack(args.stack)
    outputs = stack.outputs()
    target = stacks.target_from_outputs(args.stack, outputs, stacks.docker_host_of(stack))
    agent = outputs.get("backupContainerName")
    if target.cluster:  # its members answer on their own addresses; nothing to tunnel
        backup = stacks.stack_config(args.stack).backup if "backupSchedule" in outputs else None
        bucket = (pitr.open_store(backup.s3.url, backup), backup.schedule) if backup and backup.s3 else None
        result = status.collect_replicated(target, backups=bucket)
    else:
        with dockerhost.reach(target) as reached:
            result = status.collect(reached, drift=stacks.drift_of(stack),
                                    backup_agent=(agent.value, outputs["backupSchedule"].value) if agent else None)
    print(result.to_json() if args.json else result.table())
    return 0 if result.healthy else 1


def cmd_move_state(args: argparse.Namespace) -> int:
    move_state.move(args.stack, stacks.Settings.default().backend_url, args.to, say)
    return 0


def cmd_forget_host(args: argparse.Namespace) -> int:
    forget_host.forget_host(stacks.open_stack(args.stack), args.host, say)
    say(f"`pulumi up --stack {args.stack}` now changes the other hosts only")
    return 0


def cmd_take_back(args: argparse.Namespace) -> int:
    with stacks.new_or_existing(args.stack) as stack:
        copy = take_back.take_back(stack, say)
    result, _ = stacks.preview(stack, args.images, say)
    changes = {k: v for k, v in (result.change_summary or {}).items() if k != "same"}
    if not stacks.managed_resources(copy.deployment):  # an environment that is down: `up` creates it again
        say(f"preview after the take-back: {changes}; `up` brings the environment back onto its volumes")
        return 0
    say(f"preview after the take-back: {changes or 'no changes'}")
    return 0 if not changes else 1


def cmd_backup(args: argparse.Namespace) -> int:
    if args.now:
        return _backup_now(args)
    if args.source:
        if not args.verify:
            raise stacks.StackError("--from names backups to verify; add --verify")
        config = stacks.stack_config(args.stack).backup
        with stacks.reached(args.stack, engine=True) as target:
            report = pitr.verify(target, args.source, config, args.name, say)
        print(report.table())
        return 0 if report.ok else 1
    with stacks.reached(args.stack, engine=True) as target:
        folder, manifest = commands.take(target, args.to)
        files = ", ".join(f"{name} {meta['size']} B" for name, meta in sorted(manifest["files"].items()))
        print(f"backup {folder}: {files}; {sum(manifest['postgres']['tables'].values())} rows, "
              f"{sum(manifest['redis']['keys'].values())} Redis keys")
        if not args.verify:
            return 0
        report = commands.verify(target, folder)
    print(report.table())
    return 0 if report.ok else 1


def _backup_now(args: argparse.Namespace) -> int:
    """The agent takes the backup: a replicated stack's on the leader's host (the others' take none)."""
    stack = stacks.open_stack(args.stack)
    outputs = stack.outputs()
    if "backupSchedule" not in outputs:
        raise stacks.StackError(f"stack '{args.stack}' has no backup agent; set backupSchedule (docs/backups.md) "
                                f"and run `up`")
    if "backupContainerName" in outputs:
        with dockerhost.session(stacks.docker_host_of(stack)) as session, dockerhost.using(session):
            run = agentstatus.run_now(outputs["backupContainerName"].value)
    else:
        with stacks.reached(args.stack, engine=True):
            run = agentstatus.run_now(cluster.container_name(args.stack, cluster.BACKUP_ROLE))
    say(f"backup {run['name']}: {run['result']}" + (f": {run.get('error')}" if run.get("error") else ""))
    return 0 if run["result"] == "ok" else 1


def cmd_restore(args: argparse.Namespace) -> int:
    if args.source.startswith("s3://") or pitr.is_store(Path(args.source)):  # the agent's backups
        config = stacks.stack_config(args.stack).backup
        with stacks.reached(args.stack, engine=True) as target:
            outcome = pitr.restore(target, args.source, config, args.to_time, say)
    else:  # a folder written by `backup`
        if args.to_time is not None:
            raise stacks.StackError(f"--to-time needs the backup agent's backups (--from s3://BUCKET/PREFIX, or a "
                                    f"copy of its store); {args.source} is a backup folder of one moment")
        with stacks.reached(args.stack, engine=True) as target:
            outcome = commands.restore(target, Path(args.source), say)
    print(outcome.report.table())
    say(f"restored {args.source} into stack {args.stack}; the previous database is kept as "
        f"{outcome.previous_database} (DROP DATABASE it once you no longer need it)")
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    try:
        # A refused, failed or dry run leaves no stack created here behind.
        with stacks.new_or_existing(args.stack, undo_on=(BaseException,), trial=args.dry_run) as stack:
            found = adopt.inspect_host(stack, args.images, args.rotate_passwords, say)
            for line in adopt.plan_lines(found, args.rotate_passwords):
                print(line, flush=True)
            if args.dry_run:
                say("dry run: nothing was changed")
                return 0
            result = adopt.take_over(stack, found, args.rotate_passwords, args.images, say, on_output=print)
    except adopt.AdoptRefused as exc:
        say(f"error: {exc}")
        return 2
    except adopt.AdoptFailed as exc:
        say(f"error: {exc}")
        return 1
    print_endpoints(result.outputs)
    for line in adopt.summary(found, result.outputs):
        print(line)
    return 0


def cmd_test_stack_create(args: argparse.Namespace) -> int:
    stack = teststacks.create()
    say(f"created test stack {stack.name}; remove it with `python -m infra down --stack {stack.name} --remove`")
    result = teststacks.up_with_retries(stack, lambda: stacks.up(stack, args.images, say, on_output=None), say)
    print(json.dumps({"stack": stack.name, **{k: v.value for k, v in result.outputs.items() if not v.secret}},
                     indent=2))
    return 0


def cmd_test_stack_sweep(args: argparse.Namespace) -> int:
    swept = teststacks.sweep(timedelta(minutes=args.older_than_minutes), say=say)
    print(f"removed {len(swept.stacks)} test stacks{': ' + ', '.join(swept.stacks) if swept.stacks else ''}; "
          f"{len(swept.objects)} leftover Docker objects{': ' + ', '.join(swept.objects) if swept.objects else ''}")
    if swept.in_use:
        say(f"left {len(swept.in_use)} old test stacks that live processes still use: {', '.join(swept.in_use)}")
    for error in swept.errors:
        say(f"error: {error}")
    return 1 if swept.errors else 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m infra", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)

    on_replicated: list[str] = []

    def command(name: str, handler, help_: str, replicated: bool = False) -> argparse.ArgumentParser:
        """``replicated``: the command works on a replicated stack too (on its leader and master: stacks.reached)."""
        p = sub.add_parser(name, help=help_)
        p.add_argument("--stack", required=True, help="stack name, e.g. dev")
        p.set_defaults(handler=handler, replicated=replicated, on_replicated=on_replicated)
        if replicated:
            on_replicated.append(name)
        return p

    for name, handler, help_ in (("up", cmd_up, "create or update the stack, then print endpoints and report"),
                                 ("preview", cmd_preview, "show what `up` would change; touches nothing")):
        p = command(name, handler, help_)
        images_option(p)
        if name == "up":
            p.add_argument("--accept-data-loss", action="store_true",
                           help="go ahead when a data volume of the stack is gone: start on a new, empty one")
        if name == "preview":
            p.add_argument("--fail-on-risk", action="store_true",
                           help="exit 1 when a data volume or a database container would be replaced or deleted, "
                                "or a lost data volume created empty")
    command("down", cmd_down, "destroy the stack's resources").add_argument(
        "--remove", action="store_true", help="also remove the stack from the backend (its config file stays)")
    command("plan", cmd_plan, "list pending migrations; applies nothing", replicated=True).add_argument(
        "--json", action="store_true")
    command("migrate", cmd_migrate, "apply pending migrations", replicated=True)
    command("verify", cmd_verify, "verify both services (a replicated stack: and its cluster)",
            replicated=True).add_argument("--json", action="store_true")
    command("baseline", cmd_baseline, "mark migrations up to a version as applied", replicated=True).add_argument(
        "--version", type=int, required=True)
    command("status", cmd_status, "containers (a replicated stack: its members), monitoring figures, "
            "pending migrations, audit; exit 1 when unhealthy", replicated=True).add_argument(
        "--json", action="store_true")
    p = command("backup", cmd_backup, "back up PostgreSQL (pg_dump -Fc) and Redis (BGSAVE + AOF copy); a "
                "replicated stack's on its leader's host", replicated=True)
    p.add_argument("--to", type=Path, default=stacks.HOME / "backups",
                   help="backup root; the backup lands in ROOT/STACK/<UTC time>/ (default %(default)s)")
    p.add_argument("--verify", action="store_true", help="then restore it into scratch places and compare")
    p.add_argument("--from", dest="source",
                   help="with --verify: the agent's backups to verify instead (s3://BUCKET/PREFIX or a store folder)")
    p.add_argument("--name", help="with --from: the backup to verify (base/NAME; default the newest)")
    p.add_argument("--now", action="store_true", help="have the stack's backup agent take a scheduled-style backup now")
    p = command("restore", cmd_restore, "replace the stack's data with a backup, all or nothing (a replicated "
                "stack's: on its leader and master)", replicated=True)
    p.add_argument("--from", dest="source", required=True,
                   help="a backup folder (ROOT/STACK/<UTC time>), or the agent's backups: s3://BUCKET/PREFIX")
    p.add_argument("--to-time", type=point_in_time,
                   help='restore PostgreSQL to this moment, e.g. "2026-11-26 10:42:00" (UTC unless an offset is '
                        'given); Redis comes from the newest snapshot before it')
    command("move-state", cmd_move_state, "move the stack's state, history included, from this machine's "
            "backend into the team's bucket; touches nothing on the Docker host").add_argument(
        "--to", required=True, help="the bucket's backend URL, e.g. s3://BUCKET?region=eu-central-1")
    command("forget-host", cmd_forget_host, "a replicated stack: drop a host that is gone for good (off "
            "replicatedHosts, its engine out of reach) from the state, and have etcd and the Sentinels forget it; "
            "touches nothing on that host", replicated=True).add_argument(
        "--host", required=True, type=host_address, help="the host's address, e.g. 10.0.0.14")
    images_option(command("take-back", cmd_take_back, "take the stack's running environment back into its state, "
                          "lost, from the copy `up` keeps on the Docker host; touches nothing there"))
    p = command("adopt", cmd_adopt, "take over the ADR's compose-style deployment (containers, volumes, network) "
                "into the stack, keeping every row and key")
    images_option(p)
    p.add_argument("--dry-run", action="store_true", help="check everything and print each step; change nothing")
    p.add_argument("--rotate-passwords", action="store_true",
                   help="give the stack new passwords instead of the ones the old containers use")

    test_stack = sub.add_parser("test-stack", help="throwaway test stacks").add_subparsers(
        dest="action", required=True)
    create = test_stack.add_parser("create", help="create and bring up a test stack with a free subnet and ports")
    create.set_defaults(handler=cmd_test_stack_create)
    images_option(create)
    sweep = test_stack.add_parser("sweep", help="remove test stacks (and their Docker objects) older than a limit")
    sweep.set_defaults(handler=cmd_test_stack_sweep)
    sweep.add_argument("--older-than-minutes", type=float, default=120, help="age limit (default %(default)s)")
    return root


def point_in_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a time like \"2026-11-26 10:42:00\" (UTC) "
                                         f"or \"2026-11-26T10:42:00+01:00\"") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def host_address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a host's IPv4 address like 10.0.0.14 (as in "
                                         f"replicatedHosts)") from None


def images_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", choices=("auto", "config", "local"), default="auto",
                   help="auto: local images for configured ones missing on this host (default)")


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if getattr(args, "stack", None) and not getattr(args, "replicated", False):
            stacks.refuse_replicated(args.stack, args.on_replicated)
        return args.handler(args)
    except (SinError, auto.CommandError) as exc:
        # Each kind carries its exit code: 2 bad input (nothing changed), 1 a failed step. A failure of the
        # Pulumi CLI an operator fixes by hand (the passphrase, a lock) is said with its fix.
        known = pulumi_errors.explain(str(exc), getattr(args, "stack", ""),
                                      str(stacks.Settings.default().passphrase_file))
        if known is not None:
            exc = known
        say(f"error: {exc}" if isinstance(exc, SinError) else f"error: pulumi failed:\n{exc}")
        return exc.exit_code if isinstance(exc, SinError) else 1
    except BackupAgentError as exc:  # the agent's code stands alone (it runs in its container)
        say(f"error: {exc}")
        return 2
