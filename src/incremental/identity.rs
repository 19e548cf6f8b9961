//! What ties an incremental view's state to its table in this database
//! (SPEC §2.5): the identity of the table and of each source (their OID and
//! their storage's relfilenodes), kept with the watermarks beside the
//! cluster's system identifier. A state kept for another table, for a source
//! since rebuilt, or in another cluster says nothing about what changed here:
//! the cycle that finds one reconciles in full. This module reads and
//! compares identities; `refresh::incremental` decides the cycle's mode and
//! keeps them in the state table.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A relation as a state was kept for it: its OID, and the relfilenode of
/// each of its leaves (the table itself when it is not partitioned) by the
/// leaf's OID. TRUNCATE gives a leaf a new relfilenode; so do `VACUUM FULL`,
/// `CLUSTER` and the `ALTER TABLE`s that rewrite it, which keep the rows: they
/// cost one needless full reconcile. A materialized view records no files:
/// each plain `REFRESH` gives it new storage, and its rows keep their markers
/// (`check` asks a source's lag to cover its refresh period), so only its OID
/// is compared. `filled` names the leaves whose storage held any page when
/// read: a partition attached already loaded is told from a new, empty one.
/// Stored as jsonb: `{"oid": 16384, "files": {"16384": 16391}, "filled":
/// ["16384"]}`; an identity saved without `filled` reads as none filled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub oid: i64,
    pub files: BTreeMap<String, i64>,
    #[serde(default)]
    pub filled: BTreeSet<String>,
}

/// How a relation differs from the one a state was kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Another relation by that name: dropped and created again.
    Recreated,
    /// The same relation with new storage: emptied (TRUNCATE) or rewritten.
    Rewritten,
    /// A partition emptied, rewritten, detached or dropped.
    Partition,
    /// A partition added that already holds rows (created, loaded, then
    /// attached): their markers may be below the watermark.
    Attached,
}

impl Change {
    /// What was seen, for the cycle's note.
    pub fn evidence(self) -> &'static str {
        match self {
            Change::Recreated => "its OID changed",
            Change::Rewritten => "its relfilenode changed",
            Change::Partition => "a partition's relfilenode changed, or a partition is gone",
            Change::Attached => "a new partition already holds rows",
        }
    }
}

impl Identity {
    /// How the relation as it is now (`self`) differs from `saved`. A leaf
    /// added since is no change while its storage is empty: a new partition
    /// is most often created empty, and the rows written into it are found by
    /// their markers like any others. One that holds rows was loaded before
    /// it was attached, with markers the watermark may have passed. A
    /// relation that records no files now but had only its own is a
    /// materialized view whose identity an earlier version saved with its
    /// storage: the same OID, the same view.
    pub fn change_since(&self, saved: &Identity) -> Option<Change> {
        if self.oid != saved.oid {
            return Some(Change::Recreated);
        }
        let own = |identity: &Identity| {
            identity.files.len() == 1 && identity.files.contains_key(&identity.oid.to_string())
        };
        if self.files.is_empty() && own(saved) {
            return None;
        }
        let differs = saved
            .files
            .iter()
            .any(|(leaf, file)| self.files.get(leaf) != Some(file));
        if differs {
            return Some(match own(saved) {
                true => Change::Rewritten,
                false => Change::Partition,
            });
        }
        self.files
            .keys()
            .any(|leaf| !saved.files.contains_key(leaf) && self.filled.contains(leaf))
            .then_some(Change::Attached)
    }
}

