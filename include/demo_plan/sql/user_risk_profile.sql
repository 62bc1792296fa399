-- Derived risk signals: reads two upstream groups' views in the new store.
SELECT
    p.user_id,
    CASE WHEN t.txn_count_7d > 0
         THEN round((t.txn_count_1h * 168.0 / t.txn_count_7d)::numeric, 6)::double precision
    END                                                                       AS velocity_ratio_1h_7d,
    round((coalesce(t.txn_amount_sum_24h, 0) / greatest(p.account_age_days, 1))::numeric, 4)::double precision
                                                                              AS spend_per_account_day,
    (p.account_age_days < 30 AND coalesce(t.txn_amount_sum_24h, 0) > 1000)    AS new_account_high_spend,
    (NOT p.is_verified AND coalesce(t.foreign_txn_ratio_7d, 0) > 0.5)         AS unverified_foreign_activity,
    CASE WHEN p.login_count_7d > 0
         THEN round((coalesce(t.declined_count_24h, 0)::numeric / p.login_count_7d), 6)::double precision
    END                                                                       AS decline_to_login_ratio,
    round(least(1.0,
        0.4 * coalesce(t.foreign_txn_ratio_7d, 0)
      + 0.3 * p.email_domain_risk
      + 0.2 * least(1.0, coalesce(t.declined_count_24h, 0) / 5.0)
      + 0.1 * CASE WHEN p.is_verified THEN 0 ELSE 1 END)::numeric, 6)::double precision
                                                                              AS risk_score_v1,
    greatest(p.source_ts, t.source_ts)                                        AS source_ts
FROM features.user_profile AS p
LEFT JOIN features.user_txn_stats AS t ON t.user_id = p.user_id
