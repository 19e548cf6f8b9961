-- Part of sql/sample_data.sql (see there for the scale settings); the files of
-- sql/sample_data/ run in the order of their numbers, files with the same number
-- in parallel sessions (scripts/load-sample-data does that).
-- 2: the bets and payments projections and the payment events.

BEGIN;
TRUNCATE bets_view, payment_events, payments_view;

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


INSERT INTO payment_events (id, tenant_id, aggregate_id, idempotency_key, event_type, event_data,
                            "timestamp", version, created_at)
SELECT demo_uuid(e.version, p.n), p.tenant_id, p.payment_id, p.payment_id || ':' || e.version,
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


COMMIT;
