-- Engagement and propensity derived from the user_session_stats group.
SELECT
    s.user_id,
    round(least(1.0, (s.sessions_7d / 14.0) * 0.6 + least(s.clicks_24h, 50) / 50.0 * 0.4)::numeric, 6)::double precision
                                                          AS engagement_score,
    round(least(1.0, s.purchases_30d / 10.0 * (1 - coalesce(s.cart_abandon_rate_7d, 0)))::numeric, 6)::double precision
                                                          AS purchase_propensity,
    (s.sessions_7d = 0)                                   AS is_dormant,
    CASE WHEN s.avg_session_events_7d >= 8 THEN 'feed' ELSE 'search' END AS preferred_surface,
    s.source_ts
FROM features.user_session_stats AS s
