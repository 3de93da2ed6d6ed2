//! Per-statement details that have no field of their own in [`Facts`]: tags PostgreSQL spells
//! differently from the node name, target objects of statements `walk` does not name, and
//! `attributes` words (`constraint:foreign_key`, `lock_mode:share`, `language:c`, ...).
//!
//! Attribute words are positive statements about one operation. Where a rule needs "X
//! without Y" and one ALTER TABLE can carry several sub-commands, a word says the risky
//! combination itself (`validate:foreign_key`, `builds_index:unique`, `column_required`), so
//! `ADD ... NOT VALID, ADD ...` cannot hide the second sub-command behind the first one's
//! `not_valid`.

use pg_query::protobuf::{
    AlterTableType, ConstrType, GrantTargetType, ObjectType, ReindexObjectType, VariableSetKind,
};
use serde_json::Value;

use super::facts::{Facts, Flag, Lookup};
use super::nodes::{
    bool_field, const_text, int_field, name_of, node_body, node_kind, object_type_words, range_var,
    role_name, roles_in, str_field,
};

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes while parsing, so a longer one
/// reaches the tree as exactly this long.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Functions a column DEFAULT may call without forcing a table rewrite (immutable or stable:
/// PostgreSQL evaluates them once and stores the value in the catalog). Any other call counts
/// as volatile.
const NON_VOLATILE_DEFAULT_FUNCTIONS: &[&str] = &[
    "now",
    "transaction_timestamp",
    "statement_timestamp",
    "current_setting",
    "lower",
    "upper",
    "btrim",
    "ltrim",
    "rtrim",
    "length",
    "abs",
    "round",
    "floor",
    "ceil",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "date_trunc",
    "to_timestamp",
    "to_date",
    "to_char",
    "to_json",
    "to_jsonb",
    "json_build_object",
    "json_build_array",
    "jsonb_build_object",
    "jsonb_build_array",
    "concat",
    "timezone",
    "replace",
    "substr",
    "substring",
];

/// Pseudo-types that create a sequence and a `nextval` default.
const SERIAL_TYPES: &[&str] = &[
    "serial",
    "serial4",
    "bigserial",
    "serial8",
    "smallserial",
    "serial2",
];

fn attr(f: &mut Facts, word: impl Into<String>) {
    let w = word.into();
    if !f.attributes.contains(&w) {
        f.attributes.push(w);
    }
}

