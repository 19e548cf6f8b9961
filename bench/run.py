#!/usr/bin/env python3
"""Benchmarks mv-refresher against the seeds' approach and against the limits.

One run on one machine, side by side, on the reference platform at several
scales: the seeds' PL/pgSQL refresh_aggregate_views() through psql,
`mv-refresher refresh` with --jobs 1 and 2, each view's plain REFRESH and the
bare execution time of its query; what readers and writers feel meanwhile; the
refresher's own cost; and what work_mem does. Writes docs/BENCHMARKS.md and
docs/refresh-vs-scale.svg. No assertions: numbers, written down.

    bench/run.py                 # 100k, 1M and 3M bets, 3 repetitions (about 30 min)
    bench/run.py --short         # 20k bets, 1 repetition, to /tmp (CI: the harness runs)
    bench/run.py --incremental-only --scales 100000,1000000,3000000
                                 # the incremental views' section alone (OUT/INCREMENTAL.md)
    bench/run.py --sweep         # the incremental twins against the share of users changed,
                                 # at 1M bets (OUT/SWEEP.md; bench/sweep.py)
    bench/run.py --freshness     # lag under a steady write load (bench/freshness.py, OUT/FRESHNESS.md)
"""

import argparse
import datetime
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ["tenants_summary_view", "user_activity_view", "top_bets_today"]
WORK_MEMS = ["4MB", "64MB", "256MB"]
# The exhaustive sweep the tuner is held against: every setting it may reach
# from the server's 4MB within the default cap that is worth a look.
SWEEP = ["1MB", "2MB", "4MB", "8MB", "16MB", "32MB", "64MB", "128MB", "256MB"]
EVENT_IDS = count()  # unique idempotency keys across every writer of a run

BASELINE_FUNCTION = """
CREATE OR REPLACE FUNCTION refresh_aggregate_views() RETURNS void AS $$
BEGIN
  REFRESH MATERIALIZED VIEW CONCURRENTLY tenants_summary_view;
  REFRESH MATERIALIZED VIEW CONCURRENTLY user_activity_view;
  REFRESH MATERIALIZED VIEW CONCURRENTLY top_bets_today;
END;
$$ LANGUAGE plpgsql;
"""


def ensure_psycopg():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "psycopg[binary]"], check=True)


