"""Freshness, measured: how far an incremental view stays behind a steady
write load, beside a materialized view refreshed CONCURRENTLY back to back.

    bench/run.py --freshness            # 1M bets, 1000 events/s, 90 s a scenario, `run` every 10 s and 2 s
    bench/run.py --freshness --short    # 20k bets, 100 events/s, 8 s, every 2 s, to /tmp (CI)

The reference platform (sql/platform.sql) at --freshness-scale bets, loaded as
bench/run.py loads it. In every scenario pgbench writes --events-per-second
application events (each one statement: the event row, its `seq` drawn by the
identity, and the projection the application keeps, with the marker it sets,
the event's epoch milliseconds) and, beside it, readers do point reads of the
relation the scenario keeps fresh. The scenarios: the load alone (nothing
refreshed); `REFRESH MATERIALIZED VIEW CONCURRENTLY user_activity_view` back to
back; and for each cadence `mv-refresher run --schedule '*/N * * * * *'` keeping
one incremental view: `user_activity`, the reference twin (the embedded
registry's entry), or `user_activity_seeds`, seed 001's user_activity_view
(subqueries joined `USING (tenant_id, user_id)`) with `$changed` in each grouped
subquery and in the outer WHERE.

Lag, sampled about once a second: now minus the newest marker the relation
shows, `max(last_activity_at)` (per user the greatest marker of their bets,
payments and balance), or minus the load's start when that is later (the
relation was caught up then). It is read from the data, not from the
refresher's own state.

CPU, from /proc: the cluster's (the postmaster and its children, live or
reaped) over the window; less the load's backends (pgbench's and the sampler's,
by application_name); less the same with nothing refreshed: the refreshing's.
The report is OUT/FRESHNESS.md with OUT/freshness-lag.svg.
"""

import datetime
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from math import log10
from pathlib import Path

from run import ROOT, Bench, cpu_model, median, percentile, svg_legend

# The lag goals of issue 20 for `run` every N seconds.
LAG_GOALS = {10: 12.0, 2: 3.0}
CPU_GOAL = 0.2  # the refreshing's CPU against the back-to-back loop's
WRITES_GOAL = 0.97  # writes achieved against the rate
SETTLE_S = 1  # after the measured load started and the warm-up's stopped
TAIL_S = 2  # the load outlives the window, so its backends are there at both ends
LOAD_APPS = ("freshness-writer", "freshness-reader", "freshness-probe")
SHAPES = ("user_activity", "user_activity_seeds")
COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]

# The application's events, one statement each (the event and its projection
# commit together, as the seeds write them), with their share of the load.
# Markers are the event's epoch milliseconds, taken when it is written.
NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
WRITERS = {
    "new_bet": (30, f"""
\\set u random(1, :users)
\\set t 10001 + :u % :tenants
\\set stake random(1, 100)
WITH e AS (
    INSERT INTO bet_events (tenant_id, aggregate_id, idempotency_key, event_type, event_data, "timestamp")
    SELECT :t, bet_id, bet_id || ':1', 'V1_BETS_BET_PLACED',
           jsonb_build_object('bet_id', bet_id, 'user_id', 'user-' || :u::text, 'stake', :stake::int,
                              'odds', 2.5, 'status', 'placed'),
           {NOW_MS}
    FROM (SELECT 'bet-' || gen_random_uuid() AS bet_id) AS id
    RETURNING tenant_id, aggregate_id, idempotency_key, "timestamp")
INSERT INTO bets_view (tenant_id, bet_id, idempotency_key, user_id, stake, odds, status,
                       created_at, last_updated_timestamp, last_updated_at)
SELECT tenant_id, aggregate_id, idempotency_key, 'user-' || :u::text, :stake::int, 2.5, 'placed',
       to_timestamp("timestamp" / 1000.0), "timestamp", to_timestamp("timestamp" / 1000.0)
FROM e;
"""),
    # A bet of the loaded data settles (its user is the loader's 1 + i * 7919 % users).
    "bet_settled": (30, f"""
\\set i random(1, :bets)
\\set u 1 + (:i * 7919) % :users
\\set t 10001 + :u % :tenants
\\set win random(0, 1)
WITH e AS (
    INSERT INTO bet_events (tenant_id, aggregate_id, idempotency_key, event_type, event_data, "timestamp", version)
    VALUES (:t, 'bet-' || :i::text, gen_random_uuid()::text, 'V1_BETS_BET_SETTLED',
            jsonb_build_object('bet_id', 'bet-' || :i::text, 'status', 'settled',
                               'result', CASE WHEN :win::int = 1 THEN 'win' ELSE 'loss' END),
            {NOW_MS}, 3)
    RETURNING "timestamp")
UPDATE bets_view AS b
SET status = 'settled', result = CASE WHEN :win::int = 1 THEN 'win' ELSE 'loss' END,
    payout = CASE WHEN :win::int = 1 THEN round(b.stake * b.odds, 2) END,
    last_updated_timestamp = e."timestamp", last_updated_at = to_timestamp(e."timestamp" / 1000.0)
FROM e
WHERE b.tenant_id = :t AND b.bet_id = 'bet-' || :i::text;
"""),
    "balance": (30, f"""
\\set u random(1, :users)
\\set t 10001 + :u % :tenants
\\set amount random(-50, 100)
WITH e AS (
    INSERT INTO balance_events (tenant_id, aggregate_id, idempotency_key, event_type, event_data, "timestamp")
    VALUES (:t, 'user-' || :u::text, gen_random_uuid()::text,
            CASE WHEN :amount::int < 0 THEN 'V1_BALANCES_BALANCE_DEBITED' ELSE 'V1_BALANCES_BALANCE_CREDITED' END,
            jsonb_build_object('user_id', 'user-' || :u::text, 'amount', abs(:amount::int), 'currency', 'USD'),
            {NOW_MS})
    RETURNING "timestamp")
UPDATE user_balances_view AS ub
SET balance = ub.balance + :amount::int, transaction_count = ub.transaction_count + 1,
    last_transaction_timestamp = e."timestamp", last_transaction_at = to_timestamp(e."timestamp" / 1000.0)
FROM e
WHERE ub.tenant_id = :t AND ub.user_id = 'user-' || :u::text;
"""),
    "deposit": (10, f"""
\\set u random(1, :users)
\\set t 10001 + :u % :tenants
\\set amount random(20, 500)
WITH e AS (
    INSERT INTO payment_events (tenant_id, aggregate_id, idempotency_key, event_type, event_data, "timestamp")
    SELECT :t, payment_id, payment_id || ':2', 'V1_PAYMENTS_DEPOSIT_COMPLETED',
           jsonb_build_object('payment_id', payment_id, 'user_id', 'user-' || :u::text,
                              'amount', :amount::int, 'currency', 'USD', 'status', 'completed'),
           {NOW_MS}
    FROM (SELECT 'payment-' || gen_random_uuid() AS payment_id) AS id
    RETURNING tenant_id, aggregate_id, "timestamp")
INSERT INTO payments_view (tenant_id, payment_id, idempotency_key, user_id, amount, payment_method,
                           payment_type, status, last_updated_timestamp, last_updated_at)
SELECT tenant_id, aggregate_id, aggregate_id || ':1', 'user-' || :u::text, :amount::int, 'card',
       'deposit', 'completed', "timestamp", to_timestamp("timestamp" / 1000.0)
FROM e;
"""),
}

