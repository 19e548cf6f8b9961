//! The incremental form of a materialized view's query, derived from its
//! parse tree (PostgreSQL's own grammar, through libpg_query): `$changed(...)`
//! placed in every block whose rows map to the key, and the key expressions
//! of each table the query reads (SPEC §2.5, `twin`).
//!
//! A block's rows map to the key when the key's expressions can be written in
//! its own columns: the outer query's through its select list; a subquery or
//! CTE joined to it by equalities on those columns (`USING`, `ON a = b`)
//! through its own select list, which must be its `GROUP BY` (or plain rows);
//! a table through the same equalities. Such a block gets
//! `$changed(its key expressions)` in its `WHERE`, and its tables are the
//! sources, each with its key expressions in its own columns. Anything else
//! is refused with the reason in the view's terms: a top-N (`LIMIT`), a
//! window function, a set operation, a block grouped by less than the key, a
//! table joined by anything else, a volatile or time function in a column.

use std::collections::HashMap;

use pg_query::NodeRef;

use crate::quote::display_ident;
use pg_query::protobuf::{
    self, AExpr, BoolExpr, ColumnRef, FuncCall, Node, ResTarget, SelectStmt, node::Node as N,
};

/// What the twin reads: a table, as written in the query, with the key's
/// expressions in its own columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Schema-qualified when the query qualifies it.
    pub table: String,
    pub key: Vec<String>,
}

/// The derived form: the query with its `$changed`, and its sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub query: String,
    pub sources: Vec<Source>,
}

