-- Transaction velocity per user over windows ending at :as_of (exclusive start, inclusive end).
-- One subquery per window, each bounded by temporal filters in its WHERE, joined on the user:
-- the form RisingWave accepts in a streaming view (NOW() only in WHERE/HAVING temporal filters).
WITH txn_7d AS (
    SELECT
        t.user_id,
        count(*)                                          AS txn_count_7d,
        avg(t.amount)                                     AS txn_amount_avg_7d,
        max(t.amount)                                     AS txn_amount_max_7d,
        count(DISTINCT t.merchant_id)                     AS distinct_merchants_7d,
        avg(CASE WHEN t.is_foreign THEN 1.0 ELSE 0.0 END) AS foreign_txn_ratio_7d,
        max(t.event_ts)                                   AS last_txn_ts
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '7 days'
      AND t.event_ts <= :as_of
    GROUP BY t.user_id
),
txn_24h AS (
    SELECT
        t.user_id,
        count(*)                                          AS txn_count_24h,
        sum(t.amount)                                     AS txn_amount_sum_24h,
        count(*) FILTER (WHERE t.status = 'declined')     AS declined_count_24h
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '24 hours'
      AND t.event_ts <= :as_of
    GROUP BY t.user_id
),
txn_1h AS (
    SELECT t.user_id, count(*) AS txn_count_1h
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '1 hour'
      AND t.event_ts <= :as_of
    GROUP BY t.user_id
)
SELECT
    t7.user_id,
    coalesce(t1.txn_count_1h, 0)        AS txn_count_1h,
    coalesce(t24.txn_count_24h, 0)       AS txn_count_24h,
    t7.txn_count_7d,
    coalesce(t24.txn_amount_sum_24h, 0)  AS txn_amount_sum_24h,
    t7.txn_amount_avg_7d,
    t7.txn_amount_max_7d,
    t7.distinct_merchants_7d,
    coalesce(t24.declined_count_24h, 0)  AS declined_count_24h,
    t7.foreign_txn_ratio_7d,
    t7.last_txn_ts,
    t7.last_txn_ts                      AS source_ts
FROM txn_7d AS t7
LEFT JOIN txn_24h AS t24 ON t24.user_id = t7.user_id
LEFT JOIN txn_1h AS t1 ON t1.user_id = t7.user_id
