-- Account attributes plus login behaviour per user, as of :as_of.
-- One subquery per window, bounded by temporal filters in its WHERE (the form RisingWave accepts).
-- account_age_days moves with the clock: RisingWave has no streaming form of it (see docs/risingwave.md).
WITH logins AS (
    SELECT
        e.user_id,
        count(DISTINCT e.device_id) AS device_count_30d,
        max(e.event_ts)             AS last_event_ts
    FROM raw.user_events AS e
    WHERE e.event_ts > :as_of - interval '30 days'
      AND e.event_ts <= :as_of
    GROUP BY e.user_id
),
logins_7d AS (
    SELECT e.user_id, count(*) AS login_count_7d
    FROM raw.user_events AS e
    WHERE e.event_type = 'login'
      AND e.event_ts > :as_of - interval '7 days'
      AND e.event_ts <= :as_of
    GROUP BY e.user_id
),
failed_24h AS (
    SELECT e.user_id, count(*) AS failed_login_count_24h
    FROM raw.user_events AS e
    WHERE e.event_type = 'login_failed'
      AND e.event_ts > :as_of - interval '24 hours'
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
    coalesce(l7.login_count_7d, 0)          AS login_count_7d,
    coalesce(f24.failed_login_count_24h, 0)  AS failed_login_count_24h,
    greatest(u.created_at, l.last_event_ts) AS source_ts
FROM raw.users AS u
LEFT JOIN logins AS l ON l.user_id = u.user_id
LEFT JOIN logins_7d AS l7 ON l7.user_id = u.user_id
LEFT JOIN failed_24h AS f24 ON f24.user_id = u.user_id
WHERE u.created_at <= :as_of