fn list(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

fn defelems(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    list(v).filter_map(|o| node_body(o, "DefElem"))
}

/// The value of a boolean option: absent means true (`SUPERUSER`, `WITH ADMIN OPTION`).
fn defelem_bool(d: &Value) -> bool {
    let Some(a) = d.get("arg").filter(|a| !a.is_null()) else {
        return true;
    };
    if let Some(b) = node_body(a, "Boolean") {
        return bool_field(b, "boolval");
    }
    if let Some(i) = node_body(a, "Integer") {
        return int_field(i, "ival") != 0;
    }
    const_text(a).is_none_or(|t| super::nodes::is_true_word(&t))
}

/// Is `name` (as the inspector names objects) a system catalog relation: in pg_catalog,
/// information_schema or pg_toast, or unqualified and beginning with `pg_` (such names
/// resolve in pg_catalog first)? `pg_temp.x` is a temporary table, not a catalog.
fn catalog_relation(name: &str) -> bool {
    match name.split_once('.') {
        Some((schema, _)) => matches!(schema, "pg_catalog" | "information_schema" | "pg_toast"),
        None => name.starts_with("pg_"),
    }
}

/// Adds the details of statement node `kind` to `f`.
pub(super) fn add(kind: &str, b: &Value, f: &mut Facts) {
    if matches!(
        kind,
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "TruncateStmt" | "CopyStmt"
    ) && f.objects.iter().any(|o| catalog_relation(o))
    {
        attr(f, "catalog_relation");
    }
    match kind {
        "AlterTableStmt" => alter_table(b, f),
        "CreateStmt" => create_table(b, f),
        "IndexStmt" => {
            let name = str_field(b, "idxname");
            long_name(f, name);
            if !name.is_empty() {
                // The index is created in its table's schema.
                let qualified = match f.objects.first().and_then(|t| t.rsplit_once('.')) {
                    Some((schema, _)) => format!("{schema}.{name}"),
                    None => name.to_owned(),
                };
                attr(f, format!("index_name:{qualified}"));
            }
        }
        "AlterDomainStmt" => alter_domain(b, f),
        "LockStmt" => lock(b, f),
        "VacuumStmt" => {
            for r in list(b.get("rels")) {
                if let Some(vr) = node_body(r, "VacuumRelation") {
                    f.objects.extend(range_var(vr.get("relation")));
                }
            }
        }
        "ClusterStmt" => {
            f.tag = "CLUSTER".into();
            f.objects.extend(range_var(b.get("relation")));
        }
        "ReindexStmt" => {
            f.tag = "REINDEX".into();
            f.objects.extend(range_var(b.get("relation")));
            if !str_field(b, "name").is_empty() {
                f.objects.push(str_field(b, "name").to_owned());
            }
            let k = match ReindexObjectType::try_from(int_field(b, "kind")) {
                Ok(ReindexObjectType::ReindexObjectIndex) => "index",
                Ok(ReindexObjectType::ReindexObjectTable) => "table",
                Ok(ReindexObjectType::ReindexObjectSchema) => "schema",
                Ok(ReindexObjectType::ReindexObjectSystem) => "system",
                Ok(ReindexObjectType::ReindexObjectDatabase) => "database",
                _ => "unknown",
            };
            attr(f, format!("reindex:{k}"));
        }
        "CreateRoleStmt" => {
            role_options(b.get("options"), f);
            // CREATE ROLE g ROLE u: u joins the new role g, which has only the powers this
            // statement gives it (matched as role attributes), nothing to look up.
            f.attributes.retain(|a| a != "adds_members");
        }
        "AlterRoleStmt" => {
            role_options(b.get("options"), f);
            // ALTER GROUP g DROP USER u takes members away.
            if int_field(b, "action") < 0 {
                f.attributes.retain(|a| a != "adds_members");
            }
        }
        "GrantStmt" => grant(b, f),
        "GrantRoleStmt"
            if bool_field(b, "is_grant")
                && defelems(b.get("opt"))
                    .any(|d| str_field(d, "defname") == "admin" && defelem_bool(d)) =>
        {
            attr(f, "admin_option");
        }
        "AlterDefaultPrivilegesStmt" => {
            if let Some(a) = b.get("action") {
                grant(a, f);
            }
        }
        "CreateFunctionStmt" => {
            let lang =
                super::nodes::defelem_text(b.get("options"), "language").unwrap_or_else(|| {
                    // A SQL-standard body (BEGIN ATOMIC ... END, RETURN ...) is SQL.
                    if b.get("sql_body").is_some_and(|v| !v.is_null()) {
                        "sql".into()
                    } else {
                        String::new()
                    }
                });
            if !lang.is_empty() {
                attr(f, format!("language:{}", lang.to_ascii_lowercase()));
            }
            function_options(b.get("options"), f);
        }
        "AlterFunctionStmt" => {
            f.tag = format!("ALTER {}", object_type_words(int_field(b, "objtype")));
            if let Some(func) = b.get("func") {
                f.objects.push(name_of(func.get("objname")));
            }
            function_options(b.get("actions"), f);
        }
        "CreatePlangStmt" => {
            f.tag = "CREATE LANGUAGE".into();
            f.objects.push(str_field(b, "plname").to_owned());
            f.flag(Flag::OrReplace, bool_field(b, "replace"));
            if bool_field(b, "pltrusted") {
                attr(f, "trusted");
            }
        }
        "CreateEventTrigStmt" => {
            f.tag = "CREATE EVENT TRIGGER".into();
            f.objects.push(str_field(b, "trigname").to_owned());
        }
        "CreateCastStmt" => {
            if bool_field(b, "inout") {
                attr(f, "with_inout");
            } else if b.get("func").is_none_or(Value::is_null) {
                attr(f, "without_function");
            }
        }
        "CreateExtensionStmt" => {
            f.objects.push(str_field(b, "extname").to_owned());
            f.flag(Flag::IfNotExists, bool_field(b, "if_not_exists"));
        }
        "AlterExtensionStmt" | "AlterExtensionContentsStmt" => {
            f.tag = "ALTER EXTENSION".into();
            f.objects.push(str_field(b, "extname").to_owned());
        }
        "AlterObjectSchemaStmt" => {
            f.tag = format!("ALTER {}", object_type_words(int_field(b, "object_type")));
            f.subcommands.push("SET SCHEMA".into());
            object_of(b, f);
            f.flag(Flag::IfExists, bool_field(b, "missing_ok"));
        }
        "AlterOwnerStmt" => {
            f.tag = format!("ALTER {}", object_type_words(int_field(b, "object_type")));
            f.subcommands.push("OWNER TO".into());
            object_of(b, f);
            f.roles.extend(b.get("newowner").and_then(role_name));
        }
        "ReassignOwnedStmt" => {
            f.roles = roles_in(b.get("roles"));
            f.roles.extend(b.get("newrole").and_then(role_name));
        }
        "RenameStmt" => {
            if f.objects.is_empty() {
                object_of(b, f);
                if f.objects.is_empty() && !str_field(b, "subname").is_empty() {
                    f.objects.push(str_field(b, "subname").to_owned());
                }
            }
            if ObjectType::try_from(int_field(b, "rename_type")) == Ok(ObjectType::ObjectRole) {
                f.roles.push(str_field(b, "subname").to_owned());
                f.roles.push(str_field(b, "newname").to_owned());
            }
            long_name(f, str_field(b, "newname"));
        }
        "AlterEnumStmt" => {
            f.tag = "ALTER TYPE".into();
            f.objects.push(name_of(b.get("type_name")));
            f.subcommands.push(
                if str_field(b, "old_val").is_empty() {
                    "ADD VALUE"
                } else {
                    "RENAME VALUE"
                }
                .into(),
            );
        }
        "CreateSeqStmt" | "AlterSeqStmt" => {
            f.tag = if kind == "CreateSeqStmt" {
                "CREATE SEQUENCE"
            } else {
                "ALTER SEQUENCE"
            }
            .into();
            f.objects.extend(range_var(b.get("sequence")));
        }
        "CreatedbStmt" => {
            f.tag = "CREATE DATABASE".into();
            f.objects.push(str_field(b, "dbname").to_owned());
        }
        "CreateTableSpaceStmt" => {
            f.tag = "CREATE TABLESPACE".into();
            f.objects.push(str_field(b, "tablespacename").to_owned());
        }
        "CreateTrigStmt" => {
            f.tag = "CREATE TRIGGER".into();
            f.objects.extend(range_var(b.get("relation")));
            f.flag(Flag::OrReplace, bool_field(b, "replace"));
            long_name(f, str_field(b, "trigname"));
        }
        "RuleStmt" => {
            f.tag = "CREATE RULE".into();
            f.objects.extend(range_var(b.get("relation")));
            f.flag(Flag::OrReplace, bool_field(b, "replace"));
            // ON SELECT DO INSTEAD SELECT (PostgreSQL 15 and older: the `_RETURN` rule
            // that turns an empty table into a view): the view it makes, as CREATE VIEW.
            if pg_query::protobuf::CmdType::try_from(int_field(b, "event"))
                == Ok(pg_query::protobuf::CmdType::CmdSelect)
            {
                for a in list(b.get("actions")) {
                    if let Some(rel) = node_body(a, "SelectStmt").and_then(simple_view_relation) {
                        attr(f, format!("view_of:{rel}"));
                    }
                }
            }
        }
        "CreateForeignServerStmt" | "AlterForeignServerStmt" => {
            f.tag = if kind.starts_with("Create") {
                "CREATE SERVER"
            } else {
                "ALTER SERVER"
            }
            .into();
            f.objects.push(str_field(b, "servername").to_owned());
        }
        "CreateUserMappingStmt" | "AlterUserMappingStmt" => {
            f.objects.push(str_field(b, "servername").to_owned());
            f.roles.extend(b.get("user").and_then(role_name));
        }
        "CreateForeignTableStmt" => {
            if let Some(base) = b.get("base_stmt") {
                f.objects.extend(range_var(base.get("relation")));
            }
            f.objects.push(str_field(b, "servername").to_owned());
        }
        "CreateSubscriptionStmt" | "AlterSubscriptionStmt" | "CreatePublicationStmt" => {
            let name = str_field(b, "subname");
            let name = if name.is_empty() {
                str_field(b, "pubname")
            } else {
                name
            };
            f.objects.push(name.to_owned());
        }
        "AlterPolicyStmt" => {
            f.objects.extend(range_var(b.get("table")));
            f.roles = roles_in(b.get("roles"));
        }
        "CreateSchemaStmt" => long_name(f, str_field(b, "schemaname")),
        "ViewStmt" => {
            if let Some(rel) = b
                .get("query")
                .and_then(|q| node_body(q, "SelectStmt"))
                .and_then(simple_view_relation)
            {
                attr(f, format!("view_of:{rel}"));
            }
        }
        _ => {}
    }
}

/// The one relation a view reads when PostgreSQL may make the view automatically updatable
/// (writes through it reach that relation, and its rules: UPDATE of a view over pg_settings
/// runs set_config): a single relation in FROM, no set operation, WITH, DISTINCT, GROUP BY,
/// HAVING, LIMIT or OFFSET. Aggregates in the target list are not looked at (fail closed).
fn simple_view_relation(q: &Value) -> Option<String> {
    let present = |k: &str| {
        q.get(k).is_some_and(|v| {
            !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) && v != &Value::Bool(false)
        })
    };
    if [
        "larg",
        "with_clause",
        "distinct_clause",
        "group_clause",
        "having_clause",
    ]
    .iter()
    .chain(&["limit_count", "limit_offset"])
    .any(|k| present(k))
    {
        return None;
    }
    match list(q.get("from_clause")).collect::<Vec<_>>().as_slice() {
        [one] => range_var(node_body(one, "RangeVar")),
        _ => None,
    }
}