/// The identity (jsonb) of the relation whose OID is the SQL expression
/// `oid`; NULL when there is none. Read from `pg_class` with the statement's
/// snapshot; a leaf is filled when `pg_relation_size` finds a page in it.
pub fn identity_of(oid: &str) -> String {
    format!(
        "(SELECT jsonb_build_object('oid', c.oid::bigint, \
             'files', CASE WHEN c.relkind = 'm' THEN '{{}}'::jsonb ELSE coalesce( \
                 (SELECT jsonb_object_agg(l.oid::text, l.relfilenode::bigint) \
                  FROM pg_catalog.pg_partition_tree(c.oid) AS t \
                  JOIN pg_catalog.pg_class AS l ON l.oid = t.relid WHERE t.isleaf), \
                 CASE WHEN c.relkind = 'p' THEN '{{}}'::jsonb \
                      ELSE jsonb_build_object(c.oid::text, c.relfilenode::bigint) END) END, \
             'filled', CASE WHEN c.relkind = 'p' THEN coalesce( \
                 (SELECT jsonb_agg(t.relid::oid::text) \
                  FROM pg_catalog.pg_partition_tree(c.oid) AS t \
                  WHERE t.isleaf AND pg_catalog.pg_relation_size(t.relid) > 0), \
                 '[]'::jsonb) ELSE '[]'::jsonb END) \
         FROM pg_catalog.pg_class AS c WHERE c.oid = {oid})"
    )
}

/// The identity of each relation named in `$1` (quoted, schema-qualified
/// names), in order; NULL for a name that is nothing.
pub fn identities() -> String {
    format!(
        "SELECT {} FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i) ORDER BY n.i",
        identity_of("pg_catalog.to_regclass(n.name)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(oid: i64, files: &[(i64, i64)]) -> Identity {
        Identity {
            oid,
            files: files.iter().map(|(l, f)| (l.to_string(), *f)).collect(),
            filled: BTreeSet::new(),
        }
    }

    /// `identity` with the leaves `filled` holding rows.
    fn with_rows(identity: Identity, filled: &[i64]) -> Identity {
        Identity {
            filled: filled.iter().map(i64::to_string).collect(),
            ..identity
        }
    }

    #[test]
    fn a_table_is_the_same_while_its_oid_and_relfilenode_are() {
        let saved = identity(10, &[(10, 20)]);
        assert_eq!(identity(10, &[(10, 20)]).change_since(&saved), None);
        assert_eq!(
            identity(10, &[(10, 21)]).change_since(&saved),
            Some(Change::Rewritten)
        );
        assert_eq!(
            identity(11, &[(11, 20)]).change_since(&saved),
            Some(Change::Recreated)
        );
    }

    #[test]
    fn a_partitioned_table_changes_with_a_partition_it_had_or_a_new_one_holding_rows() {
        let saved = with_rows(identity(10, &[(11, 21), (12, 22)]), &[11, 12]);
        // A new empty partition: its rows will be found by their markers.
        let grown = identity(10, &[(11, 21), (12, 22), (13, 23)]);
        assert_eq!(
            with_rows(grown.clone(), &[11, 12]).change_since(&saved),
            None
        );
        // One attached already loaded: its rows may be below the watermark.
        assert_eq!(
            with_rows(grown, &[11, 12, 13]).change_since(&saved),
            Some(Change::Attached)
        );
        for now in [
            identity(10, &[(11, 21), (12, 25)]),
            identity(10, &[(12, 22)]),
            identity(10, &[]),
        ] {
            assert_eq!(now.change_since(&saved), Some(Change::Partition));
        }
    }

    #[test]
    fn a_materialized_view_is_the_same_while_its_oid_is() {
        // Recorded without files: its storage is new after each REFRESH.
        let saved = identity(10, &[]);
        assert_eq!(identity(10, &[]).change_since(&saved), None);
        assert_eq!(
            identity(11, &[]).change_since(&saved),
            Some(Change::Recreated)
        );
        // Saved with its storage by an earlier version: the same view.
        assert_eq!(
            identity(10, &[]).change_since(&identity(10, &[(10, 20)])),
            None
        );
    }

    #[test]
    fn an_identity_reads_as_the_jsonb_the_state_table_keeps() {
        let read: Identity =
            serde_json::from_str(r#"{"oid": 16384, "files": {"16384": 16391}}"#).unwrap();
        assert_eq!(read, identity(16384, &[(16384, 16391)]));
        let read: Identity = serde_json::from_str(
            r#"{"oid": 16384, "files": {"16385": 16391}, "filled": ["16385"]}"#,
        )
        .unwrap();
        assert_eq!(
            read,
            with_rows(identity(16384, &[(16385, 16391)]), &[16385])
        );
    }
}
