"""One shadow comparison of a group: pick entities, read both stores, compare, record.

The two reads of each chunk run in parallel threads (the store readers release the GIL in
their socket and Arrow work), and the next chunk is already being read while the current one
is compared, so the comparison stays off the critical path. A store that cannot be read
raises :class:`~airflow_fsmigration.connections.StoreUnavailable` naming its connection, and
nothing is recorded: a run that did not happen must not look like a green day.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.stores.base import Progress

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.compare.engine import ComparisonResult
    from airflow_fsmigration.compare.noise import NoiseFloor
    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.compare")

DEFAULT_CHUNK = 100_000


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (0-based K, as the stores use) or ``(K, N)`` -> ``(K, N)``; clear error otherwise."""
    if shard is None or isinstance(shard, tuple):
        if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard {shard} must be (K, N) with 0 <= K < N")
        return shard
    try:
        k, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard {shard!r} must look like K/N, e.g. 0/4 (K counts from 0)") from None
    return parse_shard((k, n))


def sample_ids(
    old_ids: Sequence[str], new_ids: Sequence[str], sample_size: int
) -> tuple[list[str], int | None]:
    """A deterministic sample of entities by hash, consistent across both stores.

    Takes the ``sample_size`` old-store ids with the smallest entity hash, plus every new-store
    id below the same hash cutoff, so an entity only the new store has is found as often as one
    only the old store has. ``sample_size`` 0 (or more than the old store holds) means all ids
    of both sides. Returns the ids and the hash cutoff (None when everything was taken).
    """
    import numpy as np
    import pyarrow as pa

    from airflow_fsmigration.stores.sharding import hash_ids

    if sample_size <= 0 or sample_size >= len(old_ids):
        union = pa.concat_arrays([pa.array(list(old_ids), pa.string()), pa.array(list(new_ids), pa.string())])
        return sorted(set(union.to_pylist())), None
    old_arr = pa.array(list(old_ids), pa.string())
    old_hash = hash_ids(old_arr)
    pick = np.argpartition(old_hash, sample_size - 1)[:sample_size]
    cutoff = int(old_hash[pick].max())
    chosen = set(old_arr.take(pa.array(pick)).to_pylist())
    if len(new_ids):
        new_arr = pa.array(list(new_ids), pa.string())
        below = np.flatnonzero(hash_ids(new_arr) <= np.uint64(cutoff))
        chosen.update(new_arr.take(pa.array(below)).to_pylist())
    return sorted(chosen), cutoff


def _guarded(source: Any, what: str, fn: Callable[[], Any]) -> Any:
    """Call a store; turn connection-level failures into StoreUnavailable naming the connection."""
    try:
        return fn()
    except StoreUnavailable:
        raise
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(getattr(source, "conn_id", type(source).__name__), what, exc) from exc
    except Exception as exc:
        if _is_connection_error(exc):
            raise StoreUnavailable(getattr(source, "conn_id", type(source).__name__), what, exc) from exc
        raise


def _is_connection_error(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"OperationalError", "InterfaceError", "ConnectionError", "TimeoutError"})


