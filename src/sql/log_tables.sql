-- The log tables of mv-refresher. Idempotent: `init` and the first `refresh`
-- run it; later versions add columns with ADD COLUMN IF NOT EXISTS, never rename.
-- {schema} is replaced by the quoted --log-schema.

CREATE TABLE IF NOT EXISTS {schema}.materialized_views_refresh_log (
    view_name            text PRIMARY KEY,          -- schema-qualified: public.top_bets_today
    refresh_count        bigint NOT NULL DEFAULT 0,  -- successful refreshes
    failure_count        bigint NOT NULL DEFAULT 0,  -- failed refreshes
    avg_refresh_time_ms  double precision,           -- over successful refreshes
    last_refresh_time_ms double precision,           -- of the last successful refresh
    last_refreshed_at    timestamptz,                -- end of the last successful refresh
    last_attempt_at      timestamptz,
    last_status          text,
    last_method          text,
    last_error           text,
    refreshed_by         text                        -- host (pod) of the latest attempt
);

CREATE TABLE IF NOT EXISTS {schema}.materialized_views_refresh_history (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            uuid NOT NULL,
    view_name         text NOT NULL,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz NOT NULL,
    duration_ms       double precision NOT NULL,
    status            text NOT NULL
                      CHECK (status IN ('success', 'failed', 'skipped', 'cancelled')),
    method            text CHECK (method IN ('concurrently', 'full')),
    attempt           integer NOT NULL,
    work_mem          text,
    statement_timeout text,
    lock_timeout      text,
    sqlstate          text,
    error             text,
    note              text,                     -- why: the method chosen, a skip's reason
    host              text
);

CREATE INDEX IF NOT EXISTS materialized_views_refresh_history_view_idx
    ON {schema}.materialized_views_refresh_history (view_name, started_at DESC);

CREATE INDEX IF NOT EXISTS materialized_views_refresh_history_started_idx
    ON {schema}.materialized_views_refresh_history (started_at);

-- Version 2: the time a VACUUM (ANALYZE) after the refresh took.
ALTER TABLE {schema}.materialized_views_refresh_history
    ADD COLUMN IF NOT EXISTS vacuum_ms double precision;

-- Version 3: skipped and cancelled refreshes counted as refresh_count and
-- failure_count count the others, for the metrics (refreshes_total{status}).
ALTER TABLE {schema}.materialized_views_refresh_log
    ADD COLUMN IF NOT EXISTS skip_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cancel_count bigint NOT NULL DEFAULT 0;

-- Version 4: incremental views. Their cycles are recorded with method
-- 'incremental' and what they touched; their watermarks live in a table of
-- their own, one row per view and source.
ALTER TABLE {schema}.materialized_views_refresh_history
    ADD COLUMN IF NOT EXISTS keys_scanned bigint,   -- incremental: changed keys recomputed
    ADD COLUMN IF NOT EXISTS rows_inserted bigint,
    ADD COLUMN IF NOT EXISTS rows_updated bigint,
    ADD COLUMN IF NOT EXISTS rows_deleted bigint,
    DROP CONSTRAINT IF EXISTS materialized_views_refresh_history_method_check,
    ADD CONSTRAINT materialized_views_refresh_history_method_check
        CHECK (method IN ('concurrently', 'full', 'incremental'));

CREATE TABLE IF NOT EXISTS {schema}.materialized_views_refresh_state (
    view_name    text NOT NULL,        -- the incremental view, schema-qualified
    source       text NOT NULL,        -- one of its [[view.changes]] tables, schema-qualified
    watermark    text,                 -- the largest marker applied, in the marker's type
    snapshot     pg_snapshot,          -- the snapshot the cycle read: rows visible in it were applied
    applied_at   timestamptz NOT NULL, -- when that snapshot was taken
    last_full_at timestamptz,          -- the last full reconcile
    definition   text,                 -- md5 of the query, key and sources it was kept by
    PRIMARY KEY (view_name, source)
);

-- Version 5: the state belongs to one table in one database. Kept with it:
-- the cluster it was saved in, and the identity of the table and of the
-- source it was kept for; a state whose table was emptied or re-created, whose
-- source was rebuilt, or that was copied into another cluster makes the next
-- cycle a full reconcile.
ALTER TABLE {schema}.materialized_views_refresh_state
    ADD COLUMN IF NOT EXISTS system_identifier bigint, -- pg_control_system() of the cluster that saved it
    ADD COLUMN IF NOT EXISTS table_identity jsonb,     -- the table's OID and relfilenodes
    ADD COLUMN IF NOT EXISTS source_identity jsonb;    -- the source's OID and relfilenodes

-- Version 6: on Citus, what each node's snapshot saw. A row's xmin is a
-- transaction of the node that holds it: each node's own snapshot, taken
-- before the cycle read its shards, tells which rows of its shards were seen.
ALTER TABLE {schema}.materialized_views_refresh_state
    ADD COLUMN IF NOT EXISTS node_snapshots jsonb;     -- [{"started": the node's postmaster start, "xmin": its snapshot's}]

-- The version `refresh` checks to know whether to run this file again.
COMMENT ON TABLE {schema}.materialized_views_refresh_history IS 'mv-refresher schema version 6';
