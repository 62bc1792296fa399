-- Merchant volume, ticket size, refunds and chargebacks, as of :as_of.
-- One subquery per window, bounded by temporal filters in its WHERE (the form RisingWave accepts).
WITH txns AS (
    SELECT
        t.merchant_id,
        avg(CASE WHEN t.status = 'chargeback' THEN 1.0 ELSE 0.0 END) AS merchant_chargeback_rate_30d,
        max(t.event_ts)                                              AS last_txn_ts
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '30 days'
      AND t.event_ts <= :as_of
    GROUP BY t.merchant_id
),
txns_7d AS (
    SELECT
        t.merchant_id,
        avg(t.amount)                                 AS merchant_avg_ticket_7d,
        count(*) FILTER (WHERE t.status = 'refunded') AS merchant_refund_count_7d
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '7 days'
      AND t.event_ts <= :as_of
    GROUP BY t.merchant_id
),
txns_24h AS (
    SELECT t.merchant_id, count(*) AS merchant_txn_count_24h
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '24 hours'
      AND t.event_ts <= :as_of
    GROUP BY t.merchant_id
)
SELECT
    m.merchant_id,
    coalesce(x24.merchant_txn_count_24h, 0)       AS merchant_txn_count_24h,
    x7.merchant_avg_ticket_7d,
    coalesce(x7.merchant_refund_count_7d, 0)     AS merchant_refund_count_7d,
    coalesce(x.merchant_chargeback_rate_30d, 0) AS merchant_chargeback_rate_30d,
    m.category                                  AS merchant_category,
    m.static_risk                               AS merchant_static_risk,
    greatest(m.updated_at, x.last_txn_ts)       AS source_ts
FROM raw.merchants AS m
LEFT JOIN txns AS x ON x.merchant_id = m.merchant_id
LEFT JOIN txns_7d AS x7 ON x7.merchant_id = m.merchant_id
LEFT JOIN txns_24h AS x24 ON x24.merchant_id = m.merchant_id
WHERE m.updated_at <= :as_of
