"""In-process shadow sampling: a share of old-served reads is also read from the new store and compared.

The comparison is the nightly comparator's rule, from :mod:`airflow_fsmigration.semantics`
(symmetric tolerance, integers and timestamps exact, the plan's null policy; an old value that
did not decode agrees with nothing), so a feature the shadow comparison calls a match is one the
nightly comparison calls a match too. Reads and comparisons run on one background thread behind a
bounded queue and a token bucket: a request never waits for them.
"""

from __future__ import annotations

import collections
import logging
import queue
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_fsmigration import semantics

if TYPE_CHECKING:
    import threading

    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan
    from airflow_fsmigration.serving.backends import Backend, Rows
    from airflow_fsmigration.serving.stats import StatsRecorder

log = logging.getLogger("airflow_fsmigration.serving")

_monotonic = time.monotonic


class ShadowSampling:
    """The router's shadow-sampling half (a mixin: counters stay attributes of the router)."""

    new: Backend
    plan: MigrationPlan | None
    stats: StatsRecorder
    _stop: threading.Event

    def _init_shadow(self, rate: float, max_per_s: float, max_entities: int) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"shadow_rate is a share in 0..1, got {rate}")
        self.shadow_rate = rate
        self.shadow_max_per_s = max_per_s
        self.shadow_max_entities = max_entities
        self._shadow_tokens = max_per_s
        self._shadow_refill = _monotonic()
        self._shadow_queue: queue.Queue[tuple[str, list[str], Rows] | None] = queue.Queue(maxsize=256)
        self.shadow_dropped = 0
        self.shadow_errors = 0
        self.shadow_compared = 0
        self.shadow_mismatched = 0
        self._mismatch_log_budget: collections.deque[float] = collections.deque(maxlen=20)

    def _maybe_shadow(self, group: str, ids: Sequence[str], old_rows: Rows) -> None:
        now = _monotonic()
        self._shadow_tokens = min(
            self.shadow_max_per_s, self._shadow_tokens + (now - self._shadow_refill) * self.shadow_max_per_s
        )
        self._shadow_refill = now
        if self._shadow_tokens < 1:
            return
        self._shadow_tokens -= 1
        sample = list(ids[: self.shadow_max_entities])
        try:
            self._shadow_queue.put_nowait((group, sample, {e: old_rows[e] for e in sample if e in old_rows}))
        except queue.Full:
            self.shadow_dropped += 1

    def _shadow_worker(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._shadow_queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            group, ids, old_rows = item
            try:
                new_rows = self.new.read(group, ids)
            except Exception as exc:
                self.shadow_errors += 1
                log.debug("group %s: shadow read of the new store failed: %s", group, exc)
                continue
            self._compare(group, ids, old_rows, new_rows)

    def _compare(self, group: str, ids: Sequence[str], old_rows: Rows, new_rows: Rows) -> None:
        spec = self.plan.groups.get(group) if self.plan is not None else None
        for e in ids:
            old, new = old_rows.get(e), new_rows.get(e)
            if old is None and new is None:
                continue
            diffs = row_diffs(spec, old, new)
            self.shadow_compared += 1
            self.stats.record_shadow(group, not diffs)
            if diffs:
                self.shadow_mismatched += 1
                self._log_mismatch(group, e, diffs)

    def _log_mismatch(self, group: str, entity_id: str, diffs: list[str]) -> None:
        now = _monotonic()
        budget = self._mismatch_log_budget
        if len(budget) == budget.maxlen and now - budget[0] < 60:
            return  # at most 20 mismatch lines a minute
        budget.append(now)
        log.info("group %s: shadow mismatch for entity %s: %s", group, entity_id, "; ".join(diffs[:5]))


def row_diffs(spec: FeatureGroup | None, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Features that differ between an old and a new row, judged by :mod:`~airflow_fsmigration.semantics`.

    A feature the old row marks undecodable (see :class:`~.backends.UndecodableRow`) differs,
    whatever the null policy, as in the nightly comparison.
    """
    if old is None:
        return ["entity missing from the old store"]
    if new is None:
        return ["entity missing from the new store"]
    diffs = []
    bad: frozenset[str] = getattr(old, "undecodable", frozenset())
    features = spec.features if spec is not None else None
    names = [f.name for f in features] if features is not None else sorted(set(old) | set(new))
    for i, name in enumerate(names):
        a, b = old.get(name), new.get(name)
        if name in bad:
            diffs.append(f"{name}: old=<undecodable> new={b!r}")
            continue
        if not values_match(features[i] if features is not None else None, a, b):
            diffs.append(f"{name}: old={a!r} new={b!r}")
    return diffs


def values_match(feature: Any, a: Any, b: Any) -> bool:
    """One old/new pair by the plan feature's rule (no plan: exact, NaN equal to NaN)."""
    try:
        if feature is None:
            dtype = "float64" if isinstance(a, float) or isinstance(b, float) else "string"
            return semantics.values_match(a, b, dtype)
        return semantics.feature_match(feature, a, b)
    except (TypeError, ValueError, OverflowError):  # a value of the wrong type for its dtype differs
        return False