def sh(*args, **kw):
    out = subprocess.run(args, text=True, capture_output=True, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self):
        self.dir = Path(f"/tmp/mv-refresher-bench-cluster-{os.getpid()}")
        self.port = free_port()
        sh(str(ROOT / "scripts/pg-throwaway"), "start", str(self.dir), str(self.port))
        bindir = sh(str(ROOT / "scripts/pg-throwaway"), "bindir").strip()
        self.psql = str(Path(bindir) / "psql") if (Path(bindir) / "psql").exists() else "psql"

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self):
        subprocess.run([str(ROOT / "scripts/pg-throwaway"), "stop", str(self.dir)])

    def server_log(self):
        return (self.dir / "server.log").read_text(errors="replace")


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Load:
    """Readers doing point reads on the views and a writer inserting bet events,
    from their own connections, while a scenario runs."""

    def __init__(self, url, users, tenants, readers=2, activity="user_activity_view"):
        import psycopg
        self.url, self.users, self.tenants, self.activity = url, users, tenants, activity
        self.stop = threading.Event()
        self.latencies = []
        self.inserts = 0
        self.threads = [threading.Thread(target=self.read, args=(psycopg, i)) for i in range(readers)]
        self.threads.append(threading.Thread(target=self.write, args=(psycopg,)))

    def read(self, psycopg, seed):
        rng = random.Random(seed)
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                u = rng.randint(1, self.users)
                started = time.perf_counter()
                conn.execute(f"SELECT current_balance, total_bets FROM {self.activity} "
                             "WHERE tenant_id = %s AND user_id = %s",
                             (10001 + u % self.tenants, f"user-{u}")).fetchall()
                conn.execute("SELECT total_bets FROM tenants_summary_view WHERE tenant_id = %s",
                             (10001 + u % self.tenants,)).fetchall()
                self.latencies.append((time.perf_counter() - started) * 1000 / 2)

    def write(self, psycopg):
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                n = next(EVENT_IDS)
                conn.execute(
                    "INSERT INTO bet_events (tenant_id, aggregate_id, idempotency_key, event_type, "
                    "event_data, timestamp) VALUES (10001, %s, %s, 'V1_BETS_BET_PLACED', "
                    "'{\"stake\": 1}', (extract(epoch FROM now()) * 1000)::bigint)",
                    (f"bench-{os.getpid()}-{n}", f"bench-{os.getpid()}-{n}"))
                self.inserts += 1

    def __enter__(self):
        self.started = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()
        self.elapsed = time.perf_counter() - self.started

    def summary(self):
        return {"p50": percentile(self.latencies, 50), "p99": percentile(self.latencies, 99),
                "max": max(self.latencies, default=float("nan")),
                "inserts_per_s": self.inserts / self.elapsed if self.elapsed else 0.0}


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = ROOT
        self.binary = ROOT / "target/release/mv-refresher"
        self.cluster = Cluster()
        self.results = {}  # scale -> data

    def psql(self, db, sql):
        return sh(self.cluster.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                  "-d", self.cluster.url(db), "-c", sql)

    def timed_psql(self, db, sql):
        started = time.perf_counter()
        self.psql(db, sql)
        return time.perf_counter() - started

    def load_platform(self, db, bets):
        users, tenants = max(bets // 5, 100), 20
        self.psql("postgres", f"CREATE DATABASE {db}")
        sh(self.cluster.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.cluster.url(db),
           "-f", str(ROOT / "sql/platform.sql"))
        started = time.perf_counter()
        subprocess.run([str(ROOT / "scripts/load-sample-data"), self.cluster.url(db), str(bets), str(users),
                        str(tenants)], check=True, capture_output=True)
        load_s = time.perf_counter() - started
        self.psql(db, BASELINE_FUNCTION)
        self.psql(db, "VACUUM ANALYZE")
        return users, tenants, load_s

    def mvr(self, db, *args):
        """Runs the binary on the seeds' three views (the function's); returns
        wall seconds, peak RSS (kB), and the server-side span of the run's
        refreshes (seconds, from its history rows)."""
        matviews = Path(f"/tmp/mv-refresher-bench-{db}-matviews.toml")
        matviews.write_text("".join(f'[[view]]\nname = "{v}"\n\n' for v in VIEWS))
        env = {"DATABASE_URL": self.cluster.url(db), "RUST_LOG": "warn",
               "MV_REFRESHER_REGISTRY": str(matviews)}
        started = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-f", "%M", str(self.binary), *args],
                             env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(f"mv-refresher {args} failed: {out.stdout}\n{out.stderr}")
        rss = int(out.stderr.strip().splitlines()[-1])
        run_id = re.search(r"run ([0-9a-f-]{36})", out.stdout)
        # The span of the server-side work: first refresh's start to last one's end.
        server = float(self.psql(db, "SELECT coalesce(extract(epoch FROM max(finished_at) - min(started_at)), 0) "
                                     f"FROM materialized_views_refresh_history WHERE run_id = '{run_id.group(1)}'")
                       ) if run_id else 0.0
        return wall, rss, server

    def scenarios(self, db, users, tenants, runs, activity="user_activity_view"):
        """Runs each of `runs` (name -> function) `reps` times under load, taking
        turns so that drift (autovacuum, caches, a noisy neighbour) touches all
        alike; medians of each one's time and of the load meanwhile."""
        samples = {name: ([], [], []) for name in runs}
        for _ in range(self.args.reps):
            for name, run in runs.items():
                with Load(self.cluster.url(db), users, tenants, activity=activity) as load:
                    value = run()
                times, extra, loads = samples[name]
                times.append(value[0] if isinstance(value, tuple) else value)
                extra.append(value)
                loads.append(load.summary())
        return {
            name: {
                "seconds": median(times),
                "extra": extra,
                **{k: median([l[k] for l in loads]) for k in loads[0]},
            }
            for name, (times, extra, loads) in samples.items()
        }

    # -- incremental views --------------------------------------------------

    def cycle(self, db, view, *extra):
        """One `mv-refresher refresh VIEW` from the embedded default registry
        (which lists user_activity, the incremental twin) unless `extra`
        names another; returns the refresher's own duration (s) and, for an
        incremental view, its counts and its note."""
        env = {"DATABASE_URL": self.cluster.url(db), "RUST_LOG": "warn"}
        out = subprocess.run([str(self.binary), "refresh", *extra, view], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"mv-refresher refresh {view} failed: {out.stdout}\n{out.stderr}")
        run_id = re.search(r"run ([0-9a-f-]{36})", out.stdout).group(1)
        row = self.psql(db, "SELECT duration_ms / 1000, coalesce(keys_scanned, 0), "
                            "coalesce(rows_inserted, 0) + coalesce(rows_updated, 0) + coalesce(rows_deleted, 0), "
                            "coalesce(rows_updated, 0) + coalesce(rows_deleted, 0), coalesce(note, '') "
                            "FROM materialized_views_refresh_history "
                            f"WHERE run_id = '{run_id}' AND status = 'success'").strip().split("|", 4)
        return float(row[0]), {"keys": int(row[1]), "rows": int(row[2]), "replaced": int(row[3]), "note": row[4]}

    def derive_twin(self, db, view, name):
        """`mv-refresher twin VIEW --as NAME`, proven, as a registry file."""
        env = {"DATABASE_URL": self.cluster.url(db), "RUST_LOG": "warn"}
        out = subprocess.run([str(self.binary), "twin", view, "--as", name], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"mv-refresher twin {view} failed: {out.stderr}")
        path = Path(tempfile.gettempdir()) / f"mv-refresher-bench-{db}-{name}.toml"
        path.write_text(out.stdout)
        return str(path)

    def change_users(self, db, share, seed):
        """One bet of about `share` of the users changes (as the application
        changes it: the marker moves); returns how many users."""
        modulo = round(1 / share)
        return int(self.psql(db, f"""
            WITH picked AS (
                SELECT DISTINCT ON (tenant_id, user_id) tenant_id, bet_id FROM bets_view
                WHERE abs(hashtext(user_id || ':{seed}')) % {modulo} = 0
                ORDER BY tenant_id, user_id, bet_id),
            changed AS (
                UPDATE bets_view b SET stake = b.stake + 1,
                    last_updated_timestamp = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                FROM picked p WHERE b.tenant_id = p.tenant_id AND b.bet_id = p.bet_id
                RETURNING b.user_id)
            SELECT count(*) FROM changed""").strip())

    def dead_rows(self, db, relation):
        time.sleep(1)  # the refresher's backend flushes its statistics as it exits
        return int(self.psql(db, "SELECT coalesce(pg_stat_get_dead_tuples("
                                 f"'{relation}'::regclass), 0)").strip())

    def incremental(self, db, users, tenants):
        """user_activity (incremental) beside user_activity_view (materialized),
        the same changes applied to both, taking turns: 1% of the users
        changed, then nothing changed; then a full reconcile and a concurrent
        refresh under readers of each."""
        self.psql(db, "ALTER TABLE user_activity SET (autovacuum_enabled = off); "
                      "ALTER MATERIALIZED VIEW user_activity_view SET (autovacuum_enabled = off)")
        self.cycle(db, "user_activity")  # the first, full load
        self.cycle(db, "user_activity")
        # The twin `mv-refresher twin` derives from user_activity_view, beside
        # the hand-written one.
        derived = self.derive_twin(db, "user_activity_view", "user_activity_derived")
        self.cycle(db, "user_activity_derived", "--registry", derived)
        self.cycle(db, "user_activity_derived", "--registry", derived)
        s = {k: [] for k in ("inc", "conc", "none", "keys", "users", "dead_inc", "dead_conc", "replaced",
                             "derived", "derived_none")}
        for rep in range(self.args.reps):
            s["users"].append(self.change_users(db, 0.01, rep))
            dead = self.dead_rows(db, "user_activity")
            seconds, counts = self.cycle(db, "user_activity")
            s["inc"].append(seconds)
            s["keys"].append(counts["keys"])
            s["replaced"].append(counts["replaced"])
            s["dead_inc"].append(self.dead_rows(db, "user_activity") - dead)
            s["derived"].append(self.cycle(db, "user_activity_derived", "--registry", derived)[0])
            dead = self.dead_rows(db, "user_activity_view")
            s["conc"].append(self.cycle(db, "user_activity_view")[0])
            s["dead_conc"].append(self.dead_rows(db, "user_activity_view") - dead)
            s["none"].append(self.cycle(db, "user_activity")[0])
            s["derived_none"].append(self.cycle(db, "user_activity_derived", "--registry", derived)[0])
        r = {k: median(v) for k, v in s.items()}
        full = self.scenarios(db, users, tenants, {
            "full": lambda: self.cycle(db, "user_activity", "--full")[0],
        }, activity="user_activity")
        conc = self.scenarios(db, users, tenants, {
            "conc_load": lambda: self.cycle(db, "user_activity_view")[0],
        })
        r.update(full)
        r.update(conc)
        print(f"   incremental: 1% {r['inc']:.3f} s ({r['keys']:.0f} keys), nothing {r['none']:.3f} s, "
              f"full {r['full']['seconds']:.2f} s; derived twin: 1% {r['derived']:.3f} s, "
              f"nothing {r['derived_none']:.3f} s; concurrently {r['conc']:.2f} s", flush=True)
        return r

    def incremental_section(self):
        rows = {b: r["incremental"] for b, r in self.results.items() if "incremental" in r}
        if not rows:
            return []
        lines = ["", "## Incremental views: user_activity beside user_activity_view", "",
                 "`user_activity` is the incremental twin of `user_activity_view` (the embedded default "
                 "registry; sql/platform.sql): the same query, kept by recomputing only the users whose "
                 "bets, payments or balance changed. Each repetition changes one bet of 1% of the users "
                 "(their marker moves, as the application moves it), then runs the incremental cycle, "
                 "then `REFRESH MATERIALIZED VIEW CONCURRENTLY user_activity_view` over the same "
                 "changes, then the incremental cycle again with nothing changed. Seconds are the "
                 "refresher's own (history rows), medians of "
                 f"{self.args.reps}; the full reconcile and the concurrent refresh are then timed under "
                 "the readers (who read the relation being refreshed) and the writer.", "",
                 "| bets | users changed | keys recomputed | CONCURRENTLY (s) | incremental, 1% (s) | ratio | "
                 "nothing changed (s) | ratio | under load: CONCURRENTLY (s) | full reconcile (s) | ratio |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for bets, r in rows.items():
            c, loaded = r["conc"], r["conc_load"]["seconds"]
            lines.append(f"| {bets:,} | {r['users']:.0f} | {r['keys']:.0f} | {c:.3f} | {r['inc']:.3f} | "
                         f"{r['inc'] / c:.3f} | {r['none']:.3f} | {r['none'] / c:.3f} | {loaded:.3f} | "
                         f"{r['full']['seconds']:.3f} | {r['full']['seconds'] / loaded:.2f} |")
        lines += ["", "The twin `mv-refresher twin user_activity_view --as user_activity_derived` derives "
                  "(README: Incremental views), in the same repetitions, beside the hand-written one:", "",
                  "| bets | CONCURRENTLY (s) | hand-written, 1% (s) | ratio | derived, 1% (s) | ratio | "
                  "hand-written, nothing (s) | ratio | derived, nothing (s) | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for bets, r in rows.items():
            c = r["conc"]
            lines.append(f"| {bets:,} | {c:.3f} | {r['inc']:.3f} | {r['inc'] / c:.3f} | {r['derived']:.3f} | "
                         f"{r['derived'] / c:.3f} | {r['none']:.3f} | {r['none'] / c:.3f} | "
                         f"{r['derived_none']:.3f} | {r['derived_none'] / c:.3f} |")
        lines += ["", "The full reconcile and its ratio are measured under the load, beside a concurrent "
                  "refresh under the same load.", "",
                  "Rows left dead by one cycle with 1% of the users changed (`pg_stat_get_dead_tuples`, "
                  "autovacuum off on both for the measurement), and the rows the cycle replaced "
                  "(updated or deleted, from its history row):", "",
                  "| bets | incremental: dead rows | rows it replaced | CONCURRENTLY: dead rows |",
                  "|---|---|---|---|"]
        for bets, r in rows.items():
            lines.append(f"| {bets:,} | {r['dead_inc']:.0f} | {r['replaced']:.0f} | {r['dead_conc']:.0f} |")
        lines += ["", "What readers and writers feel meanwhile (point reads of the relation refreshed, ms):", "",
                  "| bets | scenario | read p50 | read p99 | read max | inserts/s |", "|---|---|---|---|---|---|"]
        for bets, r in rows.items():
            for key, name in (("full", "full reconcile of user_activity"),
                              ("conc_load", "CONCURRENTLY user_activity_view")):
                x = r[key]
                lines.append(f"| {bets:,} | {name} | {x['p50']:.2f} | {x['p99']:.2f} | {x['max']:.1f} | "
                             f"{x['inserts_per_s']:.0f} |")
        return lines

    def bare_query(self, db, view):
        definition = self.psql(db, f"SELECT pg_get_viewdef('{view}'::regclass)").strip().rstrip(";")
        plan = self.psql(db, f"EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) {definition}")
        return float(re.search(r"Execution Time: ([0-9.]+) ms", plan).group(1)) / 1000

    def run_scale(self, bets):
        db = f"bench_{bets}"
        users, tenants, load_s = self.load_platform(db, bets)
        print(f"== {bets} bets loaded in {load_s:.1f} s", flush=True)
        self.mvr(db, "refresh")  # creates the log tables, warms the cache
        r = {"users": users, "tenants": tenants, "load_s": load_s}
        r["incremental"] = self.incremental(db, users, tenants)
        if self.args.incremental_only:
            self.results[bets] = r
            return
        r.update(self.scenarios(db, users, tenants, {
            "idle": lambda: time.sleep(2) or 2.0,
            "baseline": lambda: self.timed_psql(db, "SELECT refresh_aggregate_views()"),
            "jobs1": lambda: self.mvr(db, "--jobs", "1", "refresh"),
            "jobs2": lambda: self.mvr(db, "--jobs", "2", "refresh"),
        }))
        r["plain"] = {v: median([self.timed_psql(db, f"REFRESH MATERIALIZED VIEW {v}")
                                 for _ in range(self.args.reps)]) for v in VIEWS}
        r["bare"] = {v: median([self.bare_query(db, v) for _ in range(self.args.reps)]) for v in VIEWS}
        if bets == self.args.work_mem_scale:
            r["work_mem"] = self.work_mem_matrix(db)
            r["plans"] = self.diff_plans(db)
            r["tuner"] = self.tuner_vs_sweep(db)
        print(f"   baseline {r['baseline']['seconds']:.2f} s, jobs1 {r['jobs1']['seconds']:.2f} s, "
              f"jobs2 {r['jobs2']['seconds']:.2f} s", flush=True)
        self.results[bets] = r

    def work_mem_matrix(self, db):
        """Each view's concurrent and plain refresh at each work_mem, the
        combinations taking turns; medians."""
        combos = [(v, m, w) for v in VIEWS for m in ("CONCURRENTLY", "plain") for w in WORK_MEMS]
        samples = {combo: [] for combo in combos}
        for _ in range(self.args.work_mem_reps):
            for view, method, wm in combos:
                keyword = "CONCURRENTLY" if method == "CONCURRENTLY" else ""
                sql = f"BEGIN; SET LOCAL work_mem = '{wm}'; REFRESH MATERIALIZED VIEW {keyword} {view}; COMMIT;"
                samples[(view, method, wm)].append(self.timed_psql(db, sql))
        return {combo: median(times) for combo, times in samples.items()}

    def registry(self, db, work_mem):
        path = Path(f"/tmp/mv-refresher-bench-{db}-{work_mem}.toml")
        path.write_text("".join(f'[[view]]\nname = "{v}"\nwork_mem = "{work_mem}"\n\n' for v in VIEWS))
        return str(path)

    def durations(self, db, run_ids, schema="public"):
        """Each view's refresh durations (seconds) and work_mem in the runs `run_ids`, in order."""
        ids = ",".join(f"'{r}'" for r in run_ids)
        rows = self.psql(db, f"SELECT view_name, duration_ms / 1000, work_mem FROM {schema}.materialized_views_refresh_history "
                             f"WHERE run_id IN ({ids}) AND status = 'success' ORDER BY id")
        out = {v: [] for v in VIEWS}
        for line in rows.strip().splitlines():
            view, seconds, wm = line.split("|")
            out[view.split(".")[-1]].append((float(seconds), wm))
        return out

    def refresh_run(self, db, registry, schema="public"):
        env = {"DATABASE_URL": self.cluster.url(db), "RUST_LOG": "warn", "MV_REFRESHER_LOG_SCHEMA": schema}
        out = subprocess.run([str(self.binary), "--registry", registry, "refresh"], env=env,
                             capture_output=True, text=True, check=True)
        return re.search(r"run ([0-9a-f-]{36})", out.stdout).group(1)

    def tuner_vs_sweep(self, db):
        """work_mem = "auto" against every fixed setting: each fixed setting
        refreshed `reps` times (the settings taking turns), then the tuner left
        to settle over `tuner_runs` refreshes and measured over `settled_runs`
        more; durations are the refresher's own (history rows), no load."""
        fixed = {wm: [] for wm in SWEEP}
        for _ in range(self.args.work_mem_reps):
            for wm in SWEEP:
                fixed[wm].append(self.refresh_run(db, self.registry(db, wm)))
        sweep = {v: {} for v in VIEWS}
        for wm, runs in fixed.items():
            for v, samples in self.durations(db, runs).items():
                sweep[v][wm] = median([s for s, _ in samples])
        # The tuner starts from a history of its own: the sweep's rows would
        # hand it every measurement at once.
        auto, schema = self.registry(db, "auto"), "tuner"
        self.psql(db, f"CREATE SCHEMA {schema}")
        for _ in range(self.args.tuner_runs):
            self.refresh_run(db, auto, schema)
        best = {v: min(sweep[v], key=sweep[v].get) for v in VIEWS}
        fixed_best = Path(f"/tmp/mv-refresher-bench-{db}-best.toml")
        fixed_best.write_text("".join(f'[[view]]\nname = "{v}"\nwork_mem = "{best[v]}"\n\n' for v in VIEWS))
        # Settled: the tuner's runs and the best fixed settings' take turns, so
        # that drift touches both alike.
        auto_runs, best_runs = [], []
        for _ in range(self.args.settled_runs):
            auto_runs.append(self.refresh_run(db, auto, schema))
            best_runs.append(self.refresh_run(db, str(fixed_best)))
        settled, fixed_again = self.durations(db, auto_runs, schema), self.durations(db, best_runs)
        result = {}
        for v in VIEWS:
            settings = [wm for _, wm in settled[v]]
            result[v] = {"sweep": sweep[v], "best": best[v],
                         "chosen": max(set(settings), key=settings.count),
                         "tuned": median([s for s, _ in settled[v]]),
                         "best_again": median([s for s, _ in fixed_again[v]])}
        return result

    def tuner_only(self):
        """Only the tuner against the sweep, at --work-mem-scale: its section of the report."""
        db = f"bench_{self.args.work_mem_scale}"
        self.load_platform(db, self.args.work_mem_scale)
        self.mvr(db, "refresh")
        self.results[self.args.work_mem_scale] = {"tuner": self.tuner_vs_sweep(db)}
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "TUNER.md").write_text("\n".join(self.tuner_section()) + "\n")
        print(f"wrote {out / 'TUNER.md'}")

    def diff_plans(self, db):
        """The plans of user_activity_view's concurrent refresh (its diff query and
        the rest) at each work_mem, from auto_explain in the server log."""
        plans = {}
        for wm in ("4MB", "64MB"):
            marker = f"bench-plan-{wm}-{time.time()}"
            before = len(self.cluster.server_log())
            self.psql(db, f"SELECT '{marker}'; LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                          "SET auto_explain.log_analyze = on; SET auto_explain.log_timing = off; "
                          "SET auto_explain.log_nested_statements = on; SET client_min_messages = warning; "
                          f"SET work_mem = '{wm}'; REFRESH MATERIALIZED VIEW CONCURRENTLY user_activity_view;")
            log = self.cluster.server_log()[before:]
            plans[wm] = log
        return plans

    def startup(self):
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([str(self.binary), "--version"], check=True, capture_output=True)
            runs.append(time.perf_counter() - started)
        return median(runs)

    def run(self):
        try:
            for bets in self.args.scales:
                self.run_scale(bets)
            if self.args.incremental_only:
                self.write_incremental()
            else:
                self.write(self.startup())
        finally:
            self.cluster.stop()

    def write_incremental(self):
        """Only the incremental views' section and plot: OUT/INCREMENTAL.md."""
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "incremental-vs-scale.svg").write_text(self.incremental_plot())
        lines = self.incremental_section() + ["", "![incremental against scale](incremental-vs-scale.svg)"]
        (out / "INCREMENTAL.md").write_text("\n".join(lines) + "\n")
        print(f"wrote {out / 'INCREMENTAL.md'}")

    def incremental_plot(self):
        rows = [r["incremental"] for r in self.results.values()]
        return svg_plot(list(self.results), {
            "CONCURRENTLY user_activity_view": [r["conc"] for r in rows],
            "incremental user_activity, 1% changed": [r["inc"] for r in rows],
            "under load: CONCURRENTLY": [r["conc_load"]["seconds"] for r in rows],
            "under load: full reconcile": [r["full"]["seconds"] for r in rows],
        })

    # -- report -------------------------------------------------------------

    def write(self, startup_s):
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        svg = out / "refresh-vs-scale.svg"
        svg.write_text(self.plot())
        lines = [
            "# Benchmarks",
            "",
            f"Generated by `bench/run.py` on {datetime.date.today().isoformat()}. Medians of "
            f"{self.args.reps} run(s) each, the scenarios taking turns; ratios are to the seeds' "
            "baseline measured in the same run.",
            "",
            f"* machine: {os.cpu_count()} cores ({cpu_model()}), "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {platform.platform()}",
            f"* PostgreSQL: {self.psql('postgres', 'SELECT version()').strip()}",
            "* server: the throwaway cluster of `scripts/pg-throwaway` (shared_buffers 128MB, fsync off)",
            f"* binary: `target/release/mv-refresher`, {self.binary.stat().st_size / 1e6:.1f} MB, "
            f"start-up (`--version`) {startup_s * 1000:.1f} ms",
            "* load during each scenario: 2 readers doing point reads on user_activity_view and "
            "tenants_summary_view, 1 writer inserting into bet_events, each on its own connection",
            "",
            f"![refresh time against scale]({svg.name})",
            "",
            "## Refreshing all three views",
            "",
            "| bets | load (s) | seeds' function (s) | mv-refresher --jobs 1 (s) | ratio | --jobs 2 (s) | ratio | "
            "plain REFRESH, sum (s) | bare queries, sum (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for bets, r in self.results.items():
            base = r["baseline"]["seconds"]
            lines.append(
                f"| {bets:,} | {r['load_s']:.1f} | {base:.2f} | {r['jobs1']['seconds']:.2f} | "
                f"{r['jobs1']['seconds'] / base:.2f} | {r['jobs2']['seconds']:.2f} | "
                f"{r['jobs2']['seconds'] / base:.2f} | {sum(r['plain'].values()):.2f} | "
                f"{sum(r['bare'].values()):.2f} |")
        lines += ["", "## Per view: the limits", "", "| bets | view | plain REFRESH (s) | bare query (s) |",
                  "|---|---|---|---|"]
        for bets, r in self.results.items():
            for v in VIEWS:
                lines.append(f"| {bets:,} | {v} | {r['plain'][v]:.3f} | {r['bare'][v]:.3f} |")
        lines += ["", "## What readers and writers feel meanwhile", "",
                  "Point-read latency (ms) and insert throughput while each scenario runs.", "",
                  "| bets | scenario | read p50 | read p99 | read max | inserts/s |", "|---|---|---|---|---|---|"]
        names = {"idle": "no refresh", "baseline": "seeds' function", "jobs1": "mv-refresher --jobs 1",
                 "jobs2": "mv-refresher --jobs 2"}
        for bets, r in self.results.items():
            for key, name in names.items():
                s = r[key]
                lines.append(f"| {bets:,} | {name} | {s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.1f} | "
                             f"{s['inserts_per_s']:.0f} |")
        lines += ["", "## The refresher's own cost", "",
                  "Wall time of `mv-refresher refresh` beyond the span of its refreshes on the server "
                  "(first start to last end, from its history rows): process start, connect, plan, "
                  "and the statements around each REFRESH. And its peak RSS.", "",
                  "| bets | jobs | wall (s) | refreshes on the server (s) | overhead (ms) | peak RSS (MB) |",
                  "|---|---|---|---|---|---|"]
        for bets, r in self.results.items():
            for jobs in (1, 2):
                runs = r[f"jobs{jobs}"]["extra"]
                wall, rss, server = (median([x[i] for x in runs]) for i in range(3))
                lines.append(f"| {bets:,} | {jobs} | {wall:.2f} | {server:.2f} | {(wall - server) * 1000:.0f} | "
                             f"{rss / 1024:.1f} |")
        wm = next((r for r in self.results.values() if "work_mem" in r), None)
        if wm:
            lines += ["", f"## What work_mem does ({self.args.work_mem_scale:,} bets)", "",
                      f"Seconds, medians of {self.args.work_mem_reps} runs taking turns, no load.", "",
                      "| view | method | " + " | ".join(WORK_MEMS) + " |", "|---|---|" + "---|" * len(WORK_MEMS)]
            for v in VIEWS:
                for method in ("CONCURRENTLY", "plain"):
                    cells = " | ".join(f"{wm['work_mem'][(v, method, w)]:.2f}" for w in WORK_MEMS)
                    lines.append(f"| {v} | {method} | {cells} |")
            lines += ["", "### The plans of user_activity_view's concurrent refresh", "",
                      "From `auto_explain` (analyze, no timing), nested statements included: the "
                      "refresh's own query, then the diff query that compares old and new rows.", ""]
            for w, log in wm["plans"].items():
                lines += [f"<details><summary>work_mem = {w}</summary>", "", "```", plan_excerpt(log), "```",
                          "", "</details>", ""]
        lines += self.tuner_section()
        lines += self.incremental_section()
        if any("incremental" in r for r in self.results.values()):
            (out / "incremental-vs-scale.svg").write_text(self.incremental_plot())
            lines += ["", "![incremental against scale](incremental-vs-scale.svg)"]
        findings = ROOT / "bench/findings.md"
        if findings.exists():
            lines += ["", findings.read_text().rstrip()]
        (out / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
        print(f"wrote {out / 'BENCHMARKS.md'} and {svg}")

    def tuner_section(self):
        tuned = next((r["tuner"] for r in self.results.values() if "tuner" in r), None)
        if not tuned:
            return []
        lines = ["", f"## work_mem = \"auto\" against every fixed setting ({self.args.work_mem_scale:,} bets)", "",
                 "Seconds of `REFRESH ... CONCURRENTLY` as the refresher measures it (history rows), no load. "
                 f"First each fixed setting {self.args.work_mem_reps} times (medians, the settings taking turns): "
                 f"the sweep. Then `work_mem = \"auto\"`, on a history of its own, left to settle over "
                 f"{self.args.tuner_runs} refreshes; then {self.args.settled_runs} more of it, taking turns with "
                 "as many at each view's best fixed setting (medians of both, so that drift touches them alike; "
                 "the tuner's re-measuring runs count).", "",
                 "| view | " + " | ".join(SWEEP) + " | best fixed | auto settled on | auto (s) | best fixed, same turns (s) | auto / best |",
                 "|---|" + "---|" * (len(SWEEP) + 5)]
        for v in VIEWS:
            t = tuned[v]
            cells = " | ".join(f"{t['sweep'][w]:.3f}" for w in SWEEP)
            lines.append(f"| {v} | {cells} | {t['best']} | {t['chosen']} | {t['tuned']:.3f} | "
                         f"{t['best_again']:.3f} | {t['tuned'] / t['best_again']:.2f} |")
        return lines

    def plot(self):
        series = {
            "seeds' function": [r["baseline"]["seconds"] for r in self.results.values()],
            "mv-refresher --jobs 1": [r["jobs1"]["seconds"] for r in self.results.values()],
            "mv-refresher --jobs 2": [r["jobs2"]["seconds"] for r in self.results.values()],
            "plain REFRESH, sum": [sum(r["plain"].values()) for r in self.results.values()],
            "bare queries, sum": [sum(r["bare"].values()) for r in self.results.values()],
        }
        return svg_plot(list(self.results), series)


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def plan_excerpt(log):
    """The auto_explain plans in a server log excerpt, without log line prefixes."""
    keep, out = False, []
    for line in log.splitlines():
        if "duration:" in line and "plan:" in line:
            keep = True
            out.append(line[line.index("duration:"):])
            continue
        if keep and (line.startswith("\t") or line.startswith(" ")):
            out.append(line.rstrip())
        elif keep and "LOG:" in line:
            keep = False
    return "\n".join(out[-200:]) or "(no plan logged)"


def svg_plot(xs, series, width=720, height=400, xlabel="bets"):
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"]
    left, right, top, bottom = 60, 220, 20, 50
    ymax = max(max(v) for v in series.values()) * 1.1 or 1
    xmax = max(xs)
    px = lambda x: left + (width - left - right) * x / xmax
    py = lambda y: height - bottom - (height - top - bottom) * y / ymax
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{left}" y1="{py(0)}" x2="{width - right}" y2="{py(0)}" stroke="black"/>',
             f'<line x1="{left}" y1="{py(0)}" x2="{left}" y2="{top}" stroke="black"/>',
             f'<text x="{(width - right + left) / 2}" y="{height - 10}" text-anchor="middle">{xlabel}</text>',
             f'<text x="15" y="{(height - bottom + top) / 2}" transform="rotate(-90 15 {(height - bottom + top) / 2})" '
             'text-anchor="middle">seconds (median)</text>']
    for i in range(5):
        y = ymax / 1.1 * i / 4
        parts.append(f'<text x="{left - 5}" y="{py(y) + 4}" text-anchor="end">{y:.1f}</text>')
        parts.append(f'<line x1="{left}" y1="{py(y)}" x2="{width - right}" y2="{py(y)}" stroke="#ddd"/>')
    for x in xs:
        parts.append(f'<text x="{px(x)}" y="{py(0) + 18}" text-anchor="middle">{x:,}</text>')
    for (name, ys), colour in zip(series.items(), colours):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in zip(xs, ys):
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
    parts += svg_legend(series, colours, width - right, top)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def svg_legend(names, colours, x, top):
    """A plot's legend, one coloured line and name per row, right of `x`."""
    parts = []
    for i, (name, colour) in enumerate(zip(names, colours)):
        y = top + 20 + i * 20
        parts.append(f'<line x1="{x + 15}" y1="{y - 4}" x2="{x + 35}" y2="{y - 4}" '
                     f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{x + 40}" y="{y}">{name}</text>')
    return parts


def main():
    import freshness  # imports this module's helpers, so not at the top
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="100000,1000000,3000000", help="bets, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work-mem-scale", type=int, default=1000000,
                        help="the scale at which to run the work_mem matrix")
    parser.add_argument("--work-mem-reps", type=int, default=5)
    parser.add_argument("--tuner-runs", type=int, default=30, help="refreshes the work_mem tuner may settle in")
    parser.add_argument("--settled-runs", type=int, default=9, help="refreshes measured after it settled")
    parser.add_argument("--tuner-only", action="store_true",
                        help="only work_mem = auto against the sweep, at --work-mem-scale, to OUT/TUNER.md")
    parser.add_argument("--incremental-only", action="store_true",
                        help="only the incremental views against user_activity_view, at --scales, to OUT/INCREMENTAL.md")
    parser.add_argument("--sweep", action="store_true",
                        help="only the incremental twins against the share of users changed, to OUT/SWEEP.md "
                             "(bench/sweep.py; --scales defaults to 1000000 here)")
    parser.add_argument("--many-views", action="store_true",
                        help="only many small views against one psql session, to OUT/MANY_VIEWS.md (bench/many_views.py)")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--short", action="store_true",
                        help="20k bets, 1 repetition, and a short freshness run, report to /tmp")
    freshness.add_arguments(parser)
    args = parser.parse_args()
    if args.short:
        args.scales, args.reps, args.work_mem_scale, args.work_mem_reps = "20000", 1, 20000, 1
        args.tuner_runs, args.settled_runs = 3, 2
        if args.out == str(ROOT / "docs"):
            args.out = f"/tmp/mv-refresher-bench-report-{os.getpid()}"
    if args.sweep and args.scales == parser.get_default("scales") and not args.short:
        args.scales = "1000000"
    args.scales = [int(s) for s in args.scales.split(",")]
    ensure_psycopg()
    if not shutil.which("/usr/bin/time"):
        sys.exit("bench: /usr/bin/time is missing (Debian: apt-get install time)")
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    if args.sweep:
        import sweep
        sweep.run(Bench(args))
        return
    if args.many_views:
        import many_views
        many_views.main(args)
        return
    if args.freshness:
        freshness.run(args)
        return
    if args.tuner_only:
        bench = Bench(args)
        try:
            bench.tuner_only()
        finally:
            bench.cluster.stop()
        return
    Bench(args).run()
    if args.short:
        # The sweep and the freshness harness too, so that they cannot rot.
        import sweep
        sweep.run(Bench(args))
        freshness.run(args)


if __name__ == "__main__":
    main()