/// Derives the incremental form of `definition` (a `SELECT`, as
/// `pg_get_viewdef` prints it) whose rows are unique on the columns `key`.
/// The error is why it cannot be, in the query's terms.
pub fn derive(definition: &str, key: &[String]) -> Result<Derived, String> {
    if definition.contains("$changed") {
        return Err("the definition already holds $changed".into());
    }
    let mut parsed = pg_query::parse(definition, 0).map_err(|e| format!("cannot parse: {e}"))?;
    let stmts = &mut parsed.protobuf.stmts;
    let [stmt] = stmts.as_mut_slice() else {
        return Err("the definition is not one statement".into());
    };
    let Some(N::SelectStmt(select)) = stmt.stmt.as_mut().and_then(|s| s.node.as_mut()) else {
        return Err("the definition is not a SELECT".into());
    };
    let mut ctes = Ctes::take(select)?;
    let exprs = key
        .iter()
        .map(|k| output_expr(select, k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sources = Vec::new();
    block(select, &exprs, &mut ctes, &mut sources)?;
    // The twin's key is its primary key: a row whose key holds a NULL has
    // no place in it (and no `$changed` ever matches one).
    for expr in &exprs {
        add_condition(select, not_null(expr));
    }
    ctes.put_back(select);
    let query = pg_query::deparse(
        &parsed.protobuf,
        pg_query::DeparseOptions {
            pretty_print: true,
            ..Default::default()
        },
    )
    .map_err(|e| format!("cannot print the derived query: {e}"))?;
    Ok(Derived {
        query: query.replace("\"$changed\"(", "$changed("),
        sources,
    })
}

/// The CTEs of the outer query, taken out while its blocks are walked: a
/// reference to one is a block of its own.
struct Ctes {
    list: Vec<Node>,
    /// Each CTE's key expressions, once a reference gave them.
    keyed: HashMap<String, Vec<String>>,
}

impl Ctes {
    fn take(select: &mut SelectStmt) -> Result<Self, String> {
        let Some(with) = select.with_clause.as_mut() else {
            return Ok(Self {
                list: Vec::new(),
                keyed: HashMap::new(),
            });
        };
        if with.recursive {
            return Err("WITH RECURSIVE: a recursive query is not decomposed by key".into());
        }
        Ok(Self {
            list: std::mem::take(&mut with.ctes),
            keyed: HashMap::new(),
        })
    }

    fn put_back(self, select: &mut SelectStmt) {
        if let Some(with) = select.with_clause.as_mut() {
            with.ctes = self.list;
        }
    }

    fn find(&mut self, name: &str) -> Option<&mut SelectStmt> {
        self.list.iter_mut().find_map(|n| match n.node.as_mut() {
            Some(N::CommonTableExpr(c)) if c.ctename == name => {
                match c.ctequery.as_mut()?.node.as_mut() {
                    Some(N::SelectStmt(s)) => Some(s.as_mut()),
                    _ => None,
                }
            }
            _ => None,
        })
    }
}

/// The expression of output column `name` of `select`.
fn output_expr(select: &SelectStmt, name: &str) -> Result<Node, String> {
    for target in &select.target_list {
        let Some(N::ResTarget(t)) = &target.node else {
            continue;
        };
        let Some(val) = t.val.as_deref() else {
            continue;
        };
        let named = match t.name.as_str() {
            "" => column_name(val),
            given => Some(given.to_owned()),
        };
        if named.as_deref() == Some(name) {
            return Ok(val.clone());
        }
    }
    Err(format!("no column {name} in the select list"))
}

/// The name a select-list expression gets without `AS`: its column's.
fn column_name(node: &Node) -> Option<String> {
    match node.node.as_ref()? {
        N::ColumnRef(c) => c.fields.last().and_then(string),
        N::TypeCast(c) => column_name(c.arg.as_deref()?),
        _ => None,
    }
}

fn string(node: &Node) -> Option<String> {
    match node.node.as_ref()? {
        N::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

/// A column reference, as `(qualifier, column)`.
type Col = (Option<String>, String);

fn col(c: &ColumnRef) -> Option<Col> {
    let names: Vec<String> = c.fields.iter().map(string).collect::<Option<_>>()?;
    match names.as_slice() {
        [column] => Some((None, column.clone())),
        [.., qualifier, column] => Some((Some(qualifier.clone()), column.clone())),
        [] => None,
    }
}

/// One block: refuses what cannot be decomposed, adds `$changed(exprs)` to
/// its `WHERE`, and walks its `FROM` items with the key in their terms.
fn block(
    select: &mut SelectStmt,
    exprs: &[Node],
    ctes: &mut Ctes,
    sources: &mut Vec<Source>,
) -> Result<(), String> {
    refuse_shapes(select)?;
    let items = from_items(select)?;
    let classes = equalities(select);
    if select.group_clause.is_empty() && has_aggregate(select) {
        return Err(
            "an aggregate over the whole query (no GROUP BY): every row feeds the one result"
                .into(),
        );
    }
    // DISTINCT ON keeps one row of each set of rows alike in its
    // expressions: that set must not span keys.
    let distinct_on: Vec<&Node> = select
        .distinct_clause
        .iter()
        .filter(|d| d.node.is_some())
        .collect();
    for expr in exprs {
        if !select.group_clause.is_empty() && !in_group_by(select, expr) {
            return Err(format!("the key's {} is not in its GROUP BY", text(expr)));
        }
        let bare = bare_col(expr);
        if !distinct_on.is_empty()
            && !distinct_on
                .iter()
                .any(|d| text(d) == text(expr) || (bare.is_some() && bare_col(d) == bare))
        {
            return Err(format!(
                "DISTINCT ON keeps one row of rows that span keys: the key's {} is not among its \
                 expressions",
                text(expr)
            ));
        }
    }
    for item in &items {
        let in_item = exprs
            .iter()
            .map(|e| rewrite_in(e, &item.alias, &classes, items.len() == 1))
            .collect::<Option<Vec<Node>>>();
        let Some(in_item) = in_item else {
            return Err(format!(
                "{} is joined by something other than the key ({}): a change to one of its \
                 rows can change the rows of many keys",
                item.alias,
                exprs.iter().map(text).collect::<Vec<_>>().join(", ")
            ));
        };
        match &item.kind {
            ItemKind::Table {
                cte: Some(name), ..
            } if ctes.find(name).is_some() => {
                cte(name, &in_item, ctes, sources)?;
            }
            ItemKind::Table { name, .. } => add_source(sources, name, &in_item)?,
            ItemKind::Subquery(index) => {
                let sub = subquery_mut(select, *index).expect("found before");
                let inner = in_item
                    .iter()
                    .map(|e| output_of(sub, e))
                    .collect::<Result<Vec<_>, _>>()?;
                block(sub, &inner, ctes, sources)?;
            }
        }
    }
    add_changed(select, exprs);
    Ok(())
}

/// Walks CTE `name` with the key expressions `exprs` (in its output terms).
fn cte(
    name: &str,
    exprs: &[Node],
    ctes: &mut Ctes,
    sources: &mut Vec<Source>,
) -> Result<(), String> {
    let texts: Vec<String> = exprs.iter().map(text).collect();
    if let Some(known) = ctes.keyed.get(name) {
        if *known != texts {
            return Err(format!("{name} is joined by two different keys"));
        }
        return Ok(());
    }
    ctes.keyed.insert(name.to_owned(), texts);
    let mut query = {
        let found = ctes.find(name).expect("a CTE");
        std::mem::take(found)
    };
    let result = exprs
        .iter()
        .map(|e| output_of(&query, e))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|inner| block(&mut query, &inner, ctes, sources));
    *ctes.find(name).expect("a CTE") = query;
    result
}

/// The expression `e` (a reference to an output column of `sub`, maybe
/// cast) in `sub`'s own terms.
fn output_of(sub: &SelectStmt, e: &Node) -> Result<Node, String> {
    match e.node.as_ref() {
        Some(N::ColumnRef(c)) => {
            let (_, name) = col(c).ok_or("a column reference")?;
            output_expr(sub, &name)
        }
        Some(N::TypeCast(c)) => {
            let mut cast = c.clone();
            let arg = output_of(sub, c.arg.as_deref().ok_or("a cast")?)?;
            cast.arg = Some(Box::new(arg));
            Ok(Node {
                node: Some(N::TypeCast(cast)),
            })
        }
        _ => Err(format!("the key's {} is not a column", text(e))),
    }
}

fn add_source(sources: &mut Vec<Source>, table: &str, exprs: &[Node]) -> Result<(), String> {
    let key: Vec<String> = exprs.iter().map(|e| text(&unqualified(e))).collect();
    match sources.iter().find(|s| s.table == table) {
        Some(known) if known.key != key => Err(format!(
            "{table} is read twice, keyed by ({}) and by ({})",
            known.key.join(", "),
            key.join(", ")
        )),
        Some(_) => Ok(()),
        None => {
            sources.push(Source {
                table: table.to_owned(),
                key,
            });
            Ok(())
        }
    }
}

/// What a block's `FROM` holds, each item by the name its columns are
/// qualified with.
struct Item {
    alias: String,
    kind: ItemKind,
}

enum ItemKind {
    /// A table or view, by its name as SQL (quoted where needed), or a CTE:
    /// `cte` is the name a CTE of the query would have, when unqualified.
    Table { cte: Option<String>, name: String },
    /// A subquery: its index among the block's subqueries, in order.
    Subquery(usize),
}

fn from_items(select: &SelectStmt) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut subqueries = 0;
    for node in &select.from_clause {
        collect_items(node, &mut items, &mut subqueries)?;
    }
    if items.is_empty() {
        return Err("a block without FROM".into());
    }
    Ok(items)
}

fn collect_items(node: &Node, items: &mut Vec<Item>, subqueries: &mut usize) -> Result<(), String> {
    match node.node.as_ref() {
        Some(N::RangeVar(r)) => {
            let alias = r
                .alias
                .as_ref()
                .map_or(r.relname.clone(), |a| a.aliasname.clone());
            let kind = match r.schemaname.as_str() {
                "" => ItemKind::Table {
                    cte: Some(r.relname.clone()),
                    name: display_ident(&r.relname),
                },
                schema => ItemKind::Table {
                    cte: None,
                    name: format!("{}.{}", display_ident(schema), display_ident(&r.relname)),
                },
            };
            items.push(Item { alias, kind });
        }
        Some(N::RangeSubselect(s)) => {
            if s.lateral {
                return Err("a LATERAL subquery: its rows depend on another item's".into());
            }
            let alias = s
                .alias
                .as_ref()
                .map(|a| a.aliasname.clone())
                .unwrap_or_default();
            items.push(Item {
                alias,
                kind: ItemKind::Subquery(*subqueries),
            });
            *subqueries += 1;
        }
        Some(N::JoinExpr(j)) => {
            if j.jointype != protobuf::JoinType::JoinInner as i32
                && j.jointype != protobuf::JoinType::JoinLeft as i32
            {
                return Err("a RIGHT or FULL JOIN: rows of its right side may have no key".into());
            }
            if let Some(l) = j.larg.as_deref() {
                collect_items(l, items, subqueries)?;
            }
            if let Some(r) = j.rarg.as_deref() {
                collect_items(r, items, subqueries)?;
            }
        }
        Some(N::RangeFunction(_)) => return Err("a function in FROM".into()),
        _ => return Err("a FROM item that is not a table, a subquery or a join".into()),
    }
    Ok(())
}

/// The `index`-th subquery of the block's `FROM`, in the order
/// [`from_items`] numbers them.
fn subquery_mut(select: &mut SelectStmt, index: usize) -> Option<&mut SelectStmt> {
    fn walk<'a>(node: &'a mut Node, index: usize, seen: &mut usize) -> Option<&'a mut SelectStmt> {
        match node.node.as_mut()? {
            N::RangeSubselect(s) => {
                *seen += 1;
                if *seen - 1 != index {
                    return None;
                }
                match s.subquery.as_mut()?.node.as_mut()? {
                    N::SelectStmt(q) => Some(q.as_mut()),
                    _ => None,
                }
            }
            N::JoinExpr(j) => {
                if let Some(found) = j.larg.as_deref_mut().and_then(|l| walk(l, index, seen)) {
                    return Some(found);
                }
                j.rarg.as_deref_mut().and_then(|r| walk(r, index, seen))
            }
            _ => None,
        }
    }
    let mut seen = 0;
    select
        .from_clause
        .iter_mut()
        .find_map(|n| walk(n, index, &mut seen))
}

