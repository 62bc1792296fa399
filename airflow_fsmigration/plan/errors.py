"""Plan errors that name the file, the line and the field path, all reported at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanIssue:
    """One problem in a plan: where it is and what to do about it."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class PlanError(ValueError):
    """The plan is invalid; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[PlanIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.path))
        count = len(self.issues)
        lines = "\n".join(f"  {i}" for i in self.issues)
        super().__init__(f"the migration plan has {count} error{'s' if count != 1 else ''}:\n{lines}")
