-- Item engagement over short windows, as of :as_of.
WITH events AS (
    SELECT
        c.item_id,
        count(*) FILTER (WHERE c.event_type = 'view' AND c.event_ts > :as_of - interval '1 hour')          AS item_views_1h,
        count(*) FILTER (WHERE c.event_type = 'view' AND c.event_ts > :as_of - interval '24 hours')        AS item_views_24h,
        count(*) FILTER (WHERE c.event_type = 'purchase' AND c.event_ts > :as_of - interval '24 hours')    AS item_purchases_24h,
        count(*) FILTER (WHERE c.event_type = 'add_to_cart' AND c.event_ts > :as_of - interval '24 hours') AS item_add_to_cart_24h,
        count(*) FILTER (WHERE c.event_type = 'click')                                                     AS clicks_7d,
        count(*) FILTER (WHERE c.event_type = 'view')                                                      AS views_7d,
        max(c.event_ts)                                                                                    AS last_event_ts
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '7 days'
      AND c.event_ts <= :as_of
    GROUP BY c.item_id
)
SELECT
    i.item_id,
    coalesce(e.item_views_1h, 0)          AS item_views_1h,
    coalesce(e.item_views_24h, 0)         AS item_views_24h,
    coalesce(e.item_purchases_24h, 0)     AS item_purchases_24h,
    coalesce(e.item_add_to_cart_24h, 0)   AS item_add_to_cart_24h,
    CASE WHEN e.views_7d > 0 THEN e.clicks_7d::double precision / e.views_7d END AS item_ctr_7d,
    i.price                               AS item_price,
    i.category                            AS item_category,
    greatest(i.updated_at, e.last_event_ts) AS source_ts
FROM raw.items AS i
LEFT JOIN events AS e ON e.item_id = i.item_id
WHERE i.updated_at <= :as_of
