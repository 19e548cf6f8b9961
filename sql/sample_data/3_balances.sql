-- Part of sql/sample_data.sql (see there for the scale settings); the files of
-- sql/sample_data/ run in the order of their numbers, files with the same number
-- in parallel sessions (scripts/load-sample-data does that).
-- 3: the balance projection.

BEGIN;
TRUNCATE user_balances_view;

-- The balance projection, as the seeds rebuild it from balance_events.
INSERT INTO user_balances_view (tenant_id, user_id, balance, transaction_count,
                                last_transaction_timestamp, last_transaction_at)
SELECT tenant_id, aggregate_id,
       sum(CASE event_type WHEN 'V1_BALANCES_BALANCE_CREDITED' THEN (event_data->>'amount')::numeric
                           WHEN 'V1_BALANCES_BALANCE_DEBITED' THEN -(event_data->>'amount')::numeric
                           ELSE 0 END),
       count(*), max("timestamp"), max(created_at)
FROM balance_events
GROUP BY tenant_id, aggregate_id
ON CONFLICT (tenant_id, user_id) DO UPDATE SET
    balance = EXCLUDED.balance,
    transaction_count = EXCLUDED.transaction_count,
    last_transaction_timestamp = EXCLUDED.last_transaction_timestamp,
    last_transaction_at = EXCLUDED.last_transaction_at;


COMMIT;
