//! The literal-free key of a statement, so that clients that inline literals (`pgbench -M
//! simple`, ORMs) hit the inspection cache too — and the test of whether an inspection may be
//! shared under that key: only when none of its facts depends on a literal's value.

use pg_query::protobuf::Token;
use serde_json::Value;

/// `SELECT a FROM t WHERE id = 42 AND s = 'x'` → `SELECT a FROM t WHERE id = \0 AND s = \0`.
/// The placeholder is NUL, which no Query or Parse text can contain, so the key of one text
/// never equals the key of a text whose own characters differ (`a -1 b` vs `a -? b`).
/// `None` when the text does not scan (it will not parse either). Plain texts are keyed by
/// [`super::quick_key`] without the round trip to the C scanner; the key is the same.
pub fn key(text: &str) -> Option<String> {
    super::quick_key::key(text).or_else(|| scanned_key(text))
}

/// [`key`] as PostgreSQL's scanner tokenizes the text.
pub fn scanned_key(text: &str) -> Option<String> {
    let scan = pg_query::scan(text).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut last = 0usize;
    for t in &scan.tokens {
        let literal = matches!(
            Token::try_from(t.token),
            Ok(Token::Sconst
                | Token::Iconst
                | Token::Fconst
                | Token::Bconst
                | Token::Xconst
                | Token::Usconst)
        );
        if literal {
            let (s, e) = (t.start as usize, t.end as usize);
            out.push_str(text.get(last..s)?);
            out.push('\0');
            last = e;
        }
    }
    out.push_str(text.get(last..)?);
    Some(out)
}

/// Statement kinds whose facts never depend on a literal, apart from the cases that
/// [`constant_logic`] finds.
const LITERAL_FREE_KINDS: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
];

/// True when facts may depend on literal values: any statement kind other than plain
/// DML/SELECT (SET values, COPY targets, DO bodies, role names…), any call to set_config, or
/// any predicate whose truth a constant decides (`1 = 1`, `true`, `'a' IS NOT NULL`).
pub fn literal_sensitive(tree: &Value) -> bool {
    match tree {
        Value::Object(m) => {
            for (k, v) in m {
                if k.ends_with("Stmt") && !LITERAL_FREE_KINDS.contains(&k.as_str()) {
                    return true;
                }
                // set_config's name and value, the SQL text query_to_xml() runs: facts.
                if k == "FuncCall" && {
                    let name = super::nodes::name_of(v.get("funcname"));
                    name.ends_with("set_config") || super::walk::runs_sql_text(&name)
                } {
                    return true;
                }
                if constant_logic(k, v) || literal_sensitive(v) {
                    return true;
                }
            }
            false
        }
        Value::Array(a) => a.iter().any(literal_sensitive),
        _ => false,
    }
}

fn is_const(v: &Value) -> bool {
    super::nodes::const_text(v).is_some()
}

/// Does `v` contain a literal anywhere?
fn has_literal(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, c)| k == "AConst" || has_literal(c)),
        Value::Array(a) => a.iter().any(has_literal),
        _ => false,
    }
}

fn names_no_column(v: &Value) -> bool {
    !v.is_null() && !super::predicate::depends_on_row(v, &[])
}

/// A node whose truth value a constant can decide.
fn constant_logic(kind: &str, body: &Value) -> bool {
    match kind {
        "AExpr" => {
            // `1 = 1`, and also `1 IN (1, 2)`, `1 BETWEEN 0 AND 2`: the right side may be a list.
            let l = body.get("lexpr");
            let r = body.get("rexpr");
            let list_has_const = |v: &Value| {
                v.get("node")
                    .and_then(|n| n.get("List"))
                    .and_then(|l| l.get("items"))
                    .and_then(Value::as_array)
                    .is_some_and(|items| items.iter().any(is_const))
            };
            // And `id + 0 = id + 0`: both sides hold literals (the same expression of the
            // row's columns on both sides decides the WHERE; `id + 0 = id + 1` does not).
            (l.is_some_and(is_const) && r.is_some_and(|r| is_const(r) || list_has_const(r)))
                || (l.is_some_and(has_literal) && r.is_some_and(has_literal))
        }
        "BooleanTest" => body.get("arg").is_some_and(is_const),
        "BoolExpr" => body
            .get("args")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(is_const)),
        "NullTest" => body.get("arg").is_some_and(is_const),
        "DeleteStmt" | "UpdateStmt" => body.get("where_clause").is_some_and(is_const),
        // A write condition naming no column: its truth, which literals may decide
        // (`ON 'f'::bool` selects no row, `ON 't'::bool` every row), decides the facts.
        "OnConflictClause" => body.get("where_clause").is_some_and(names_no_column),
        "MergeStmt" => body.get("join_condition").is_some_and(names_no_column),
        "MergeWhenClause" => body.get("condition").is_some_and(names_no_column),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensitive(sql: &str) -> bool {
        let p = pg_query::parse(sql, 0).unwrap();
        literal_sensitive(&serde_json::to_value(&p.protobuf).unwrap())
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 123;").unwrap(),
            "SELECT abalance FROM pgbench_accounts WHERE aid = \0;"
        );
        assert_eq!(
            key("SELECT 'a''b', 1.5, E'x', x'ff'").unwrap(),
            "SELECT \0, \0, \0, \0"
        );
    }

    #[test]
    fn keys_of_different_texts_differ() {
        assert_ne!(key("SELECT a -1 b FROM t"), key("SELECT a -? b FROM t"));
    }

    #[test]
    fn only_literal_free_facts_share_a_key() {
        assert!(!sensitive(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5"
        ));
        assert!(!sensitive("UPDATE t SET a = 1 WHERE id = 5"));
        assert!(sensitive("DELETE FROM t WHERE 1 = 2"));
        assert!(sensitive("DELETE FROM t WHERE id = 1 OR true"));
        assert!(sensitive("DELETE FROM t WHERE false"));
        assert!(sensitive("SET role = 'x'"));
        assert!(sensitive("COPY t TO '/tmp/x'"));
        assert!(sensitive("SELECT set_config('role', 'x', false)"));
        assert!(sensitive(
            "SELECT query_to_xml('SELECT 1', true, false, '')"
        ));
        assert!(sensitive(
            "SELECT * FROM pg_catalog.ts_stat('SELECT v FROM t')"
        ));
        assert!(sensitive("DO $$ BEGIN END $$"));
        assert!(sensitive("DELETE FROM t WHERE 1 IN (1, 2)"));
        assert!(sensitive("DELETE FROM t WHERE 1 BETWEEN 0 AND 2"));
        assert!(sensitive("DELETE FROM t WHERE 't'::bool IS TRUE"));
        assert!(!sensitive("DELETE FROM t WHERE id IN (1, 2)"));
        assert!(sensitive("DELETE FROM t WHERE id + 0 = id + 0"));
        assert!(!sensitive("DELETE FROM t WHERE id = 5 AND v = 'x'"));
    }
}
