"""The noise floor: how much the old store disagrees with itself between two reads.

Live features move while we read them; a feature whose old-vs-new mismatch rate is no higher
than the old store's own churn over a similar interval is noise, not a migration defect. We
measure the churn by reading the same entities from the old store twice, a little apart, and
comparing the two reads with the same engine (no lag allowance, so every change counts).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.compare.engine import FeatureStats
    from airflow_fsmigration.plan.model import FeatureGroup

log = logging.getLogger("airflow_fsmigration.compare")


@dataclass
class NoiseFloor:
    """Per-feature churn (share of values that changed between two reads of the old store).

    ``margin`` widens the churn a little, and one value of slack is allowed, because the
    churn is itself measured on a sample.
    """

    group: str
    churn: dict[str, float]
    compared: int
    interval_s: float
    measured_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    margin: float = 0.25

    def allowance(self, feature: str, compared: int) -> float:
        """Highest mismatch rate of ``feature`` that still counts as noise (0 when it never churned)."""
        churn = self.churn.get(feature, 0.0)
        if churn <= 0 or compared <= 0:
            return 0.0
        return churn * (1 + self.margin) + 1 / compared

    def within(self, feature: str, mismatch_rate: float, compared: int) -> bool:
        return mismatch_rate <= self.allowance(feature, compared)

    def apply(self, stats: FeatureStats) -> None:
        """Mark a feature's mismatches as noise when its mismatch rate is within its churn."""
        stats.churn = self.churn.get(stats.name)
        rate = stats.mismatch_rate
        stats.noise = bool(
            stats.mismatched and rate is not None and self.within(stats.name, rate, stats.compared)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "churn": dict(self.churn),
            "compared": self.compared,
            "interval_s": self.interval_s,
            "measured_at": self.measured_at.isoformat(),
            "margin": self.margin,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseFloor:
        return cls(
            group=data["group"],
            churn={k: float(v) for k, v in data["churn"].items()},
            compared=int(data["compared"]),
            interval_s=float(data["interval_s"]),
            measured_at=datetime.fromisoformat(data["measured_at"]),
            margin=float(data.get("margin", 0.25)),
        )


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
