-- Part of sql/sample_data.sql (see there for the scale settings); the files of
-- sql/sample_data/ run in the order of their numbers, files with the same number
-- in parallel sessions (scripts/load-sample-data does that).
-- 1: staging tables with every bet and payment, the tenants, and the bulk
-- tables emptied and stripped of their keys and indexes.

TRUNCATE bet_events, balance_events, payment_events, bets_view, payments_view, user_balances_view;

-- Load as pg_restore does: keys and indexes of the bulk tables are dropped first
-- and rebuilt after the load, which is several times faster than maintaining
-- them row by row. Their definitions are read from the catalog, not repeated here.
CREATE UNLOGGED TABLE demo_ddl AS
SELECT c.conrelid::regclass AS relation,
       format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname) AS drop_sql,
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname,
              pg_get_constraintdef(c.oid)) AS create_sql,
       1 AS pass
FROM pg_constraint AS c
WHERE c.contype IN ('p', 'u')
  AND c.conrelid IN ('bet_events'::regclass, 'balance_events'::regclass,
                     'payment_events'::regclass, 'bets_view'::regclass, 'payments_view'::regclass)
UNION ALL
SELECT i.indrelid::regclass, format('DROP INDEX %s', i.indexrelid::regclass),
       pg_get_indexdef(i.indexrelid), 2
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
CREATE OR REPLACE FUNCTION demo_uuid(kind int, n bigint) RETURNS uuid
    LANGUAGE sql IMMUTABLE
    RETURN (lpad(to_hex(kind), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid;


CREATE UNLOGGED TABLE demo_scale AS
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
CREATE UNLOGGED TABLE demo_bets AS
SELECT i                                             AS n,
       'bet-' || i                                   AS bet_id,
       10001 + u % s.tenants                         AS tenant_id,
       'user-' || u                                  AS user_id,
       round((1 + random() * 99)::numeric, 2)        AS stake,
       round((1.1 + random() * 4)::numeric, 2)       AS odds,
       'fixture-' || i % 500                         AS fixture_id,
       (now() - interval '5 minutes' - random() * interval '36 hours')::timestamp AS placed_at,
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


-- Payments: every user deposits once or twice; some withdraw. 90% complete.
CREATE UNLOGGED TABLE demo_payments AS
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

