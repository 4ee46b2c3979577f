"""The mutation score per module from mutmut's results in mutants/ (scripts/mutation prints it).

A mutant counts as caught when a test failed on it (killed), it ran past its time limit
(timeout: the mutation made the code loop) or it did not type-check. Survivors, suspicious
results, mutants no test reaches and unchecked ones count against the score. The mutants
listed in tests/mutation-equivalent.txt are left out: they behave exactly like the code.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutmut.configuration import config
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

TARGET = 90.0
EQUIVALENTS = Path(__file__).resolve().parent / "mutation-equivalent.txt"
CAUGHT = ("killed", "timeout", "caught by type check")


@dataclass(frozen=True)
class Equivalent:
    """A mutant judged equivalent: its id, the line it mutates to, and why it changes nothing."""

    mutant: str
    mutated_line: str
    reason: str


def read_equivalents(path: Path = EQUIVALENTS) -> list[Equivalent]:
    """Entries are `mutant id | the mutated line as `mutmut show` prints it after '+' | reason`."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split(" | ")]
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"{path.name}, line {number}: expected `mutant id | mutated line | reason`, "
                             f"found {line!r}")
        entries.append(Equivalent(*parts))
    return entries


def mutated_lines(mutant: str, path: Path) -> list[str]:
    """The lines the mutant adds, stripped (from the diff `mutmut show` prints)."""
    diff = get_diff_for_mutant(mutant, path=path)
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def main() -> int:
    equivalents = {e.mutant: e for e in read_equivalents()}
    modules = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        if data.exit_code_by_key:
            modules[path] = data
    if not modules:
        print("no mutation results in mutants/; run scripts/mutation first")
        return 2

    rows, survivors, stale, below = [], [], [], []
    for path, data in sorted(modules.items()):
        statuses = {name: status_by_exit_code[code] for name, code in data.exit_code_by_key.items()}
        excluded = set()
        for name, status in statuses.items():
            entry = equivalents.get(name)
            if entry is None:
                continue
            if status in CAUGHT:
                stale.append(f"{name}: listed as equivalent but {status}; remove it from {EQUIVALENTS.name}")
            elif entry.mutated_line not in mutated_lines(name, path):
                stale.append(f"{name}: the mutant is no longer `{entry.mutated_line}`; judge it again")
            else:
                excluded.add(name)
        counts = Counter(status for name, status in statuses.items() if name not in excluded)
        counted = sum(counts.values())
        caught = sum(counts[s] for s in CAUGHT)
        score = 100.0 * caught / counted if counted else 100.0
        if score < TARGET:
            below.append(str(path))
        rows.append((str(path), len(statuses), len(excluded), counts["killed"], counts["timeout"],
                     counts["survived"], counts["no tests"], counts["suspicious"] + counts["segfault"],
                     counts["not checked"], score))
        survivors += [(name, status) for name, status in sorted(statuses.items())
                      if name not in excluded and status not in CAUGHT]
    known = {name for data in modules.values() for name in data.exit_code_by_key}
    stale += [f"{name}: listed as equivalent but no such mutant" for name in equivalents if name not in known]

    header = ("module", "mutants", "equiv", "killed", "timeout", "survived", "no tests", "suspicious",
              "unchecked", "score")
    width = max(len(r[0]) for r in rows + [header])
    print(f"{header[0]:<{width}} " + " ".join(f"{h:>10}" for h in header[1:]) + f"  (target {TARGET:.0f}%)")
    for row in rows:
        mark = "ok" if row[-1] >= TARGET else "BELOW"
        print(f"{row[0]:<{width}} " + " ".join(f"{v:>10}" for v in row[1:-1]) + f" {row[-1]:>9.1f}%  {mark}")
    if survivors:
        print(f"\n{len(survivors)} mutants neither caught nor listed as equivalent (`mutmut show <id>` shows one):")
        for name, status in survivors:
            print(f"  {status:<12} {name}")
    if stale:
        print(f"\n{len(stale)} stale entries in {EQUIVALENTS.name}:")
        for line in stale:
            print(f"  {line}")
    return 1 if below or stale else 0


if __name__ == "__main__":
    sys.exit(main())