def run_shadow(
    plan: MigrationPlan,
    group: str | FeatureGroup,
    old_source: Any,
    new_source: Any,
    *,
    sample_size: int | None = None,
    shard: str | tuple[int, int] | None = None,
    as_of: datetime | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    results: ResultStore | None = None,
    noise: NoiseFloor | None = None,
    staleness: timedelta | None = None,
    logical_time: datetime | None = None,
    entity_ids: Sequence[str] | None = None,
    diagnose: bool = True,
    reread_delay_s: float = 1.0,
    describes: datetime | None = None,
) -> ComparisonResult:
    """Compare ``group`` between the old and the new store and (given ``results``) record the run.

    :param sample_size: entities to compare; default the plan's ``shadow_sample_size``. 0 = every
        entity of both stores, by a chunked scan whose memory does not grow with the group (beyond
        8 bytes per entity); a positive size picks a deterministic hash sample (see :func:`sample_ids`),
        and the run is inconclusive if fewer entities than picked could be compared.
    :param shard: ``"K/N"`` or ``(K, N)``: only entities in hash shard K of N (for mapped tasks).
    :param as_of: read both sides as of this time (``read_as_of``), e.g. offline store vs new store.
    :param entity_ids: compare exactly these entities instead of picking a sample.
    :param diagnose: on mismatches, find root causes (:mod:`~airflow_fsmigration.compare.diagnose`):
        re-read a sample after ``reread_delay_s`` and replay the definition's rewrites.
    :param describes: the time the live data describe (a frozen snapshot): recorded as the
        logical time and used as the diagnosis replay's as-of (default: the new store's clock).
    :raises StoreUnavailable: a store did not answer; nothing is recorded.
    """
    from airflow_fsmigration.compare.engine import ComparisonAccumulator

    g = plan.groups[group] if isinstance(group, str) else group
    settings = plan.settings_for(g)
    sample = settings.shadow_sample_size if sample_size is None else sample_size
    part = parse_shard(shard)
    when = logical_time or as_of or describes or datetime.now(UTC)
    started = time.monotonic()

    def read(source: Any, chunk: list[str]) -> pa.Table:
        if as_of is not None:
            return _guarded(source, "reading as of", lambda: source.read_as_of(g, chunk, as_of))
        return _guarded(source, "reading", lambda: source.read(g, chunk))

    def explain(result: ComparisonResult) -> None:
        if diagnose and result.mismatched_values and not result.errors:
            _diagnose(plan, g, result, old_source, new_source, read, as_of or describes, reread_delay_s)

    if entity_ids is None and sample == 0 and as_of is None:
        acc = ComparisonAccumulator(g, settings=settings, staleness=staleness, noise=noise, requested=None)
        _full_scan(g, old_source, new_source, part, chunk_size, acc, read)
        return _finish(g, acc, when, part, started, results, explain)

    if entity_ids is not None:
        ids = list(entity_ids)
    else:
        with ThreadPoolExecutor(2, thread_name_prefix="fsmig-ids") as pool:
            f_old = pool.submit(
                _guarded, old_source, "listing entities", lambda: old_source.entity_ids(g, shard=part)
            )
            f_new = pool.submit(
                _guarded, new_source, "listing entities", lambda: new_source.entity_ids(g, shard=part)
            )
            old_ids, new_ids = f_old.result(), f_new.result()
        ids, _ = sample_ids(old_ids, new_ids, sample)
    log.info(
        "shadow %s%s: comparing %d entities (sample %s) in chunks of %d",
        g.name,
        f" shard {part[0]}/{part[1]}" if part else "",
        len(ids),
        sample or "all",
        chunk_size,
    )
    acc = ComparisonAccumulator(
        g,
        settings=settings,
        staleness=staleness if staleness is not None else (timedelta(0) if as_of else None),
        noise=noise,
        requested=len(ids),
    )

    chunks = [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]
    progress = Progress(f"shadow {g.name}", len(ids), 5.0, unit="entities", logger=log)
    with ThreadPoolExecutor(2, thread_name_prefix="fsmig-read") as pool:

        def fetch(chunk: list[str]) -> tuple[Future[Any], Future[Any]]:
            return pool.submit(read, old_source, chunk), pool.submit(read, new_source, chunk)

        pending = fetch(chunks[0]) if chunks else None
        for i, _chunk in enumerate(chunks):
            assert pending is not None
            f_old, f_new = pending
            try:
                old_t, new_t = f_old.result(), f_new.result()
            except BaseException:
                f_old.cancel()
                f_new.cancel()
                raise
            pending = fetch(chunks[i + 1]) if i + 1 < len(chunks) else None
            acc.add(old_t, new_t)
            progress.add(len(_chunk))

    return _finish(g, acc, when, part, started, results, explain)


