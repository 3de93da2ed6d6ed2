//! PL/pgSQL bodies (DO blocks, function bodies) parsed with PostgreSQL's own PL/pgSQL
//! grammar: which SQL statements they run, which functions they call, and whether they build
//! SQL at run time (EXECUTE, format(), quote_ident()) — which no inspection can see through.

use serde_json::Value;

/// What a PL/pgSQL body does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BodyFacts {
    /// SQL statements the body runs as written (each to be inspected in turn).
    pub statements: Vec<String>,
    /// Expressions (parse mode, text) the body evaluates.
    pub expressions: Vec<(i32, String)>,
    pub dynamic_sql: bool,
    /// False when the body did not parse; it is then treated as dynamic (fail closed).
    pub parsed: bool,
}

/// Functions whose use in a body means SQL is being assembled from strings.
pub const DYNAMIC_SQL_FUNCTIONS: &[&str] =
    &["format", "quote_ident", "quote_literal", "quote_nullable"];

pub fn inspect_body(body: &str) -> BodyFacts {
    // Wrap the body in a function definition with a dollar tag that it does not contain.
    let mut n = 0;
    let tag = loop {
        let t = format!("$pgw{n}$");
        if !body.contains(&t) {
            break t;
        }
        n += 1;
    };
    let src = format!(
        "CREATE FUNCTION pgwarden_body() RETURNS void AS {tag}{body}{tag} LANGUAGE plpgsql"
    );
    let Ok(tree) = pg_query::parse_plpgsql(&src) else {
        return BodyFacts {
            dynamic_sql: true,
            ..BodyFacts::default()
        };
    };
    let mut facts = BodyFacts {
        parsed: true,
        ..BodyFacts::default()
    };
    walk(&tree, &mut facts);
    facts
}

/// What a routine's PL/pgSQL body does, from its whole `CREATE FUNCTION` text (compiled
/// with the routine's own signature, so RETURN values, parameters and trigger variables
/// resolve). `None` when PL/pgSQL's compiler rejects it.
pub fn inspect_compiled(create_sql: &str) -> Option<BodyFacts> {
    let tree = pg_query::parse_plpgsql(create_sql).ok()?;
    let mut facts = BodyFacts {
        parsed: true,
        ..BodyFacts::default()
    };
    walk(&tree, &mut facts);
    Some(facts)
}

/// Trigger variables of PL/pgSQL (row and event triggers), declared for [`inspect_trigger_body`].
const TRIGGER_VARIABLES: &str = "new record; old record; tg_op text; tg_name text; \
    tg_when text; tg_level text; tg_relid oid; tg_table_name text; tg_table_schema text; \
    tg_relname text; tg_nargs int; tg_argv text[]; tg_event text; tg_tag text;";

/// What a trigger function's body does. PL/pgSQL as embedded in pg_query cannot report a
/// body compiled as `RETURNS trigger`, so the body is compiled as a block nested in one that
/// declares the trigger variables, in a function returning `record` (so `RETURN NEW` holds).
pub fn inspect_trigger_body(body: &str) -> Option<BodyFacts> {
    let mut n = 0;
    let tag = loop {
        let t = format!("$pgw{n}$");
        if !body.contains(&t) {
            break t;
        }
        n += 1;
    };
    let inner = body.trim_end().trim_end_matches(';');
    inspect_compiled(&format!(
        "CREATE FUNCTION pgwarden_body() RETURNS record AS {tag}DECLARE {TRIGGER_VARIABLES} \
         BEGIN {inner}\n; END{tag} LANGUAGE plpgsql"
    ))
}

fn walk(v: &Value, f: &mut BodyFacts) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                match k.as_str() {
                    "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" => f.dynamic_sql = true,
                    "PLpgSQL_stmt_open" | "PLpgSQL_stmt_return_query"
                        if child.get("dynquery").is_some() =>
                    {
                        f.dynamic_sql = true
                    }
                    "PLpgSQL_stmt_execsql" => {
                        if let Some(q) = child
                            .pointer("/sqlstmt/PLpgSQL_expr/query")
                            .and_then(Value::as_str)
                        {
                            f.statements.push(q.to_owned());
                        }
                        continue;
                    }
                    "PLpgSQL_expr" => {
                        let mode = child.get("parseMode").and_then(Value::as_i64).unwrap_or(0);
                        if let Some(q) = child.get("query").and_then(Value::as_str) {
                            f.expressions.push((mode as i32, q.to_owned()));
                        }
                        continue;
                    }
                    _ => {}
                }
                walk(child, f);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_statements_and_dynamic_execute() {
        let f = inspect_body("BEGIN DELETE FROM t; EXECUTE 'DROP TABLE t'; END");
        assert!(f.parsed);
        assert!(f.dynamic_sql);
        assert_eq!(f.statements, vec!["DELETE FROM t"]);
    }

    #[test]
    fn static_body_is_not_dynamic() {
        let f = inspect_body("BEGIN RAISE NOTICE 'hi %', 1; END");
        assert!(f.parsed && !f.dynamic_sql);
    }

    #[test]
    fn unparsable_body_counts_as_dynamic() {
        assert!(inspect_body("BEGIN this is not plpgsql END").dynamic_sql);
    }
}
