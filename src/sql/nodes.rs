//! Reading pg_query's parse tree in its JSON form: node kinds and bodies, typed fields,
//! names, constants, roles, object-type words, and tree equality. Shared by the walker
//! ([`super::walk`]), the per-statement details and the WHERE-predicate reader; it imports
//! none of them.

use pg_query::protobuf::{AExprKind, BoolExprType, ObjectType, RoleSpecType};
use serde_json::{Map, Value};

/// The body of `{"node": {"Kind": body}}` when its kind is `kind`.
pub(super) fn node_body<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v.get("node").and_then(|n| n.get(kind))
}

/// `{"node": {"Kind": body}}` → ("Kind", body).
pub(super) fn node_kind(v: &Value) -> Option<(&str, &Value)> {
    let m = v.get("node")?.as_object()?;
    m.iter().next().map(|(k, b)| (k.as_str(), b))
}

pub(super) fn str_field<'a>(v: &'a Value, f: &str) -> &'a str {
    v.get(f).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn int_field(v: &Value, f: &str) -> i32 {
    v.get(f).and_then(Value::as_i64).unwrap_or(0) as i32
}

pub(super) fn bool_field(v: &Value, f: &str) -> bool {
    v.get(f).and_then(Value::as_bool).unwrap_or(false)
}

/// A dotted name from a list of String nodes (or a List node of them).
pub(super) fn name_of(v: Option<&Value>) -> String {
    let mut parts = Vec::new();
    collect_strings(v, &mut parts);
    parts.join(".")
}

pub(super) fn collect_strings(v: Option<&Value>, out: &mut Vec<String>) {
    match v {
        Some(Value::Array(a)) => a.iter().for_each(|x| collect_strings(Some(x), out)),
        Some(v) => {
            if let Some(s) = node_body(v, "String") {
                out.push(str_field(s, "sval").to_owned());
            } else if let Some(l) = node_body(v, "List") {
                collect_strings(l.get("items"), out);
            }
        }
        None => {}
    }
}

pub(super) fn range_var(v: Option<&Value>) -> Option<String> {
    let v = v?;
    let rel = str_field(v, "relname");
    if rel.is_empty() {
        return None;
    }
    let schema = str_field(v, "schemaname");
    Some(if schema.is_empty() {
        rel.to_owned()
    } else {
        format!("{schema}.{rel}")
    })
}

/// Text of a constant (`'x'`, `5`, `1.5`, `true`), through casts.
pub(super) fn const_text(v: &Value) -> Option<String> {
    if let Some(c) = node_body(v, "AConst") {
        if bool_field(c, "isnull") {
            return None;
        }
        let val = c.get("val")?;
        if let Some(s) = val.get("Sval") {
            return Some(str_field(s, "sval").to_owned());
        }
        if let Some(i) = val.get("Ival") {
            return Some(int_field(i, "ival").to_string());
        }
        if let Some(f) = val.get("Fval") {
            return Some(str_field(f, "fval").to_owned());
        }
        if let Some(b) = val.get("Boolval") {
            return Some(
                if bool_field(b, "boolval") {
                    "true"
                } else {
                    "false"
                }
                .to_owned(),
            );
        }
        return None;
    }
    if let Some(tc) = node_body(v, "TypeCast") {
        return const_text(tc.get("arg")?);
    }
    if let Some(s) = node_body(v, "String") {
        return Some(str_field(s, "sval").to_owned());
    }
    None
}

pub(super) fn role_name(v: &Value) -> Option<String> {
    let r = node_body(v, "RoleSpec").or(Some(v))?;
    let t = RoleSpecType::try_from(int_field(r, "roletype")).ok()?;
    Some(match t {
        RoleSpecType::RolespecPublic => "public".to_owned(),
        RoleSpecType::RolespecCurrentUser => "current_user".to_owned(),
        RoleSpecType::RolespecSessionUser => "session_user".to_owned(),
        RoleSpecType::RolespecCurrentRole => "current_role".to_owned(),
        _ => str_field(r, "rolename").to_owned(),
    })
}

pub(super) fn roles_in(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(role_name)
        .collect()
}

pub(super) fn object_type_words(t: i32) -> String {
    match ObjectType::try_from(t) {
        Ok(ObjectType::ObjectMatview) => "MATERIALIZED VIEW".into(),
        Ok(ObjectType::ObjectForeignServer) => "SERVER".into(),
        Ok(ObjectType::ObjectFdw) => "FOREIGN DATA WRAPPER".into(),
        Ok(ObjectType::ObjectTsconfiguration) => "TEXT SEARCH CONFIGURATION".into(),
        Ok(ObjectType::ObjectTsdictionary) => "TEXT SEARCH DICTIONARY".into(),
        Ok(ObjectType::ObjectTsparser) => "TEXT SEARCH PARSER".into(),
        Ok(ObjectType::ObjectTstemplate) => "TEXT SEARCH TEMPLATE".into(),
        Ok(ObjectType::ObjectEventTrigger) => "EVENT TRIGGER".into(),
        Ok(ObjectType::ObjectTabconstraint) => "CONSTRAINT".into(),
        Ok(ObjectType::ObjectAccessMethod) => "ACCESS METHOD".into(),
        Ok(ObjectType::ObjectStatisticExt) => "STATISTICS".into(),
        Ok(o) => o
            .as_str_name()
            .trim_start_matches("OBJECT_")
            .replace('_', " "),
        Err(_) => "OBJECT".into(),
    }
}

/// `CreateEventTrigStmt` → `CREATE EVENT TRIG`: PostgreSQL-ish words for a node name.
pub(super) fn words_of(kind: &str) -> String {
    let base = kind.strip_suffix("Stmt").unwrap_or(kind);
    let mut out = String::new();
    for (i, c) in base.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Equality of two parse-tree values ignoring `location` fields.
pub(super) fn same_tree(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => same_map(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_tree(p, q))
        }
        _ => a == b,
    }
}

fn same_map(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    let keys = |m: &Map<String, Value>| m.keys().filter(|k| *k != "location").count();
    keys(x) == keys(y)
        && x.iter()
            .filter(|(k, _)| *k != "location")
            .all(|(k, v)| y.get(k).is_some_and(|w| same_tree(v, w)))
}

pub(super) fn bool_expr_type(v: &Value) -> Option<BoolExprType> {
    BoolExprType::try_from(int_field(v, "boolop")).ok()
}

pub(super) fn aexpr_is_op(v: &Value) -> bool {
    AExprKind::try_from(int_field(v, "kind")) == Ok(AExprKind::AexprOp)
}

pub(super) fn is_true_word(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "on" | "1" | "yes" | "t" | "y"
    )
}

pub(super) fn defelem_text(options: Option<&Value>, name: &str) -> Option<String> {
    options
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|o| node_body(o, "DefElem"))
        .find(|d| str_field(d, "defname") == name)
        .and_then(|d| d.get("arg"))
        .and_then(|a| {
            const_text(a).or_else(|| {
                // `AS 'body'` is a list of strings for functions.
                a.get("node")
                    .and_then(|n| n.get("List"))
                    .map(|l| name_of(l.get("items")))
            })
        })
}
