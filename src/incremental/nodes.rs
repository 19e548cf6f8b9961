//! What each Citus node's snapshot saw, so that a cycle on Citus skips the
//! rows of its sources' `lag` windows that the last cycle already read.
//!
//! On one server a row whose `xmin` ended before the last cycle's snapshot
//! was seen by it. On Citus a row's `xmin` is a transaction of the node that
//! holds the row's shard, and the coordinator's snapshot says nothing of it.
//! So each cycle takes every node's own snapshot before it reads (the workers'
//! through `run_command_on_workers`, on connections of their own; the
//! coordinator's in the cycle's transaction) and keeps their xmins with the
//! watermarks. The next cycle's reads, pushed down to the shards, skip a row
//! whose transaction ended before the xmin of its own node.
//!
//! A node is known by its postmaster's start time, which the shard queries
//! read for nothing (`pg_postmaster_start_time()`, where the system
//! identifier would read the control file for every row). While it stays the
//! same the node's transaction ids go on from where they were; a node
//! restarted, restored from a backup or replaced has another, is not found,
//! and its rows are read whole once, as before. Two nodes started in the
//! same microsecond are told apart by neither: both are read whole.
//!
//! Not skipped: the rows of a reference table or of a table with replicated
//! shards. A write commits on each placement at its own moment, so a row
//! committed on one before its snapshot may have been read on another where
//! it was not committed yet.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

/// One node's snapshot, as the state table keeps it (`node_snapshots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// The node's postmaster start time, RFC 3339 to the microsecond.
    pub started: String,
    /// The xmin of the node's snapshot, a full transaction id.
    pub xmin: i64,
}

/// The nodes' snapshots one cycle took before it read, and the sources
/// whose rows may be skipped by them.
#[derive(Debug, Clone)]
pub struct Taken {
    pub nodes: Vec<NodeSnapshot>,
    /// Start times more than one node has: neither node is known by it.
    pub shared: Vec<String>,
    /// The sources (OIDs) that are neither reference tables nor replicated.
    pub skippable: Vec<u32>,
}

/// The last cycle's snapshots, as the shard queries look them up: `$1`, the
/// nodes' start times, and `$2`, the low 32 bits of their xmins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lookup {
    pub started: Vec<DateTime<Utc>>,
    pub xmins: Vec<i64>,
}

/// Takes every node's snapshot: the coordinator's in this transaction, the
/// workers' on their own connections. `None` where it cannot be done (no
/// `run_command_on_workers`, or it is not this role's to call, or reads may
/// go to secondaries, whose replay lags their primary's snapshot): the
/// windows are then read whole. A refusal does not end the cycle's
/// transaction ([`crate::db::query_opt_or_refusal`]).
pub async fn take(
    client: &Client,
    sources: &[u32],
) -> Result<Option<Taken>, tokio_postgres::Error> {
    let sql = "WITH nodes(started, xmin) AS ( \
             SELECT pg_catalog.pg_postmaster_start_time(), \
                 pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint \
             UNION ALL \
             SELECT (w.result::json ->> 0)::timestamptz, (w.result::json ->> 1)::bigint \
             FROM pg_catalog.run_command_on_workers($$SELECT pg_catalog.json_build_array(\
                 pg_catalog.pg_postmaster_start_time(), \
                 pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint)::text$$) AS w \
             WHERE w.success) \
         SELECT array_agg(started), array_agg(xmin), \
             ARRAY(SELECT s.oid FROM unnest($1::oid[]) AS s(oid) \
                   WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p \
                                     WHERE p.logicalrelid = s.oid AND p.repmodel <> 's')) \
         FROM nodes \
         WHERE pg_catalog.current_setting('citus.use_secondary_nodes', true) \
             IS DISTINCT FROM 'always' \
         HAVING count(*) > 0";
    let params: [(&(dyn ToSql + Sync), Type); 1] = [(&sources, Type::OID_ARRAY)];
    let row = match crate::db::query_opt_or_refusal(client, sql, &params).await? {
        Ok(Some(row)) => row,
        Ok(None) => return Ok(None),
        Err(err) => {
            tracing::debug!(error = %err, "the Citus nodes' snapshots could not be taken: the windows are read whole");
            return Ok(None);
        }
    };
    let started: Vec<DateTime<Utc>> = row.get(0);
    let xmins: Vec<i64> = row.get(1);
    let nodes: Vec<NodeSnapshot> = started
        .iter()
        .zip(xmins)
        .map(|(started, xmin)| NodeSnapshot {
            started: started.to_rfc3339_opts(SecondsFormat::Micros, true),
            xmin,
        })
        .collect();
    let (nodes, shared) = distinct(nodes);
    Ok(Some(Taken {
        nodes,
        shared,
        skippable: row.get(2),
    }))
}

