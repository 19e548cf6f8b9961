"""Many small views (issue 20): `mv-refresher refresh --jobs 1` and `--jobs 4`
against psql refreshing the same views CONCURRENTLY in one session, at 10, 100
and 1,000 views.

The seeds keep per-tenant materialized views (bets_view_tenant_10001), so a
registry of hundreds or thousands of small views is expected: there, what the
refresher does around each REFRESH (connections, round trips, the log rows)
weighs as much as the refresh itself. Each view is a few rows of a shared table
with a unique index (so CONCURRENTLY applies); every tenth reads the view
before it (a dependency the plan must order). Dispatched from
`bench/run.py --many-views`; writes OUT/MANY_VIEWS.md. No assertions: numbers.

Besides the wall time of each run it reads, from pg_stat_database, the
sessions the run opened, the time the server spent executing its statements
(active_time) and the time its transactions sat waiting for the client
(idle_in_transaction_time: round trips and the client's own work), per view.

MVR_BENCH_BEFORE=PATH adds the runs of another binary (one built from an
earlier commit) taking the same turns, for a before and after.
"""

import datetime
import os
import platform
import subprocess
import time
from pathlib import Path

from run import ROOT, Cluster, median

COUNTS = [10, 100, 1000]
JOBS = [1, 4]

SETUP = """
CREATE TABLE base (tenant_id int, id int, v int, PRIMARY KEY (tenant_id, id));
INSERT INTO base SELECT t, i, t * i FROM generate_series(1, {n}) t, generate_series(1, 10) i;
DO $$
BEGIN
  FOR i IN 1..{n} LOOP
    IF i % 10 = 0 THEN
      EXECUTE format('CREATE MATERIALIZED VIEW mv_%s AS SELECT id, v + 1 AS v FROM mv_%s',
                     lpad(i::text, 4, '0'), lpad((i - 1)::text, 4, '0'));
    ELSE
      EXECUTE format('CREATE MATERIALIZED VIEW mv_%s AS SELECT id, v FROM base WHERE tenant_id = %s',
                     lpad(i::text, 4, '0'), i);
    END IF;
    EXECUTE format('CREATE UNIQUE INDEX ON mv_%s (id)', lpad(i::text, 4, '0'));
  END LOOP;
END $$;
"""

STATS = ("SELECT sessions, active_time, idle_in_transaction_time "
         "FROM pg_stat_database WHERE datname = current_database()")


