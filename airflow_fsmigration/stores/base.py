"""One interface for every feature store the migration reads: legacy online, legacy offline, new.

Every method returns frames in the contract of :mod:`airflow_fsmigration.stores.frames` (an Arrow
table: ``entity_id``, one typed column per feature, ``_source_ts``; an absent entity is an absent
row). The comparison engine only ever sees this protocol, so adding a store (Feast, a warehouse)
never touches the comparison.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.plan.model import FeatureGroup

log = logging.getLogger("airflow_fsmigration.stores")

DEFAULT_CHUNK = 100_000


class HistoryUnavailable(NotImplementedError):
    """The store keeps only current values, so it cannot answer "as of" a past time."""

    def __init__(self, conn_id: str, store: str, group: str) -> None:
        super().__init__(
            f"connection '{conn_id}' ({store}) keeps only the current value of group '{group}', "
            "so it cannot be read as of a past time: read the legacy offline store (history table) "
            "or the new store's as-of query instead"
        )
        self.conn_id = conn_id
        self.group = group


class UpstreamNotDeployed(RuntimeError):
    """A derived group was deployed before the group whose view it reads."""


@runtime_checkable
class FeatureSource(Protocol):
    """What the comparison, backfill and reports need from a store."""

    conn_id: str

    def read(self, group: FeatureGroup, entity_ids: Sequence[str]) -> pa.Table:
        """Current features of ``entity_ids``; entities the store lacks are absent rows."""
        ...

    def read_as_of(self, group: FeatureGroup, entity_ids: Sequence[str], as_of: datetime) -> pa.Table:
        """Features of ``entity_ids`` as they were at ``as_of`` (raises HistoryUnavailable if unknowable)."""
        ...

    def entity_ids(
        self, group: FeatureGroup, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        """Entity keys the store holds for ``group`` (optionally one hash shard, at most ``limit``)."""
        ...

    def scan(
        self, group: FeatureGroup, *, chunk_size: int = DEFAULT_CHUNK, shard: tuple[int, int] | None = None
    ) -> Iterator[pa.Table]:
        """All entities of ``group`` (or one shard) in frames of at most ``chunk_size`` rows."""
        ...

    def freshness(self, group: FeatureGroup) -> datetime | None:
        """The newest source timestamp of ``group``, or None when the store has none."""
        ...


def check_as_of(as_of: datetime) -> datetime:
    """Reject naive datetimes: an as-of without a zone is off by the server's offset."""
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError(
            f"as_of {as_of.isoformat()} has no time zone: pass an aware datetime, e.g. datetime(..., tzinfo=UTC)"
        )
    return as_of


class Progress:
    """Logs done, rate and ETA at most every ``every`` seconds during long work, and once at the end.

    ``unit`` names what is counted (rows, entities); ``logger`` is the caller's area logger, so
    the lines appear under ``airflow_fsmigration.<area>``.
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        every: float = 10.0,
        *,
        unit: str = "rows",
        logger: logging.Logger | None = None,
    ) -> None:
        self.what, self.total, self.every, self.unit = what, total, every, unit
        self.log = logger or log
        self.done = 0
        self.start = self.last = time.monotonic()

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every or (self.total is not None and self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            if self.total is None:  # a full scan: the size is unknown until the end
                self.log.info("%s: %d %s, %.0f/s", self.what, self.done, self.unit, rate)
                return
            eta = (self.total - self.done) / rate if rate else 0.0
            self.log.info(
                "%s: %d/%d %s, %.0f/s, ETA %.0f s", self.what, self.done, self.total, self.unit, rate, eta
            )


def rechunk(tables: Iterator[pa.Table], chunk_size: int) -> Iterator[pa.Table]:
    """Regroup a stream of tables into tables of exactly ``chunk_size`` rows (the last may be short)."""
    import pyarrow as pa

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        if table.num_rows == 0:
            continue
        pending.append(table)
        count += table.num_rows
        while count >= chunk_size:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, chunk_size).combine_chunks()
            rest = whole.slice(chunk_size)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending).combine_chunks()