READER = """
\\set u random(1, :users)
\\set t 10001 + :u % :tenants
SELECT current_balance, total_bets, last_activity_at FROM {relation}
WHERE tenant_id = :t AND user_id = 'user-' || :u::text;
"""

# Seed 001's user_activity_view as the seed writes it (tests/fixtures/seeds_001.sql),
# over the reference platform, with $changed in each grouped subquery and in the
# outer WHERE.
SEEDS_QUERY = """
SELECT ub.tenant_id, ub.user_id, ub.balance AS current_balance,
       coalesce(b.total_bets, 0)::integer AS total_bets,
       coalesce(b.total_wagered, 0) AS total_wagered,
       coalesce(b.total_winnings, 0) AS total_winnings,
       coalesce(p.total_deposited, 0) AS total_deposited,
       coalesce(p.total_withdrawn, 0) AS total_withdrawn,
       greatest(ub.last_transaction_timestamp, b.last_bet_at, p.last_payment_at) AS last_activity_at
FROM user_balances_view ub
LEFT JOIN (SELECT tenant_id, user_id, count(*) AS total_bets, sum(stake) AS total_wagered,
                  sum(payout) FILTER (WHERE result = 'win') AS total_winnings,
                  max(last_updated_timestamp) AS last_bet_at
           FROM bets_view WHERE $changed(tenant_id, user_id)
           GROUP BY tenant_id, user_id) b USING (tenant_id, user_id)
LEFT JOIN (SELECT tenant_id, user_id,
                  sum(amount) FILTER (WHERE payment_type = 'deposit') AS total_deposited,
                  sum(amount) FILTER (WHERE payment_type = 'withdrawal') AS total_withdrawn,
                  max(last_updated_timestamp) AS last_payment_at
           FROM payments_view WHERE status = 'completed' AND $changed(tenant_id, user_id)
           GROUP BY tenant_id, user_id) p USING (tenant_id, user_id)
WHERE $changed(ub.tenant_id, ub.user_id)
"""


def add_arguments(parser):
    group = parser.add_argument_group("freshness (--freshness; bench/freshness.py)")
    group.add_argument("--freshness", action="store_true",
                       help="only the freshness run: lag under a steady write load, to OUT/FRESHNESS.md")
    group.add_argument("--freshness-scale", type=int, default=1000000, help="bets loaded")
    group.add_argument("--events-per-second", type=int, default=1000, help="pgbench's write rate")
    group.add_argument("--reads-per-second", type=int, default=200, help="readers' point reads")
    group.add_argument("--duration", type=int, default=90, help="seconds measured per scenario")
    group.add_argument("--cadences", default="10,2", help="`run` every N seconds, comma-separated")
    group.add_argument("--shapes", default=",".join(SHAPES),
                       help="the incremental views kept, comma-separated (of: " + ", ".join(SHAPES) + ")")
    group.add_argument("--binaries", default="",
                       help="LABEL=PATH,...: run each incremental scenario with each of these binaries in turn "
                            "(the label in its name), to compare builds on one cluster; default: this build's")
    group.add_argument("--repeat", type=int, default=1,
                       help="run the incremental scenarios this many times (alternating --binaries)")
    group.add_argument("--statements", action="store_true",
                       help="profile: pg_stat_statements in the cluster, each scenario's statements by "
                            "their time in the window, to OUT/freshness-statements.txt (it costs CPU itself: "
                            "not for the report's numbers)")