/// The object of ALTER ... SET SCHEMA / OWNER TO / RENAME: a relation, or a name.
fn object_of(b: &Value, f: &mut Facts) {
    if let Some(r) = range_var(b.get("relation").filter(|r| !r.is_null())) {
        f.objects.push(r);
        return;
    }
    let Some(o) = b.get("object").filter(|o| !o.is_null()) else {
        return;
    };
    let name = match node_kind(o) {
        Some(("ObjectWithArgs", owa)) => name_of(owa.get("objname")),
        Some(("TypeName", tn)) => name_of(tn.get("names")),
        _ => name_of(Some(o)),
    };
    if !name.is_empty() {
        f.objects.push(name);
    }
}

fn attributes_has(f: &Facts, word: &str) -> bool {
    f.attributes.iter().any(|a| a == word)
}

fn long_name(f: &mut Facts, name: &str) {
    if name.len() >= MAX_IDENTIFIER_BYTES {
        attr(f, "identifier_too_long");
    }
}

fn alter_table(b: &Value, f: &mut Facts) {
    for c in list(b.get("cmds")) {
        let Some(cmd) = node_body(c, "AlterTableCmd") else {
            continue;
        };
        let def = cmd.get("def").filter(|d| !d.is_null());
        match AlterTableType::try_from(int_field(cmd, "subtype")) {
            Ok(AlterTableType::AtAddColumn) => {
                if let Some(cd) = def.and_then(|d| node_body(d, "ColumnDef")) {
                    column(cd, f, true, false);
                }
            }
            Ok(AlterTableType::AtAddConstraint) => {
                if let Some(con) = def.and_then(|d| node_body(d, "Constraint")) {
                    constraint(con, f, true);
                }
            }
            Ok(AlterTableType::AtAlterColumnType) => {
                if let Some(cd) = def.and_then(|d| node_body(d, "ColumnDef")) {
                    if let Some(t) = cd.get("type_name").and_then(type_word) {
                        attr(f, format!("column_type:{t}"));
                        // USING recomputes every value: a rewrite whatever the types.
                        let using = cd.get("raw_default").is_some_and(|d| !d.is_null());
                        let collate = cd.get("coll_clause").is_some_and(|d| !d.is_null());
                        match (using || collate, f.objects.first()) {
                            (false, Some(table)) => f.lookups.push(Lookup::TypeChange {
                                table: table.clone(),
                                column: str_field(cmd, "name").to_owned(),
                                new_type: t,
                            }),
                            _ => attr(f, "type_change:rewrites"),
                        }
                    }
                }
            }
            Ok(AlterTableType::AtSetNotNull) => {
                if let Some(table) = f.objects.first() {
                    f.lookups.push(Lookup::NotNullProof {
                        table: table.clone(),
                        column: str_field(cmd, "name").to_owned(),
                    });
                }
            }
            Ok(AlterTableType::AtColumnDefault) if def.is_none() => attr(f, "drop_default"),
            Ok(AlterTableType::AtDetachPartition) => {
                if let Some(pc) = def.and_then(|d| node_body(d, "PartitionCmd")) {
                    f.flag(Flag::Concurrently, bool_field(pc, "concurrent"));
                }
            }
            _ => {}
        }
    }
}

