"""The incremental views' cost against the share of users changed.

At one scale (1M bets by default), a sweep of 0.1% to 100% of the users
changed (one bet each, its marker moved as the application moves it): after
each change, one cycle of each incremental twin of user_activity_view, then
`REFRESH MATERIALIZED VIEW CONCURRENTLY user_activity_view` over the same
changes. Two twins: `user_activity` (the reference platform's, written with
CTEs) and `user_activity_seeds` (the seeds' query shape: grouped subqueries
LEFT JOINed USING the key). Seconds are the refresher's own (history rows),
medians of the repetitions. Writes OUT/SWEEP.md and OUT/incremental-sweep.svg.

    bench/run.py --sweep                       # 1M bets, 3 repetitions
    bench/run.py --sweep --scales 100000 --reps 1
"""

import time
import tomllib
from pathlib import Path

SHARES = [0.001, 0.01, 0.02, 0.05, 0.10, 0.25, 0.50, 1.0]
LAG_S = 61  # the twins' sources' lag (60000 ms), and a second

TWINS = {"user_activity": "reference twin (CTEs)", "user_activity_seeds": "seeds' shape (LEFT JOIN USING)"}


def registry(root, db):
    """The embedded default registry with the seeds-shaped twin added (as
    bench/freshness.py keeps it: seed 001's query, the twin's sources)."""
    from freshness import SEEDS_QUERY, registry_toml
    default = tomllib.loads((root / "src/default_registry.toml").read_text())
    twin = next(v for v in default["view"] if v["name"] == "user_activity")
    seeds = {"name": "user_activity_seeds", "key": twin["key"], "create": True, "query": SEEDS_QUERY,
             "changes": twin["changes"]}
    path = Path(f"/tmp/mv-refresher-bench-{db}-sweep.toml")
    path.write_text(registry_toml(default.get("defaults", {}), default["view"] + [seeds]))
    return path


def cycle(bench, db, registry, view, *extra):
    """One `refresh VIEW` of `registry`: the refresher's seconds, keys recomputed and note."""
    seconds, counts = bench.cycle(db, view, "--registry", str(registry), *extra)
    return seconds, counts["keys"], counts["note"]


def sweep(bench, bets):
    """The sweep at `bets`: per share, medians over the repetitions."""
    from run import median
    db = f"sweep_{bets}"
    users, _, _ = bench.load_platform(db, bets)
    reg = registry(bench.root, db)
    for twin in TWINS:
        cycle(bench, db, reg, twin)  # the first, full load of a created twin
        cycle(bench, db, reg, twin)
    full = {twin: [] for twin in TWINS}
    samples = {share: {"users": [], "conc": [], **{t: [] for t in TWINS}, **{f"{t}:keys": [] for t in TWINS},
                       **{f"{t}:note": [] for t in TWINS}} for share in SHARES}
    for rep in range(bench.args.reps):
        if rep:
            # A cycle reads again the rows written within its sources' lag
            # (skipping those it saw by their xmin): 300,000 bets changed by
            # the last repetition's largest steps would be read by the next
            # one's smallest. Each repetition starts with that window clear.
            time.sleep(LAG_S)
        for share in SHARES:
            s = samples[share]
            s["users"].append(bench.change_users(db, share, f"{rep}-{share}"))
            for twin in TWINS:
                seconds, keys, note = cycle(bench, db, reg, twin)
                s[twin].append(seconds)
                s[f"{twin}:keys"].append(keys)
                s[f"{twin}:note"].append(note)
            s["conc"].append(cycle(bench, db, reg, "user_activity_view")[0])
            print(f"   {share:.1%}: {s['users'][-1]} users, concurrently {s['conc'][-1]:.2f} s, "
                  + ", ".join(f"{t} {s[t][-1]:.2f} s ({s[f'{t}:note'][-1]})" for t in TWINS), flush=True)
        for twin in TWINS:
            full[twin].append(cycle(bench, db, reg, twin, "--full")[0])
    rows = {share: {k: (median(v) if k == "users" or ":" not in k else v) for k, v in s.items()}
            for share, s in samples.items()}
    return {"users": users, "rows": rows, "full": {t: median(v) for t, v in full.items()}}


def section(results, reps):
    lines = ["", "## Incremental views: the share of users changed", "",
             "At each scale, one bet of a share of the users changes (its marker moves, as the application "
             "moves it); then one cycle of each incremental twin of `user_activity_view`, then `REFRESH "
             "MATERIALIZED VIEW CONCURRENTLY user_activity_view` over the same changes. The reference twin "
             "is written with CTEs (the embedded default registry); the seeds' shape joins grouped "
             "subqueries `USING (tenant_id, user_id)`, as seed 001's view does. Seconds are the "
             f"refresher's own (history rows), medians of {reps}; a ratio is to the concurrent refresh "
             "of the same changes. The note says what the cycle did: recompute the changed keys, or, "
             "past a share of the table, a full reconcile. The shares are taken in turn from the smallest, "
             "and each repetition starts a minute (the sources' `lag`) after the last one's largest change: a "
             "cycle reads again the rows written within `lag`, skipping those it already saw by their `xmin` "
             "(right after 300,000 bets changed, that read made a 1% cycle take 0.36 s instead of 0.21 s).", ""]
    for bets, r in results.items():
        lines += [f"{bets:,} bets, {r['users']:,} users; a full reconcile (`--full`): "
                  + ", ".join(f"{t} {r['full'][t]:.2f} s" for t in TWINS) + ".", "",
                  "| users changed | keys | CONCURRENTLY (s) | reference twin (s) | ratio | seeds' shape (s) "
                  "| ratio | cycle |", "|---|---|---|---|---|---|---|---|"]
        for share, x in r["rows"].items():
            notes = sorted({n.split(":")[0] for t in TWINS for n in x[f"{t}:note"]})
            keys = sorted(x["user_activity:keys"])[len(x["user_activity:keys"]) // 2]
            a, b = x["user_activity"], x["user_activity_seeds"]
            lines.append(f"| {share:.1%} ({x['users']:,.0f}) | {keys:,} | {x['conc']:.3f} | {a:.3f} | "
                         f"{a / x['conc']:.3f} | {b:.3f} | {b / x['conc']:.3f} | {'; '.join(notes)} |")
        lines.append("")
    return lines


def plot(results, svg_plot):
    bets, r = list(results.items())[-1]
    xs = [share * 100 for share in r["rows"]]
    rows = list(r["rows"].values())
    return svg_plot(xs, {
        "CONCURRENTLY user_activity_view": [x["conc"] for x in rows],
        "reference twin (CTEs)": [x["user_activity"] for x in rows],
        "seeds' shape (LEFT JOIN USING)": [x["user_activity_seeds"] for x in rows],
    }, xlabel=f"% of users changed ({bets:,} bets)")


def run(bench):
    from run import svg_plot
    results = {}
    try:
        for bets in bench.args.scales:
            results[bets] = sweep(bench, bets)
    finally:
        bench.cluster.stop()
    out = Path(bench.args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "incremental-sweep.svg").write_text(plot(results, svg_plot))
    lines = section(results, bench.args.reps) + ["![cost against the share changed](incremental-sweep.svg)"]
    (out / "SWEEP.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'SWEEP.md'}")
