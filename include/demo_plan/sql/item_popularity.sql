-- Item engagement over short windows, as of :as_of.
-- One subquery per window, bounded by temporal filters in its WHERE (the form RisingWave accepts).
WITH events AS (
    SELECT
        c.item_id,
        count(*) FILTER (WHERE c.event_type = 'click') AS clicks_7d,
        count(*) FILTER (WHERE c.event_type = 'view')  AS views_7d,
        max(c.event_ts)                                AS last_event_ts
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '7 days'
      AND c.event_ts <= :as_of
    GROUP BY c.item_id
),
events_24h AS (
    SELECT
        c.item_id,
        count(*) FILTER (WHERE c.event_type = 'view')        AS item_views_24h,
        count(*) FILTER (WHERE c.event_type = 'purchase')    AS item_purchases_24h,
        count(*) FILTER (WHERE c.event_type = 'add_to_cart') AS item_add_to_cart_24h
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '24 hours'
      AND c.event_ts <= :as_of
    GROUP BY c.item_id
),
events_1h AS (
    SELECT c.item_id, count(*) FILTER (WHERE c.event_type = 'view') AS item_views_1h
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '1 hour'
      AND c.event_ts <= :as_of
    GROUP BY c.item_id
)
SELECT
    i.item_id,
    coalesce(e1.item_views_1h, 0)          AS item_views_1h,
    coalesce(e24.item_views_24h, 0)         AS item_views_24h,
    coalesce(e24.item_purchases_24h, 0)     AS item_purchases_24h,
    coalesce(e24.item_add_to_cart_24h, 0)   AS item_add_to_cart_24h,
    CASE WHEN e.views_7d > 0 THEN e.clicks_7d::double precision / e.views_7d END AS item_ctr_7d,
    i.price                               AS item_price,
    i.category                            AS item_category,
    greatest(i.updated_at, e.last_event_ts) AS source_ts
FROM raw.items AS i
LEFT JOIN events AS e ON e.item_id = i.item_id
LEFT JOIN events_24h AS e24 ON e24.item_id = i.item_id
LEFT JOIN events_1h AS e1 ON e1.item_id = i.item_id
WHERE i.updated_at <= :as_of
