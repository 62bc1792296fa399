-- Browsing sessions and purchases per user, as of :as_of.
-- Windows are subqueries bounded by temporal filters in their WHERE (the form RisingWave accepts).
WITH sessions AS (
    SELECT
        c.user_id,
        c.session_id,
        min(c.event_ts) AS started_at,
        count(*)        AS events,
        bool_or(c.event_type = 'add_to_cart') AS had_cart,
        bool_or(c.event_type = 'purchase')    AS had_purchase,
        max(c.event_ts) FILTER (WHERE c.event_type = 'click') AS last_click_ts,
        max(c.event_ts) AS last_event_ts
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '30 days'
      AND c.event_ts <= :as_of
    GROUP BY c.user_id, c.session_id
),
clicks AS (
    SELECT c.user_id, count(*) AS clicks_24h
    FROM raw.clickstream AS c
    WHERE c.event_type = 'click'
      AND c.event_ts > :as_of - interval '24 hours'
      AND c.event_ts <= :as_of
    GROUP BY c.user_id
),
per_user AS (
    SELECT
        s.user_id,
        count(*) FILTER (WHERE s.had_purchase) AS purchases_30d,
        max(s.last_click_ts)                   AS last_click_ts,
        max(s.last_event_ts)                   AS source_ts
    FROM sessions AS s
    GROUP BY s.user_id
),
sessions_24h AS (
    SELECT s.user_id, count(*) AS sessions_24h
    FROM sessions AS s
    WHERE s.started_at > :as_of - interval '24 hours'
    GROUP BY s.user_id
),
sessions_7d AS (
    SELECT
        s.user_id,
        count(*)                                              AS sessions_7d,
        avg(s.events)::double precision                       AS avg_session_events_7d,
        count(*) FILTER (WHERE s.had_cart AND NOT s.had_purchase) AS abandoned_carts_7d,
        count(*) FILTER (WHERE s.had_cart)                    AS carts_7d
    FROM sessions AS s
    WHERE s.started_at > :as_of - interval '7 days'
    GROUP BY s.user_id
)
SELECT
    u.user_id,
    coalesce(s24.sessions_24h, 0)                                   AS sessions_24h,
    coalesce(s7.sessions_7d, 0)                                    AS sessions_7d,
    coalesce(k.clicks_24h, 0)                                     AS clicks_24h,
    s7.avg_session_events_7d,
    u.purchases_30d,
    s7.abandoned_carts_7d::double precision / nullif(s7.carts_7d, 0) AS cart_abandon_rate_7d,
    u.last_click_ts,
    u.source_ts
FROM per_user AS u
LEFT JOIN sessions_24h AS s24 ON s24.user_id = u.user_id
LEFT JOIN sessions_7d AS s7 ON s7.user_id = u.user_id
LEFT JOIN clicks AS k ON k.user_id = u.user_id