/// Column references known equal: a join's `USING` columns and its `ON`
/// equalities of two columns (casts looked through), each a class.
fn equalities(select: &SelectStmt) -> Vec<Vec<Col>> {
    let mut pairs: Vec<(Col, Col)> = Vec::new();
    for node in &select.from_clause {
        join_pairs(node, &mut pairs);
    }
    let mut classes: Vec<Vec<Col>> = Vec::new();
    for (a, b) in pairs {
        let ia = classes.iter().position(|c| c.contains(&a));
        let ib = classes.iter().position(|c| c.contains(&b));
        match (ia, ib) {
            (Some(i), Some(j)) if i != j => {
                let merged = classes.remove(i.max(j));
                classes[i.min(j)].extend(merged);
            }
            (Some(_), Some(_)) => {}
            (Some(i), None) => classes[i].push(b),
            (None, Some(j)) => classes[j].push(a),
            (None, None) => classes.push(vec![a, b]),
        }
    }
    classes
}

fn join_pairs(node: &Node, pairs: &mut Vec<(Col, Col)>) {
    let Some(N::JoinExpr(j)) = node.node.as_ref() else {
        return;
    };
    for side in [j.larg.as_deref(), j.rarg.as_deref()].into_iter().flatten() {
        join_pairs(side, pairs);
    }
    let (left, right) = (aliases(j.larg.as_deref()), aliases(j.rarg.as_deref()));
    for name in j.using_clause.iter().filter_map(string) {
        // USING joins every item of each side that may hold the column;
        // the unqualified name is the merged column.
        for l in &left {
            for r in &right {
                pairs.push((
                    (Some(l.clone()), name.clone()),
                    (Some(r.clone()), name.clone()),
                ));
            }
            pairs.push(((Some(l.clone()), name.clone()), (None, name.clone())));
        }
    }
    if let Some(quals) = j.quals.as_deref() {
        on_pairs(quals, pairs);
    }
}

