//! Is a WHERE clause trivially true? `true`, `1 = 1`, `'a' = 'a'`, `x = x`, `x >= x`,
//! `NOT false`, `... OR <trivially true>`, `<trivially true> AND <trivially true>`,
//! `5 IS NOT NULL`, `NULL IS NULL`, `2 > 1`, `x IN (y, x)`, `x IS NOT DISTINCT FROM x`,
//! `true IS TRUE`, `x IS NULL OR x IS NOT NULL` — each a way to write "every row" that a
//! review would miss. And the wider test DML conditions get ([`row_condition`]): a condition
//! no column of the target row decides selects every row or none.

use pg_query::protobuf::{AExprKind, BoolExprType};
use serde_json::Value;

use super::facts::WhereState;
use super::nodes::{aexpr_is_op, bool_expr_type, const_text, name_of, node_body, same_tree};

pub fn trivially_true(v: &Value) -> bool {
    truth(v) == Some(true)
}

/// The WHERE state of a write's row condition (`cond`, absent when `None`) on the target
/// row named `targets` (see [`target_names`]). A condition that holds for every row is
/// trivially true; so is one whose value no column of the target row decides (`WHERE $1`,
/// `WHERE now() > '2024-01-01'`, `WHERE (SELECT true)`, `WHERE other.flag` in UPDATE ...
/// FROM other): it selects every row or none, which is only known when it runs, so it fails
/// closed as every row. A condition known to be false (`WHERE 1 = 2`, `WHERE false`)
/// selects no row: present.
pub fn row_condition(cond: Option<&Value>, targets: &[String]) -> WhereState {
    let Some(c) = cond.filter(|c| !c.is_null()) else {
        return WhereState::Absent;
    };
    // `t.id` and `id` are one column of the target row: `WHERE id = t.id` is `id = id`.
    let c = &unqualify_target(c, targets);
    if every_row(c, targets, false) {
        WhereState::TriviallyTrue
    } else {
        WhereState::Present
    }
}

/// May condition `c` (negated when `negated`) hold for every row? When it is true whatever
/// the row, or no column of the target row decides it, or, through AND / OR / NOT, a part
/// that may hold for every row makes the whole hold: `id = 1 OR $1`, `NOT (id = 1 AND $1)`.
/// Not when it is known to be false.
fn every_row(c: &Value, targets: &[String], negated: bool) -> bool {
    if let Some(t) = truth(c) {
        return t != negated;
    }
    if !depends_on_row(c, targets) {
        return true;
    }
    let Some(b) = node_body(c, "BoolExpr") else {
        return false;
    };
    let args = b.get("args").and_then(Value::as_array);
    let mut args = args.into_iter().flatten();
    match (bool_expr_type(b), negated) {
        (Some(BoolExprType::OrExpr), false) | (Some(BoolExprType::AndExpr), true) => {
            args.any(|a| every_row(a, targets, negated))
        }
        (Some(BoolExprType::AndExpr), false) | (Some(BoolExprType::OrExpr), true) => {
            args.all(|a| every_row(a, targets, negated))
        }
        (Some(BoolExprType::NotExpr), _) => args.all(|a| every_row(a, targets, !negated)),
        _ => false,
    }
}

/// `v` with every column reference qualified by a name of the target row (`t.id`,
/// `public.t.id`) written as the bare column (`id`), which names the same column.
fn unqualify_target(v: &Value, targets: &[String]) -> Value {
    match v {
        Value::Object(m) => {
            if let Some(c) = m.get("ColumnRef") {
                let fields = c.get("fields").and_then(Value::as_array);
                let mut parts = Vec::new();
                super::nodes::collect_strings(c.get("fields"), &mut parts);
                if let Some(fields) = fields.filter(|f| f.len() > 1 && parts.len() == f.len()) {
                    if targets.contains(&parts[..parts.len() - 1].join(".")) {
                        let mut c = c.clone();
                        if let Some(o) = c.as_object_mut() {
                            o.insert(
                                "fields".into(),
                                Value::Array(vec![fields[fields.len() - 1].clone()]),
                            );
                        }
                        let mut out = m.clone();
                        out.insert("ColumnRef".into(), c);
                        return Value::Object(out);
                    }
                }
            }
            Value::Object(
                m.iter()
                    .map(|(k, c)| (k.clone(), unqualify_target(c, targets)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|c| unqualify_target(c, targets)).collect()),
        _ => v.clone(),
    }
}

/// The names a write's target row goes by in its conditions: its alias when it has one
/// (PostgreSQL then hides the table's own name), else the table name, and schema.table.
pub fn target_names(rv: Option<&Value>) -> Vec<String> {
    let Some(rv) = rv else {
        return Vec::new();
    };
    if let Some(a) = rv
        .get("alias")
        .and_then(|a| a.get("aliasname"))
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        return vec![a.to_owned()];
    }
    let rel = super::nodes::str_field(rv, "relname");
    let schema = super::nodes::str_field(rv, "schemaname");
    let mut out = vec![rel.to_owned()];
    if !schema.is_empty() {
        out.push(format!("{schema}.{rel}"));
    }
    out
}

/// May `v` depend on a column of the target row? An unqualified column may be the target's
/// (or a PL/pgSQL variable, or a column of another FROM item: pgwarden cannot tell without
/// the catalog, so it counts); a qualified one counts when its qualifier names the target;
/// `WHERE CURRENT OF` selects the cursor's row. Anything else (constants, parameters,
/// functions of them, subqueries naming only other tables) does not.
pub fn depends_on_row(v: &Value, targets: &[String]) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, c)| match k.as_str() {
            "ColumnRef" => {
                let mut parts = Vec::new();
                super::nodes::collect_strings(c.get("fields"), &mut parts);
                let fields = c
                    .get("fields")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if fields <= 1 {
                    return true;
                }
                // `t.col` / `s.t.col` / `t.*`: the qualifier is every field but the last.
                let qualifier = if parts.len() == fields {
                    parts[..parts.len() - 1].join(".")
                } else {
                    parts.join(".")
                };
                targets.contains(&qualifier)
            }
            "CurrentOfExpr" => true,
            _ => depends_on_row(c, targets),
        }),
        Value::Array(a) => a.iter().any(|c| depends_on_row(c, targets)),
        _ => false,
    }
}

