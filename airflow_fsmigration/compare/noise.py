"""The noise floor: how much the old store disagrees with itself between two reads.

Live features move while we read them, so part of a feature's old-vs-new mismatches is the old
store's own churn over a similar interval. That expected churn is *subtracted* from the
feature's mismatches (:class:`~airflow_fsmigration.compare.model.NoiseFloor`); it never forgives
a whole feature, and the raw rate stays in the result. We measure the churn by reading the same entities from the old store twice, a little apart, and
comparing the two reads with the same engine (no lag allowance, so every change counts).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.compare.model import NoiseFloor

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.plan.model import FeatureGroup

log = logging.getLogger("airflow_fsmigration.compare")


def noise_from_reads(
    group: FeatureGroup, first: pa.Table, second: pa.Table, interval_s: float = 0.0
) -> NoiseFloor:
    """The churn between two reads of the same entities from the same store."""
    from airflow_fsmigration.compare.engine import compare_tables

    # staleness 0: no change may hide as "lag"; tolerances still apply (float jitter is not churn)
    result = compare_tables(group, first, second, staleness=timedelta(0))
    churn = {name: (f.mismatched / f.compared if f.compared else 0.0) for name, f in result.features.items()}
    return NoiseFloor(group=group.name, churn=churn, compared=result.entities_both, interval_s=interval_s)


def measure_noise(
    group: FeatureGroup,
    source: Any,
    ids: Any,
    *,
    interval: timedelta | float = 1.0,
) -> NoiseFloor:
    """Read ``ids`` from the old store twice, ``interval`` apart, and measure each feature's churn.

    ``source`` is an old-store reader with ``read(group, ids)`` (e.g. ``RedisOnlineSource``).
    """
    seconds = interval.total_seconds() if isinstance(interval, timedelta) else float(interval)
    t0 = time.monotonic()
    first = source.read(group, ids)
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    second = source.read(group, ids)
    floor = noise_from_reads(group, first, second, interval_s=time.monotonic() - t0)
    churning = {k: f"{v:.4%}" for k, v in floor.churn.items() if v}
    log.info(
        "noise floor of %s over %d entities, %.1f s apart: %s",
        group.name,
        floor.compared,
        floor.interval_s,
        churning or "no churn",
    )
    return floor