def run(args):
    """The freshness run: OUT/FRESHNESS.md and OUT/freshness-lag.svg."""
    if args.short:
        args.freshness_scale, args.events_per_second, args.reads_per_second = 20000, 100, 20
        args.duration, args.cadences = 8, "2"
    cadences = [int(c) for c in str(args.cadences).split(",")]
    started = time.perf_counter()
    bench = Bench(args)
    try:
        if args.statements:
            track_statements(bench)
        freshness = Freshness(bench, args, cadences)
        write_report(bench, args, freshness.run())
        shutil.rmtree(freshness.work)  # pgbench's logs, the registries (kept when it failed)
    finally:
        bench.cluster.stop()
    print(f"freshness: {time.perf_counter() - started:.0f} s", flush=True)


class Freshness:
    def __init__(self, bench, args, cadences):
        self.bench, self.args, self.cadences = bench, args, cadences
        self.db = f"fresh_{args.freshness_scale}"
        self.url = bench.cluster.url(self.db)
        self.min_warmup, self.max_warmup = (2, 20) if args.short else (5, 120)
        self.work = Path(f"/tmp/mv-refresher-freshness-{os.getpid()}")
        self.work.mkdir(parents=True, exist_ok=True)
        bindir = Path((bench.cluster.dir / "bindir").read_text().strip())
        self.pgbench = str(bindir / "pgbench") if (bindir / "pgbench").exists() else "pgbench"
        self.postmaster = int((bench.cluster.dir / "data/postmaster.pid").read_text().split()[0])
        self.binaries = dict(b.split("=", 1) for b in args.binaries.split(",") if b) or {"": str(bench.binary)}
        self.profiles = []

    def run(self):
        b = self.bench
        self.users, self.tenants, load_s = b.load_platform(self.db, self.args.freshness_scale)
        print(f"== freshness: {self.args.freshness_scale} bets loaded in {load_s:.1f} s", flush=True)
        if self.args.statements:
            b.psql(self.db, "CREATE EXTENSION pg_stat_statements")
        registries = self.registries()
        for registry in registries.values():
            self.mvr(registry, "refresh")  # the log tables, the first (full) load
        results = [self.scenario("nothing refreshed", "user_activity_view", refresh=False),
                   self.scenario("CONCURRENTLY back to back", "user_activity_view")]
        for _ in range(self.args.repeat):
            for cadence in self.cadences:
                for relation, registry in registries.items():
                    for label, binary in self.binaries.items():
                        name = f"{relation}, run every {cadence} s" + (f" ({label})" if label else "")
                        results.append(self.scenario(name, relation, cadence, registry, binary))
        if self.args.statements:
            out = Path(self.args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "freshness-statements.txt").write_text("\n\n".join(self.profiles) + "\n")
            print(f"wrote {out / 'freshness-statements.txt'}", flush=True)
        return {"results": results, "users": self.users, "tenants": self.tenants, "load_s": load_s,
                "min_warmup": self.min_warmup, "max_warmup": self.max_warmup}

    def registries(self):
        """Registry files: the embedded twin's entry alone, and the seeds' shape
        with the same sources and markers."""
        default = tomllib.loads((ROOT / "src/default_registry.toml").read_text())
        twin = next(v for v in default["view"] if v["name"] == "user_activity")
        seeds = {"name": "user_activity_seeds", "key": twin["key"], "create": True, "query": SEEDS_QUERY,
                 "changes": twin["changes"]}
        paths = {}
        for view in [v for v in (twin, seeds) if v["name"] in self.args.shapes.split(",")]:
            path = self.work / f"{view['name']}.toml"
            path.write_text(registry_toml(default.get("defaults", {}), [view]))
            paths[view["name"]] = path
        return paths

    def mvr(self, registry, *args, binary=None):
        out = subprocess.run([str(binary or self.bench.binary), "--registry", str(registry), *args],
                             env=self.mvr_env(), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"mv-refresher {' '.join(args)} failed: {out.stdout}\n{out.stderr}")

    def mvr_env(self):
        return {"DATABASE_URL": self.url, "RUST_LOG": "warn", "PATH": os.environ["PATH"]}

    def scenario(self, name, relation, cadence=None, registry=None, binary=None, refresh=True):
        """The relation caught up; the load started, and the relation refreshed
        (by `run` on `registry`, or the loop) beside it; once the relation shows
        a write of the load, a fresh pgbench takes over the load and the window
        is measured."""
        b, args = self.bench, self.args
        b.psql(self.db, "VACUUM ANALYZE")
        if registry:  # caught up with the scenarios before, in one full reconcile
            self.mvr(registry, "refresh", "--full", binary=binary)
            self.mvr(registry, "refresh", binary=binary)
        elif refresh:
            b.psql(self.db, f"REFRESH MATERIALIZED VIEW CONCURRENTLY {relation}")
        print(f"   {name} ...", flush=True)
        tag = name.split(",")[0].split()[0] + (f"-{cadence}" if cadence else "")
        stops = []  # what runs, stopped in reverse order whatever happens
        try:
            # The relation is complete now: caught up, and nothing written since.
            since = time.time()
            warmup = Load(self, f"{tag}-warmup", relation, self.max_warmup + 60, log=False)
            stops.append(warmup.stop)
            sampler = Sampler(self.url, relation, since)
            stops.append(sampler.stop)
            time.sleep(1)  # the load runs before the relation is refreshed again
            refresher = loop = None
            if registry:
                refresher = Refresher(self, registry, cadence, self.work / f"{tag}-run.log", binary)
                stops.append(refresher.stop)
            elif refresh:
                loop = Loop(self.url, relation)
                stops.append(loop.stop)
            # Warm-up: until the relation shows a write of the load (a cycle or
            # refresh that began under it has been applied), within bounds.
            if refresh:
                applied = sampler.wait_applied(since + self.min_warmup, since + self.max_warmup)
            else:
                applied = None
                time.sleep(self.min_warmup - 1)
            load = Load(self, tag, relation, SETTLE_S + args.duration + TAIL_S, log=True)
            stops.append(load.stop)
            warmup.stop()
            time.sleep(SETTLE_S)  # the new clients connected, the warm-up's gone
            probe = Probe(self.url)
            stops.append(probe.close)
            t0, cpu0, load0, machine0 = time.time(), self.cluster_cpu(), probe.load_cpu(), machine_cpu()
            own0 = process_cpu(refresher.proc.pid) if refresher else 0.0
            if args.statements:
                b.psql(self.db, "SELECT pg_stat_statements_reset()")
            time.sleep(args.duration)
            t1, cpu1, load1, machine1 = time.time(), self.cluster_cpu(), probe.load_cpu(), machine_cpu()
            own1 = process_cpu(refresher.proc.pid) if refresher else 0.0
            if args.statements:
                self.profiles.append(self.statements(name, t1 - t0))
            for stop in reversed(stops):
                if stop != load.stop:  # the load ends by itself
                    stop()
            writes, reads = load.wait()
        finally:
            for stop in reversed(stops):
                stop()
        window = t1 - t0
        per_min = 60 / window
        lags = [(t - t0, lag) for t, lag in sampler.samples if t0 <= t <= t1]
        writes = [x for x in writes if t0 <= x["end"] <= t1]
        reads = [x for x in reads if t0 <= x["end"] <= t1]
        r = {
            "name": name, "relation": relation, "cadence": cadence, "refresh": refresh, "window": window,
            "warmup": None if applied is None else applied - since, "lags": lags if refresh else [],
            "lag_p50": percentile([l for _, l in lags], 50), "lag_p99": percentile([l for _, l in lags], 99),
            "lag_max": max((l for _, l in lags), default=float("nan")),
            "writes_per_s": len(writes) / window,
            "write_p99": percentile([x["latency"] for x in writes], 99),
            "read_p50": percentile([x["service"] for x in reads], 50),
            "read_p99": percentile([x["service"] for x in reads], 99),
            "machine": (machine1 - machine0) * per_min,
            "cpu": (cpu1 - cpu0) * per_min,
            # The load's backends that lived through the window (one that
            # connected in it counts from its start).
            "cpu_load": sum(load1[pid] - load0.get(pid, 0.0) for pid in load1) * per_min,
            "own_cpu": (own1 - own0) * per_min,
        }
        r["cpu_rest"] = r["cpu"] - r["cpu_load"]
        if registry:
            r.update(self.cycles(relation, t0, t1))
            r["skipped"] = refresher.skipped(t0, t1)
        elif loop:
            r.update(loop.summary(t0, t1, since, [t for t, _ in sampler.samples if t0 <= t <= t1]))
        lag = (f"lag p50 {r['lag_p50']:.2f} s, p99 {r['lag_p99']:.2f} s, max {r['lag_max']:.2f} s; "
               if refresh else "")
        print(f"     {lag}{r['writes_per_s']:.0f} writes/s; reads p99 {r['read_p99']:.2f} ms; "
              f"database CPU {r['cpu']:.1f} s/min ({r['cpu_rest']:.1f} beyond the load)", flush=True)
        return r

    def statements(self, name, window):
        """The statements that ran in the window, by their time (planning and
        execution) a minute, the load's included."""
        rows = self.bench.psql(self.db, f"""
            SELECT round(((total_plan_time + total_exec_time) / 1000 * 60 / {window})::numeric, 2),
                   round((total_plan_time / 1000 * 60 / {window})::numeric, 2), calls,
                   round(((total_plan_time + total_exec_time) / nullif(calls, 0))::numeric, 2), rows,
                   shared_blks_hit + shared_blks_read, temp_blks_written,
                   left(regexp_replace(query, '\\s+', ' ', 'g'), 220)
            FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            ORDER BY total_plan_time + total_exec_time DESC LIMIT 25""")
        head = f"== {name}: s/min (plan+exec) | plan s/min | calls | ms/call | rows | blocks | temp blocks | query"
        return head + "\n" + rows.strip()

    def cycles(self, relation, t0, t1):
        """From the history: the incremental cycles that ended in the window,
        their median duration and keys; and the longest that ran in it, the
        one still running at its end included (cancelled when `run` stopped:
        counted up to the end of the window)."""
        row = self.bench.psql(self.db, f"""
            WITH cycles AS (
                SELECT status = 'success' AND finished_at <= to_timestamp({t1}) AS ended, duration_ms, keys_scanned,
                       extract(epoch FROM least(finished_at, to_timestamp({t1})) - started_at) AS seconds
                FROM materialized_views_refresh_history
                WHERE view_name = 'public.{relation}' AND status IN ('success', 'cancelled')
                  AND started_at < to_timestamp({t1}) AND finished_at > to_timestamp({t0}))
            SELECT count(*) FILTER (WHERE ended),
                   coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE ended), 0) / 1000,
                   coalesce(max(seconds), 0),
                   coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY keys_scanned) FILTER (WHERE ended), 0)
            FROM cycles""").strip().split("|")
        return {"cycles": int(row[0]), "cycle_median": float(row[1]), "cycle_max": float(row[2]),
                "keys_median": float(row[3])}

    def cluster_cpu(self):
        """CPU seconds the cluster has used: the postmaster, its children that
        ended (reaped into its children's times) and those alive."""
        total = sum(proc_times(self.postmaster))
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = proc_stat(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat[1]) == self.postmaster:
                total += sum(int(x) for x in stat[11:15]) / CLOCK_TICKS
        return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def track_statements(bench):
    """pg_stat_statements loaded into the cluster (a restart), planning tracked."""
    with open(bench.cluster.dir / "data/postgresql.conf", "a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_planning = on\n")
    script = str(ROOT / "scripts/pg-throwaway")
    subprocess.run([script, "halt", str(bench.cluster.dir)], check=True, capture_output=True)
    subprocess.run([script, "resume", str(bench.cluster.dir)], check=True, capture_output=True)


