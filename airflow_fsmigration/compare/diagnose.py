"""Root causes of a failed comparison, proven by replaying the definition on the raw events.

A migration engineer acts on the first explanation they read, so a cause is named only with
evidence. For a bounded sample of mismatching entities (and a sample of matching ones as a
control) both stores are read again after a short delay: what matches now was *transient*. The
group's definition is then replayed on the raw events as of the time the new store describes:

- the replay reproduces the legacy values: the definition is right and the new store has not
  caught up (*lag*; the values it holds predate its watermark);
- the replay reproduces the new store: the definition is the defect. Each candidate rewrite
  (:mod:`airflow_fsmigration.compare.rewrites`) is replayed; one that turns mismatching values
  into legacy values and changes no control entity *explains* them. Causes are picked greedily
  (the rewrite explaining most values first), then composed pairwise for entities that carry
  two defects. Each mismatching value is attributed to one cause, and each cause is reported
  once with every feature it explains.

What no rewrite explains keeps its value-pattern evidence (the per-feature explanations) and is
said to be unproven. Figures for the whole population are the sample's shares scaled to each
feature's mismatch count (exact when the sample holds every mismatching entity); that and the
wording live in :mod:`airflow_fsmigration.compare.attribution`. The sample's raw events are
copied once into temporary tables, so dozens of replays cost milliseconds each, not a scan each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.compare.attribution import Pairs, missing_causes, patterns, summarise
from airflow_fsmigration.compare.causes import Rewrite, RootCause
from airflow_fsmigration.compare.model import MISMATCH, MISSING_IN_NEW, MISSING_IN_OLD, Kind

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.compare.result import ComparisonResult
    from airflow_fsmigration.compare.rewrites import Candidate
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.compare")

#: A rewrite may change at most this share of the control entities (and at least one may move).
CONTROL_TOLERANCE = 0.01
#: A cause must explain at least this many sampled values (and this share of what is left).
MIN_VALUES, MIN_SHARE = 2, 0.05
MAX_CAUSES = 4


def mismatching_pairs(group: FeatureGroup, old: pa.Table, new: pa.Table) -> tuple[Pairs, set[str]]:
    """(entity, feature) values that differ (exactly as the comparison judges them), and all ids."""
    from datetime import timedelta

    from airflow_fsmigration.compare.engine import compare_tables

    r = compare_tables(group, old, new, staleness=timedelta(0))
    flags = r.flags or {}
    ids = [str(x) for x in flags.get("entity_id", []).to_pylist()] if flags else []
    out: Pairs = set()
    for f in group.features:
        status = flags.get(f.name)
        if status is None:
            continue
        for eid, s in zip(ids, status.tolist(), strict=True):
            if s in (MISMATCH, MISSING_IN_NEW, MISSING_IN_OLD):
                out.add((eid, f.name))
    return out, set(ids)


def _zone_offsets(result: ComparisonResult) -> list[int]:
    """Real zone offsets (whole, half or quarter hours up to 14 h) seen on timestamp features."""
    seen: list[int] = []
    for e in result.explanations:
        if e.kind is Kind.TIMEZONE_SHIFT:
            off = e.params.get("offset_seconds")
            if off and abs(off) <= 14 * 3600 and off % 900 == 0 and int(off) not in seen:
                seen.append(int(off))
    return seen


def _scales(result: ComparisonResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in result.explanations:
        if e.kind is Kind.SCALE_FACTOR and e.feature and result.features[e.feature].dtype == "float64":
            ratio = e.params.get("ratio")
            if ratio:
                out[e.feature] = float(ratio)
    return out


class _Replayer:
    """Replays definition texts for the sample and remembers which values each reproduces.

    The sample's raw events are staged once into temporary tables when the store can
    (:meth:`NewStore.stage`) and the unchanged definition gives the same values on the copies
    as on the full tables (a definition that computes across entities would not); otherwise
    each replay reads the raw tables through the pushed-down entity filter.
    """

    def __init__(self, store: Any, group: FeatureGroup, legacy: pa.Table, ids: list[str], as_of: datetime):
        self.store, self.group, self.legacy, self.ids, self.as_of = store, group, legacy, ids, as_of
        self.queries = 0
        self.tables: dict[str, str] = {}

    def stage(self, sql: str) -> pa.Table | None:
        """Stage the sample's events; returns the replay of ``sql`` on the full tables (or None)."""
        full = self._run(sql)
        if full is None or not hasattr(self.store, "stage"):
            return full
        try:
            tables = self.store.stage(
                [s.table for s in self.group.event_sources], self.group.entity_key, self.ids
            )
        except Exception as exc:  # no temporary tables here (a read-only role, another engine)
            log.debug("staging the replay sample failed: %s", exc)
            return full
        self.tables = tables
        staged = self._run(sql)
        if staged is None or not _same(full, staged):
            log.info(
                "diagnosis of %s: the staged sample does not reproduce the definition; replaying on the full tables",
                self.group.name,
            )
            self.tables = {}
        return full

    def _run(self, sql: str) -> pa.Table | None:
        from airflow_fsmigration.compare.rewrites import substitute_tables

        self.queries += 1
        text = substitute_tables(sql, self.tables) if self.tables else sql
        try:
            if self.tables:  # the staged copies hold only the sample: no pushdown analysis needed
                return self.store.replay(self.group, text, self.ids, self.as_of, pushdown=False)
            return self.store.replay(self.group, text, self.ids, self.as_of)
        except Exception as exc:  # a rewrite that does not run is simply not the fix
            log.debug("replay of a rewrite failed: %s", exc)
            if self.tables and not self.store.staged():
                self.tables = {}  # the connection (and the copies) went away: full tables from now on
            return None

    def wrong(self, sql: str, table: pa.Table | None = None) -> Pairs | None:
        """Values the replay of ``sql`` gets wrong against the legacy store (None: it failed)."""
        table = self._run(sql) if table is None else table
        if table is None:
            return None
        return mismatching_pairs(self.group, self.legacy, table)[0]


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Two replays of the sample agree (same rows, any order)."""
    from airflow_fsmigration.stores.frames import ENTITY

    if a.num_rows != b.num_rows or a.column_names != b.column_names:
        return False
    return a.sort_by(ENTITY).equals(b.sort_by(ENTITY))


def diagnose(
    plan: MigrationPlan,
    group: FeatureGroup,
    result: ComparisonResult,
    old_source: Any,
    new_source: Any,
    *,
    read: Callable[[Any, list[str]], pa.Table] | None = None,
    reread_delay_s: float = 0.0,
    as_of: datetime | None = None,
) -> list[RootCause]:
    """Root causes of ``result``'s mismatches (biggest first); [] when nothing mismatched.

    ``read(source, ids)`` reads a side as the comparison did (default ``source.read``); ``as_of``
    is the time the comparison describes (default: the new store's clock).
    """
    from airflow_fsmigration.compare.candidates import candidates

    values = dict(result.mismatch_sample)
    if not values:
        return missing_causes(result)
    # entities on one side only are symptoms too: replayed with the others, linked to their cause
    missing = {e: "missing_in_new" for e in result.missing_in_new_samples}
    missing.update({e: "missing_in_old" for e in result.missing_in_old_samples})
    sample = {**values, **{e: list(result.features) for e in missing}}
    started = time.monotonic()
    if reread_delay_s > 0:
        time.sleep(reread_delay_s)
    ids = sorted(sample)
    control = sorted(result.control_sample)
    everyone = ids + control
    if read is None:
        read = lambda source, chunk: source.read(group, chunk)  # noqa: E731
    legacy = read(old_source, everyone)
    persistent, _ = mismatching_pairs(group, legacy, read(new_source, everyone))
    first_run = {(e, f) for e, feats in sample.items() for f in feats}
    # only what the comparison counted as mismatching (a value it excused as lag stays lag)
    persistent &= first_run
    transient = first_run - persistent
    attributed: dict[str, Pairs] = {}
    if transient:
        attributed["transient"] = transient

    proofs: dict[str, Rewrite] = {}
    remaining = set(persistent)
    replay = getattr(new_source, "replay", None)
    if replay is not None and remaining:
        sql = plan.definition_sql(group.name)
        when = as_of or _clock(new_source)
        rp = _Replayer(new_source, group, legacy, everyone, when)
        full = rp.stage(sql)
        base = rp.wrong(sql, full) if full is not None else None
        if base is not None:
            control_ids = set(control)
            lag = remaining - base  # the definition, replayed now, gives the legacy value
            if lag:
                attributed["lag"] = lag
                proofs["lag"] = Rewrite(
                    "lag",
                    f"the unchanged definition replayed as of {when.isoformat()} reproduces these legacy values",
                    "",
                    fixed=len(lag),
                    sampled=len(persistent),
                )
                remaining -= lag
            pool = candidates(sql, plan, group, offsets=_zone_offsets(result), scales=_scales(result))
            _greedy(rp, sql, pool, base, remaining, control_ids, attributed, proofs)
            remaining = persistent - set().union(*attributed.values())
        else:
            log.info("diagnosis of %s: the definition could not be replayed; value patterns only", group.name)
    if remaining:
        patterns(result, remaining, attributed, missing)
    causes = summarise(result, values, missing, attributed, proofs)
    log.info(
        "diagnosis of %s: %d causes from %d sampled mismatching entities in %.1f s",
        group.name,
        len(causes),
        len(sample),
        time.monotonic() - started,
    )
    return sorted(causes, key=lambda c: (-sum(c.features.values()), c.kind))


def _clock(store: Any) -> datetime:
    from datetime import UTC

    clock = getattr(store, "clock", None)
    return clock() if clock is not None else datetime.now(UTC)


def _greedy(
    rp: _Replayer,
    sql: str,
    pool: list[Candidate],
    base: Pairs,
    remaining: Pairs,
    control: set[str],
    attributed: dict[str, Pairs],
    proofs: dict[str, Rewrite],
) -> list[Candidate]:
    """Pick rewrites explaining the most remaining values; compose with what was picked."""
    from airflow_fsmigration.compare import rewrites

    allowed = max(1, int(CONTROL_TOLERANCE * len(control)))
    chosen: list[Candidate] = []
    tried: dict[str, tuple[Pairs, int, str]] = {}

    def evaluate(c: Candidate) -> tuple[Pairs, int, str] | None:
        try:
            text = rewrites.apply(sql, c)
        except Exception as exc:  # a transform that does not fit this definition
            log.debug("rewrite %s did not apply: %s", c.description, exc)
            return None
        if text in tried:
            return tried[text]
        wrong = rp.wrong(text)
        if wrong is None:
            return None
        fixed = base - wrong
        broken = {e for e, _ in wrong - base if e in control}
        tried[text] = (fixed, len(broken), text)
        return tried[text]

    left = set(remaining)
    for _ in range(MAX_CAUSES):
        if not left:
            break
        options = list(pool)
        options += [prev.then(c) for prev in chosen for c in pool if c.kind != prev.kind]
        best: tuple[int, Candidate, Pairs, int, str] | None = None
        for c in options:
            got = evaluate(c)
            if got is None:
                continue
            fixed, broken, text = got
            gain = len(fixed & left)
            if broken > allowed or gain < max(MIN_VALUES, MIN_SHARE * len(left)):
                continue
            if best is None or gain > best[0]:
                best = (gain, c, fixed & left, broken, text)
        if best is None:
            break
        gain, c, fixed, broken, text = best
        attributed.setdefault(c.kind, set()).update(fixed)
        left -= fixed
        proof = proofs.get(c.kind)
        if proof is None:
            proofs[c.kind] = Rewrite(
                c.kind,
                c.description,
                rewrites.diff(sql, text),
                fixed=gain,
                sampled=len(remaining),
                control_changed=broken,
                control=len(control),
                sql=text,
            )
        else:
            proof.fixed += gain
        chosen.append(c)
    return chosen