fn alter_domain(b: &Value, f: &mut Facts) {
    let def = b.get("def").filter(|d| !d.is_null());
    let sub = match str_field(b, "subtype") {
        "T" if def.is_none() => {
            attr(f, "drop_default");
            "DROP DEFAULT"
        }
        "T" => "SET DEFAULT",
        "N" => "DROP NOT NULL",
        "O" => "SET NOT NULL",
        "C" => {
            if let Some(con) = def.and_then(|d| node_body(d, "Constraint")) {
                constraint(con, f, true);
                f.flag(Flag::NotValid, bool_field(con, "skip_validation"));
            }
            "ADD CONSTRAINT"
        }
        "X" => "DROP CONSTRAINT",
        "V" => "VALIDATE CONSTRAINT",
        _ => return,
    };
    f.subcommands.push(sub.into());
}

fn create_table(b: &Value, f: &mut Facts) {
    // ON COMMIT DROP: gone when its transaction ends.
    if int_field(b, "oncommit") == pg_query::protobuf::OnCommitAction::OncommitDrop as i32 {
        attr(f, "on_commit_drop");
    }
    if b.get("partbound").is_some_and(|p| !p.is_null()) {
        attr(f, "partition_of");
    }
    if b.get("of_typename").is_some_and(|p| !p.is_null()) {
        attr(f, "of_type");
    }
    if list(b.get("inh_relations")).next().is_some() && !attributes_has(f, "partition_of") {
        attr(f, "inherits");
    }
    if let Some(rv) = b.get("relation") {
        long_name(f, str_field(rv, "relname"));
    }
    // Columns of a table-level PRIMARY KEY are id columns too.
    let mut pk_cols: Vec<String> = Vec::new();
    for e in list(b.get("table_elts")).chain(list(b.get("constraints"))) {
        if let Some(con) = node_body(e, "Constraint") {
            if ConstrType::try_from(int_field(con, "contype")) == Ok(ConstrType::ConstrPrimary) {
                pk_cols.extend(list(con.get("keys")).filter_map(const_text));
            }
        }
    }
    for e in list(b.get("table_elts")).chain(list(b.get("constraints"))) {
        match node_kind(e) {
            Some(("ColumnDef", cd)) => {
                let pk = pk_cols.iter().any(|c| c == str_field(cd, "colname"));
                column(cd, f, false, pk);
            }
            Some(("Constraint", con)) => constraint(con, f, false),
            Some(("TableLikeClause", _)) => attr(f, "like"),
            _ => {}
        }
    }
}

