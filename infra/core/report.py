"""The result of a verification or a restore comparison: checks with what was observed and expected."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    ok: bool
    observed: str
    expected: str
    latency_ms: float


@dataclass(frozen=True)
class Report:
    """All checks of one verification."""

    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        rows = [("check", "result", "observed", "expected", "ms")] + [
            (c.name, "ok" if c.ok else "FAIL", c.observed, c.expected, f"{c.latency_ms:.1f}") for c in self.checks]
        widths = [min(max(len(r[i]) for r in rows), 60) for i in range(5)]
        lines = ["  ".join(cell[:60].ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def columns(rows: list[tuple]) -> list[str]:
    """Rows as aligned text columns (the first row is the header)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
