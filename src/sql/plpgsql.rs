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