fn aliases(node: Option<&Node>) -> Vec<String> {
    let mut items = Vec::new();
    let mut n = 0;
    if let Some(node) = node {
        let _ = collect_items(node, &mut items, &mut n);
    }
    items.into_iter().map(|i| i.alias).collect()
}

fn on_pairs(node: &Node, pairs: &mut Vec<(Col, Col)>) {
    match node.node.as_ref() {
        Some(N::BoolExpr(b)) if b.boolop == protobuf::BoolExprType::AndExpr as i32 => {
            for arg in &b.args {
                on_pairs(arg, pairs);
            }
        }
        Some(N::AExpr(e)) if is_equality(e) => {
            if let (Some(a), Some(b)) = (
                e.lexpr.as_deref().and_then(bare_col),
                e.rexpr.as_deref().and_then(bare_col),
            ) {
                pairs.push((a, b));
            }
        }
        _ => {}
    }
}

fn is_equality(e: &AExpr) -> bool {
    e.kind == protobuf::AExprKind::AexprOp as i32
        && e.name.iter().filter_map(string).collect::<Vec<_>>() == ["="]
}

/// The column under any casts of `node`.
fn bare_col(node: &Node) -> Option<Col> {
    match node.node.as_ref()? {
        N::ColumnRef(c) => col(c),
        N::TypeCast(c) => bare_col(c.arg.as_deref()?),
        _ => None,
    }
}

