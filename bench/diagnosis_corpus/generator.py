"""A realistic event log in Postgres with the things that break comparators, from a seed.

Schema ``raw`` of one database (the new store's views live next to it, so a replay can reach it):

- ``raw.users`` (user_id, currency, created_at) and ``raw.merchants`` (merchant_id, category);
- ``raw.transactions``: card purchases in **sessions and bursts** (a few purchases minutes
  apart, at one or two popular merchants), with ``amount_cents`` (bigint), ``amount`` (the same
  in currency units, double precision) and ``currency``; ``tip`` is **NULL** for many purchases;
  a share is **re-delivered** (a second row with the same ``event_id``, ingested later); a share
  are **late** (``ingested_at`` hours after ``event_ts``); some users have a purchase **exactly on a
  window bound** (``as_of`` minus 1 h, 24 h or 7 d, or ``as_of`` itself);
- ``raw.charges``: **daily subscription charges at an exact hour** (``charge_id`` unique); many
  subscribers are charged at ``as_of``'s own hour, so their charges sit exactly on the 24 h and
  7 d bounds and at ``as_of``.

Every timestamp is a whole second (the legacy store keeps seconds). Nothing happens after
``as_of``: ingestion times are clipped to it. The same seed and size give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

AS_OF = datetime(2026, 11, 20, 15, 0, 0, tzinfo=UTC)  # an exact hour, in New York winter time (UTC-5)
DAYS = 8  # the log covers a day more than the longest window (7 d)

DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
DROP TABLE IF EXISTS raw.transactions, raw.charges, raw.users, raw.merchants;
CREATE TABLE raw.users (user_id text PRIMARY KEY, currency text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE raw.merchants (merchant_id text PRIMARY KEY, category text NOT NULL);
CREATE TABLE raw.transactions (
    event_id     bigint NOT NULL,          -- re-deliveries share it
    user_id      text NOT NULL,
    merchant_id  text NOT NULL,
    session_id   text NOT NULL,
    event_ts     timestamptz NOT NULL,
    ingested_at  timestamptz NOT NULL,
    amount_cents bigint NOT NULL,
    amount       double precision NOT NULL,  -- amount_cents / 100, in currency units
    currency     text NOT NULL,
    tip          double precision           -- NULL: no tip recorded
);
CREATE TABLE raw.charges (
    charge_id    bigint PRIMARY KEY,
    user_id      text NOT NULL,
    merchant_id  text NOT NULL,
    charged_at   timestamptz NOT NULL,
    amount_cents bigint NOT NULL,
    amount       double precision NOT NULL,
    currency     text NOT NULL
);
"""

INDEXES = """
CREATE INDEX ON raw.transactions (event_ts);
CREATE INDEX ON raw.transactions (event_id);
CREATE INDEX ON raw.charges (charged_at);
ANALYZE raw.transactions;
ANALYZE raw.charges;
"""


@dataclass
class EventLog:
    """What was generated, in rows (for the summary)."""

    users: int
    merchants: int
    transactions: int
    redelivered: int
    late: int
    on_bounds: int
    charges: int
    null_tips: int

    def summary(self) -> str:
        return (
            f"{self.users:,} users, {self.merchants} merchants, {self.transactions:,} transaction rows "
            f"({self.redelivered:,} re-deliveries, {self.late:,} late, {self.on_bounds} on a window bound, "
            f"{self.null_tips:,} NULL tips), {self.charges:,} daily charges"
        )


def _users(rng: Any, n: int) -> list[tuple[str, str, datetime]]:
    currencies = rng.choice(["USD", "EUR", "GBP"], size=n, p=[0.7, 0.2, 0.1])
    age_days = rng.integers(30, 2000, size=n)
    return [(f"u{i:06d}", str(currencies[i]), AS_OF - timedelta(days=int(age_days[i]))) for i in range(n)]


