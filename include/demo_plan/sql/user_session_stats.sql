-- Browsing sessions and purchases per user, as of :as_of.
WITH sessions AS (
    SELECT
        c.user_id,
        c.session_id,
        min(c.event_ts) AS started_at,
        count(*)        AS events,
        bool_or(c.event_type = 'add_to_cart') AS had_cart,
        bool_or(c.event_type = 'purchase')    AS had_purchase
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '30 days'
      AND c.event_ts <= :as_of
    GROUP BY c.user_id, c.session_id
),
clicks AS (
    SELECT c.user_id,
           count(*) FILTER (WHERE c.event_type = 'click' AND c.event_ts > :as_of - interval '24 hours') AS clicks_24h,
           max(c.event_ts) FILTER (WHERE c.event_type = 'click') AS last_click_ts,
           max(c.event_ts) AS last_event_ts
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '30 days'
      AND c.event_ts <= :as_of
    GROUP BY c.user_id
)
SELECT
    s.user_id,
    count(*) FILTER (WHERE s.started_at > :as_of - interval '24 hours')                 AS sessions_24h,
    count(*) FILTER (WHERE s.started_at > :as_of - interval '7 days')                   AS sessions_7d,
    max(k.clicks_24h)                                                                    AS clicks_24h,
    avg(s.events) FILTER (WHERE s.started_at > :as_of - interval '7 days')::double precision AS avg_session_events_7d,
    count(*) FILTER (WHERE s.had_purchase)                                               AS purchases_30d,
    (count(*) FILTER (WHERE s.had_cart AND NOT s.had_purchase AND s.started_at > :as_of - interval '7 days'))::double precision
        / nullif(count(*) FILTER (WHERE s.had_cart AND s.started_at > :as_of - interval '7 days'), 0)
                                                                                         AS cart_abandon_rate_7d,
    max(k.last_click_ts)                                                                 AS last_click_ts,
    max(k.last_event_ts)                                                                 AS source_ts
FROM sessions AS s
JOIN clicks AS k ON k.user_id = s.user_id
GROUP BY s.user_id
