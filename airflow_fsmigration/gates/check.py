"""The answer of one gate evaluation, as the sensors, triggers and XCom carry it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass
class GateCheck:
    """``pass``, ``fail`` or ``wait``, why, and the evidence (JSON-able)."""

    status: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