def generate(conn: Any, entities: int = 2000, seed: int = 7) -> EventLog:
    """Create and fill the ``raw`` schema in ``conn`` (psycopg, autocommit); deterministic in ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    as_of_s = int(AS_OF.timestamp())
    start_s = as_of_s - DAYS * 86400
    users = _users(rng, entities)
    n_merchants = max(20, entities // 5)
    merchants = [(f"m{i:05d}", str(rng.choice(["grocery", "fuel", "travel", "online", "dining"])))
                 for i in range(n_merchants)]  # fmt: skip
    popularity = 1.0 / np.arange(1, n_merchants + 1) ** 0.9
    popularity /= popularity.sum()

    def ts(seconds: int) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    tx: list[tuple[Any, ...]] = []
    event_id = 1_000_000
    late = on_bounds = 0
    activity = rng.gamma(2.0, 3.0, size=entities)  # sessions per user over the log, skewed
    for u, (user_id, currency, _) in enumerate(users):
        n_sessions = int(rng.poisson(activity[u])) + (1 if rng.random() < 0.3 else 0)
        for s in range(n_sessions):
            session_id = f"{user_id}-s{s}"
            t0 = int(rng.integers(start_s, as_of_s))
            burst = 1 + int(rng.geometric(0.45))
            home = rng.choice(n_merchants, p=popularity)
            for _ in range(burst):
                t = t0 + int(rng.integers(0, 600))
                if t > as_of_s:
                    continue
                merchant = home if rng.random() < 0.7 else rng.choice(n_merchants, p=popularity)
                tx.append(_purchase(rng, event_id, user_id, merchants[merchant][0], session_id, t, currency))
                event_id += 1
        if rng.random() < 0.08:  # one purchase exactly on a bound: as_of - 1 h / 24 h / 7 d, or as_of
            t = as_of_s - int(rng.choice([3600, 86400, 7 * 86400, 0]))
            tx.append(_purchase(rng, event_id, user_id, merchants[0][0], f"{user_id}-bound", t, currency))
            event_id += 1
            on_bounds += 1
    rows = []
    for row in tx:  # ingestion: seconds later, or hours later for late events; never after as_of
        t = row[4]
        delay = int(rng.integers(2 * 3600, 36 * 3600)) if rng.random() < 0.03 else int(rng.integers(1, 30))
        late += delay >= 3600 and t + delay <= as_of_s
        ingested = min(t + delay, as_of_s)
        rows.append((*row[:4], ts(t), ts(ingested), *row[5:]))
    redelivered = []
    for row in rows:  # the same event delivered again (same id and content), a little later
        if rng.random() < 0.03:
            again = min(row[5] + timedelta(seconds=int(rng.integers(30, 900))), AS_OF)
            redelivered.append((*row[:5], again, *row[6:]))
    rows.extend(redelivered)

    charges: list[tuple[Any, ...]] = []
    charge_id = 1
    for user_id, currency, _ in users:
        if rng.random() >= 0.3:
            continue
        hour = 15 if rng.random() < 0.4 else int(rng.integers(0, 24))  # 15 h is as_of's own hour
        cents = int(rng.choice([499, 999, 1499]))
        sub = f"sub{cents}"
        day0 = (start_s // 86400) * 86400
        for day in range(DAYS + 1):
            t = day0 + day * 86400 + hour * 3600
            if start_s <= t <= as_of_s:
                charges.append((charge_id, user_id, sub, ts(t), cents, cents / 100.0, currency))
                charge_id += 1
    merchants += [(f"sub{c}", "subscription") for c in (499, 999, 1499)]

    for stmt in DDL.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    _copy(conn, "raw.users", users)
    _copy(conn, "raw.merchants", merchants)
    _copy(conn, "raw.transactions", rows)
    _copy(conn, "raw.charges", charges)
    for stmt in INDEXES.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    return EventLog(
        users=entities,
        merchants=len(merchants),
        transactions=len(rows),
        redelivered=len(redelivered),
        late=int(late),
        on_bounds=on_bounds,
        charges=len(charges),
        null_tips=sum(1 for r in rows if r[9] is None),
    )


def _purchase(
    rng: Any, event_id: int, user_id: str, merchant_id: str, session_id: str, t: int, currency: str
) -> tuple[Any, ...]:
    """One purchase row with its time as epoch seconds (converted once ingestion is drawn)."""
    cents = max(50, int(rng.lognormal(8.0, 1.0)))  # median ~30.00
    tip = None if rng.random() < 0.45 else round(cents * float(rng.uniform(0.0, 0.25))) / 100.0
    return (event_id, user_id, merchant_id, session_id, t, cents, cents / 100.0, currency, tip)


def _copy(conn: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