/// `int4`, `varchar(255)`, `bpchar(1)`, `timestamptz(3)`, `text[]`: the type's last name
/// (pg_catalog's internal one for SQL-standard spellings), its modifiers, array brackets.
fn type_word(t: &Value) -> Option<String> {
    let mut parts = Vec::new();
    super::nodes::collect_strings(t.get("names"), &mut parts);
    let mut s = parts.last()?.to_ascii_lowercase();
    let mods: Vec<String> = list(t.get("typmods")).filter_map(const_text).collect();
    if !mods.is_empty() {
        s.push('(');
        s.push_str(&mods.join(","));
        s.push(')');
    }
    if list(t.get("array_bounds")).next().is_some() {
        s.push_str("[]");
    }
    Some(s)
}

/// A column definition (CREATE TABLE column or ALTER TABLE ... ADD COLUMN).
fn column(cd: &Value, f: &mut Facts, adding: bool, table_pk: bool) {
    let name = str_field(cd, "colname");
    long_name(f, name);
    let ty = cd.get("type_name").and_then(type_word).unwrap_or_default();
    let serial = SERIAL_TYPES.contains(&ty.as_str());
    if !ty.is_empty() {
        attr(f, format!("column_type:{ty}"));
    }
    if serial {
        attr(f, "serial");
    }
    let mut not_null = bool_field(cd, "is_not_null");
    let mut has_default = serial || !str_field(cd, "identity").is_empty();
    let mut id = table_pk || name == "id" || name.ends_with("_id");
    if !str_field(cd, "identity").is_empty() {
        attr(f, "identity");
    }
    for c in list(cd.get("constraints")) {
        let Some(con) = node_body(c, "Constraint") else {
            continue;
        };
        match ConstrType::try_from(int_field(con, "contype")) {
            // NOT NULL is `column_not_null` / `column_required`, not a constraint word.
            Ok(ConstrType::ConstrNotnull) => {
                not_null = true;
                continue;
            }
            Ok(ConstrType::ConstrPrimary) => {
                not_null = true;
                id = true;
            }
            Ok(ConstrType::ConstrForeign) => id = true,
            Ok(ConstrType::ConstrDefault) => {
                has_default = true;
                attr(f, "column_default");
                if con.get("raw_expr").is_some_and(volatile) {
                    attr(f, "default_volatile");
                }
            }
            Ok(ConstrType::ConstrIdentity) => {
                has_default = true;
                attr(f, "identity");
            }
            Ok(ConstrType::ConstrGenerated) => {
                has_default = true;
                // PostgreSQL 18: VIRTUAL (the default) computes on read; STORED writes
                // every row.
                if str_field(con, "generated_kind") == "s" {
                    attr(f, "generated_stored");
                } else {
                    attr(f, "generated_virtual");
                }
            }
            Err(_) => continue,
            _ => {}
        }
        constraint(con, f, adding);
    }
    if not_null {
        attr(f, "column_not_null");
    }
    if adding && not_null && !has_default {
        attr(f, "column_required");
    }
    // A column of a domain type may rewrite the table whatever its own DEFAULT: without one
    // it takes the domain's, which may be volatile (every row rewritten), and a domain with
    // constraints makes PostgreSQL rewrite to check them against every row even with a
    // constant default. pgwarden does not ask the catalog what a type is, so any type that
    // is not built-in counts (fail closed).
    if adding && !builtin_type(cd.get("type_name")) {
        attr(f, "type_may_rewrite");
    }
    if id && !ty.is_empty() {
        attr(f, format!("id_column_type:{ty}"));
    }
}