/// `x IS NULL OR x IS NOT NULL`, `x IS TRUE OR x IS NOT TRUE`, ...: one of two opposite
/// tests of the same value holds for every row.
fn opposite_tests(args: &[Value]) -> bool {
    fn test(v: &Value) -> Option<(&Value, i64)> {
        if let Some(n) = node_body(v, "NullTest") {
            // 1 = IS NULL, 2 = IS NOT NULL: 10 + kind keeps them apart from BooleanTest's.
            return Some((n.get("arg")?, 10 + n.get("nulltesttype")?.as_i64()?));
        }
        let b = node_body(v, "BooleanTest")?;
        Some((b.get("arg")?, b.get("booltesttype")?.as_i64()?))
    }
    let opposite =
        |a: i64, b: i64| matches!((a.min(b), a.max(b)), (11, 12) | (1, 2) | (3, 4) | (5, 6));
    let tests: Vec<(&Value, i64)> = args.iter().filter_map(test).collect();
    tests.iter().enumerate().any(|(i, (x, a))| {
        tests[i + 1..]
            .iter()
            .any(|(y, b)| opposite(*a, *b) && same_tree(x, y))
    })
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
                let raw = b.get("args").and_then(Value::as_array)?;
                if args.contains(&Some(true)) || opposite_tests(raw) {
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
        return aexpr_truth(e);
    }
    if let Some(n) = node_body(v, "NullTest") {
        // 1 = IS_NULL, 2 = IS_NOT_NULL
        let arg = n.get("arg")?;
        let is_not_null = n.get("nulltesttype").and_then(Value::as_i64) == Some(2);
        if const_text(arg).is_some() {
            return Some(is_not_null);
        }
        if is_null_const(arg) {
            return Some(!is_not_null);
        }
    }
    if let Some(b) = node_body(v, "BooleanTest") {
        // `<constant truth> IS [NOT] TRUE / FALSE / UNKNOWN`: `true IS TRUE`, `(1 = 0) IS
        // NOT TRUE`. Not a bare literal (`'t'::bool IS TRUE`): the inspection cache would
        // share the decision with `'f'::bool IS TRUE` (see the IN case below).
        let arg = b.get("arg")?;
        if const_text(arg).is_some() && !is_bool_keyword(arg) {
            return None;
        }
        let t = truth(arg)?;
        return match b.get("booltesttype").and_then(Value::as_i64)? {
            1 => Some(t),     // IS TRUE
            2 => Some(!t),    // IS NOT TRUE
            3 => Some(!t),    // IS FALSE
            4 => Some(t),     // IS NOT FALSE
            5 => Some(false), // IS UNKNOWN
            6 => Some(true),  // IS NOT UNKNOWN
            _ => None,
        };
    }
    None
}