/// `e` with each column reference replaced by one of `alias`'s known equal
/// to it; `None` when a reference has none. An unqualified reference is the
/// only item's, when there is one item.
fn rewrite_in(e: &Node, alias: &str, classes: &[Vec<Col>], only: bool) -> Option<Node> {
    let mut out = e.clone();
    let mut ok = true;
    replace_cols(&mut out, &mut |c: &Col| {
        if c.0.as_deref() == Some(alias) || (c.0.is_none() && only) {
            return Some((Some(alias.to_owned()), c.1.clone()));
        }
        let class = classes.iter().find(|class| class.contains(c));
        let found = class.and_then(|class| class.iter().find(|m| m.0.as_deref() == Some(alias)));
        if found.is_none() {
            ok = false;
        }
        found.cloned()
    });
    ok.then_some(out)
}

fn replace_cols(node: &mut Node, with: &mut impl FnMut(&Col) -> Option<Col>) {
    match node.node.as_mut() {
        Some(N::ColumnRef(c)) => {
            if let Some(found) = col(c).and_then(|old| with(&old)) {
                *c = *column_ref(&found);
            }
        }
        Some(N::TypeCast(c)) => {
            if let Some(arg) = c.arg.as_deref_mut() {
                replace_cols(arg, with);
            }
        }
        Some(N::FuncCall(f)) => f.args.iter_mut().for_each(|a| replace_cols(a, with)),
        Some(N::AExpr(e)) => {
            for side in [e.lexpr.as_deref_mut(), e.rexpr.as_deref_mut()]
                .into_iter()
                .flatten()
            {
                replace_cols(side, with);
            }
        }
        Some(N::CoalesceExpr(c)) => c.args.iter_mut().for_each(|a| replace_cols(a, with)),
        _ => {}
    }
}

fn column_ref((qualifier, name): &Col) -> Box<ColumnRef> {
    let mut fields = Vec::new();
    if let Some(q) = qualifier {
        fields.push(string_node(q));
    }
    fields.push(string_node(name));
    Box::new(ColumnRef {
        fields,
        location: -1,
    })
}

fn string_node(s: &str) -> Node {
    Node {
        node: Some(N::String(protobuf::String { sval: s.to_owned() })),
    }
}

/// `e` without the qualifiers of its columns: a source's key in its own
/// columns.
fn unqualified(e: &Node) -> Node {
    let mut out = e.clone();
    replace_cols(&mut out, &mut |c: &Col| Some((None, c.1.clone())));
    out
}

fn in_group_by(select: &SelectStmt, e: &Node) -> bool {
    let wanted = text(e);
    let bare = bare_col(e);
    select.group_clause.iter().any(|g| {
        text(g) == wanted || (bare.is_some() && bare_col(g) == bare) || group_position(select, g, e)
    })
}

