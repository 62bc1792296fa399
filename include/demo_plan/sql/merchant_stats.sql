-- Merchant volume, ticket size, refunds and chargebacks, as of :as_of.
WITH txns AS (
    SELECT
        t.merchant_id,
        count(*) FILTER (WHERE t.event_ts > :as_of - interval '24 hours')                              AS merchant_txn_count_24h,
        avg(t.amount) FILTER (WHERE t.event_ts > :as_of - interval '7 days')                           AS merchant_avg_ticket_7d,
        count(*) FILTER (WHERE t.status = 'refunded' AND t.event_ts > :as_of - interval '7 days')      AS merchant_refund_count_7d,
        avg(CASE WHEN t.status = 'chargeback' THEN 1.0 ELSE 0.0 END)                                   AS merchant_chargeback_rate_30d,
        max(t.event_ts)                                                                                AS last_txn_ts
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '30 days'
      AND t.event_ts <= :as_of
    GROUP BY t.merchant_id
)
SELECT
    m.merchant_id,
    coalesce(x.merchant_txn_count_24h, 0)    AS merchant_txn_count_24h,
    x.merchant_avg_ticket_7d,
    coalesce(x.merchant_refund_count_7d, 0)  AS merchant_refund_count_7d,
    coalesce(x.merchant_chargeback_rate_30d, 0) AS merchant_chargeback_rate_30d,
    m.category                               AS merchant_category,
    m.static_risk                            AS merchant_static_risk,
    greatest(m.updated_at, x.last_txn_ts)    AS source_ts
FROM raw.merchants AS m
LEFT JOIN txns AS x ON x.merchant_id = m.merchant_id
WHERE m.updated_at <= :as_of
