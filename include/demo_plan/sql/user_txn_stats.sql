-- Transaction velocity per user over windows ending at :as_of (exclusive start, inclusive end).
SELECT
    t.user_id,
    count(*) FILTER (WHERE t.event_ts > :as_of - interval '1 hour')                          AS txn_count_1h,
    count(*) FILTER (WHERE t.event_ts > :as_of - interval '24 hours')                        AS txn_count_24h,
    count(*)                                                                                 AS txn_count_7d,
    coalesce(sum(t.amount) FILTER (WHERE t.event_ts > :as_of - interval '24 hours'), 0)      AS txn_amount_sum_24h,
    avg(t.amount)                                                                            AS txn_amount_avg_7d,
    max(t.amount)                                                                            AS txn_amount_max_7d,
    count(DISTINCT t.merchant_id)                                                            AS distinct_merchants_7d,
    count(*) FILTER (WHERE t.status = 'declined' AND t.event_ts > :as_of - interval '24 hours') AS declined_count_24h,
    avg(CASE WHEN t.is_foreign THEN 1.0 ELSE 0.0 END)                                        AS foreign_txn_ratio_7d,
    max(t.event_ts)                                                                          AS last_txn_ts,
    max(t.event_ts)                                                                          AS source_ts
FROM raw.transactions AS t
WHERE t.event_ts > :as_of - interval '7 days'
  AND t.event_ts <= :as_of
GROUP BY t.user_id
