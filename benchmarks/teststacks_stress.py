"""Stress of throwaway test stacks: several processes (like CI jobs on one Docker host, each with
its own Pulumi backend) each create and bring up several test stacks at once, for several rounds,
while another process listens on the port the allocator would otherwise have chosen first.

Every stack must come up verified (20 checks in `up`, then the whole verification again through
the ports its outputs name, which must be the ports Docker published); no two stacks alive in
the same round may share a host port or overlap in subnet, and none may get the squatted port;
every stack is destroyed and removed, and nothing labelled as one of them, nor any reservation
of theirs, is left. Prints a summary and, with --json, one JSON line; exits 1 on any failure.

  python -m benchmarks.teststacks_stress [--processes 3] [--stacks 4] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from itertools import combinations
from pathlib import Path

from infra.core import dockercli
from infra.driver import reservations, stacks, teststacks
from infra.deploy.checks import run_checks

HEALTH_TIMEOUT_S = 300


def published_ports(container: str) -> set[int]:
    """The host ports Docker actually published for ``container``."""
    bindings = dockercli.inspect("container", container)["HostConfig"]["PortBindings"] or {}
    return {int(b["HostPort"]) for entries in bindings.values() for b in entries}


def bring_up(settings: stacks.Settings, say) -> dict:
    """Create, bring up and verify one test stack; its figures, or its error."""
    try:
        name = teststacks.new_name()
        stack = teststacks.create(settings, name, config={**teststacks.isolated_config(stack=name),
                                                          "healthTimeoutSeconds": str(HEALTH_TIMEOUT_S),
                                                          **stacks.local_images()})
    except Exception as exc:  # reported by the parent
        return {"stack": "(not created)", "error": f"create failed: {exc}"[:500], "handle": None}
    report: dict = {"stack": stack.name}
    retries: list[str] = []
    try:
        result = teststacks.up_with_retries(stack, lambda: stack.up(color="never"),
                                            lambda m: (retries.append(m), say(m)))
        outputs = {k: v.value for k, v in result.outputs.items()}
        ports = [int(outputs["postgresHostPort"]), int(outputs["redisHostPort"])]
        published = published_ports(outputs["postgresContainerName"]) | published_ports(outputs["redisContainerName"])
        target = stacks.target_from_outputs(stack.name, result.outputs)
        checks = run_checks(target.postgres, target.redis)
        report.update(ports=ports, subnet=outputs["networkSubnet"], retries=retries,
                      checks_in_up=outputs["verificationChecks"], verified=checks.ok and set(ports) == published,
                      published=sorted(published))
    except Exception as exc:  # reported by the parent
        report["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:500]
    report["handle"] = stack
    return report


def tear_down(stack, settings: stacks.Settings) -> str:
    """Destroy and remove the stack and what Docker still has of it; "" or the error."""
    if stack is None:
        return ""
    try:
        stack.destroy(color="never")
        return ""
    except Exception as exc:  # still remove the rest below
        return f"{stack.name}: destroy failed: {(str(exc).strip().splitlines() or ['?'])[-1][:300]}"
    finally:
        stacks.workspace(settings).remove_stack(stack.name, force=True)
        dockercli.remove_objects(dockercli.labelled_objects(stack.name))
        teststacks.release(stack.name)


def in_threads(fn, items: list) -> list:
    results = [None] * len(items)

    def run(i: int) -> None:
        results[i] = fn(items[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def worker(index: int, per_round: int, rounds: int, barrier, out) -> None:
    """One CI job: ``rounds`` times, ``per_round`` stacks at once, in its own backend."""
    with tempfile.TemporaryDirectory(prefix=f"sin-stress-{index}-") as tmp:
        settings = stacks.Settings(f"file://{tmp}/state", Path(tmp) / "passphrase")
        for round_ in range(rounds):
            barrier.wait()
            def say(message: str, where: str = f"[process {index} round {round_ + 1}]") -> None:
                print(f"{where} {message}", file=sys.stderr, flush=True)

            started = time.monotonic()
            made = in_threads(lambda _: bring_up(settings, say), list(range(per_round)))
            up_s = time.monotonic() - started
            barrier.wait()  # every process's stacks of this round are up together here
            errors = in_threads(lambda r: tear_down(r.pop("handle"), settings), made)
            for report in made:
                report.update(process=index, round=round_ + 1, up_s=round(up_s, 1))
            out.put({"stacks": made, "errors": [e for e in errors if e]})
            barrier.wait()


def squat_first_choice() -> tuple[subprocess.Popen, int]:
    """A process listening on the port the allocator would choose next."""
    with reservations.Registry().locked() as records:
        taken = {int(r.value) for r in records if r.kind == "port"}
        port = reservations.pick_ports(1, reservations.port_pool(), taken)[0]
    squatter = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\n"
         "s.listen()\nprint('ready', flush=True)\nsys.stdin.read()", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert squatter.stdout.readline().strip() == "ready"
    return squatter, port


def problems(reports: list[dict], squatted: int) -> list[str]:
    """Everything wrong across the stacks: failures, and collisions between stacks of one round."""
    found = [f"{r['stack']}: {r['error']}" for r in reports if "error" in r]
    found += [f"{r['stack']}: not verified (checks in up {r['checks_in_up']}, published {r['published']}, "
              f"outputs {r['ports']})" for r in reports if "error" not in r and not (r["verified"] and r["checks_in_up"] == 20)]
    ok = [r for r in reports if "error" not in r]
    found += [f"{r['stack']} got the squatted port {squatted}" for r in ok if squatted in r["ports"]]
    for a, b in combinations(ok, 2):
        if a["round"] != b["round"]:
            continue
        if set(a["ports"]) & set(b["ports"]):
            found.append(f"round {a['round']}: {a['stack']} and {b['stack']} share ports {set(a['ports']) & set(b['ports'])}")
        if ipaddress.IPv4Network(a["subnet"]).overlaps(ipaddress.IPv4Network(b["subnet"])):
            found.append(f"round {a['round']}: {a['stack']} {a['subnet']} overlaps {b['stack']} {b['subnet']}")
    return found


def leftovers(names: set[str]) -> list[str]:
    """Docker objects labelled as one of ``names``, and reservations still held for them."""
    objects = [n for objs in dockercli.labelled_objects().values() for n, s in objs.items() if s in names]
    held = [f"{r.kind} {r.value} ({r.stack})" for r in reservations.Registry().records() if r.stack in names]
    return objects + held


def run(processes: int, per_round: int, rounds: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    squatter, squatted = squat_first_choice()
    started = time.monotonic()
    try:
        workers = [ctx.Process(target=worker, args=(i + 1, per_round, rounds, barrier, out)) for i in range(processes)]
        for w in workers:
            w.start()
        batches = [out.get(timeout=1800) for _ in range(processes * rounds)]
        for w in workers:
            w.join(timeout=120)
        crashed = [f"process {i + 1} exited {w.exitcode}" for i, w in enumerate(workers) if w.exitcode != 0]
    finally:
        squatter.stdin.close()
        squatter.wait(timeout=10)
    wall = time.monotonic() - started
    reports = [r for b in batches for r in b["stacks"]]
    names = {r["stack"] for r in reports}
    found = crashed + [e for b in batches for e in b["errors"]] + problems(reports, squatted) + leftovers(names)
    return {"processes": processes, "stacks_per_round": per_round, "rounds": rounds, "stacks": len(reports),
            "verified": sum(1 for r in reports if r.get("verified")), "squatted_port": squatted,
            "retries": [m for r in reports for m in r.get("retries", [])],
            "ports": sorted(p for r in reports for p in r.get("ports", [])),
            "names": sorted(names), "problems": found, "wall_s": round(wall, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teststacks_stress", description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--stacks", type=int, default=4, help="stacks each process brings up at once per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)
    result = run(args.processes, args.stacks, args.rounds)
    print(f"{result['processes']} processes x {result['stacks_per_round']} stacks x {result['rounds']} rounds: "
          f"{result['verified']}/{result['stacks']} verified, {len(result['retries'])} retries, "
          f"{len(result['problems'])} problems, squatted port {result['squatted_port']} never chosen: "
          f"{result['squatted_port'] not in result['ports']}; {result['wall_s']} s")
    for line in result["problems"]:
        print(f"  problem: {line}")
    if args.json:
        print(json.dumps(result))
    return 0 if not result["problems"] and result["verified"] == result["stacks"] else 1


if __name__ == "__main__":
    with teststacks.private_pulumi_home():
        sys.exit(main())