fn aexpr_truth(e: &Value) -> Option<bool> {
    let op = name_of(e.get("name"));
    let kind = e.get("kind").and_then(Value::as_i64).unwrap_or(0);
    let l = e.get("lexpr")?;
    let r = e.get("rexpr")?;
    let same = same_tree(l, r) && is_stable_operand(l);
    if aexpr_is_op(e) {
        if same {
            return match op.as_str() {
                "=" | ">=" | "<=" => Some(true),
                "<>" | "!=" | "<" | ">" => Some(false),
                _ => None,
            };
        }
        if let (Some(x), Some(y)) = (const_number(l), const_number(r)) {
            return match op.as_str() {
                "=" => Some(x == y),
                "<>" | "!=" => Some(x != y),
                "<" => Some(x < y),
                "<=" => Some(x <= y),
                ">" => Some(x > y),
                ">=" => Some(x >= y),
                _ => None,
            };
        }
        if let (Some(a), Some(b)) = (const_text(l), const_text(r)) {
            let eq = const_eq(&a, &b);
            return match op.as_str() {
                "=" => Some(eq),
                "<>" | "!=" => Some(!eq),
                _ => None,
            };
        }
        return None;
    }
    match AExprKind::try_from(kind as i32).ok()? {
        // `x IS NOT DISTINCT FROM x` holds for every row, NULLs included.
        AExprKind::AexprNotDistinct if same => Some(true),
        AExprKind::AexprDistinct if same => Some(false),
        // `x = ANY (ARRAY[y, x])`, `x <> ALL (ARRAY[..., x])`.
        AExprKind::AexprOpAny | AExprKind::AexprOpAll if is_stable_operand(l) => {
            let items = node_body(r, "AArrayExpr")?.get("elements")?.as_array()?;
            if !items.iter().any(|i| same_tree(l, i)) {
                return None;
            }
            match (AExprKind::try_from(kind as i32).ok()?, op.as_str()) {
                (AExprKind::AexprOpAny, "=" | ">=" | "<=") => Some(true),
                (AExprKind::AexprOpAll, "<>" | "!=" | "<" | ">") => Some(false),
                _ => None,
            }
        }
        // `x BETWEEN x AND x` (symmetric too); NOT BETWEEN is the opposite.
        AExprKind::AexprBetween
        | AExprKind::AexprBetweenSym
        | AExprKind::AexprNotBetween
        | AExprKind::AexprNotBetweenSym
            if is_stable_operand(l) =>
        {
            let items = node_body(r, "List")?.get("items")?.as_array()?;
            if items.len() != 2 || !items.iter().all(|i| same_tree(l, i)) {
                return None;
            }
            Some(matches!(
                AExprKind::try_from(kind as i32).ok()?,
                AExprKind::AexprBetween | AExprKind::AexprBetweenSym
            ))
        }
        // `x IN (y, x)`; `NOT IN` is the `<>` form. Only columns: a list of literals is not
        // decided (`1 IN (1, 2)`), because the inspection cache shares one inspection among
        // texts that differ only in literals unless the `normalize` module sees that a
        // literal decides a fact, and it does not look inside IN lists (nor BETWEEN bounds).
        AExprKind::AexprIn if node_body(l, "ColumnRef").is_some() => {
            let items = node_body(r, "List")?.get("items")?.as_array()?;
            if !items.iter().any(|i| same_tree(l, i)) {
                return None;
            }
            Some(op != "<>")
        }
        _ => None,
    }
}

/// Equality of two constants' text: as numbers when both are, else exactly.
fn const_eq(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A numeric literal (`5`, `-2`, `1.5`): ordering comparisons are decided only between
/// these, never between quoted strings (`'10' > '9'` compares as text).
fn const_number(v: &Value) -> Option<f64> {
    let val = node_body(v, "AConst")?.get("val")?;
    if let Some(i) = val.get("Ival") {
        return Some(i.get("ival").and_then(Value::as_i64).unwrap_or(0) as f64);
    }
    val.get("Fval")?.get("fval")?.as_str()?.parse().ok()
}

/// `true` / `false` written as keywords (not literals: the cache key keeps them).
fn is_bool_keyword(v: &Value) -> bool {
    node_body(v, "AConst")
        .and_then(|c| c.get("val"))
        .is_some_and(|val| val.get("Boolval").is_some())
}

fn is_null_const(v: &Value) -> bool {
    node_body(v, "AConst").is_some_and(|c| c.get("isnull").and_then(Value::as_bool) == Some(true))
}

/// Columns and constants compare equal to themselves (NULLs aside, which only make the
/// predicate unknown for those rows); function calls like random() do not.
fn is_stable_operand(v: &Value) -> bool {
    node_body(v, "ColumnRef").is_some() || const_text(v).is_some() || pure_expression(v)
}

/// An expression of columns and constants through operators, casts, CASE, COALESCE, arrays
/// and rows (`id + 0`, `v::text`, `coalesce(v, 0)`, `a || b`): equal to itself for the same
/// row. Not when it calls a function (random(), nextval()) or runs a subquery. It must name
/// a column: constants alone are decided as constants, which the inspection cache knows.
fn pure_expression(v: &Value) -> bool {
    fn pure(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().all(|(k, c)| {
                !matches!(
                    k.as_str(),
                    "FuncCall" | "SubLink" | "ParamRef" | "CurrentOfExpr" | "SQLValueFunction"
                ) && pure(c)
            }),
            Value::Array(a) => a.iter().all(pure),
            _ => true,
        }
    }
    let known = [
        "AExpr",
        "TypeCast",
        "CaseExpr",
        "CoalesceExpr",
        "AArrayExpr",
        "RowExpr",
    ]
    .iter()
    .any(|k| node_body(v, k).is_some());
    known && pure(v) && depends_on_row(v, &[])
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
