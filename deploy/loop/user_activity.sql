-- The incremental twin of user_activity_view (deploy/loop/registry.toml):
-- its rows for the users whose bets, payments or balance changed.
WITH bets AS (
    SELECT tenant_id, user_id,
           count(*)                                         AS total_bets,
           sum(stake)                                       AS total_wagered,
           coalesce(sum(payout) FILTER (WHERE result = 'win'), 0) AS total_winnings,
           max(last_updated_timestamp)                      AS last_bet_at
    FROM bets_view WHERE $changed(tenant_id, user_id) GROUP BY tenant_id, user_id
), payments AS (
    SELECT tenant_id, user_id,
           coalesce(sum(amount) FILTER (WHERE payment_type = 'deposit' AND status = 'completed'), 0)    AS total_deposited,
           coalesce(sum(amount) FILTER (WHERE payment_type = 'withdrawal' AND status = 'completed'), 0) AS total_withdrawn,
           max(last_updated_timestamp)                      AS last_payment_at
    FROM payments_view WHERE $changed(tenant_id, user_id) GROUP BY tenant_id, user_id
)
SELECT ub.tenant_id,
       ub.user_id::varchar                        AS user_id,
       ub.balance                                 AS current_balance,
       coalesce(b.total_bets, 0)::integer         AS total_bets,
       coalesce(b.total_wagered, 0)               AS total_wagered,
       coalesce(b.total_winnings, 0)              AS total_winnings,
       coalesce(p.total_deposited, 0)             AS total_deposited,
       coalesce(p.total_withdrawn, 0)             AS total_withdrawn,
       greatest(ub.last_transaction_timestamp, b.last_bet_at, p.last_payment_at) AS last_activity_at
FROM user_balances_view ub
LEFT JOIN bets b ON b.tenant_id = ub.tenant_id AND b.user_id = ub.user_id
LEFT JOIN payments p ON p.tenant_id = ub.tenant_id AND p.user_id = ub.user_id
WHERE $changed(ub.tenant_id, ub.user_id)
