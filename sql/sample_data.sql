-- Sample data for the reference platform (sql/platform.sql), generated in SQL
-- set-wise so a million bets load in seconds, not row by row.
--
-- Scale, read from custom settings (defaults in brackets):
--   demo.bets [10000]   bets placed (each has 1 to 3 events)
--   demo.users [2000]   users, spread over the tenants
--   demo.tenants [5]    tenants, 10001 (the default tenant) upwards
-- e.g. psql -c "SET demo.bets = 1000000" -f sql/sample_data.sql, or
-- PGOPTIONS='-c demo.bets=1000000' psql -f sql/sample_data.sql.
-- The data is deterministic for a given scale (setseed), apart from timestamps,
-- which are relative to now() so that top_bets_today has bets "today".
-- It replaces whatever the platform's tables hold (they are truncated first).
-- One transaction: on a server with wal_level = minimal (the throwaway cluster of
-- scripts/pg-throwaway) rows of tables truncated in it are not WAL-logged.

BEGIN;

TRUNCATE bet_events, balance_events, payment_events, bets_view, payments_view, user_balances_view;

-- Load as pg_restore does: keys and indexes of the bulk tables are dropped first
-- and rebuilt after the load, which is several times faster than maintaining
-- them row by row. Their definitions are read from the catalog, not repeated here.
CREATE TEMP TABLE demo_ddl AS
SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname) AS drop_sql,
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname,
              pg_get_constraintdef(c.oid)) AS create_sql,
       1 AS pass
FROM pg_constraint AS c
WHERE c.contype IN ('p', 'u')
  AND c.conrelid IN ('bet_events'::regclass, 'balance_events'::regclass,
                     'payment_events'::regclass, 'bets_view'::regclass, 'payments_view'::regclass)
UNION ALL
SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid), 2
FROM pg_index AS i
WHERE i.indrelid IN ('bet_events'::regclass, 'balance_events'::regclass,
                     'payment_events'::regclass, 'bets_view'::regclass, 'payments_view'::regclass)
  AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid);

DO $$
DECLARE statement text;
BEGIN
    FOR statement IN SELECT drop_sql FROM demo_ddl ORDER BY pass DESC LOOP
        EXECUTE statement;
    END LOOP;
END
$$;

DO $$ BEGIN PERFORM setseed(0.42); END $$;

