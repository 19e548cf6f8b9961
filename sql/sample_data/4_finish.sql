-- Part of sql/sample_data.sql (see there for the scale settings); the files of
-- sql/sample_data/ run in the order of their numbers, files with the same number
-- in parallel sessions (scripts/load-sample-data does that).
-- 4: the staging tables gone, statistics, and the aggregate views populated.

DROP TABLE demo_bets, demo_payments, demo_scale, demo_ddl;
DROP FUNCTION demo_uuid(int, bigint);

ANALYZE;

REFRESH MATERIALIZED VIEW tenants_summary_view;
REFRESH MATERIALIZED VIEW user_activity_view;
REFRESH MATERIALIZED VIEW top_bets_today;
