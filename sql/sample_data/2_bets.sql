-- Part of sql/sample_data.sql (see there for the scale settings); the files of
-- sql/sample_data/ run in the order of their numbers, files with the same number
-- in parallel sessions (scripts/load-sample-data does that).
-- 2: the bet events. Truncated again in the same transaction: with
-- wal_level = minimal the rows are then not WAL-logged.

BEGIN;
TRUNCATE bet_events;

INSERT INTO bet_events (id, tenant_id, aggregate_id, idempotency_key, event_type, event_data,
                        "timestamp", version, created_at)
SELECT demo_uuid(e.version, b.n), b.tenant_id, b.bet_id, b.bet_id || ':' || e.version, e.event_type,
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


COMMIT;