def proc_stat(pid):
    """The fields of /proc/PID/stat from the state on (the state is [0], ppid [1],
    utime [11], stime [12], cutime [13], cstime [14])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_times(pid):
    """utime, stime, and the same for its reaped children, in seconds."""
    return [int(x) / CLOCK_TICKS for x in proc_stat(pid)[11:15]]


def process_cpu(pid):
    return sum(proc_times(pid)[:2])


def machine_cpu():
    """CPU seconds the machine has been busy, all cores (user, nice, system,
    irq, softirq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields[:3]) + sum(fields[5:8])) / CLOCK_TICKS


class Load:
    """pgbench's writers (the application's events at the rate) and readers
    (point reads of `relation`), for `seconds`."""

    def __init__(self, freshness, tag, relation, seconds, log):
        args = freshness.args
        variables = {"users": freshness.users, "tenants": freshness.tenants, "bets": args.freshness_scale}
        self.writers = Pgbench(freshness, f"{tag}-writer", WRITERS, args.events_per_second, 8, seconds,
                               variables, log)
        self.readers = Pgbench(freshness, f"{tag}-reader", {"read": (1, READER.format(relation=relation))},
                               args.reads_per_second, 2, seconds, variables, log)

    def wait(self):
        return self.writers.wait(), self.readers.wait()

    def stop(self):
        self.writers.stop()
        self.readers.stop()


