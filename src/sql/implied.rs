//! Operations a statement implies beyond itself, reported as operations of their own so that
//! the rules about them apply whatever the syntax: MERGE's WHEN MATCHED (and NOT MATCHED BY
//! SOURCE) actions are the UPDATE / DELETE they run, INSERT ... ON CONFLICT DO UPDATE is the
//! UPDATE it runs, each with the row condition that bounds it; a function's or procedure's
//! SET clauses are the SET they apply whenever it runs (`call_set`, nesting `function_body`).
//! And functions a statement makes callable without calling them (CREATE OPERATOR /
//! AGGREGATE / CAST, GRANT ON FUNCTION, parameter defaults) count as functions it calls.

use pg_query::protobuf::{CmdType, MergeMatchKind, OnConflictAction};
use serde_json::Value;

use super::facts::{Class, Facts, Flag, Nesting, WhereState};
use super::nodes::{bool_field, int_field, name_of, node_body, node_kind, str_field};
use super::predicate::{row_condition, target_names};

/// The operations statement node `kind` (whose own facts are `stmt`) implies.
pub(super) fn ops(kind: &str, b: &Value, stmt: &Facts) -> Vec<Facts> {
    match kind {
        "MergeStmt" => merge(b, stmt),
        "InsertStmt" => on_conflict_update(b, stmt).into_iter().collect(),
        "CreateFunctionStmt" => set_clauses(b.get("options"), stmt),
        "AlterFunctionStmt" => set_clauses(b.get("actions"), stmt),
        "AlterTableStmt" => attached_partitions(b, stmt),
        _ => Vec::new(),
    }
}

/// `ALTER TABLE p ATTACH PARTITION x ...`: x becomes part of p (DROP TABLE p and TRUNCATE p
/// then remove its rows, without naming it). Reported as an operation on p (tag `ATTACH
/// PARTITION`, attribute `attached:x`), so rules can ask whether p was created in this
/// session: such a table is exempt from `destructive.drop-table`, and attaching an older
/// table into it would carry that exemption over to the older table's rows.
fn attached_partitions(b: &Value, stmt: &Facts) -> Vec<Facts> {
    let mut out = Vec::new();
    for c in b
        .get("cmds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| node_body(c, "AlterTableCmd"))
    {
        if pg_query::protobuf::AlterTableType::try_from(int_field(c, "subtype"))
            != Ok(pg_query::protobuf::AlterTableType::AtAttachPartition)
        {
            continue;
        }
        let Some(name) = c
            .get("def")
            .and_then(|d| node_body(d, "PartitionCmd"))
            .and_then(|pc| super::nodes::range_var(pc.get("name")))
        else {
            continue;
        };
        let mut f = Facts::new("ATTACH PARTITION", Class::Ddl, stmt.nesting);
        f.objects = stmt.objects.clone();
        f.attributes.push(format!("attached:{name}"));
        out.push(f);
    }
    out
}

fn write(tag: &str, stmt: &Facts, where_clause: WhereState, attribute: &str) -> Facts {
    let mut f = Facts::new(tag, Class::Write, stmt.nesting);
    f.objects = stmt.objects.clone();
    f.flag(Flag::Only, stmt.has(Flag::Only));
    f.where_clause = where_clause;
    f.attributes.push(attribute.to_owned());
    f
}

/// `MERGE INTO t USING s ON <join> WHEN MATCHED [AND <cond>] THEN UPDATE | DELETE`: the
/// rows it changes are those the join matches and the condition keeps. When neither
/// depends on the target row (`ON true`, `ON s.id = 1`), that is every row.
/// `WHEN NOT MATCHED BY SOURCE [AND <cond>]` acts on the target rows the source lacks
/// (every row when the source is empty): only its own condition bounds it.
fn merge(b: &Value, stmt: &Facts) -> Vec<Facts> {
    let targets = target_names(b.get("relation"));
    let join = row_condition(b.get("join_condition"), &targets);
    let mut out = Vec::new();
    for c in b
        .get("merge_when_clauses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(w) = node_body(c, "MergeWhenClause") else {
            continue;
        };
        let tag = match CmdType::try_from(int_field(w, "command_type")) {
            Ok(CmdType::CmdUpdate) => "UPDATE",
            Ok(CmdType::CmdDelete) => "DELETE",
            _ => continue,
        };
        let cond = row_condition(w.get("condition"), &targets);
        let (state, attribute) = match MergeMatchKind::try_from(int_field(w, "match_kind")) {
            Ok(MergeMatchKind::MergeWhenMatched) => {
                let state = if join == WhereState::Present || cond == WhereState::Present {
                    WhereState::Present
                } else {
                    WhereState::TriviallyTrue
                };
                (state, "merge_action:matched")
            }
            Ok(MergeMatchKind::MergeWhenNotMatchedBySource) => {
                (cond, "merge_action:not_matched_by_source")
            }
            _ => continue,
        };
        out.push(write(tag, stmt, state, attribute));
    }
    out
}

