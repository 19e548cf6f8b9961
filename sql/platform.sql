-- The reference platform: the seeds' event-sourced betting schema, on which
-- mv-refresher is demonstrated, tested and benchmarked.
--
-- * tenants, and three append-only event tables (bet_events, balance_events,
--   payment_events) with the seeds' event columns;
-- * entity views bets_view, payments_view, user_balances_view: regular tables
--   upserted per aggregate by the application (Citus rejects triggers on
--   distributed tables, so the platform has none);
-- * aggregate views tenants_summary_view, user_activity_view, top_bets_today:
--   materialized views with the unique indexes REFRESH ... CONCURRENTLY needs.
--
-- Plain PostgreSQL 13+. When the citus extension is installed the event tables
-- and entity views are distributed by tenant_id (the materialized views then live
-- on the coordinator). Load sample data with sql/sample_data.sql.

CREATE TABLE tenants (
    id          bigint PRIMARY KEY,
    name        varchar(255) NOT NULL,
    slug        varchar(100) NOT NULL UNIQUE,
    status      varchar(50)  NOT NULL DEFAULT 'active',
    plan        varchar(50)  NOT NULL DEFAULT 'basic',
    created_at  timestamp    NOT NULL DEFAULT now()
);

INSERT INTO tenants (id, name, slug, status, plan)
VALUES (10001, 'Default Tenant', 'default', 'active', 'basic')
ON CONFLICT (id) DO NOTHING;

-- Event tables: one shape for all three. event_type is UPPER_SNAKE_CASE
-- (V1_BETS_BET_PLACED), timestamp is epoch milliseconds. The seeds' id is a
-- random uuid; seq numbers the events in the order they were written, the
-- marker the incremental read models follow.
CREATE TABLE bet_events (
    id               uuid         NOT NULL DEFAULT gen_random_uuid(),
    tenant_id        bigint       NOT NULL,
    aggregate_id     varchar(255) NOT NULL,
    idempotency_key  varchar(255) NOT NULL,
    event_type       varchar(100) NOT NULL,
    event_data       jsonb        NOT NULL,
    "timestamp"      bigint       NOT NULL,
    version          integer      NOT NULL DEFAULT 1,
    created_at       timestamp    NOT NULL DEFAULT now(),
    seq              bigint       GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX bet_events_aggregate_idx ON bet_events (tenant_id, aggregate_id, "timestamp");
CREATE INDEX bet_events_seq_idx ON bet_events (seq);

CREATE TABLE balance_events (LIKE bet_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, idempotency_key));
CREATE INDEX balance_events_aggregate_idx ON balance_events (tenant_id, aggregate_id, "timestamp");

CREATE TABLE payment_events (LIKE bet_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, idempotency_key));
CREATE INDEX payment_events_aggregate_idx ON payment_events (tenant_id, aggregate_id, "timestamp");