/// Built-in base types (pg_catalog's names, as the grammar reports SQL-standard spellings):
/// no domain, so no default or constraint of their own.
const BUILTIN_TYPES: &[&str] = &[
    "bool",
    "boolean",
    "int2",
    "int4",
    "int8",
    "smallint",
    "integer",
    "int",
    "bigint",
    "float4",
    "float8",
    "real",
    "numeric",
    "decimal",
    "money",
    "text",
    "varchar",
    "bpchar",
    "char",
    "name",
    "bytea",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "jsonpath",
    "xml",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "bit",
    "varbit",
    "tsvector",
    "tsquery",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "oid",
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regrole",
    "regnamespace",
    "pg_lsn",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
    "int4multirange",
    "int8multirange",
    "nummultirange",
    "tsmultirange",
    "tstzmultirange",
    "datemultirange",
    "txid_snapshot",
    "pg_snapshot",
    "xid",
    "xid8",
    "cid",
    "tid",
];

/// Is the TypeName a built-in type (`pg_catalog.x`, or one of [`BUILTIN_TYPES`] unqualified,
/// which resolves in pg_catalog first), or an array of one?
fn builtin_type(t: Option<&Value>) -> bool {
    let Some(t) = t else { return false };
    let mut parts = Vec::new();
    super::nodes::collect_strings(t.get("names"), &mut parts);
    match parts.as_slice() {
        [name] => BUILTIN_TYPES.contains(&name.as_str()) || SERIAL_TYPES.contains(&name.as_str()),
        [schema, _] => schema == "pg_catalog",
        _ => false,
    }
}

