-- Part of sql/sample_data.sql (see there for the scale settings); the files of
-- sql/sample_data/ run in the order of their numbers, files with the same number
-- in parallel sessions (scripts/load-sample-data does that).
-- 3: the keys and indexes of the other bulk tables, rebuilt as pg_restore does.

SET maintenance_work_mem = '512MB';
DO $$
DECLARE statement text;
BEGIN
    FOR statement IN SELECT create_sql FROM demo_ddl WHERE relation <> 'bet_events'::regclass ORDER BY pass LOOP
        EXECUTE statement;
    END LOOP;
END
$$;
RESET maintenance_work_mem;