/// `GROUP BY 1, 2`: the position names a select-list entry.
fn group_position(select: &SelectStmt, g: &Node, e: &Node) -> bool {
    let Some(N::AConst(c)) = g.node.as_ref() else {
        return false;
    };
    let Some(protobuf::a_const::Val::Ival(i)) = &c.val else {
        return false;
    };
    let Some(Some(N::ResTarget(t))) = select
        .target_list
        .get((i.ival as usize).wrapping_sub(1))
        .map(|n| n.node.as_ref())
    else {
        return false;
    };
    t.val
        .as_deref()
        .is_some_and(|v| text(v) == text(e) || bare_col(v) == bare_col(e))
}

/// Refuses what no key decomposes, naming it.
fn refuse_shapes(select: &SelectStmt) -> Result<(), String> {
    if select.op != protobuf::SetOperation::SetopNone as i32 {
        return Err("a set operation (UNION, INTERSECT, EXCEPT) is not decomposed by key".into());
    }
    if select.limit_count.is_some() || select.limit_offset.is_some() {
        let order = match select.sort_clause.is_empty() {
            true => String::new(),
            false => "ORDER BY ... ".into(),
        };
        let limit = select
            .limit_count
            .as_deref()
            .map_or("".into(), |l| format!(" {}", text(l)));
        return Err(format!(
            "{order}LIMIT{limit} keeps the top rows of the whole table; any row can enter or \
             leave it"
        ));
    }
    for target in &select.target_list {
        let Some(N::ResTarget(t)) = &target.node else {
            continue;
        };
        refuse_volatile(t)?;
    }
    for (node, _, _, _) in select_nodes(select) {
        if let NodeRef::FuncCall(f) = node
            && f.over.is_some()
        {
            return Err(format!(
                "the window function {}: it computes across rows of many keys",
                func_name(f)
            ));
        }
        if let NodeRef::SubLink(_) = node {
            return Err("a subquery in an expression (EXISTS, IN, a scalar subquery)".into());
        }
    }
    Ok(())
}

/// The nodes of `select` itself, not of the subqueries in its `FROM`.
fn select_nodes(select: &SelectStmt) -> Vec<(NodeRef<'_>, i32, pg_query::Context, bool)> {
    let mut nodes = Vec::new();
    for node in select
        .target_list
        .iter()
        .chain(select.where_clause.as_deref())
        .chain(select.having_clause.as_deref())
    {
        if let Some(n) = node.node.as_ref() {
            nodes.extend(n.nodes());
        }
    }
    nodes
}

const VOLATILE: [&str; 10] = [
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "gen_random_uuid",
    "nextval",
    "txid_current",
    "pg_current_xact_id",
];

fn refuse_volatile(t: &ResTarget) -> Result<(), String> {
    let Some(val) = t.val.as_deref() else {
        return Ok(());
    };
    let Some(top) = val.node.as_ref() else {
        return Ok(());
    };
    let named = match t.name.as_str() {
        "" => text(val),
        name => format!("{} AS {name}", text(val)),
    };
    for (node, _, _, _) in top.nodes() {
        let time = match node {
            NodeRef::FuncCall(f) => {
                let name = func_name(f);
                VOLATILE.contains(&name.as_str()).then_some(name)
            }
            NodeRef::SqlvalueFunction(_) => Some("CURRENT_TIMESTAMP".into()),
            _ => None,
        };
        if let Some(name) = time {
            let what = match name.as_str() {
                "random" | "gen_random_uuid" | "nextval" => {
                    "a new value each time its key is recomputed, and only then"
                }
                _ => {
                    "the time its key was last recomputed, not the time of the last refresh: \
                     rows whose inputs did not change keep an old one"
                }
            };
            return Err(format!(
                "{named}: {name}() in a column; in the twin each row would hold {what} \
                 (drop the column, or compute it when reading; an entry written by hand may keep \
                 it, declared volatile = [\"{}\"], and verify leaves it out)",
                match t.name.as_str() {
                    "" => "column".to_owned(),
                    name => name.to_owned(),
                }
            ));
        }
    }
    Ok(())
}

fn func_name(f: &FuncCall) -> String {
    f.funcname
        .iter()
        .filter_map(string)
        .next_back()
        .unwrap_or_default()
}

