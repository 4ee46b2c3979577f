"""Command line: `python -m infra <command> --stack NAME`.

up/preview/down drive the stack through the Automation API; plan/migrate/verify/baseline
run the plain post-deploy functions against a deployed stack, reading its outputs.
Exit codes: 0 success, 1 a check or command failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from pulumi import automation as auto

from infra import migrations, stacks
from infra.config import ConfigError
from infra.connect import ConnectError
from infra.migrations import MigrationError
from infra.postdeploy import default_actor
from infra.verify import verify


def say(message: str) -> None:
    print(f"sin-datastores: {message}", file=sys.stderr, flush=True)


def print_endpoints(outputs: dict[str, auto.OutputValue]) -> None:
    value = {k: v.value for k, v in outputs.items() if not v.secret}
    print(f"network     {value.get('networkName')} ({value.get('networkSubnet')})")
    print(f"postgres    {value.get('postgresContainerName')} at {value.get('postgresIp')}:5432, "
          f"published on {value.get('postgresHost')}:{value.get('postgresHostPort')}, "
          f"database {value.get('postgresDatabase')}, user {value.get('postgresUser')}")
    print(f"redis       {value.get('redisContainerName')} at {value.get('redisIp')}:6379, "
          f"published on {value.get('redisHost')}:{value.get('redisHostPort')}")
    print("secrets     pulumi stack output --show-secrets postgresHostUrl | redisHostUrl")


def cmd_up(args: argparse.Namespace) -> int:
    stack = stacks.open_stack(args.stack, create=True)
    for key in stacks.ensure_secrets(stack):
        say(f"generated {key} and stored it as a Pulumi secret in Pulumi.{args.stack}.yaml")
    config_file = stacks.overlay_config_file(stack, stacks.image_overrides(stack, args.images, say))
    result = stack.up(on_output=print, config_file=config_file, color="never")
    changes = {k: v for k, v in (result.summary.resource_changes or {}).items() if k != "same"}
    say(f"update {result.summary.result}; changes: {changes or 'none'}")
    print_endpoints(result.outputs)
    target = stacks.target_from_outputs(args.stack, result.outputs)
    report = verify(target.postgres, target.redis)
    print(report.table())
    return 0 if report.ok else 1


def cmd_preview(args: argparse.Namespace) -> int:
    stack = stacks.open_stack(args.stack)
    config_file = stacks.overlay_config_file(stack, stacks.image_overrides(stack, args.images, say))
    result = stack.preview(on_output=print, diff=True, config_file=config_file, color="never")
    say(f"preview: {result.change_summary}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stack = stacks.open_stack(args.stack)
    stack.destroy(on_output=print, color="never")
    if args.remove:
        stack.workspace.remove_stack(args.stack)
        say(f"stack {args.stack} removed")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    plan = migrations.plan(stacks.deployed_target(args.stack).postgres)
    if args.json:
        print(json.dumps({"applied": [r.version for r in plan.applied], "pending": migrations.fingerprint(plan.pending)}))
    else:
        print(f"{len(plan.applied)} applied, {len(plan.pending)} pending")
        for m in plan.pending:
            print(f"  pending  {m.name}  sha256 {m.checksum[:12]}{'' if m.transactional else '  (no transaction)'}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    outcome = migrations.migrate(stacks.deployed_target(args.stack).postgres, default_actor())
    for migration, elapsed in outcome.applied:
        print(f"applied  {migration.name}  {elapsed} ms")
    print(f"{len(outcome.applied)} applied, {outcome.already_applied} already applied")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    target = stacks.deployed_target(args.stack)
    report = verify(target.postgres, target.redis)
    print(report.to_json() if args.json else report.table())
    return 0 if report.ok else 1


def cmd_baseline(args: argparse.Namespace) -> int:
    done = migrations.baseline(stacks.deployed_target(args.stack).postgres, default_actor(), args.version)
    print(f"baselined {', '.join(m.name for m in done)}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m infra", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--stack", required=True, help="stack name, e.g. dev")
        p.set_defaults(handler=handler)
        return p

    for name, handler, help_ in (("up", cmd_up, "create or update the stack, then print endpoints and report"),
                                 ("preview", cmd_preview, "show what `up` would change; touches nothing")):
        p = command(name, handler, help_)
        p.add_argument("--images", choices=("auto", "config", "local"), default="auto",
                       help="auto: local images for configured ones missing on this host (default)")
    command("down", cmd_down, "destroy the stack's resources").add_argument(
        "--remove", action="store_true", help="also remove the stack and its config file")
    command("plan", cmd_plan, "list pending migrations; applies nothing").add_argument("--json", action="store_true")
    command("migrate", cmd_migrate, "apply pending migrations")
    command("verify", cmd_verify, "verify both services").add_argument("--json", action="store_true")
    command("baseline", cmd_baseline, "mark migrations up to a version as applied").add_argument(
        "--version", type=int, required=True)
    return root


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (stacks.StackError, ConfigError) as exc:
        say(f"error: {exc}")
        return 2
    except (MigrationError, ConnectError) as exc:
        say(f"error: {exc}")
        return 1
    except auto.CommandError as exc:
        say(f"error: pulumi failed:\n{exc}")
        return 1