/// A table or column constraint. `existing`: added to a table (or domain) that may hold
/// rows, so the constraint is checked against them now.
fn constraint(con: &Value, f: &mut Facts, existing: bool) {
    let Ok(t) = ConstrType::try_from(int_field(con, "contype")) else {
        return;
    };
    let kind = match t {
        ConstrType::ConstrForeign => "foreign_key",
        ConstrType::ConstrCheck => "check",
        ConstrType::ConstrUnique => "unique",
        ConstrType::ConstrPrimary => "primary_key",
        ConstrType::ConstrExclusion => "exclusion",
        ConstrType::ConstrNotnull if existing => "not_null",
        _ => return,
    };
    attr(f, format!("constraint:{kind}"));
    long_name(f, str_field(con, "conname"));
    let not_valid = bool_field(con, "skip_validation");
    if not_valid {
        attr(f, "not_valid");
    }
    let using_index = !str_field(con, "indexname").is_empty();
    if using_index {
        attr(f, "using_index");
    }
    if t == ConstrType::ConstrPrimary {
        attr(f, "has_primary_key");
    }
    if t == ConstrType::ConstrForeign && str_field(con, "fk_del_action") == "c" {
        attr(f, "on_delete_cascade");
    }
    if t == ConstrType::ConstrForeign && existing {
        // Validating the key locks and scans against the referenced table too.
        if let Some(name) = range_var(con.get("pktable")) {
            f.lookups.push(Lookup::Relation { name });
        }
    }
    if !existing {
        return;
    }
    // NOT ENFORCED (PostgreSQL 18) foreign keys and checks are not checked at all.
    let enforced = con
        .get("is_enforced")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    match t {
        ConstrType::ConstrForeign | ConstrType::ConstrCheck | ConstrType::ConstrNotnull
            if !not_valid && enforced =>
        {
            attr(f, format!("validate:{kind}"));
        }
        ConstrType::ConstrUnique | ConstrType::ConstrPrimary | ConstrType::ConstrExclusion
            if !using_index =>
        {
            attr(f, format!("builds_index:{kind}"));
        }
        _ => {}
    }
}

/// Does a DEFAULT expression call a function outside the non-volatile allowlist?
fn volatile(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, c)| {
            if k == "FuncCall" {
                let name = name_of(c.get("funcname"));
                if !NON_VOLATILE_DEFAULT_FUNCTIONS.contains(&super::unqualified(&name)) {
                    return true;
                }
            }
            volatile(c)
        }),
        Value::Array(a) => a.iter().any(volatile),
        _ => false,
    }
}

fn lock(b: &Value, f: &mut Facts) {
    for r in list(b.get("relations")) {
        if let Some(rv) = node_body(r, "RangeVar") {
            f.objects.extend(range_var(Some(rv)));
        }
    }
    // lockdefs.h; LOCK TABLE without a mode is ACCESS EXCLUSIVE.
    let mode = match int_field(b, "mode") {
        1 => "access share",
        2 => "row share",
        3 => "row exclusive",
        4 => "share update exclusive",
        5 => "share",
        6 => "share row exclusive",
        7 => "exclusive",
        _ => "access exclusive",
    };
    attr(f, format!("lock_mode:{mode}"));
    if bool_field(b, "nowait") {
        attr(f, "nowait");
    }
}