fn has_aggregate(select: &SelectStmt) -> bool {
    const AGGREGATES: [&str; 12] = [
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "bool_and",
        "bool_or",
        "array_agg",
        "string_agg",
        "jsonb_agg",
        "json_agg",
        "every",
    ];
    select_nodes(select)
        .iter()
        .any(|(node, _, _, _)| match node {
            NodeRef::FuncCall(f) => f.agg_star || AGGREGATES.contains(&func_name(f).as_str()),
            _ => false,
        })
}

/// Appends `$changed(exprs)` to the block's `WHERE`.
fn add_changed(select: &mut SelectStmt, exprs: &[Node]) {
    let call = Node {
        node: Some(N::FuncCall(Box::new(FuncCall {
            funcname: vec![string_node("$changed")],
            args: exprs.to_vec(),
            funcformat: protobuf::CoercionForm::CoerceExplicitCall as i32,
            location: -1,
            ..Default::default()
        }))),
    };
    add_condition(select, call);
}

/// `expr IS NOT NULL`.
fn not_null(expr: &Node) -> Node {
    Node {
        node: Some(N::NullTest(Box::new(protobuf::NullTest {
            arg: Some(Box::new(expr.clone())),
            nulltesttype: protobuf::NullTestType::IsNotNull as i32,
            location: -1,
            ..Default::default()
        }))),
    }
}

/// Appends `condition` to the block's `WHERE` with `AND`.
fn add_condition(select: &mut SelectStmt, call: Node) {
    select.where_clause = Some(Box::new(match select.where_clause.take() {
        None => call,
        Some(old) => Node {
            node: Some(N::BoolExpr(Box::new(BoolExpr {
                boolop: protobuf::BoolExprType::AndExpr as i32,
                args: vec![*old, call],
                location: -1,
                ..Default::default()
            }))),
        },
    }));
}

/// `sql` (a query) with every reference to the table `schema.name` read
/// through `(SELECT * FROM schema.name WHERE condition)`, under the alias
/// it had (or its name): the query as it would be without the rows that
/// `condition` leaves out. Found in the parse tree, spliced into the text at
/// the reference's tokens (the scanner's), so nothing else of the query
/// changes. An unqualified reference is taken for the table when its name
/// is the table's.
pub fn without_rows(
    sql: &str,
    schema: &str,
    name: &str,
    condition: &str,
) -> Result<String, String> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| format!("cannot parse: {e}"))?;
    let tokens = pg_query::scan(sql)
        .map_err(|e| format!("cannot scan: {e}"))?
        .tokens;
    let mut splices: Vec<(usize, usize, String)> = Vec::new();
    for (node, _, _, _) in parsed.protobuf.nodes() {
        let NodeRef::RangeVar(r) = node else {
            continue;
        };
        if r.relname != name || !(r.schemaname.is_empty() || r.schemaname == schema) {
            continue;
        }
        if !r.inh {
            return Err(format!("ONLY {name}: not rewritten"));
        }
        let start = r.location as usize;
        let mut i = tokens
            .iter()
            .position(|t| t.start as usize == start)
            .ok_or("a table reference the scanner does not show")?;
        // The name's tokens: `name`, `schema.name`, `catalog.schema.name`.
        while tokens
            .get(i + 1)
            .is_some_and(|t| &sql[t.start as usize..t.end as usize] == ".")
        {
            i += 2;
        }
        let end = tokens.get(i).ok_or("a table reference cut short")?.end as usize;
        let written = &sql[start..end];
        let alias = match &r.alias {
            Some(_) => String::new(),
            None => format!(" AS {}", display_ident(&r.relname)),
        };
        splices.push((
            start,
            end,
            format!("(SELECT * FROM {written} WHERE {condition}){alias}"),
        ));
    }
    splices.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out = sql.to_owned();
    for (start, end, with) in splices {
        out.replace_range(start..end, &with);
    }
    Ok(out)
}

