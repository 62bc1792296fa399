-- Features handed to the authorization-time scorer, derived from user_risk_profile.
SELECT
    r.user_id,
    CASE WHEN r.risk_score_v1 >= 0.7 THEN 'high'
         WHEN r.risk_score_v1 >= 0.4 THEN 'medium'
         ELSE 'low' END                                               AS risk_band,
    (r.risk_score_v1 >= 0.7 OR r.new_account_high_spend)              AS step_up_auth_required,
    least(r.risk_score_v1, 0.95)                                      AS risk_score_capped,
    (CASE WHEN r.new_account_high_spend THEN 2 ELSE 0 END
     + CASE WHEN r.unverified_foreign_activity THEN 1 ELSE 0 END)::bigint AS review_priority,
    r.source_ts
FROM features.user_risk_profile AS r