fn role_options(options: Option<&Value>, f: &mut Facts) {
    for d in defelems(options) {
        let on = defelem_bool(d);
        let word = match str_field(d, "defname") {
            "superuser" => "superuser",
            "createrole" => "createrole",
            "isreplication" => "replication",
            "bypassrls" => "bypassrls",
            "createdb" => "createdb",
            "canlogin" => "login",
            "inherit" => "inherit",
            // Never the value: passwords stay out of facts.
            "password" => {
                attr(f, "role_attribute:password");
                continue;
            }
            "validUntil" => {
                attr(f, "role_attribute:valid_until");
                continue;
            }
            "connectionlimit" => {
                attr(f, "role_attribute:connection_limit");
                continue;
            }
            // IN ROLE / IN GROUP: the new role becomes a member of these.
            "addroleto" => {
                for r in list(d.get("arg")).chain(
                    d.get("arg")
                        .and_then(|a| node_body(a, "List"))
                        .map(|l| list(l.get("items")))
                        .into_iter()
                        .flatten(),
                ) {
                    if let Some(n) = role_name(r) {
                        attr(f, format!("member_of:{n}"));
                    }
                }
                continue;
            }
            "adminmembers" => {
                attr(f, "admin_option");
                continue;
            }
            // ALTER GROUP g ADD USER u / CREATE ROLE g ROLE u: members gain g's privileges.
            "rolemembers" => {
                attr(f, "adds_members");
                continue;
            }
            _ => continue,
        };
        attr(
            f,
            if on {
                format!("role_attribute:{word}")
            } else {
                format!("role_attribute:no{word}")
            },
        );
    }
}

fn grant(b: &Value, f: &mut Facts) {
    let is_grant = bool_field(b, "is_grant");
    let objtype = object_type_words(int_field(b, "objtype"))
        .to_ascii_lowercase()
        .replace(' ', "_");
    attr(f, format!("object_type:{objtype}"));
    let privs: Vec<&Value> = list(b.get("privileges")).collect();
    if privs.is_empty() {
        attr(f, "all_privileges");
    }
    for p in privs {
        if let Some(ap) = node_body(p, "AccessPriv") {
            let name = str_field(ap, "priv_name");
            if name.is_empty() {
                // ALL (column list).
                attr(f, "all_privileges");
            } else {
                attr(f, format!("privilege:{}", name.to_ascii_lowercase()));
            }
        }
    }
    if GrantTargetType::try_from(int_field(b, "targtype"))
        == Ok(GrantTargetType::AclTargetAllInSchema)
    {
        attr(f, "all_in_schema");
        if ObjectType::try_from(int_field(b, "objtype")) == Ok(ObjectType::ObjectTable) {
            attr(f, "all_tables_in_schema");
        }
    }
    if is_grant && bool_field(b, "grant_option") {
        attr(f, "with_grant_option");
    }
}

/// CREATE / ALTER FUNCTION options: SECURITY DEFINER, SET parameters.
fn function_options(options: Option<&Value>, f: &mut Facts) {
    for d in defelems(options) {
        match str_field(d, "defname") {
            "security" if defelem_bool(d) => attr(f, "security_definer"),
            "leakproof" if defelem_bool(d) => attr(f, "leakproof"),
            "set" => {
                if let Some(s) = d.get("arg").and_then(|a| node_body(a, "VariableSetStmt")) {
                    let name = str_field(s, "name").to_ascii_lowercase();
                    let set = matches!(
                        VariableSetKind::try_from(int_field(s, "kind")),
                        Ok(VariableSetKind::VarSetValue) | Ok(VariableSetKind::VarSetCurrent)
                    );
                    if set && !name.is_empty() {
                        if name == "search_path" {
                            attr(f, "set_search_path");
                        }
                        attr(f, format!("set:{name}"));
                    }
                }
            }
            _ => {}
        }
    }
}