class ManyViews:
    def __init__(self, args):
        self.args = args
        self.binary = ROOT / "target/release/mv-refresher"
        self.before = os.environ.get("MVR_BENCH_BEFORE")
        self.cluster = Cluster()
        self.results = {}  # views -> runner -> list of samples

    def psql(self, db, sql):
        return subprocess.run([self.cluster.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-d", self.cluster.url(db), "-c", sql],
                              check=True, text=True, capture_output=True).stdout

    def setup(self, n):
        db = f"many_{n}"
        self.psql("postgres", f"CREATE DATABASE {db}")
        self.psql(db, SETUP.format(n=n))
        self.psql(db, "VACUUM ANALYZE")
        names = [f"mv_{i:04d}" for i in range(1, n + 1)]
        registry = Path(f"/tmp/mv-refresher-bench-{os.getpid()}-{db}.toml")
        registry.write_text("".join(f'[[view]]\nname = "{v}"\n\n' for v in names))
        script = Path(f"/tmp/mv-refresher-bench-{os.getpid()}-{db}.sql")
        script.write_text("".join(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {v};\n" for v in names))
        return db, registry, script

    def runners(self, db, registry, script):
        url = self.cluster.url(db)
        runners = {"psql": [self.cluster.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(script)]}
        binaries = {"": self.binary} | ({"before_": self.before} if self.before else {})
        for prefix, binary in binaries.items():
            for jobs in JOBS:
                runners[f"{prefix}jobs{jobs}"] = [str(binary), "--database-url", url, "--registry", str(registry),
                                                  "refresh", "--jobs", str(jobs)]
        return runners

    def stats(self, monitor):
        monitor.execute("SELECT pg_stat_clear_snapshot()")
        return monitor.execute(STATS).fetchone()

    def settle(self, monitor):
        """Waits until the run's sessions have ended and reported their statistics."""
        for _ in range(200):
            busy = monitor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND pid <> pg_backend_pid()").fetchone()[0]
            if busy == 0:
                return
            time.sleep(0.05)

    def one(self, monitor, command):
        self.settle(monitor)
        before = self.stats(monitor)
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(f"{command} failed: {out.stdout}\n{out.stderr}")
        self.settle(monitor)
        after = self.stats(monitor)
        sessions, active_ms, idle_tx_ms = (a - b for a, b in zip(after, before))
        return {"wall": wall, "sessions": sessions, "active_ms": active_ms, "idle_tx_ms": idle_tx_ms}

    def measure(self, n):
        import psycopg
        db, registry, script = self.setup(n)
        runners = self.runners(db, registry, script)
        names = list(runners)
        samples = {name: [] for name in names}
        with psycopg.connect(self.cluster.url(db), autocommit=True) as monitor:
            # A first run of each: the log tables, the first summary rows, warm caches.
            for command in runners.values():
                self.one(monitor, command)
            for rep in range(self.args.reps):
                # Taking turns, each starting first in its turn: drift (a noisy
                # neighbour, autovacuum) touches all alike.
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    samples[name].append(self.one(monitor, runners[name]))
        registry.unlink()
        script.unlink()
        self.results[n] = {
            name: {key: median([s[key] for s in runs]) for key in runs[0]} | {"walls": [s["wall"] for s in runs]}
            for name, runs in samples.items()
        }
        walls = {name: round(r["wall"], 2) for name, r in self.results[n].items()}
        print(f"{n} views: {walls}", flush=True)

    def run(self):
        try:
            for n in self.args.many_view_counts:
                self.measure(n)
            self.write()
        finally:
            self.cluster.stop()

    def section(self):
        version = self.psql("postgres", "SHOW server_version").strip()
        lines = [
            "## Many small views",
            "",
            f"Generated by `bench/run.py --many-views` on {datetime.date.today().isoformat()}: "
            f"medians of {self.args.reps} runs each, psql and `mv-refresher refresh --jobs 1` and `--jobs 4` "
            "taking turns, after a first run of each. Each view holds 10 rows of a shared table, with a "
            "unique index; every tenth reads the view before it. psql refreshes them CONCURRENTLY, one "
            "statement each, in one session (autocommit): the floor for doing the same work from outside "
            "the server. Sessions, server time and waits come from `pg_stat_database` (`sessions`, "
            "`active_time`, `idle_in_transaction_time`).",
            "",
            f"* machine: {os.cpu_count()} cores, {platform.platform()}, PostgreSQL {version} "
            "(the throwaway cluster of `scripts/pg-throwaway`), shared with other work",
            "",
        ]
        for prefix, title in [("", "this build")] + ([("before_", f"before: `{self.before}`")] if self.before else []):
            lines += [
                f"{title}:",
                "",
                "| views | psql, one session (s) | --jobs 1 (s) | ratio | --jobs 4 (s) | ratio "
                "| sessions: psql / 1 / 4 | server time a view (ms): psql / 1 / 4 "
                "| waits in a transaction a view (ms): 1 / 4 |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for n, r in self.results.items():
                psql, j1, j4 = r["psql"], r[f"{prefix}jobs1"], r[f"{prefix}jobs4"]
                lines.append(
                    f"| {n:,} | {psql['wall']:.2f} | {j1['wall']:.2f} | {j1['wall'] / psql['wall']:.2f} "
                    f"| {j4['wall']:.2f} | {j4['wall'] / psql['wall']:.2f} "
                    f"| {psql['sessions']:.0f} / {j1['sessions']:.0f} / {j4['sessions']:.0f} "
                    f"| {psql['active_ms'] / n:.2f} / {j1['active_ms'] / n:.2f} / {j4['active_ms'] / n:.2f} "
                    f"| {j1['idle_tx_ms'] / n:.2f} / {j4['idle_tx_ms'] / n:.2f} |")
            lines.append("")
        lines += ["Every run's wall time (s), in the order measured:", ""]
        for n, r in self.results.items():
            runs = "; ".join(f"{name} " + ", ".join(f"{w:.2f}" for w in x["walls"]) for name, x in r.items())
            lines.append(f"* {n:,} views: {runs}")
        return lines

    def write(self):
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "MANY_VIEWS.md").write_text("\n".join(self.section()) + "\n")
        print(f"wrote {out / 'MANY_VIEWS.md'}")


def main(args):
    """`bench/run.py --many-views`: `args.reps` runs of each, at 10, 100 and
    1,000 views (10 and 100 with --short), to OUT/MANY_VIEWS.md; OUT defaults
    to a directory in /tmp, not docs/."""
    if args.out == str(ROOT / "docs"):
        args.out = f"/tmp/mv-refresher-bench-many-views-{os.getpid()}"
    args.many_view_counts = COUNTS[:2] if args.short else COUNTS
    ManyViews(args).run()