def _full_scan(
    g: FeatureGroup,
    old_source: Any,
    new_source: Any,
    part: tuple[int, int] | None,
    chunk_size: int,
    acc: Any,
    read: Callable[[Any, list[str]], pa.Table],
) -> None:
    """Every entity of both stores, with memory bounded by the chunk size plus 8 bytes per entity.

    The old store is scanned in chunks and the new store read for the same ids (the next old
    chunk is fetched while the current one is compared); only the 64-bit hashes of the old ids
    are kept, so a final scan of the new store finds the entities only it has.
    """
    import numpy as np
    import pyarrow as pa

    from airflow_fsmigration.stores.frames import ENTITY, empty_frame
    from airflow_fsmigration.stores.sharding import hash_ids

    progress = Progress(f"shadow {g.name} (full scan)", None, 5.0, unit="entities", logger=log)
    old_chunks = _guarded(
        old_source, "scanning", lambda: old_source.scan(g, chunk_size=chunk_size, shard=part)
    )
    seen: list[np.ndarray] = []

    def next_old() -> pa.Table | None:
        return _guarded(old_source, "scanning", lambda: next(old_chunks, None))

    with ThreadPoolExecutor(2, thread_name_prefix="fsmig-scan") as pool:
        f_old = pool.submit(next_old)
        while (old_t := f_old.result()) is not None:
            ids = old_t.column(ENTITY)
            f_new = pool.submit(read, new_source, ids.to_pylist())
            f_old = pool.submit(next_old)
            new_t = f_new.result()
            acc.add(old_t, new_t)
            seen.append(hash_ids(ids))
            progress.add(old_t.num_rows)
    known = np.sort(np.concatenate(seen)) if seen else np.empty(0, dtype=np.uint64)
    empty = empty_frame(g)
    new_chunks = _guarded(
        new_source, "scanning", lambda: new_source.scan(g, chunk_size=chunk_size, shard=part)
    )
    while (new_t := _guarded(new_source, "scanning", lambda: next(new_chunks, None))) is not None:
        h = hash_ids(new_t.column(ENTITY))
        pos = np.minimum(np.searchsorted(known, h), max(len(known) - 1, 0))
        only_new = ~(known[pos] == h) if len(known) else np.ones(len(h), dtype=bool)
        if only_new.any():
            acc.add(empty, new_t.filter(pa.array(only_new)))
            progress.add(int(only_new.sum()))


def _finish(
    g: FeatureGroup,
    acc: Any,
    when: datetime,
    part: tuple[int, int] | None,
    started: float,
    results: ResultStore | None,
    explain: Callable[[ComparisonResult], None],
) -> ComparisonResult:
    result = acc.result(logical_time=when, shard=f"{part[0]}/{part[1]}" if part else None)
    explain(result)
    log.info(
        "shadow %s: %s, match rate %s over %d entities in %.1f s",
        g.name,
        result.verdict,
        "n/a" if result.match_rate is None else f"{result.match_rate:.4%}",
        result.entities_compared,
        time.monotonic() - started,
    )
    if results is not None:
        results.record(result, logical_time=when)
    return result


def _diagnose(
    plan: MigrationPlan,
    g: FeatureGroup,
    result: ComparisonResult,
    old_source: Any,
    new_source: Any,
    read: Callable[[Any, list[str]], pa.Table],
    as_of: datetime | None,
    delay: float,
) -> None:
    """Fill ``result.causes``; a diagnosis that fails is logged and never changes the verdict."""
    from airflow_fsmigration.compare.diagnose import diagnose

    try:
        result.causes = diagnose(
            plan, g, result, old_source, new_source, read=read, as_of=as_of, reread_delay_s=delay
        )
    except StoreUnavailable as exc:
        log.warning("diagnosis of %s skipped: %s", g.name, exc)
    except Exception as exc:  # the verdict stands; the causes are a bonus
        log.warning("diagnosis of %s failed (%s: %s); value patterns only", g.name, type(exc).__name__, exc)