class Pgbench:
    """pgbench in the background: `clients` connections running the scripts
    (name -> (weight, text)) at `rate` transactions a second in all, each
    transaction logged when `log`."""

    def __init__(self, freshness, name, scripts, rate, clients, seconds, variables, log):
        cluster = freshness.bench.cluster
        self.prefix = freshness.work / name
        files = []
        for script, (weight, text) in scripts.items():
            path = freshness.work / f"{name}-{script}.sql"
            path.write_text(text.lstrip())
            files += ["-f", f"{path}@{weight}"]
        for old in freshness.work.glob(f"{name}.*"):
            old.unlink()
        logging = ["--log", "--log-prefix", str(self.prefix)] if log else []
        self.proc = subprocess.Popen(
            [freshness.pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
             "--rate", str(rate), "-T", str(seconds), *logging,
             "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
             *[f"-D{k}={v}" for k, v in variables.items()], *files, freshness.db],
            env={**os.environ, "PGAPPNAME": f"freshness-{name.split('-')[-1]}"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait(self):
        """Waits for the end; returns each transaction: its end (epoch s), its
        latency from its scheduled start and its own time (ms)."""
        out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            raise RuntimeError(f"pgbench {self.prefix.name} failed ({self.proc.returncode}):\n{out}\n{err}")
        transactions = []
        for path in self.prefix.parent.glob(f"{self.prefix.name}.*"):
            for line in path.read_text().splitlines():
                # client_id transaction_no time script_no time_epoch time_us schedule_lag
                f = line.split()
                if f[2] in ("skipped", "failed"):
                    continue
                latency, lag = int(f[2]) / 1000, int(f[6]) / 1000
                transactions.append({"end": int(f[4]) + int(f[5]) / 1e6, "latency": latency,
                                     "service": latency - lag})
        return transactions

    def stop(self):
        if self.proc.returncode is None:
            self.proc.terminate()
            self.proc.communicate()


class Refresher:
    """`mv-refresher run` on a registry, every `cadence` seconds."""

    def __init__(self, freshness, registry, cadence, log, binary=None):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([str(binary or freshness.bench.binary), "--registry", str(registry), "run",
                                          "--schedule", f"*/{cadence} * * * * *", "--shutdown-grace", "1s"],
                                         env=freshness.mvr_env(), stdout=out, stderr=out)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def skipped(self, t0, t1):
        """Ticks skipped between t0 and t1 (epoch s): the cycle before was still running."""
        times = [datetime.datetime.fromisoformat(line.split()[0]).timestamp()
                 for line in self.log.read_text().splitlines() if "this tick is skipped" in line]
        return sum(t0 <= t <= t1 for t in times)


class Sampler:
    """About once a second: the lag of `relation`, now minus the newest marker
    it shows, or minus `since` (when it was complete) if that is later."""

    def __init__(self, url, relation, since):
        import psycopg
        self.conn = psycopg.connect(url, autocommit=True, application_name="freshness-probe")
        self.relation, self.since = relation, since
        self.samples, self.newest = [], 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample)
        self.thread.start()

    def sample(self):
        # At a random point of each second: a phase locked to the whole seconds
        # would meet the cron's ticks (also on whole seconds) at the same point
        # of every cycle.
        rng = random.Random(0)
        while not self.stopped.wait(1 - time.time() % 1 + rng.random()):
            now, newest = self.conn.execute(
                "SELECT extract(epoch FROM clock_timestamp())::float8, max(last_activity_at) / 1000.0 "
                f"FROM {self.relation}").fetchone()
            self.newest = float(newest)
            self.samples.append((now, now - max(self.newest, self.since)))

    def wait_applied(self, earliest, latest):
        """Waits until `earliest` and until the relation shows a write made
        after `since`, but not past `latest`; returns when it did, or None."""
        applied = None
        while time.time() < latest and (applied is None or time.time() < earliest):
            if applied is None and self.newest >= self.since:
                applied = time.time()
            time.sleep(0.1)
        return applied

    def stop(self):
        if not self.stopped.is_set():
            self.stopped.set()
            self.thread.join()
            self.conn.close()


class Probe:
    """Reads the load's backends and their CPU seconds (pid -> s)."""

    def __init__(self, url):
        import psycopg
        self.conn = psycopg.connect(url, autocommit=True, application_name="freshness-probe")

    def load_cpu(self):
        rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)",
                                 (list(LOAD_APPS),)).fetchall()
        return {pid: process_cpu(pid) for (pid,) in rows}

    def close(self):
        self.conn.close()


