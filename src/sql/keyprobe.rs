//! Writes that name their rows by key: an UPDATE or DELETE of one table whose WHERE is a
//! conjunction of `column = constant` (or `= $n`) terms. If some unique index of the table
//! covers those columns, the write touches at most one row — a fact the catalog's cached
//! index list proves without asking the planner (`EXPLAIN` per statement is what made the
//! large-write rule expensive for OLTP traffic). Pure: text → probes; the catalog decides.

use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{AExprKind, BoolExprType, Node, RangeVar};

use super::ReadAs;

/// What a key-addressed write names: its table (as written) and the columns it fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProbe {
    /// `schema.table` when qualified, else the bare name.
    pub table: String,
    /// Whether the write reaches inheritance children too (no `ONLY`).
    pub inherited: bool,
    /// Columns compared for equality with a constant or parameter, sorted, deduplicated.
    pub columns: Vec<String>,
}

/// One entry per statement of `text`: the probe of a key-addressed write, else `None`.
/// Empty when the text does not parse.
pub fn probes(text: &str, read_as: ReadAs) -> Vec<Option<KeyProbe>> {
    let mut opts = pg_query::ParserOptions::DEFAULT;
    if !read_as.standard_conforming_strings {
        opts |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let Ok(parsed) = pg_query::parse(text, opts) else {
        return Vec::new();
    };
    parsed
        .protobuf
        .stmts
        .iter()
        .map(
            |raw| match raw.stmt.as_deref().and_then(|n| n.node.as_ref()) {
                Some(N::UpdateStmt(u)) if u.from_clause.is_empty() && u.with_clause.is_none() => {
                    probe(u.relation.as_ref()?, u.where_clause.as_deref()?)
                }
                Some(N::DeleteStmt(d)) if d.using_clause.is_empty() && d.with_clause.is_none() => {
                    probe(d.relation.as_ref()?, d.where_clause.as_deref()?)
                }
                _ => None,
            },
        )
        .collect()
}

fn probe(rel: &RangeVar, filter: &Node) -> Option<KeyProbe> {
    if !rel.catalogname.is_empty() || rel.relname.is_empty() {
        return None;
    }
    let alias = rel.alias.as_ref().map(|a| a.aliasname.as_str());
    let mut columns = Vec::new();
    // Other terms only narrow the rows further.
    conjuncts(filter, &mut |term| {
        columns.extend(equality_column(term, rel, alias));
        Some(())
    })?;
    if columns.is_empty() {
        return None;
    }
    columns.sort();
    columns.dedup();
    let table = if rel.schemaname.is_empty() {
        rel.relname.clone()
    } else {
        format!("{}.{}", rel.schemaname, rel.relname)
    };
    Some(KeyProbe {
        table,
        inherited: rel.inh,
        columns,
    })
}

/// Calls `f` on each term of an AND-conjunction; `None` if any term fails.
fn conjuncts(n: &Node, f: &mut dyn FnMut(&Node) -> Option<()>) -> Option<()> {
    match n.node.as_ref()? {
        N::BoolExpr(b) if b.boolop == BoolExprType::AndExpr as i32 => {
            for a in &b.args {
                conjuncts(a, f)?;
            }
            Some(())
        }
        _ => f(n),
    }
}

/// `col = const`, `const = col`, `col = $n`: the column's name. The operator must be the
/// bare `=` (the catalog side checks that it resolves to pg_catalog's).
fn equality_column(n: &Node, rel: &RangeVar, alias: Option<&str>) -> Option<String> {
    let N::AExpr(e) = n.node.as_ref()? else {
        return None;
    };
    if e.kind != AExprKind::AexprOp as i32 || e.name.len() != 1 || string(&e.name[0])? != "=" {
        return None;
    }
    let (l, r) = (e.lexpr.as_deref()?, e.rexpr.as_deref()?);
    let (col, value) = match (column(l, rel, alias), column(r, rel, alias)) {
        (Some(c), None) => (c, r),
        (None, Some(c)) => (c, l),
        _ => return None,
    };
    matches!(value.node.as_ref()?, N::AConst(_) | N::ParamRef(_)).then_some(col)
}

/// A reference to a column of the target (`c`, `t.c`, `alias.c`, `s.t.c`).
fn column(n: &Node, rel: &RangeVar, alias: Option<&str>) -> Option<String> {
    let N::ColumnRef(c) = n.node.as_ref()? else {
        return None;
    };
    let parts: Vec<&str> = c.fields.iter().map(string).collect::<Option<_>>()?;
    let names_target = |t: &str| match alias {
        Some(a) => t == a,
        None => t == rel.relname,
    };
    match parts.as_slice() {
        [col] => Some(col.to_string()),
        [t, col] if names_target(t) => Some(col.to_string()),
        [s, t, col] if alias.is_none() && *s == rel.schemaname && *t == rel.relname => {
            Some(col.to_string())
        }
        _ => None,
    }
}

fn string(n: &Node) -> Option<&str> {
    match n.node.as_ref()? {
        N::String(s) => Some(s.sval.as_str()),
        _ => None,
    }
}

/// Whether `=` in a session with this search_path means pg_catalog's operators: only when
/// pg_catalog is searched first (left out of the path, it is implicitly first).
pub fn builtin_equality(search_path: &str) -> bool {
    let items: Vec<String> = search_path
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    match items.iter().position(|s| s == "pg_catalog") {
        None => true,
        Some(i) => i == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Option<KeyProbe> {
        let mut p = probes(sql, ReadAs::default());
        assert_eq!(p.len(), 1, "{sql}");
        p.remove(0)
    }

    #[test]
    fn key_addressed_writes_are_probed() {
        let p = one("UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 42").unwrap();
        assert_eq!(p.table, "pgbench_accounts");
        assert_eq!(p.columns, vec!["aid"]);
        assert!(p.inherited);
        let p = one("DELETE FROM ONLY s.t AS x WHERE x.b = $1 AND 'k' = a AND x.a = 2").unwrap();
        assert_eq!(p.table, "s.t");
        assert_eq!(p.columns, vec!["a", "b"]);
        assert!(!p.inherited);
        let p = one("UPDATE t SET v = 1 WHERE id = 1 AND v > 2 AND (SELECT true)").unwrap();
        assert_eq!(p.columns, vec!["id"]);
        let p = one("UPDATE s.t SET v = 1 WHERE s.t.id = 7").unwrap();
        assert_eq!(p.columns, vec!["id"]);
    }

    #[test]
    fn anything_else_is_not() {
        for sql in [
            "UPDATE t SET v = 1",
            "UPDATE t SET v = 1 WHERE id = 1 OR id = 2",
            "UPDATE t SET v = 1 WHERE id > 1",
            "UPDATE t SET v = 1 WHERE id = other",
            "UPDATE t SET v = 1 WHERE id::text = '1'",
            "UPDATE t SET v = 1 WHERE id = 1 + 1",
            "UPDATE t SET v = 1 WHERE id OPERATOR(public.=) 1",
            "UPDATE t SET v = 1 FROM u WHERE t.id = 1",
            "WITH x AS (SELECT 1) UPDATE t SET v = 1 WHERE id = 1",
            "DELETE FROM t USING u WHERE id = 1",
            "DELETE FROM t AS x WHERE t.id = 1",
            "DELETE FROM t WHERE other.id = 1",
            "DELETE FROM t WHERE CURRENT OF c",
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t WHERE id = 1",
        ] {
            assert_eq!(one(sql), None, "{sql}");
        }
    }

    #[test]
    fn equality_is_builtin_only_with_pg_catalog_first() {
        assert!(builtin_equality("\"$user\", public"));
        assert!(builtin_equality("pg_catalog, public"));
        assert!(!builtin_equality("public, pg_catalog"));
        assert!(!builtin_equality("public, \"PG_CATALOG\""));
    }
}