/// `INSERT ... ON CONFLICT ... DO UPDATE [WHERE <cond>]`: it updates the existing row each
/// inserted row collides with. With VALUES (or DEFAULT VALUES) those are the rows the
/// statement lists: bounded, like `WHERE id = ...` (the ORM upsert). With a query as the
/// source (`INSERT INTO t SELECT * FROM t ON CONFLICT DO UPDATE`) it may be every row,
/// unless a condition on the target row bounds it.
fn on_conflict_update(b: &Value, stmt: &Facts) -> Option<Facts> {
    let oc = b.get("on_conflict_clause").filter(|o| !o.is_null())?;
    if OnConflictAction::try_from(int_field(oc, "action")) != Ok(OnConflictAction::OnconflictUpdate)
    {
        return None;
    }
    let listed = match b
        .get("select_stmt")
        .filter(|q| !q.is_null())
        .and_then(|q| node_body(q, "SelectStmt"))
    {
        None => b.get("select_stmt").is_none_or(Value::is_null),
        Some(q) => q
            .get("values_lists")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty()),
    };
    let state = if listed {
        WhereState::Present
    } else {
        // `excluded.*` is the proposed row, not the target's.
        row_condition(oc.get("where_clause"), &target_names(b.get("relation")))
    };
    Some(write("UPDATE", stmt, state, "on_conflict_update"))
}

/// `SET name = value` / `SET name FROM CURRENT` clauses of a routine definition.
fn set_clauses(options: Option<&Value>, stmt: &Facts) -> Vec<Facts> {
    let mut out = Vec::new();
    for d in options
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| node_body(o, "DefElem"))
    {
        if str_field(d, "defname") != "set" {
            continue;
        }
        let Some(s) = d.get("arg").and_then(|a| node_body(a, "VariableSetStmt")) else {
            continue;
        };
        let mut f = Facts::new("SET", Class::Session, Nesting::FunctionBody);
        super::walk::set_facts(&mut f, s);
        f.call_set = f.set.take();
        f.objects = stmt.objects.clone();
        f.attributes.push("function_set_clause".into());
        out.push(f);
    }
    out.retain(|f| f.call_set.is_some());
    out
}

/// DefElems of CREATE OPERATOR / AGGREGATE / TYPE / TEXT SEARCH ... (and ALTER OPERATOR ...
/// SET) that name a function the object will call.
const FUNCTION_OPTIONS: &[&str] = &[
    "function",
    "procedure",
    "sfunc",
    "finalfunc",
    "combinefunc",
    "serialfunc",
    "deserialfunc",
    "msfunc",
    "minvfunc",
    "mfinalfunc",
    "restrict",
    "join",
    // CREATE TYPE (base type) support functions.
    "input",
    "output",
    "receive",
    "send",
    "typmod_in",
    "typmod_out",
    "analyze",
    "subscript",
    // CREATE TEXT SEARCH PARSER / TEMPLATE.
    "start",
    "gettoken",
    "end",
    "lextypes",
    "headline",
    "init",
    "lexize",
    // CREATE TYPE ... AS RANGE.
    "subtype_diff",
    "canonical",
    // CREATE / ALTER FOREIGN DATA WRAPPER.
    "handler",
    "validator",
];

/// Built-in functions whose EXECUTE PostgreSQL keeps from PUBLIC because they reach server
/// files or sessions: granted all at once by GRANT ... ON ALL FUNCTIONS IN SCHEMA pg_catalog.
const CATALOG_FUNCTIONS_KEPT_FROM_PUBLIC: &[&str] = &[
    "pg_catalog.pg_read_file",
    "pg_catalog.pg_read_binary_file",
    "pg_catalog.pg_ls_dir",
    "pg_catalog.pg_stat_file",
    "pg_catalog.pg_ls_logdir",
    "pg_catalog.pg_ls_waldir",
    "pg_catalog.lo_import",
    "pg_catalog.lo_export",
];