-- Entity views (seeds 001 and 003): current state per aggregate.
CREATE TABLE bets_view (
    tenant_id               bigint       NOT NULL,
    bet_id                  varchar(255) NOT NULL,
    idempotency_key         varchar(255),
    user_id                 varchar(255) NOT NULL,
    stake                   numeric      NOT NULL,
    odds                    numeric      NOT NULL,
    fixture_id              varchar(255),
    status                  varchar(50)  NOT NULL,  -- placed, confirmed, settled, cancelled, voided
    result                  varchar(50),            -- win, loss, null
    payout                  numeric,
    created_at              timestamp    NOT NULL,  -- when the bet was placed
    last_updated_timestamp  bigint       NOT NULL,
    last_updated_at         timestamp    NOT NULL,
    PRIMARY KEY (tenant_id, bet_id)
);
CREATE INDEX bets_view_user_idx ON bets_view (tenant_id, user_id, status);
CREATE INDEX bets_view_idempotency_idx ON bets_view (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX bets_view_updated_idx ON bets_view (last_updated_timestamp);

CREATE TABLE payments_view (
    tenant_id               bigint       NOT NULL,
    payment_id              varchar(255) NOT NULL,
    idempotency_key         varchar(255),
    user_id                 varchar(255) NOT NULL,
    amount                  numeric      NOT NULL,
    currency                varchar(10)  NOT NULL DEFAULT 'USD',
    payment_method          varchar(50),
    external_id             varchar(255),
    payment_type            varchar(50)  NOT NULL,  -- deposit, withdrawal
    status                  varchar(50)  NOT NULL,  -- created, pending, completed, failed
    last_updated_timestamp  bigint       NOT NULL,
    last_updated_at         timestamp    NOT NULL,
    PRIMARY KEY (tenant_id, payment_id)
);
CREATE INDEX payments_view_user_idx ON payments_view (tenant_id, user_id, payment_type);
CREATE INDEX payments_view_updated_idx ON payments_view (last_updated_timestamp);

CREATE TABLE user_balances_view (
    tenant_id                   bigint       NOT NULL,
    user_id                     varchar(255) NOT NULL,
    balance                     numeric      NOT NULL DEFAULT 0,
    transaction_count           integer      NOT NULL DEFAULT 0,
    -- The incremental twin's marker: never NULL (a balance comes from its
    -- events), so no cycle reads NULL-marker rows again (on Citus, every one).
    last_transaction_timestamp  bigint       NOT NULL,
    last_transaction_at         timestamp,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX user_balances_view_updated_idx ON user_balances_view (last_transaction_timestamp);

-- Incremental read models (mv-refresher's incremental views, SPEC 2.5): plain
-- tables the refresher keeps equal to the queries in its default registry by
-- recomputing only the keys whose inputs changed.
--
-- user_activity: the incremental twin of user_activity_view, one row per user.
CREATE TABLE user_activity (
    tenant_id         bigint            NOT NULL,
    user_id           character varying NOT NULL,
    current_balance   numeric,
    total_bets        integer,
    total_wagered     numeric,
    total_winnings    numeric,
    total_deposited   numeric,
    total_withdrawn   numeric,
    last_activity_at  bigint,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX user_activity_wagered_idx ON user_activity (tenant_id, total_wagered DESC);

-- bets_latest: an entity read model kept from the event log the way the
-- seeds' batch update keeps bets_view, without the application: the latest
-- event of every bet, by seq.
CREATE TABLE bets_latest (
    tenant_id             bigint                 NOT NULL,
    aggregate_id          character varying(255) NOT NULL,
    last_event_type       character varying(100),
    last_event_data       jsonb,
    last_event_timestamp  bigint,
    version               integer,
    last_event_seq        bigint,
    PRIMARY KEY (tenant_id, aggregate_id)
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM create_reference_table('tenants');
        PERFORM create_distributed_table(t, 'tenant_id')
        FROM unnest(ARRAY['bet_events', 'balance_events', 'payment_events',
                          'bets_view', 'payments_view', 'user_balances_view',
                          'user_activity', 'bets_latest']) AS t;
    END IF;
END
$$;

-- Aggregate views (seeds 001 and 000), refreshed by mv-refresher.

CREATE MATERIALIZED VIEW tenants_summary_view AS
SELECT t.id                              AS tenant_id,
       t.name::varchar                   AS tenant_name,
       t.slug::varchar                   AS slug,
       t.status::varchar                 AS status,
       t.plan::varchar                   AS plan,
       coalesce(b.total_bets, 0)::integer  AS total_bets,
       coalesce(b.active_bets, 0)::integer AS active_bets,
       coalesce(b.total_stake, 0)        AS total_stake,
       coalesce(p.total_deposits, 0)     AS total_deposits,
       coalesce(p.total_withdrawals, 0)  AS total_withdrawals,
       coalesce(u.total_users, 0)::integer AS total_users,
       coalesce(u.total_balance, 0)      AS total_balance,
       now()::timestamp                  AS last_refreshed_at
FROM tenants t
LEFT JOIN (
    SELECT tenant_id,
           count(*)                                              AS total_bets,
           count(*) FILTER (WHERE status IN ('placed', 'confirmed')) AS active_bets,
           sum(stake)                                            AS total_stake
    FROM bets_view GROUP BY tenant_id
) b ON b.tenant_id = t.id
LEFT JOIN (
    SELECT tenant_id,
           sum(amount) FILTER (WHERE payment_type = 'deposit' AND status = 'completed')    AS total_deposits,
           sum(amount) FILTER (WHERE payment_type = 'withdrawal' AND status = 'completed') AS total_withdrawals
    FROM payments_view GROUP BY tenant_id
) p ON p.tenant_id = t.id
LEFT JOIN (
    SELECT tenant_id, count(*) AS total_users, sum(balance) AS total_balance
    FROM user_balances_view GROUP BY tenant_id
) u ON u.tenant_id = t.id;

CREATE UNIQUE INDEX tenants_summary_view_pk ON tenants_summary_view (tenant_id);

CREATE MATERIALIZED VIEW user_activity_view AS
WITH bets AS (
    SELECT tenant_id, user_id,
           count(*)                                         AS total_bets,
           sum(stake)                                       AS total_wagered,
           coalesce(sum(payout) FILTER (WHERE result = 'win'), 0) AS total_winnings,
           max(last_updated_timestamp)                      AS last_bet_at
    FROM bets_view GROUP BY tenant_id, user_id
), payments AS (
    SELECT tenant_id, user_id,
           coalesce(sum(amount) FILTER (WHERE payment_type = 'deposit' AND status = 'completed'), 0)    AS total_deposited,
           coalesce(sum(amount) FILTER (WHERE payment_type = 'withdrawal' AND status = 'completed'), 0) AS total_withdrawn,
           max(last_updated_timestamp)                      AS last_payment_at
    FROM payments_view GROUP BY tenant_id, user_id
)
SELECT ub.tenant_id,
       ub.user_id::varchar                        AS user_id,
       ub.balance                                 AS current_balance,
       coalesce(b.total_bets, 0)::integer         AS total_bets,
       coalesce(b.total_wagered, 0)               AS total_wagered,
       coalesce(b.total_winnings, 0)              AS total_winnings,
       coalesce(p.total_deposited, 0)             AS total_deposited,
       coalesce(p.total_withdrawn, 0)             AS total_withdrawn,
       greatest(ub.last_transaction_timestamp, b.last_bet_at, p.last_payment_at) AS last_activity_at
FROM user_balances_view ub
LEFT JOIN bets b ON b.tenant_id = ub.tenant_id AND b.user_id = ub.user_id
LEFT JOIN payments p ON p.tenant_id = ub.tenant_id AND p.user_id = ub.user_id;

CREATE UNIQUE INDEX user_activity_view_pk ON user_activity_view (tenant_id, user_id);
CREATE INDEX user_activity_view_wagered_idx ON user_activity_view (tenant_id, total_wagered DESC);

-- Seed 000, "Scenario 2": the day's largest open bets. The seed's bets_view
-- calls the stake "amount"; this platform's bets_view follows seed 001 (stake).
CREATE MATERIALIZED VIEW top_bets_today AS
SELECT b.tenant_id,
       b.bet_id,
       b.user_id,
       b.stake   AS amount,
       b.odds,
       b.status,
       b.payout,
       b.created_at
FROM bets_view b
WHERE b.created_at >= CURRENT_DATE
  AND b.status IN ('placed', 'confirmed', 'settled')
ORDER BY b.stake DESC
LIMIT 1000;

CREATE UNIQUE INDEX idx_top_bets_today_pk ON top_bets_today (tenant_id, bet_id);
CREATE INDEX idx_top_bets_today_amount ON top_bets_today (amount DESC);
