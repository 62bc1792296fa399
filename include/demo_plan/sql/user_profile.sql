-- Account attributes plus login behaviour per user, as of :as_of.
WITH logins AS (
    SELECT
        e.user_id,
        count(DISTINCT e.device_id) FILTER (WHERE e.event_ts > :as_of - interval '30 days')                               AS device_count_30d,
        count(*) FILTER (WHERE e.event_type = 'login' AND e.event_ts > :as_of - interval '7 days')                       AS login_count_7d,
        count(*) FILTER (WHERE e.event_type = 'login_failed' AND e.event_ts > :as_of - interval '24 hours')              AS failed_login_count_24h,
        max(e.event_ts)                                                                                                   AS last_event_ts
    FROM raw.user_events AS e
    WHERE e.event_ts > :as_of - interval '30 days'
      AND e.event_ts <= :as_of
    GROUP BY e.user_id
)
SELECT
    u.user_id,
    floor(extract(epoch FROM (:as_of - u.created_at)) / 86400)::bigint AS account_age_days,
    u.country,
    u.is_verified,
    u.kyc_level,
    u.email_domain_risk,
    coalesce(l.device_count_30d, 0)        AS device_count_30d,
    coalesce(l.login_count_7d, 0)          AS login_count_7d,
    coalesce(l.failed_login_count_24h, 0)  AS failed_login_count_24h,
    greatest(u.created_at, l.last_event_ts) AS source_ts
FROM raw.users AS u
LEFT JOIN logins AS l ON l.user_id = u.user_id
WHERE u.created_at <= :as_of
