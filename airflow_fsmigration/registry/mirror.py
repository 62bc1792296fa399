"""The Redis mirror of the routing registry, read by serving processes in microseconds.

The wire format (key, channel, canonical JSON, what counts as unreadable) is
:mod:`airflow_fsmigration.routing_wire`, shared with serving. What this side adds:

* After every committed change the key is SET and the same JSON text is PUBLISHed.
* Postgres is the truth. The mirror only ever moves forward in ``version``: a slow publisher that
  lost a race never overwrites a newer state (checked atomically in a Lua script), and a corrupted
  or missing key is repaired by :meth:`RoutingMirror.reconcile`.
* The mirror lives in the Redis of the plan's ``routing_mirror`` connection; by default that is
  ``legacy_online``, which every serving process already talks to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_fsmigration.registry.model import RoutingState
from airflow_fsmigration.routing_wire import CHANNEL, FIELDS, KEY_PREFIX, parse_doc, routing_key

__all__ = [
    "CHANNEL",
    "FIELDS",
    "KEY_PREFIX",
    "ReconcileReport",
    "RoutingMirror",
    "parse_doc",
    "routing_key",
]

log = logging.getLogger("airflow_fsmigration.registry")


class StateSource(Protocol):
    """What ``reconcile`` needs of the registry (no import of it: the registry imports us)."""

    def states(self, plan_name: str | None = None) -> Mapping[str, RoutingState]: ...


# SET + PUBLISH unless the stored document is a newer version, or the same version with the same text.
_SET_IF_NEWER = """
local cur = redis.call('GET', KEYS[1])
local new_version = tonumber(ARGV[2])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and type(doc['version']) == 'number' then
    if doc['version'] > new_version then return 0 end
    if doc['version'] == new_version and cur == ARGV[1] then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"""


@dataclass
class ReconcileReport:
    """What a reconcile pass found: keys already right, keys rewritten and why, keys it could not fix."""

    ok: list[str] = field(default_factory=list)
    repaired: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.repaired and not self.failed

    def summary(self) -> str:
        parts = [f"{len(self.ok)} in sync", f"{len(self.repaired)} repaired"]
        if self.failed:
            parts.append(f"{len(self.failed)} FAILED")
        if self.unknown:
            parts.append(f"{len(self.unknown)} key(s) for groups not in the registry")
        return ", ".join(parts)


class RoutingMirror:
    """Publishes committed routing states to Redis and repairs the copy when it drifted.

    :param redis_client: a ``redis.Redis`` client (decode_responses either way).
    """

    def __init__(self, redis_client: Any, *, key_prefix: str = KEY_PREFIX, channel: str = CHANNEL) -> None:
        self.redis = redis_client
        self.key_prefix = key_prefix
        self.channel = channel
        self._script = redis_client.register_script(_SET_IF_NEWER)

    def key(self, group: str) -> str:
        return f"{self.key_prefix}{group}"

    def write(self, state: RoutingState) -> bool:
        """SET and PUBLISH ``state`` unless Redis holds a newer version; True when it wrote. Raises on Redis errors."""
        text = state.mirror_json()
        return bool(self._script(keys=[self.key(state.group)], args=[text, state.version, self.channel]))

    def publish(self, state: RoutingState) -> bool:
        """Mirror a committed state; never raises (the commit stands, ``reconcile`` repairs a failure)."""
        try:
            wrote = self.write(state)
        except Exception as exc:
            log.error(
                "group %s: routing version %d is committed in Postgres but the Redis mirror was not updated "
                "(%s: %s); serving keeps the previous state until `fsmigrate reconcile PLAN` runs",
                state.group,
                state.version,
                type(exc).__name__,
                exc,
            )
            return False
        if not wrote:
            log.debug("group %s: mirror already at version >= %d", state.group, state.version)
        return True

    def read(self, group: str) -> dict[str, Any] | None:
        """The mirrored document of ``group``, or None when missing or unreadable."""
        return parse_doc(self.redis.get(self.key(group)))

    def read_raw(self, group: str) -> bytes | str | None:
        return self.redis.get(self.key(group))

    def read_all(self) -> dict[str, dict[str, Any] | None]:
        """Every mirrored key by group; None for a key that exists but cannot be read."""
        keys = list(self.redis.scan_iter(match=f"{self.key_prefix}*", count=500))
        if not keys:
            return {}
        values = self.redis.mget(keys)
        out: dict[str, dict[str, Any] | None] = {}
        for k, v in zip(keys, values, strict=True):
            name = k.decode() if isinstance(k, bytes) else k
            out[name[len(self.key_prefix) :]] = parse_doc(v)
        return out

    def diff(self, state: RoutingState) -> str | None:
        """Why the mirror of ``state.group`` differs from ``state``, or None when it matches."""
        raw = self.read_raw(state.group)
        if raw is None:
            return "missing"
        doc = parse_doc(raw)
        if doc is None:
            return "unreadable"
        if doc["version"] < state.version:
            return f"stale (version {doc['version']} < {state.version})"
        if doc["version"] > state.version:
            return f"ahead of Postgres (version {doc['version']} > {state.version})"
        text = raw.decode() if isinstance(raw, bytes) else raw
        if text != state.mirror_json():
            return "content differs at the same version"
        return None

    def reconcile(self, registry: StateSource, plan_name: str | None = None) -> ReconcileReport:
        """Rewrite every key that differs from Postgres (e.g. a publish failed after its commit).

        A key *ahead* of Postgres (a higher version than the registry holds) is forced back too:
        Postgres is the truth, and such a key can only come from a restored or foreign database.
        """
        report = ReconcileReport()
        states = registry.states(plan_name)
        for group, state in states.items():
            try:
                why = self.diff(state)
                if why is None:
                    report.ok.append(group)
                    continue
                if why.startswith("ahead"):
                    text = state.mirror_json()
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.set(self.key(group), text)
                    pipe.publish(self.channel, text)
                    pipe.execute()
                else:
                    self.write(state)
                report.repaired[group] = why
                log.warning("group %s: mirror was %s; rewrote version %d", group, why, state.version)
            except Exception as exc:
                report.failed[group] = f"{type(exc).__name__}: {exc}"
        if plan_name is None:
            report.unknown = sorted(set(self.read_all()) - set(states))
        return report