-- Event ids: deterministic and cheap (gen_random_uuid() costs more than the rest
-- of an event row); `kind` keeps the kinds of event apart.
CREATE FUNCTION pg_temp.demo_uuid(kind int, n bigint) RETURNS uuid
    LANGUAGE sql IMMUTABLE
    RETURN (lpad(to_hex(kind), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid;

CREATE TEMP TABLE demo_scale AS
SELECT coalesce(nullif(current_setting('demo.bets', true), '')::bigint, 10000) AS bets,
       coalesce(nullif(current_setting('demo.users', true), '')::bigint, 2000) AS users,
       coalesce(nullif(current_setting('demo.tenants', true), '')::bigint, 5)  AS tenants;

INSERT INTO tenants (id, name, slug, status, plan)
SELECT 10000 + t, 'Tenant ' || t, 'tenant-' || t, 'active',
       (ARRAY['basic', 'pro', 'enterprise'])[1 + t % 3]
FROM demo_scale, generate_series(1, tenants) AS t
ON CONFLICT (id) DO NOTHING;

-- Bets with their final state. r decides the life cycle:
-- < .35 placed, < .50 confirmed, < .95 settled (win below .70), < .98 cancelled, else voided.
CREATE TEMP TABLE demo_bets AS
SELECT i                                             AS n,
       'bet-' || i                                   AS bet_id,
       10001 + u % s.tenants                         AS tenant_id,
       'user-' || u                                  AS user_id,
       round((1 + random() * 99)::numeric, 2)        AS stake,
       round((1.1 + random() * 4)::numeric, 2)       AS odds,
       'fixture-' || i % 500                         AS fixture_id,
       (now() - random() * interval '36 hours')::timestamp AS placed_at,
       random()                                      AS r
FROM demo_scale AS s,
     generate_series(1, s.bets) AS i,
     LATERAL (SELECT 1 + (i * 7919) % s.users AS u) AS pick;

ALTER TABLE demo_bets
    ADD COLUMN status text, ADD COLUMN result text, ADD COLUMN payout numeric;
UPDATE demo_bets SET
    status = CASE WHEN r < .35 THEN 'placed' WHEN r < .50 THEN 'confirmed'
                  WHEN r < .95 THEN 'settled' WHEN r < .98 THEN 'cancelled' ELSE 'voided' END,
    result = CASE WHEN r >= .50 AND r < .70 THEN 'win' WHEN r >= .70 AND r < .95 THEN 'loss' END,
    payout = CASE WHEN r >= .50 AND r < .70 THEN round(stake * odds, 2) END;

INSERT INTO bet_events (id, tenant_id, aggregate_id, idempotency_key, event_type, event_data,
                        "timestamp", version, created_at)
SELECT pg_temp.demo_uuid(e.version, b.n), b.tenant_id, b.bet_id, b.bet_id || ':' || e.version, e.event_type,
       CASE e.version
           WHEN 1 THEN jsonb_build_object('bet_id', b.bet_id, 'user_id', b.user_id,
                                          'stake', b.stake, 'odds', b.odds,
                                          'fixture_id', b.fixture_id, 'status', e.status)
           ELSE jsonb_build_object('bet_id', b.bet_id, 'status', e.status,
                                   'result', e.result, 'payout', e.payout)
       END,
       (date_part('epoch', b.placed_at + e.after) * 1000)::bigint, e.version, b.placed_at + e.after
FROM demo_bets AS b
CROSS JOIN LATERAL (VALUES
    (1, 'V1_BETS_BET_PLACED', 'placed', NULL, NULL, interval '0'),
    (2, 'V1_BETS_BET_CONFIRMED', 'confirmed', NULL, NULL, interval '2 seconds'),
    (3, 'V1_BETS_BET_' || upper(b.status), b.status, b.result, b.payout, interval '5 minutes')
) AS e (version, event_type, status, result, payout, after)
WHERE e.version = 1 OR (e.version = 2 AND b.r >= .35) OR (e.version = 3 AND b.r >= .50);

-- The projection the application keeps: the latest state of each bet.
INSERT INTO bets_view (tenant_id, bet_id, idempotency_key, user_id, stake, odds, fixture_id,
                       status, result, payout, created_at, last_updated_timestamp, last_updated_at)
SELECT tenant_id, bet_id, bet_id || ':1', user_id, stake, odds, fixture_id, status, result, payout,
       placed_at,
       (date_part('epoch', last_at) * 1000)::bigint, last_at
FROM demo_bets,
     LATERAL (SELECT placed_at + CASE WHEN r >= .50 THEN interval '5 minutes'
                                      WHEN r >= .35 THEN interval '2 seconds'
                                      ELSE interval '0' END AS last_at) AS t;

-- Payments: every user deposits once or twice; some withdraw. 90% complete.
CREATE TEMP TABLE demo_payments AS
SELECT u * 4 + k                                     AS n,
       'payment-' || u || '-' || k                   AS payment_id,
       10001 + u % s.tenants                         AS tenant_id,
       'user-' || u                                  AS user_id,
       CASE WHEN k < 3 THEN 'deposit' ELSE 'withdrawal' END AS payment_type,
       round((20 + random() * 480)::numeric, 2)      AS amount,
       CASE WHEN random() < .9 THEN 'completed' ELSE 'failed' END AS status,
       (ARRAY['card', 'bank_transfer', 'wallet'])[1 + (u + k) % 3] AS payment_method,
       (now() - interval '40 hours' + random() * interval '39 hours')::timestamp AS paid_at
FROM demo_scale AS s, generate_series(1, s.users) AS u, generate_series(1, 3) AS k
WHERE k = 1 OR (k = 2 AND u % 2 = 0) OR (k = 3 AND u % 3 = 0);

INSERT INTO payment_events (id, tenant_id, aggregate_id, idempotency_key, event_type, event_data,
                            "timestamp", version, created_at)
SELECT pg_temp.demo_uuid(e.version, p.n), p.tenant_id, p.payment_id, p.payment_id || ':' || e.version,
       'V1_PAYMENTS_' || upper(p.payment_type) || '_' || e.state,
       jsonb_build_object('payment_id', p.payment_id, 'user_id', p.user_id, 'amount', p.amount,
                          'currency', 'USD', 'payment_method', p.payment_method,
                          'status', lower(e.state)),
       (date_part('epoch', p.paid_at + e.after) * 1000)::bigint, e.version, p.paid_at + e.after
FROM demo_payments AS p
CROSS JOIN LATERAL (VALUES (1, 'CREATED', interval '0'),
                           (2, upper(p.status), interval '30 seconds')) AS e (version, state, after);

INSERT INTO payments_view (tenant_id, payment_id, idempotency_key, user_id, amount, currency,
                           payment_method, external_id, payment_type, status,
                           last_updated_timestamp, last_updated_at)
SELECT tenant_id, payment_id, payment_id || ':1', user_id, amount, 'USD', payment_method,
       'ext-' || md5(payment_id), payment_type, status,
       (date_part('epoch', paid_at + interval '30 seconds') * 1000)::bigint,
       paid_at + interval '30 seconds'
FROM demo_payments;

-- Balance movements: completed deposits and withdrawals, stakes, winnings.
INSERT INTO balance_events (id, tenant_id, aggregate_id, idempotency_key, event_type, event_data,
                            "timestamp", version, created_at)
SELECT pg_temp.demo_uuid(kind, n), tenant_id, user_id, source_id || ':balance', event_type,
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

SET maintenance_work_mem = '512MB';
DO $$
DECLARE statement text;
BEGIN
    FOR statement IN SELECT create_sql FROM demo_ddl ORDER BY pass LOOP
        EXECUTE statement;
    END LOOP;
END
$$;

RESET maintenance_work_mem;
DROP TABLE demo_bets, demo_payments, demo_scale, demo_ddl;

COMMIT;

ANALYZE;

REFRESH MATERIALIZED VIEW tenants_summary_view;
REFRESH MATERIALIZED VIEW user_activity_view;
REFRESH MATERIALIZED VIEW top_bets_today;