/// Functions statement node `kind` names so that they will be called later: the support
/// functions of CREATE OPERATOR / AGGREGATE, CREATE CAST ... WITH FUNCTION, GRANT ... ON
/// FUNCTION / PROCEDURE / ROUTINE, and calls in a routine's parameter defaults.
pub(super) fn referenced_functions(kind: &str, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match kind {
        "DefineStmt" | "AlterOperatorStmt" | "CreateRangeStmt" | "CreateFdwStmt"
        | "AlterFdwStmt" => {
            let field = match kind {
                "DefineStmt" => "definition",
                "CreateRangeStmt" => "params",
                "CreateFdwStmt" | "AlterFdwStmt" => "func_options",
                _ => "options",
            };
            for d in b
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|o| node_body(o, "DefElem"))
            {
                if !FUNCTION_OPTIONS.contains(&str_field(d, "defname")) {
                    continue;
                }
                let name = match d.get("arg").and_then(node_kind) {
                    Some(("TypeName", t)) => name_of(t.get("names")),
                    Some(("List", l)) => name_of(l.get("items")),
                    Some(("String", _)) => name_of(d.get("arg")),
                    _ => String::new(),
                };
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
        // CREATE CONVERSION ... FROM f, CREATE ACCESS METHOD ... HANDLER f.
        "CreateConversionStmt" | "CreateAmStmt" => {
            let field = if kind == "CreateAmStmt" {
                "handler_name"
            } else {
                "func_name"
            };
            out.push(name_of(b.get(field)));
        }
        // CREATE OPERATOR CLASS ... FUNCTION n f(...), ALTER OPERATOR FAMILY ... ADD FUNCTION.
        "CreateOpClassStmt" | "AlterOpFamilyStmt" => {
            for item in b
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| node_body(i, "CreateOpClassItem"))
            {
                // OPCLASS_ITEM_FUNCTION = 2.
                if int_field(item, "itemtype") == 2 {
                    if let Some(owa) = item.get("name") {
                        out.push(name_of(owa.get("objname")));
                    }
                }
            }
        }
        "CreateCastStmt" | "CreateTransformStmt" => {
            for field in ["func", "fromsql", "tosql"] {
                if let Some(f) = b.get(field).filter(|f| !f.is_null()) {
                    out.push(name_of(f.get("objname")));
                }
            }
        }
        "GrantStmt" if bool_field(b, "is_grant") => {
            let objtype = super::nodes::object_type_words(int_field(b, "objtype"));
            let all_in_schema =
                pg_query::protobuf::GrantTargetType::try_from(int_field(b, "targtype"))
                    == Ok(pg_query::protobuf::GrantTargetType::AclTargetAllInSchema);
            if all_in_schema && matches!(objtype.as_str(), "FUNCTION" | "PROCEDURE" | "ROUTINE") {
                // ON ALL FUNCTIONS IN SCHEMA pg_catalog grants every built-in function,
                // those kept from PUBLIC among them: the same as naming each.
                let catalog = b
                    .get("objects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|o| name_of(Some(o)) == "pg_catalog");
                if catalog {
                    out.extend(
                        CATALOG_FUNCTIONS_KEPT_FROM_PUBLIC
                            .iter()
                            .map(|f| f.to_string()),
                    );
                }
            } else if matches!(objtype.as_str(), "FUNCTION" | "PROCEDURE" | "ROUTINE") {
                for o in b
                    .get("objects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(("ObjectWithArgs", owa)) = node_kind(o) {
                        out.push(name_of(owa.get("objname")));
                    }
                }
            }
        }
        "CreateFunctionStmt" => {
            for p in b
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| node_body(p, "FunctionParameter"))
            {
                if let Some(d) = p.get("defexpr") {
                    calls_in(d, &mut out);
                }
            }
        }
        _ => {}
    }
    out.retain(|n| !n.is_empty());
    out
}

/// Every function called in an expression.
fn calls_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                if k == "FuncCall" {
                    out.push(name_of(c.get("funcname")));
                }
                calls_in(c, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| calls_in(c, out)),
        _ => {}
    }
}
