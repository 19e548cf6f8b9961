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
-- It replaces whatever the platform's tables hold.
--
-- This file runs the parts in sql/sample_data/ one after the other (psql only:
-- \ir); scripts/load-sample-data runs the parts with the same number in
-- parallel sessions, which takes about a third less time on two cores.

\set ON_ERROR_STOP on
\ir sample_data/1_prepare.sql
\ir sample_data/2_bets.sql
\ir sample_data/2_views.sql
\ir sample_data/2_balances.sql
\ir sample_data/3_balances.sql
\ir sample_data/3_keys_bets.sql
\ir sample_data/3_keys_others.sql
\ir sample_data/4_finish.sql