class Loop:
    """REFRESH MATERIALIZED VIEW CONCURRENTLY, one right after the other, on a
    connection of its own; each refresh's start and end (epoch s)."""

    def __init__(self, url, relation):
        import psycopg
        self.conn = psycopg.connect(url, autocommit=True, application_name="freshness-concurrently")
        self.relation, self.refreshes, self.running = relation, [], None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.refresh)
        self.thread.start()

    def refresh(self):
        import psycopg
        while not self.stopped.is_set():
            started = self.running = time.time()
            try:
                self.conn.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {self.relation}")
            except psycopg.errors.QueryCanceled:
                break  # self.running: the refresh cancelled
            self.refreshes.append((started, time.time()))
            self.running = None

    def stop(self):
        """Cancels the refresh in flight."""
        if not self.stopped.is_set():
            self.stopped.set()
            self.conn.cancel()
            self.thread.join()
            self.conn.close()

    def summary(self, t0, t1, since, sample_times):
        """As `Freshness.cycles` says, and the lag by the refreshes' snapshots.
        Called once the loop stopped: the refresh it cancelled ran to t1."""
        ended = [end - start for start, end in self.refreshes if t0 <= end <= t1]
        ran = [(start, end) for start, end in self.refreshes if end > t0]
        if self.running:
            ran.append((self.running, t1))
        longest = max((min(end, t1) - start for start, end in ran if start < t1), default=0.0)
        # Now minus the start (the snapshot) of the last refresh completed by
        # then; before the first, the relation was complete at `since`.
        snapshot_lags = [t - max([since] + [start for start, end in self.refreshes if end <= t])
                         for t in sample_times]
        return {"cycles": len(ended), "cycle_median": median(ended), "cycle_max": longest,
                "snapshot_lag_p50": percentile(snapshot_lags, 50), "snapshot_lag_p99": percentile(snapshot_lags, 99)}


