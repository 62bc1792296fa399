"""The wire format of the routing mirror: the one contract between the registry and serving.

The registry (:mod:`airflow_fsmigration.registry.mirror`) writes it, the router
(:mod:`airflow_fsmigration.serving.routing`) reads it; both import this module and nothing of each
other. Standard library only, so serving processes pay nothing for it.

* Key ``fsmig:routing:{group}`` holds a JSON object with :data:`FIELDS`:
  ``{"group", "phase", "ramp_pct", "active_backend" ("old"|"new"), "version", "updated_at" (ISO 8601)}``.
* After every committed change the key is SET and the same text PUBLISHed on :data:`CHANNEL`.
* The JSON is canonical (sorted keys, no spaces, ``ramp_pct`` a float, ``version`` an int), so
  equal states are equal bytes and a mirror can be compared with Postgres byte for byte.
* ``epoch`` (optional, a non-negative int, absent = 0) orders states across registry restores:
  routers take a state when ``(epoch, version)`` is not below the one they hold. Versions only
  go up in one registry, but a registry restored from a backup starts again from an older
  version, which running routers would ignore; ``fsmigrate reconcile`` (and a rollback) then
  raise the group's epoch above the mirror's, so the restored registry's state is taken.
  ``epoch`` 0 is left out of the text, so documents written before epochs stay byte-identical.
* A missing or unreadable document means "old store at 0%" to a router that holds no state yet:
  the safe side. A router that holds a state keeps it while the key is missing (Redis lost its
  data or is being restarted: the registry never deletes a key) or Redis does not answer.
* Routers report what they apply under ``fsmig:router:{instance}`` (:func:`encode_report`),
  with a TTL, so ``fsmigrate status`` can compare what routers serve with the registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

KEY_PREFIX = "fsmig:routing:"
CHANNEL = "fsmig:routing"
FIELDS = ("group", "phase", "ramp_pct", "active_backend", "version", "updated_at")
BACKENDS = ("old", "new")
REPORT_PREFIX = "fsmig:router:"


def routing_key(group: str) -> str:
    return f"{KEY_PREFIX}{group}"


def encode_doc(
    *,
    group: str,
    phase: str,
    ramp_pct: float,
    active_backend: str,
    version: int,
    updated_at: str | None,
    epoch: int = 0,
) -> str:
    """The canonical JSON text of one group's routing state (``epoch`` 0 is left out)."""
    doc: dict[str, Any] = {
        "group": str(group),
        "phase": str(phase),
        "ramp_pct": float(ramp_pct),
        "active_backend": str(active_backend),
        "version": int(version),
        "updated_at": updated_at,
    }
    if int(epoch):
        doc["epoch"] = int(epoch)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def invalid_reason(doc: Any) -> str | None:
    """Why a decoded document is not a valid routing state, or None when it is."""
    if not isinstance(doc, Mapping):
        return "not a JSON object"
    absent = [f for f in FIELDS if f not in doc]
    if absent:
        return f"missing field(s) {', '.join(absent)}"
    if doc["active_backend"] not in BACKENDS:
        return f"active_backend {doc['active_backend']!r} is neither 'old' nor 'new'"
    if not isinstance(doc["version"], int) or isinstance(doc["version"], bool):
        return f"version {doc['version']!r} is not an integer"
    epoch = doc.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"epoch {epoch!r} is not a non-negative integer"
    if not isinstance(doc["group"], str) or not isinstance(doc["phase"], str):
        return "group and phase must be strings"
    try:
        pct = float(doc["ramp_pct"])
    except (TypeError, ValueError):
        return f"ramp_pct {doc['ramp_pct']!r} is not a number"
    if not 0 <= pct <= 100:
        return f"ramp_pct {pct} is outside [0, 100]"
    return None


def decode_doc(raw: bytes | str | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(document, None)``, or ``(None, why)`` when the text is missing or not a valid state."""
    if raw is None:
        return None, "missing"
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON ({exc})"
    why = invalid_reason(doc)
    return (None, why) if why else (dict(doc), None)


def parse_doc(raw: bytes | str | None) -> dict[str, Any] | None:
    """A mirrored document, or None when it is missing or unreadable (which means "old store")."""
    return decode_doc(raw)[0]


def order_key(doc: Mapping[str, Any]) -> tuple[int, int]:
    """``(epoch, version)``: a state is newer than another when this is higher."""
    return int(doc.get("epoch", 0) or 0), int(doc["version"])


def report_key(instance: str) -> str:
    return f"{REPORT_PREFIX}{instance}"


def encode_report(instance: str, at: float, mirror_age_s: float | None, groups: Mapping[str, Any]) -> str:
    """What one router applies: ``{group: {epoch, version, phase, ramp_pct, serving_pct, breaker}}``."""
    return json.dumps(
        {"instance": instance, "at": at, "mirror_age_s": mirror_age_s, "groups": dict(groups)},
        sort_keys=True,
        separators=(",", ":"),
    )


def decode_report(raw: bytes | str | None) -> dict[str, Any] | None:
    """A router's report, or None when missing or not one."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), dict):
        return None
    return doc