/// An expression as SQL.
pub fn text(node: &Node) -> String {
    let select = SelectStmt {
        target_list: vec![Node {
            node: Some(N::ResTarget(Box::new(ResTarget {
                val: Some(Box::new(node.clone())),
                location: -1,
                ..Default::default()
            }))),
        }],
        limit_option: protobuf::LimitOption::Default as i32,
        op: protobuf::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    N::SelectStmt(Box::new(select))
        .deparse(Default::default())
        .map(|t| t.trim_start_matches("SELECT ").to_owned())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(columns: &[&str]) -> Vec<String> {
        columns.iter().map(|c| c.to_string()).collect()
    }

    const USER_ACTIVITY: &str = "
        WITH bets AS (
            SELECT tenant_id, user_id, count(*) AS total_bets, sum(stake) AS total_wagered
            FROM bets_view GROUP BY tenant_id, user_id
        ), payments AS (
            SELECT tenant_id, user_id, sum(amount) AS total_deposited
            FROM payments_view GROUP BY tenant_id, user_id
        )
        SELECT ub.tenant_id, ub.user_id::varchar AS user_id, ub.balance AS current_balance,
               coalesce(b.total_bets, 0)::integer AS total_bets, p.total_deposited
        FROM user_balances_view ub
        LEFT JOIN bets b ON b.tenant_id = ub.tenant_id AND b.user_id = ub.user_id
        LEFT JOIN payments p ON p.tenant_id = ub.tenant_id AND p.user_id = ub.user_id";

    #[test]
    fn each_block_keyed_like_the_view_gets_its_changed_and_each_table_its_key() {
        let derived = derive(USER_ACTIVITY, &key(&["tenant_id", "user_id"])).unwrap();
        let changed: Vec<&str> = derived
            .query
            .match_indices("$changed(")
            .map(|(at, _)| &derived.query[at..at + derived.query[at..].find(')').unwrap() + 1])
            .collect();
        assert_eq!(changed.len(), 3, "{}", derived.query);
        assert!(
            derived
                .query
                .contains("$changed(ub.tenant_id, ub.user_id::varchar)"),
            "{}",
            derived.query
        );
        assert_eq!(
            derived.sources,
            [
                Source {
                    table: "user_balances_view".into(),
                    key: key(&["tenant_id", "user_id::varchar"]),
                },
                Source {
                    table: "bets_view".into(),
                    key: key(&["tenant_id", "user_id::varchar"]),
                },
                Source {
                    table: "payments_view".into(),
                    key: key(&["tenant_id", "user_id::varchar"]),
                },
            ]
        );
    }

    #[test]
    fn shapes_no_key_decomposes_are_refused_with_the_reason() {
        let top = "SELECT b.tenant_id, b.bet_id FROM bets_view b ORDER BY b.stake DESC LIMIT 1000";
        assert_eq!(
            derive(top, &key(&["tenant_id", "bet_id"])).unwrap_err(),
            "ORDER BY ... LIMIT 1000 keeps the top rows of the whole table; any row can enter or leave it"
        );
        let stamped =
            "SELECT t.id AS tenant_id, now()::timestamp AS last_refreshed_at FROM tenants t";
        let err = derive(stamped, &key(&["tenant_id"])).unwrap_err();
        assert!(
            err.starts_with("now()::timestamp AS last_refreshed_at: now() in a column"),
            "{err}"
        );
        let coarse = "SELECT u.tenant_id, u.user_id, t.total FROM users u \
                      JOIN (SELECT tenant_id, sum(amount) AS total FROM bets GROUP BY tenant_id) t \
                      ON t.tenant_id = u.tenant_id";
        let err = derive(coarse, &key(&["tenant_id", "user_id"])).unwrap_err();
        assert!(
            err.starts_with("t is joined by something other than the key"),
            "{err}"
        );
        let latest = "SELECT DISTINCT ON (b.user_id) b.user_id, b.bet_id FROM bets b \
                      ORDER BY b.user_id, b.placed_at DESC";
        let derived = derive(latest, &key(&["user_id"])).unwrap();
        assert!(
            derived.query.contains("$changed(b.user_id)"),
            "{}",
            derived.query
        );
        let err = derive(latest, &key(&["bet_id"])).unwrap_err();
        assert!(
            err.starts_with("DISTINCT ON keeps one row of rows that span keys"),
            "{err}"
        );
        let ranked = "SELECT user_id, rank() OVER (ORDER BY total) AS r FROM totals";
        let err = derive(ranked, &key(&["user_id"])).unwrap_err();
        assert!(err.starts_with("the window function rank"), "{err}");
    }
}
