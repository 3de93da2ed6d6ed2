//! Is a WHERE clause trivially true? `true`, `1 = 1`, `'a' = 'a'`, `x = x`, `x >= x`,
//! `NOT false`, `... OR <trivially true>`, `<trivially true> AND <trivially true>`,
//! `5 IS NOT NULL` — each a way to write "every row" that a review would miss.

use pg_query::protobuf::BoolExprType;
use serde_json::Value;

use super::walk::{aexpr_is_op, bool_expr_type, const_text, name_of, node_body, same_tree};

pub fn trivially_true(v: &Value) -> bool {
    truth(v) == Some(true)
}

/// The constant truth value of a predicate, when it has one whatever the row.
fn truth(v: &Value) -> Option<bool> {
    if let Some(t) = const_truth(v) {
        return Some(t);
    }
    if let Some(b) = node_body(v, "BoolExpr") {
        let args: Vec<Option<bool>> = b
            .get("args")
            .and_then(Value::as_array)?
            .iter()
            .map(truth)
            .collect();
        return match bool_expr_type(b)? {
            BoolExprType::OrExpr => {
                if args.contains(&Some(true)) {
                    Some(true)
                } else if args.iter().all(|a| *a == Some(false)) {
                    Some(false)
                } else {
                    None
                }
            }
            BoolExprType::AndExpr => {
                if args.contains(&Some(false)) {
                    Some(false)
                } else if args.iter().all(|a| *a == Some(true)) {
                    Some(true)
                } else {
                    None
                }
            }
            BoolExprType::NotExpr => args.first().copied().flatten().map(|t| !t),
            _ => None,
        };
    }
    if let Some(e) = node_body(v, "AExpr") {
        if !aexpr_is_op(e) {
            return None;
        }
        let op = name_of(e.get("name"));
        let (l, r) = (e.get("lexpr")?, e.get("rexpr")?);
        if same_tree(l, r) && is_stable_operand(l) {
            return match op.as_str() {
                "=" | ">=" | "<=" => Some(true),
                "<>" | "!=" | "<" | ">" => Some(false),
                _ => None,
            };
        }
        if let (Some(a), Some(b)) = (const_text(l), const_text(r)) {
            let (x, y) = (a.parse::<f64>(), b.parse::<f64>());
            let eq = match (x, y) {
                (Ok(x), Ok(y)) => x == y,
                _ => a == b,
            };
            return match op.as_str() {
                "=" => Some(eq),
                "<>" | "!=" => Some(!eq),
                _ => None,
            };
        }
        return None;
    }
    if let Some(n) = node_body(v, "NullTest") {
        // 1 = IS_NULL, 2 = IS_NOT_NULL
        let arg = n.get("arg")?;
        if const_text(arg).is_some() {
            let is_not_null = n.get("nulltesttype").and_then(Value::as_i64) == Some(2);
            return Some(is_not_null);
        }
    }
    None
}

/// Columns and constants compare equal to themselves (NULLs aside, which only make the
/// predicate unknown for those rows); function calls like random() do not.
fn is_stable_operand(v: &Value) -> bool {
    node_body(v, "ColumnRef").is_some() || const_text(v).is_some()
}

fn const_truth(v: &Value) -> Option<bool> {
    let t = const_text(v)?;
    let bool_typed = node_body(v, "TypeCast").is_some_and(|tc| {
        name_of(tc.get("type_name").and_then(|t| t.get("names"))).ends_with("bool")
    });
    let is_bool_const = node_body(v, "AConst")
        .and_then(|c| c.get("val"))
        .is_some_and(|val| val.get("Boolval").is_some());
    if !(bool_typed || is_bool_const) {
        return None;
    }
    match t.to_ascii_lowercase().as_str() {
        "true" | "t" | "on" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "off" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}