/// The nodes known by a start time no other node has, and the start times
/// more than one node has.
fn distinct(nodes: Vec<NodeSnapshot>) -> (Vec<NodeSnapshot>, Vec<String>) {
    let (once, shared): (Vec<NodeSnapshot>, Vec<NodeSnapshot>) = nodes
        .iter()
        .cloned()
        .partition(|n| nodes.iter().filter(|m| m.started == n.started).count() == 1);
    let mut shared: Vec<String> = shared.into_iter().map(|n| n.started).collect();
    shared.sort();
    shared.dedup();
    (once, shared)
}

/// What the shard queries look up: the last cycle's snapshots (`saved`, one
/// list per source, all alike unless a source was added), each node at its
/// oldest, less the start times more than one node has now. Empty when a
/// source has none saved: the windows are read whole.
pub fn lookup(saved: &[Option<Vec<NodeSnapshot>>], now: &Taken) -> Lookup {
    if saved.is_empty() || saved.iter().any(Option::is_none) {
        return Lookup::default();
    }
    let mut oldest: Vec<NodeSnapshot> = Vec::new();
    for node in saved.iter().flatten().flatten() {
        match oldest.iter_mut().find(|n| n.started == node.started) {
            Some(n) => n.xmin = n.xmin.min(node.xmin),
            None => oldest.push(node.clone()),
        }
    }
    let mut lookup = Lookup::default();
    for node in oldest.iter().filter(|n| !now.shared.contains(&n.started)) {
        if let Ok(started) = DateTime::parse_from_rfc3339(&node.started) {
            lookup.started.push(started.with_timezone(&Utc));
            lookup.xmins.push(node.xmin & 0xffff_ffff);
        }
    }
    lookup
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(started: &str, xmin: i64) -> NodeSnapshot {
        NodeSnapshot {
            started: started.into(),
            xmin,
        }
    }

    const A: &str = "2026-12-01T10:00:00.000001Z";
    const B: &str = "2026-12-01T10:00:00.000002Z";

    fn taken(nodes: Vec<NodeSnapshot>) -> Taken {
        let (nodes, shared) = distinct(nodes);
        Taken {
            nodes,
            shared,
            skippable: Vec::new(),
        }
    }

    #[test]
    fn nodes_started_in_the_same_microsecond_are_known_by_neither() {
        let now = taken(vec![node(A, 10), node(B, 20), node(A, 30)]);
        assert_eq!(now.nodes, [node(B, 20)]);
        assert_eq!(now.shared, [A]);
        let saved = [Some(vec![node(A, 5), node(B, 6)])];
        assert_eq!(lookup(&saved, &now).xmins, [6]);
    }

    #[test]
    fn each_node_is_looked_up_at_its_oldest_snapshot_among_the_sources() {
        let now = taken(vec![node(A, 100), node(B, 200)]);
        let saved = [
            Some(vec![node(A, 50), node(B, (3 << 32) + 90)]),
            Some(vec![node(A, 40)]),
        ];
        let lookup = lookup(&saved, &now);
        assert_eq!(lookup.xmins, [40, 90]);
        assert_eq!(
            lookup.started[0].to_rfc3339_opts(SecondsFormat::Micros, true),
            A
        );
    }

    #[test]
    fn a_source_without_snapshots_has_its_window_read_whole() {
        let now = taken(vec![node(A, 100)]);
        let saved = [Some(vec![node(A, 50)]), None];
        assert_eq!(lookup(&saved, &now), Lookup::default());
        assert_eq!(lookup(&[], &now), Lookup::default());
    }
}
