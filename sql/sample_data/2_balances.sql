-- Part of sql/sample_data.sql (see there for the scale settings); the files of
-- sql/sample_data/ run in the order of their numbers, files with the same number
-- in parallel sessions (scripts/load-sample-data does that).
-- 2: the balance events.

BEGIN;
TRUNCATE balance_events;

-- Balance movements: completed deposits and withdrawals, stakes, winnings.
INSERT INTO balance_events (id, tenant_id, aggregate_id, idempotency_key, event_type, event_data,
                            "timestamp", version, created_at)
SELECT demo_uuid(kind, n), tenant_id, user_id, source_id || ':balance', event_type,
       jsonb_build_object('user_id', user_id, 'amount', amount, 'currency', 'USD',
                          'source_id', source_id),
       (date_part('epoch', at) * 1000)::bigint, 1, at
FROM (
    SELECT 1 AS kind, n, tenant_id, user_id, payment_id AS source_id, amount,
           paid_at + interval '30 seconds' AS at,
           CASE payment_type WHEN 'deposit' THEN 'V1_BALANCES_BALANCE_CREDITED'
                             ELSE 'V1_BALANCES_BALANCE_DEBITED' END AS event_type
    FROM demo_payments WHERE status = 'completed'
    UNION ALL
    SELECT 2, n, tenant_id, user_id, bet_id, stake, placed_at, 'V1_BALANCES_BALANCE_DEBITED'
    FROM demo_bets
    UNION ALL
    SELECT 3, n, tenant_id, user_id, bet_id || ':payout', payout, placed_at + interval '5 minutes',
           'V1_BALANCES_BALANCE_CREDITED'
    FROM demo_bets WHERE result = 'win'
) AS movements;


COMMIT;