def registry_toml(defaults, views):
    """A registry file: the defaults and the views (their changes as
    [[view.changes]]), every value written as TOML."""
    lines = ["[defaults]"] + [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
    for view in views:
        lines += ["", "[[view]]"] + [f"{k} = {toml_value(v)}" for k, v in view.items() if k != "changes"]
        for change in view.get("changes", []):
            lines += ["", "[[view.changes]]"] + [f"{k} = {toml_value(v)}" for k, v in change.items()]
    return "\n".join(lines) + "\n"


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


# -- report -----------------------------------------------------------------

def goals(r, loop):
    """Which of issue 20's goals an incremental scenario missed."""
    missed = []
    if r["cadence"] in LAG_GOALS and not r["lag_p99"] <= LAG_GOALS[r["cadence"]]:
        missed.append(f"lag p99 > {LAG_GOALS[r['cadence']]:g} s")
    if not r["ratio"] <= CPU_GOAL:
        missed.append(f"CPU > {CPU_GOAL:g}×")
    if not r["read_p99"] <= loop["read_p99"]:
        missed.append("read p99")
    if not r["writes_per_s"] >= WRITES_GOAL * r["target"]:
        missed.append("writes")
    return "met" if not missed else "missed: " + ", ".join(missed)


def write_report(bench, args, run_results):
    results = run_results["results"]
    idle, loop = results[0], results[1]
    for r in results:
        r["target"] = args.events_per_second
        r["refreshing"] = r["cpu_rest"] - idle["cpu_rest"]
    for r in results:
        r["ratio"] = r["refreshing"] / loop["refreshing"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    svg = out / "freshness-lag.svg"
    svg.write_text(lag_plot([r for r in results if r["refresh"]], args.duration))
    mix = ", ".join(f"{name.replace('_', ' ')} {weight}%" for name, (weight, _) in WRITERS.items())
    dash = "—"
    lines = [
        "## Freshness under a steady write load", "",
        f"Generated by `bench/run.py --freshness{' --short' if args.short else ''}` on "
        f"{datetime.date.today().isoformat()}: the reference platform at {args.freshness_scale:,} bets "
        f"({run_results['users']:,} users, {run_results['tenants']} tenants; loaded in "
        f"{run_results['load_s']:.0f} s), on {os.cpu_count()} cores ({cpu_model()}), {platform.platform()}, "
        f"PostgreSQL {bench.psql('postgres', 'SHOW server_version').strip()} (the throwaway cluster of "
        "`scripts/pg-throwaway`).", "",
        f"**The load.** pgbench writes {args.events_per_second:,} events a second (`--rate`, 8 clients): "
        f"{mix}. Each event is one statement: the event row (its `seq` drawn by the identity) and the "
        "projection the application keeps (`bets_view`, `user_balances_view`, `payments_view`) with the "
        "marker it sets, the event's epoch milliseconds. Beside it, pgbench's readers do "
        f"{args.reads_per_second} point reads a second (2 clients) of the relation kept fresh, by user.", "",
        "**The scenarios**, each after `VACUUM ANALYZE` and with its relation caught up (a full reconcile, "
        "or a refresh); the data grow by the writes of the scenarios before. *nothing refreshed*: the "
        "load alone (the floor of the database's CPU). *CONCURRENTLY back to back*: `REFRESH MATERIALIZED "
        "VIEW CONCURRENTLY user_activity_view` in a loop, each right after the last. *user_activity, run "
        "every N s*: `mv-refresher run --schedule '*/N * * * * *'` keeping the reference twin (the "
        "embedded registry's entry). *user_activity_seeds*: the same for seed 001's user_activity_view "
        "(grouped subqueries joined `USING (tenant_id, user_id)`, `$changed` in each and in the outer "
        "WHERE; the twin's three sources and markers). The refreshing starts a second after the load; the "
        f"warm-up lasts until the relation shows a write of the load (at least {run_results['min_warmup']} s, "
        f"at most {run_results['max_warmup']} s); then a new pgbench takes over the load (so that its "
        f"logs and backends cover the window) and {args.duration} s are measured.", "",
        "**Lag**, sampled once a second at a random point of it: now minus the newest marker the relation "
        "shows, `clock_timestamp() - max(last_activity_at)` (per user, the greatest marker of their bets, "
        "payments and balance), or minus the start of the load if that is later (the relation was "
        "complete then). It is the newest write whose effect readers see, read from the data, not from "
        "the refresher's state; it does not see a write that commits later than newer ones it does see. "
        "For the loop it agrees with now minus the start (the snapshot) of the last completed refresh: "
        f"p50 {loop['snapshot_lag_p50']:.2f} s, p99 {loop['snapshot_lag_p99']:.2f} s.", "",
        "**Writes and reads**, from pgbench's per-transaction log in the window: writes achieved a "
        "second, and their p99 from when each was due (a write the schedule held back counts); reads' "
        "p50/p99 are each read's own time.", "",
        "| scenario | warm-up (s) | lag p50 (s) | lag p99 (s) | lag max (s) | writes/s | write p99 (ms) | "
        "read p50 (ms) | read p99 (ms) | goals |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r["refresh"]:
            warmup, lag = dash, f"{dash} | {dash} | {dash}"
        else:
            warmup = f"{r['warmup']:.0f}" if r["warmup"] is not None else f"> {run_results['max_warmup']}"
            lag = f"{r['lag_p50']:.2f} | {r['lag_p99']:.2f} | {r['lag_max']:.2f}"
        lines.append(f"| {r['name']} | {warmup} | {lag} | {r['writes_per_s']:.0f} | {r['write_p99']:.1f} | "
                     f"{r['read_p50']:.2f} | {r['read_p99']:.2f} | "
                     f"{goals(r, loop) if r['cadence'] else dash} |")
    lines += [
        "", f"Goals (issue 20): lag p99 ≤ {LAG_GOALS[10]:g} s with `run` every 10 s and ≤ {LAG_GOALS[2]:g} s "
        f"every 2 s; the refreshing's CPU ≤ {CPU_GOAL:g}× the loop's; readers' p99 no worse than the "
        f"loop's; writes at the rate (≥ {WRITES_GOAL:.0%}). A warm-up of \"> {run_results['max_warmup']}\": "
        "the relation showed no write of the load by then, and the window began anyway.", "",
        "**CPU** seconds a minute in the window, from /proc. *machine*: all of it, every process (2 cores: "
        "120 at most), to show what else ran. *database*: the cluster, the postmaster and all its "
        "children (those that ended too). *the load's backends*: pgbench's writers' and readers' and the "
        "sampler's, classified by `application_name`, alive through the window. *beyond the load*: the "
        "database less those. *refreshing*: beyond the load, less the same in *nothing refreshed* (the "
        "background: autovacuum, WAL writer, checkpointer); its ratio is to the loop's. *mv-refresher*: "
        "the `run` process itself. *refreshes*: those (or the cycles) that ended in the window, their "
        "median duration, and the longest that ran in the window, up to its end (the one still running "
        "then included); *keys*: the median a cycle recomputed.", "",
        "| scenario | machine | database | the load's backends | beyond the load | refreshing | ratio | "
        "mv-refresher | refreshes | median / longest (s) | keys |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        refreshing = f"{r['refreshing']:.1f} | {r['ratio']:.2f}" if r["refresh"] else f"{dash} | {dash}"
        cycles = (f"{r['cycles']}" + (f" ({r['skipped']} ticks skipped)" if r.get("skipped") else "")
                  if r["refresh"] else dash)
        durations = f"{r['cycle_median']:.2f} / {r['cycle_max']:.2f}" if r["refresh"] else dash
        own = f"{r['own_cpu']:.2f}" if r["cadence"] else dash
        keys = f"{r['keys_median']:.0f}" if r["cadence"] else dash
        lines.append(f"| {r['name']} | {r['machine']:.1f} | {r['cpu']:.1f} | {r['cpu_load']:.1f} | "
                     f"{r['cpu_rest']:.1f} | {refreshing} | {own} | {cycles} | {durations} | {keys} |")
    lines += ["", f"![lag over time]({svg.name})"]
    (out / "FRESHNESS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'FRESHNESS.md'} and {svg}", flush=True)


def lag_plot(results, duration, width=760, height=420):
    """Lag against time in the window, a line per scenario, seconds on a log
    scale; the goals as dashed lines."""
    left, right, top, bottom = 60, 260, 20, 50
    floor = 0.1
    ymax = max([max((l for _, l in r["lags"]), default=1) for r in results] + [max(LAG_GOALS.values())]) * 1.2
    decades = [10 ** e for e in range(-1, 5)]
    ticks = [m * d for d in decades for m in (1, 2, 5) if floor <= m * d <= ymax]
    px = lambda x: left + (width - left - right) * x / duration
    py = lambda y: height - bottom - (height - top - bottom) * (log10(max(y, floor)) - log10(floor)) / (
        log10(ymax) - log10(floor))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{left}" y1="{py(floor)}" x2="{width - right}" y2="{py(floor)}" stroke="black"/>',
             f'<line x1="{left}" y1="{py(floor)}" x2="{left}" y2="{top}" stroke="black"/>',
             f'<text x="{(width - right + left) / 2}" y="{height - 10}" text-anchor="middle">'
             'seconds into the window</text>',
             f'<text x="15" y="{(height - bottom + top) / 2}" transform="rotate(-90 15 {(height - bottom + top) / 2})" '
             'text-anchor="middle">lag (s, log scale)</text>']
    for y in ticks:
        parts.append(f'<text x="{left - 5}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        parts.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{width - right}" y2="{py(y):.1f}" stroke="#eee"/>')
    for x in range(0, duration + 1, 10 if duration >= 30 else 2):
        parts.append(f'<text x="{px(x):.1f}" y="{py(floor) + 18:.1f}" text-anchor="middle">{x}</text>')
    for cadence, goal in LAG_GOALS.items():
        parts.append(f'<line x1="{left}" y1="{py(goal):.1f}" x2="{width - right}" y2="{py(goal):.1f}" '
                     'stroke="#555" stroke-dasharray="4 4"/>')
        parts.append(f'<text x="{width - right - 4}" y="{py(goal) - 4:.1f}" text-anchor="end" fill="#555">'
                     f'goal, every {cadence} s</text>')
    for r, colour in zip(results, COLOURS):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in r["lags"])
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    parts += svg_legend([r["name"] for r in results], COLOURS, width - right, top)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
