//! From pg_query's parse tree to [`Facts`]. The tree is walked generically (as the JSON
//! form pg_query's protobuf types serialize to), so nothing nested anywhere is missed: every
//! statement node becomes an operation with its nesting, every function call is collected.
//! Per-statement details (tags, objects, flags, WHERE) are read by field name.

use pg_query::protobuf::{
    AlterTableType, DropBehavior, FunctionParameterMode, ObjectType, TransactionStmtKind,
    VariableSetKind,
};
use serde_json::Value;

use super::facts::{Class, CopyFacts, CopyTarget, Facts, Flag, Nesting, SetFacts, WhereState};
use super::nodes::{
    bool_field, collect_strings, const_text, defelem_text, int_field, is_true_word, name_of,
    node_body, node_kind, object_type_words, range_var, role_name, roles_in, str_field, words_of,
};

/// Collects operations and function calls from one statement's tree.
#[derive(Default)]
pub(super) struct Walker {
    pub ops: Vec<Facts>,
    pub functions: Vec<String>,
    /// Bodies of DO blocks met in the walk, to be inspected as PL/pgSQL.
    pub do_bodies: Vec<(usize, String)>,
    /// Bodies of routines created in the walk (by the index of their CREATE operation), to
    /// be inspected for what they will run when called.
    pub routine_bodies: Vec<(usize, RoutineBody)>,
    /// SQL text given as a constant to a function that runs it (`query_to_xml('...')`,
    /// `ts_stat('...')`), with the nesting of the call: inspected as statements run there.
    pub sql_strings: Vec<(Nesting, String)>,
}

/// Built-in (and tablefunc) functions that parse and run an SQL text argument: the
/// positions of those arguments, and the argument count the form has (`None`: any).
/// `ts_rewrite(query, select)` runs its second argument; `ts_rewrite(q, target, subst)`
/// runs nothing.
const SQL_STRING_FUNCTIONS: &[(&str, &[usize], Option<usize>)] = &[
    ("query_to_xml", &[0], None),
    ("query_to_xmlschema", &[0], None),
    ("query_to_xml_and_xmlschema", &[0], None),
    ("ts_stat", &[0], None),
    ("ts_rewrite", &[1], Some(2)),
    ("crosstab", &[0, 1], None),
    ("crosstab2", &[0], None),
    ("crosstab3", &[0], None),
    ("crosstab4", &[0], None),
];

/// A routine body pgwarden reads. (SQL-standard bodies, BEGIN ATOMIC ... END and RETURN
/// expr, are part of the parse tree and walked in place.)
pub(super) enum RoutineBody {
    /// LANGUAGE sql `AS '...'`: SQL statements.
    Sql(String),
    /// LANGUAGE plpgsql.
    Plpgsql(super::plpgsql::BodyFacts),
}

impl Walker {
    /// Walks a `{"node": {...}}` value as a statement at `nesting`.
    pub fn statement(&mut self, v: &Value, nesting: Nesting) {
        self.visit(v, nesting);
    }

    fn visit(&mut self, v: &Value, nesting: Nesting) {
        match v {
            Value::Object(m) => {
                if m.len() == 1 {
                    let (k, body) = m.iter().next().expect("one entry");
                    if k.starts_with(|c: char| c.is_ascii_uppercase()) {
                        self.node(k, body, nesting);
                        return;
                    }
                }
                for child in m.values() {
                    self.visit(child, nesting);
                }
            }
            Value::Array(a) => {
                for child in a {
                    self.visit(child, nesting);
                }
            }
            _ => {}
        }
    }

    fn node(&mut self, kind: &str, body: &Value, nesting: Nesting) {
        match kind {
            "FuncCall" => {
                let name = name_of(body.get("funcname"));
                if super::unqualified(&name) == "set_config" {
                    self.ops.push(set_config_facts(body, nesting));
                }
                self.sql_string_call(&name, body, nesting);
                self.functions.push(name);
                self.visit(body, nesting);
            }
            "CommonTableExpr" => {
                let inner = if nesting == Nesting::TopLevel {
                    Nesting::Cte
                } else {
                    nesting
                };
                self.visit(body, inner);
            }
            // RETURN of a SQL-standard function body: only its expression matters.
            "ReturnStmt" => self.visit(body, nesting),
            k if k.ends_with("Stmt") => {
                let top = self.ops.is_empty();
                // Nested SELECTs are reads inside something already reported.
                if top || k != "SelectStmt" {
                    let mut f = stmt_facts(k, body, nesting);
                    if f.tag == "DO" {
                        match do_body(body) {
                            Some(src) => self.do_bodies.push((self.ops.len(), src)),
                            // A body in another language (plperl, plpython3u, plv8, ...)
                            // cannot be read: it may run any SQL, so it counts as dynamic.
                            None => f.dynamic_sql = true,
                        }
                    }
                    if f.tag.starts_with("CREATE FUNCTION") || f.tag.starts_with("CREATE PROCEDURE")
                    {
                        match routine_body(body) {
                            Some(RoutineBody::Plpgsql(bf)) => {
                                f.dynamic_sql = bf.dynamic_sql;
                                if !bf.parsed {
                                    // Nothing of what it runs can be seen (fail closed).
                                    f.attributes.push("body_unreadable".into());
                                }
                                let at = self.ops.len();
                                self.routine_bodies.push((at, RoutineBody::Plpgsql(bf)));
                            }
                            Some(sql) => self.routine_bodies.push((self.ops.len(), sql)),
                            None => {}
                        }
                    }
                    let referenced = super::implied::referenced_functions(k, body);
                    let implied = super::implied::ops(k, body, &f);
                    self.ops.push(f);
                    self.ops.extend(implied);
                    // A function this statement makes callable later (an aggregate's SFUNC,
                    // an operator's FUNCTION) runs with arguments known only then: set_config
                    // sets any setting to any value, a function running SQL text runs any
                    // statement.
                    for name in &referenced {
                        if super::unqualified(name) == "set_config" {
                            let mut s = Facts::new("SET", Class::Session, nesting);
                            s.roles.push("*".into());
                            s.attributes.push("referenced_function".into());
                            s.call_set = Some(SetFacts {
                                name: "*".into(),
                                value: Some("*".into()),
                                local: false,
                            });
                            self.ops.push(s);
                        }
                        if runs_sql_text(name) {
                            let short = super::unqualified(name).to_ascii_lowercase();
                            let mut d = Facts::new("SQL STRING", Class::Unknown, nesting);
                            d.dynamic_sql = true;
                            d.objects.push(short.clone());
                            d.attributes.push(format!("sql_string_function:{short}"));
                            self.ops.push(d);
                        }
                    }
                    self.functions.extend(referenced);
                }
                self.children(k, body, nesting);
            }
            _ => self.visit(body, nesting),
        }
    }

    /// A call of a function that runs SQL text (see [`SQL_STRING_FUNCTIONS`]): constant text
    /// is inspected as the statements it is; anything else (a parameter, a concatenation,
    /// named arguments) cannot be seen, and is reported as an operation that builds SQL at
    /// run time (`dynamic_sql`, tag `SQL STRING`).
    fn sql_string_call(&mut self, name: &str, body: &Value, nesting: Nesting) {
        let short = super::unqualified(name).to_ascii_lowercase();
        let Some((_, positions, arity)) = SQL_STRING_FUNCTIONS.iter().find(|(n, _, _)| *n == short)
        else {
            return;
        };
        let args: Vec<&Value> = body
            .get("args")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        if arity.is_some_and(|n| args.len() != n) {
            return;
        }
        let named = args.iter().any(|a| node_body(a, "NamedArgExpr").is_some());
        let mut hidden = named;
        for &i in positions.iter() {
            match args.get(i).and_then(|a| sql_text_const(a)) {
                Some(sql) if !named => self.sql_strings.push((nesting, sql)),
                _ if args.get(i).is_some() || named => hidden = true,
                _ => {}
            }
        }
        if hidden {
            let mut f = Facts::new("SQL STRING", Class::Unknown, nesting);
            f.dynamic_sql = true;
            f.objects.push(short.clone());
            f.attributes.push(format!("sql_string_function:{short}"));
            self.ops.push(f);
        }
    }

    /// Descends into a statement's children with the nesting they run in.
    fn children(&mut self, kind: &str, body: &Value, nesting: Nesting) {
        let inner = |n: Nesting| {
            if nesting == Nesting::TopLevel {
                n
            } else {
                nesting
            }
        };
        match kind {
            "ExplainStmt" => {
                // Without ANALYZE nothing runs: the nested statement is only planned.
                if explain_analyze(body) {
                    if let Some(q) = body.get("query") {
                        self.visit(q, inner(Nesting::ExplainAnalyze));
                    }
                }
            }
            "CopyStmt" => self.visit(body, inner(Nesting::CopyQuery)),
            "CreateTableAsStmt" => self.visit(body, inner(Nesting::CreateTableAs)),
            "PrepareStmt" => self.visit(body, inner(Nesting::Prepare)),
            "RuleStmt" => self.visit(body, inner(Nesting::Rule)),
            // A SQL-standard body (BEGIN ATOMIC ... END, RETURN expr) runs when the routine
            // is called: its statements are operations nested in the function body.
            "CreateFunctionStmt" => {
                if let Some(b) = body.get("sql_body").filter(|b| !b.is_null()) {
                    self.visit(b, Nesting::FunctionBody);
                }
            }
            // The table definition inside is not a CREATE TABLE of its own.
            "CreateForeignTableStmt" => {}
            _ => self.visit(body, nesting),
        }
    }
}

/// Does the function named `name` (however qualified) run an SQL text argument?
pub(super) fn runs_sql_text(name: &str) -> bool {
    let short = super::unqualified(name).to_ascii_lowercase();
    SQL_STRING_FUNCTIONS.iter().any(|(n, _, _)| *n == short)
}

/// A string constant, through casts (`'SELECT 1'`, `'SELECT 1'::text`); not a number or a
/// boolean, which are no SQL text.
fn sql_text_const(v: &Value) -> Option<String> {
    if let Some(tc) = node_body(v, "TypeCast") {
        return tc.get("arg").and_then(sql_text_const);
    }
    let c = node_body(v, "AConst")?;
    c.get("val")?.get("Sval")?;
    const_text(v)
}

fn explain_analyze(body: &Value) -> bool {
    body.get("options")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| node_body(o, "DefElem"))
        .any(|d| {
            d.get("defname").and_then(Value::as_str) == Some("analyze")
                && d.get("arg")
                    .is_none_or(|a| a.is_null() || const_text(a).is_none_or(|t| is_true_word(&t)))
        })
}

fn subcommand_name(t: i32) -> String {
    let Ok(t) = AlterTableType::try_from(t) else {
        return "UNKNOWN".into();
    };
    match t {
        AlterTableType::AtDisableTrig => "DISABLE TRIGGER".into(),
        AlterTableType::AtDisableTrigAll => "DISABLE TRIGGER ALL".into(),
        AlterTableType::AtDisableTrigUser => "DISABLE TRIGGER USER".into(),
        AlterTableType::AtEnableTrig => "ENABLE TRIGGER".into(),
        AlterTableType::AtEnableTrigAll => "ENABLE TRIGGER ALL".into(),
        AlterTableType::AtEnableTrigUser => "ENABLE TRIGGER USER".into(),
        // Fires only while session_replication_role = replica: off for ordinary sessions.
        AlterTableType::AtEnableReplicaTrig => "ENABLE REPLICA TRIGGER".into(),
        // Fires even while session_replication_role = replica.
        AlterTableType::AtEnableAlwaysTrig => "ENABLE ALWAYS TRIGGER".into(),
        AlterTableType::AtEnableReplicaRule => "ENABLE REPLICA RULE".into(),
        AlterTableType::AtEnableAlwaysRule => "ENABLE ALWAYS RULE".into(),
        AlterTableType::AtAlterColumnType => "ALTER COLUMN TYPE".into(),
        AlterTableType::AtColumnDefault => "ALTER COLUMN DEFAULT".into(),
        AlterTableType::AtSetTableSpace => "SET TABLESPACE".into(),
        AlterTableType::AtSetUnLogged => "SET UNLOGGED".into(),
        AlterTableType::AtChangeOwner => "OWNER TO".into(),
        AlterTableType::AtNoForceRowSecurity => "NO FORCE ROW SECURITY".into(),
        t => words_of(t.as_str_name().trim_start_matches("AT_")),
    }
}

fn do_body(body: &Value) -> Option<String> {
    let lang = defelem_text(body.get("args"), "language").unwrap_or_else(|| "plpgsql".into());
    if !lang.eq_ignore_ascii_case("plpgsql") {
        return None;
    }
    defelem_text(body.get("args"), "as")
}

/// The body of a CREATE FUNCTION / PROCEDURE in SQL (`AS '...'`) or PL/pgSQL, to inspect.
/// Other languages are not read (the native-code rules judge them).
fn routine_body(body: &Value) -> Option<RoutineBody> {
    let lang = defelem_text(body.get("options"), "language").unwrap_or_default();
    let src = defelem_text(body.get("options"), "as")?;
    if lang.eq_ignore_ascii_case("sql") {
        return Some(RoutineBody::Sql(src));
    }
    if !lang.eq_ignore_ascii_case("plpgsql") {
        return None;
    }
    // `inspect_body` compiles a body as a parameterless `RETURNS void` function, which
    // PL/pgSQL rejects for bodies that RETURN a value, RETURN NEXT / QUERY, assign to a
    // parameter or to NEW in a trigger: most real functions. Compile it with the function's
    // own signature first; fall back to `inspect_body` (which fails closed).
    if let Some(bf) = with_own_signature(body, &src)
        .as_deref()
        .and_then(super::plpgsql::inspect_compiled)
    {
        return Some(RoutineBody::Plpgsql(bf));
    }
    let trigger = body
        .get("return_type")
        .filter(|r| !r.is_null())
        .map(|r| name_of(r.get("names")))
        .is_some_and(|t| matches!(super::unqualified(&t), "trigger" | "event_trigger"));
    if trigger {
        if let Some(bf) = super::plpgsql::inspect_trigger_body(&src) {
            return Some(RoutineBody::Plpgsql(bf));
        }
    }
    Some(RoutineBody::Plpgsql(super::plpgsql::inspect_body(&src)))
}

/// `CREATE FUNCTION pgwarden_body(<the function's parameters>) RETURNS <its type> AS <body>`:
/// names, modes and types as written (types are not looked up when compiling a body).
fn with_own_signature(b: &Value, src: &str) -> Option<String> {
    let mut n = 0;
    let tag = loop {
        let t = format!("$pgw{n}$");
        if !src.contains(&t) {
            break t;
        }
        n += 1;
    };
    let mut params = Vec::new();
    let mut table = Vec::new();
    for p in b
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let p = node_body(p, "FunctionParameter")?;
        let ty = type_text(p.get("arg_type")?)?;
        let name = match str_field(p, "name") {
            "" => String::new(),
            n => format!("{} ", quote_ident(n)),
        };
        let decl = format!("{name}{ty}");
        match FunctionParameterMode::try_from(int_field(p, "mode")) {
            Ok(FunctionParameterMode::FuncParamTable) => table.push(decl),
            Ok(FunctionParameterMode::FuncParamOut) => params.push(format!("OUT {decl}")),
            Ok(FunctionParameterMode::FuncParamInout) => params.push(format!("INOUT {decl}")),
            Ok(FunctionParameterMode::FuncParamVariadic) => params.push(format!("VARIADIC {decl}")),
            _ => params.push(decl),
        }
    }
    let returns = if !table.is_empty() {
        format!(" RETURNS TABLE ({})", table.join(", "))
    } else if let Some(rt) = b.get("return_type").filter(|r| !r.is_null()) {
        let setof = if bool_field(rt, "setof") {
            "SETOF "
        } else {
            ""
        };
        format!(" RETURNS {setof}{}", type_text(rt)?)
    } else {
        String::new()
    };
    let kind = if bool_field(b, "is_procedure") {
        "PROCEDURE"
    } else {
        "FUNCTION"
    };
    Some(format!(
        "CREATE {kind} pgwarden_body({}){returns} AS {tag}{src}{tag} LANGUAGE plpgsql",
        params.join(", ")
    ))
}

/// A TypeName as SQL: quoted name parts, `%TYPE`, `[]`.
pub(super) fn type_text(t: &Value) -> Option<String> {
    let mut parts = Vec::new();
    collect_strings(t.get("names"), &mut parts);
    if parts.is_empty() {
        return None;
    }
    let mut s: Vec<String> = parts.iter().map(|p| quote_ident(p)).collect();
    if bool_field(t, "pct_type") {
        s.last_mut()?.push_str("%TYPE");
    }
    let mut s = s.join(".");
    if t.get("array_bounds")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        s.push_str("[]");
    }
    Some(s)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Facts of one statement node (without its nested statements).
fn stmt_facts(kind: &str, b: &Value, nesting: Nesting) -> Facts {
    let mut f = Facts::new(words_of(kind), Class::Unknown, nesting);
    let rel = |f: &mut Facts, field: &str| {
        if let Some(r) = range_var(b.get(field)) {
            f.objects.push(r);
        }
        if let Some(rv) = b.get(field) {
            f.flag(
                Flag::Only,
                rv.get("inh").and_then(Value::as_bool) == Some(false),
            );
        }
    };
    match kind {
        "SelectStmt" => {
            f.tag = "SELECT".into();
            f.class = Class::Read;
            if let Some(into) = b.get("into_clause").filter(|v| !v.is_null()) {
                f.tag = "SELECT INTO".into();
                f.class = Class::Ddl;
                if let Some(r) = range_var(into.get("rel")) {
                    f.objects.push(r);
                }
            }
        }
        "InsertStmt" => {
            f.tag = "INSERT".into();
            f.class = Class::Write;
            rel(&mut f, "relation");
            // INSERT ... SELECT (not VALUES, not DEFAULT VALUES) may write any number of rows.
            let query = b
                .get("select_stmt")
                .and_then(|q| node_body(q, "SelectStmt"));
            if query.is_some_and(|q| {
                q.get("values_lists")
                    .is_none_or(|v| v.as_array().is_none_or(Vec::is_empty))
            }) {
                f.attributes.push("insert_select".into());
            }
        }
        "UpdateStmt" | "DeleteStmt" => {
            f.tag = if kind == "UpdateStmt" {
                "UPDATE"
            } else {
                "DELETE"
            }
            .into();
            f.class = Class::Write;
            rel(&mut f, "relation");
            f.where_clause = super::predicate::row_condition(
                b.get("where_clause"),
                &super::predicate::target_names(b.get("relation")),
            );
        }
        "MergeStmt" => {
            f.tag = "MERGE".into();
            f.class = Class::Write;
            rel(&mut f, "relation");
        }
        "TruncateStmt" => {
            f.tag = "TRUNCATE TABLE".into();
            f.class = Class::Write;
            for r in b
                .get("relations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(rv) = node_body(r, "RangeVar") {
                    f.objects.extend(range_var(Some(rv)));
                    f.flag(Flag::Only, !bool_field(rv, "inh"));
                }
            }
            f.flag(Flag::Cascade, is_cascade(b));
        }
        "DropStmt" => {
            f.tag = format!("DROP {}", object_type_words(int_field(b, "remove_type")));
            f.class = Class::Ddl;
            for o in b
                .get("objects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = match node_kind(o) {
                    Some(("ObjectWithArgs", owa)) => name_of(owa.get("objname")),
                    Some(("TypeName", tn)) => name_of(tn.get("names")),
                    _ => name_of(Some(o)),
                };
                f.objects.push(name);
            }
            f.flag(Flag::IfExists, bool_field(b, "missing_ok"));
            f.flag(Flag::Cascade, is_cascade(b));
            f.flag(Flag::Concurrently, bool_field(b, "concurrent"));
        }
        "DropdbStmt" => {
            f.tag = "DROP DATABASE".into();
            f.class = Class::Ddl;
            f.objects.push(str_field(b, "dbname").to_owned());
            f.flag(Flag::IfExists, bool_field(b, "missing_ok"));
        }
        "DropRoleStmt" => {
            f.tag = "DROP ROLE".into();
            f.class = Class::Role;
            f.roles = roles_in(b.get("roles"));
            f.flag(Flag::IfExists, bool_field(b, "missing_ok"));
        }
        "DropOwnedStmt" => {
            f.tag = "DROP OWNED".into();
            f.class = Class::Ddl;
            f.roles = roles_in(b.get("roles"));
            f.flag(Flag::Cascade, is_cascade(b));
        }
        "DropTableSpaceStmt" => {
            f.tag = "DROP TABLESPACE".into();
            f.class = Class::Ddl;
            f.objects.push(str_field(b, "tablespacename").to_owned());
        }
        "DropSubscriptionStmt" => {
            f.tag = "DROP SUBSCRIPTION".into();
            f.class = Class::Ddl;
            f.objects.push(str_field(b, "subname").to_owned());
            f.flag(Flag::Cascade, is_cascade(b));
        }
        "AlterTableStmt" => {
            f.tag = format!("ALTER {}", object_type_words(int_field(b, "objtype")));
            f.class = Class::Ddl;
            rel(&mut f, "relation");
            f.flag(Flag::IfExists, bool_field(b, "missing_ok"));
            for c in b
                .get("cmds")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(cmd) = node_body(c, "AlterTableCmd") {
                    f.subcommands
                        .push(subcommand_name(int_field(cmd, "subtype")));
                    f.flag(Flag::Cascade, is_cascade(cmd));
                    if let Some(def) = cmd.get("def").and_then(|d| node_body(d, "Constraint")) {
                        f.flag(Flag::NotValid, bool_field(def, "skip_validation"));
                    }
                }
            }
        }
        "RenameStmt" => {
            f.tag = format!("ALTER {}", object_type_words(int_field(b, "rename_type")));
            f.class = Class::Ddl;
            rel(&mut f, "relation");
            let col =
                ObjectType::try_from(int_field(b, "rename_type")) == Ok(ObjectType::ObjectColumn);
            f.subcommands
                .push(if col { "RENAME COLUMN" } else { "RENAME" }.into());
            if col {
                f.tag = format!("ALTER {}", object_type_words(int_field(b, "relation_type")));
            }
        }
        "IndexStmt" => {
            f.tag = "CREATE INDEX".into();
            f.class = Class::Ddl;
            rel(&mut f, "relation");
            f.flag(Flag::Concurrently, bool_field(b, "concurrent"));
            f.flag(Flag::IfNotExists, bool_field(b, "if_not_exists"));
        }
        "CreateStmt" => {
            f.tag = "CREATE TABLE".into();
            f.class = Class::Ddl;
            rel(&mut f, "relation");
            relpersistence(&mut f, b.get("relation"));
            f.flag(Flag::IfNotExists, bool_field(b, "if_not_exists"));
        }
        "CreateTableAsStmt" => {
            let matview =
                ObjectType::try_from(int_field(b, "objtype")) == Ok(ObjectType::ObjectMatview);
            f.tag = if matview {
                "CREATE MATERIALIZED VIEW"
            } else {
                "CREATE TABLE AS"
            }
            .into();
            f.class = Class::Ddl;
            if let Some(into) = b.get("into") {
                f.objects.extend(range_var(into.get("rel")));
                relpersistence(&mut f, into.get("rel"));
            }
            f.flag(Flag::IfNotExists, bool_field(b, "if_not_exists"));
        }
        "ViewStmt" => {
            f.tag = "CREATE VIEW".into();
            f.class = Class::Ddl;
            f.objects.extend(range_var(b.get("view")));
            f.flag(Flag::OrReplace, bool_field(b, "replace"));
        }
        "CreateFunctionStmt" => {
            f.tag = if bool_field(b, "is_procedure") {
                "CREATE PROCEDURE"
            } else {
                "CREATE FUNCTION"
            }
            .into();
            f.class = Class::Ddl;
            f.objects.push(name_of(b.get("funcname")));
            f.flag(Flag::OrReplace, bool_field(b, "replace"));
        }
        "DoStmt" => {
            f.tag = "DO".into();
            f.class = Class::Function;
        }
        "CallStmt" => {
            f.tag = "CALL".into();
            f.class = Class::Function;
        }
        "VariableSetStmt" => set_facts(&mut f, b),
        "VariableShowStmt" => {
            f.tag = "SHOW".into();
            f.class = Class::Session;
            f.objects.push(str_field(b, "name").to_ascii_lowercase());
        }
        "AlterSystemStmt" => {
            f.class = Class::Ddl;
            if let Some(s) = b.get("setstmt") {
                set_facts(&mut f, s);
            }
            f.tag = "ALTER SYSTEM".into();
            f.class = Class::Ddl;
        }
        "TransactionStmt" => {
            f.class = Class::Tcl;
            f.tag = match TransactionStmtKind::try_from(int_field(b, "kind")) {
                Ok(TransactionStmtKind::TransStmtBegin) => "BEGIN",
                Ok(TransactionStmtKind::TransStmtStart) => "START TRANSACTION",
                Ok(TransactionStmtKind::TransStmtCommit) => "COMMIT",
                Ok(TransactionStmtKind::TransStmtRollback) => "ROLLBACK",
                Ok(TransactionStmtKind::TransStmtSavepoint) => "SAVEPOINT",
                Ok(TransactionStmtKind::TransStmtRelease) => "RELEASE",
                Ok(TransactionStmtKind::TransStmtRollbackTo) => "ROLLBACK TO",
                Ok(TransactionStmtKind::TransStmtPrepare) => "PREPARE TRANSACTION",
                Ok(TransactionStmtKind::TransStmtCommitPrepared) => "COMMIT PREPARED",
                Ok(TransactionStmtKind::TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
                _ => "TRANSACTION",
            }
            .into();
        }
        "CopyStmt" => {
            f.tag = "COPY".into();
            let from = bool_field(b, "is_from");
            f.class = if from { Class::Write } else { Class::Read };
            f.objects.extend(range_var(b.get("relation")));
            let target = if bool_field(b, "is_program") {
                CopyTarget::Program
            } else if !str_field(b, "filename").is_empty() {
                CopyTarget::ServerFile
            } else {
                CopyTarget::Client
            };
            f.copy = Some(CopyFacts { from, target });
        }
        "GrantStmt" => {
            f.tag = if bool_field(b, "is_grant") {
                "GRANT"
            } else {
                "REVOKE"
            }
            .into();
            f.class = Class::Role;
            f.roles = roles_in(b.get("grantees"));
            f.flag(Flag::Cascade, is_cascade(b));
            for o in b
                .get("objects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match node_kind(o) {
                    Some(("RangeVar", rv)) => f.objects.extend(range_var(Some(rv))),
                    Some(("ObjectWithArgs", owa)) => f.objects.push(name_of(owa.get("objname"))),
                    _ => f.objects.push(name_of(Some(o))),
                }
            }
        }
        "GrantRoleStmt" => {
            f.tag = if bool_field(b, "is_grant") {
                "GRANT ROLE"
            } else {
                "REVOKE ROLE"
            }
            .into();
            f.class = Class::Role;
            f.roles = roles_in(b.get("grantees"));
            f.flag(Flag::Cascade, is_cascade(b));
            for r in b
                .get("granted_roles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(ap) = node_body(r, "AccessPriv") {
                    f.objects.push(str_field(ap, "priv_name").to_owned());
                }
            }
        }
        "AlterDefaultPrivilegesStmt" => {
            f.tag = "ALTER DEFAULT PRIVILEGES".into();
            f.class = Class::Role;
            if let Some(a) = b.get("action") {
                f.roles = roles_in(a.get("grantees"));
                // Granting to PUBLIC widens access, revoking from it narrows it.
                f.subcommands.push(
                    if bool_field(a, "is_grant") {
                        "GRANT"
                    } else {
                        "REVOKE"
                    }
                    .into(),
                );
            }
        }
        "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" => {
            f.class = Class::Role;
            let stmt_type = int_field(b, "stmt_type");
            f.tag = match (kind, stmt_type) {
                ("CreateRoleStmt", 2) => "CREATE USER",
                ("CreateRoleStmt", 3) => "CREATE GROUP",
                ("CreateRoleStmt", _) => "CREATE ROLE",
                _ => "ALTER ROLE",
            }
            .into();
            if let Some(r) = b
                .get("role")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                // CREATE ROLE names its role as a plain string.
                f.roles.push(r.to_owned());
            } else if let Some(r) = b.get("role").filter(|r| !r.is_null()).and_then(role_name) {
                f.roles.push(r);
            } else if !str_field(b, "role").is_empty() {
                f.roles.push(str_field(b, "role").to_owned());
            }
            if kind == "AlterRoleSetStmt" {
                if let Some(s) = b.get("setstmt") {
                    set_facts(&mut f, s);
                    f.tag = "ALTER ROLE".into();
                    f.class = Class::Role;
                }
            }
        }
        "AlterDatabaseSetStmt" => {
            if let Some(s) = b.get("setstmt") {
                set_facts(&mut f, s);
            }
            f.tag = "ALTER DATABASE".into();
            f.class = Class::Ddl;
            f.objects.push(str_field(b, "dbname").to_owned());
        }
        "AlterDomainStmt" => {
            f.tag = "ALTER DOMAIN".into();
            f.class = Class::Ddl;
            f.objects.push(name_of(b.get("type_name")));
            f.flag(Flag::Cascade, is_cascade(b));
            f.flag(Flag::IfExists, bool_field(b, "missing_ok"));
        }
        "CreatePolicyStmt" => {
            f.tag = "CREATE POLICY".into();
            f.class = Class::Ddl;
            f.objects.extend(range_var(b.get("table")));
            f.roles = roles_in(b.get("roles"));
            f.where_clause = match b.get("qual").filter(|q| !q.is_null()) {
                None => WhereState::Absent,
                Some(q) if super::predicate::trivially_true(q) => WhereState::TriviallyTrue,
                Some(_) => WhereState::Present,
            };
            f.subcommands.push(
                if bool_field(b, "permissive") {
                    "PERMISSIVE"
                } else {
                    "RESTRICTIVE"
                }
                .into(),
            );
        }
        "ExplainStmt" => {
            f.tag = "EXPLAIN".into();
            f.class = Class::Read;
            f.flag(Flag::Analyze, explain_analyze(b));
        }
        "PrepareStmt" => {
            f.tag = "PREPARE".into();
            f.class = Class::Session;
            f.prepared_name = Some(str_field(b, "name").to_owned());
        }
        "ExecuteStmt" => {
            f.tag = "EXECUTE".into();
            f.class = Class::Unknown;
            f.prepared_name = Some(str_field(b, "name").to_owned());
        }
        "DeallocateStmt" => {
            f.tag = "DEALLOCATE".into();
            f.class = Class::Session;
        }
        "VacuumStmt" => {
            f.tag = if bool_field(b, "is_vacuumcmd") {
                "VACUUM"
            } else {
                "ANALYZE"
            }
            .into();
            f.class = Class::Maintenance;
            if defelem_present(b.get("options"), "full") {
                f.subcommands.push("FULL".into());
            }
        }
        "ClusterStmt" | "ReindexStmt" | "CheckPointStmt" => {
            f.class = Class::Maintenance;
            f.flag(
                Flag::Concurrently,
                defelem_present(b.get("params"), "concurrently"),
            );
        }
        "RefreshMatViewStmt" => {
            f.tag = "REFRESH MATERIALIZED VIEW".into();
            f.class = Class::Maintenance;
            f.objects.extend(range_var(b.get("relation")));
            f.flag(Flag::Concurrently, bool_field(b, "concurrent"));
        }
        "LockStmt" => {
            f.tag = "LOCK TABLE".into();
            f.class = Class::Tcl;
        }
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => f.class = Class::Read,
        "ListenStmt" | "UnlistenStmt" | "NotifyStmt" | "DiscardStmt" => f.class = Class::Session,
        "LoadStmt" => {
            f.tag = "LOAD".into();
            f.class = Class::Ddl;
            f.objects.push(str_field(b, "filename").to_owned());
        }
        k if k.starts_with("Create")
            || k.starts_with("Alter")
            || k.starts_with("Drop")
            || k.starts_with("Define")
            || k.starts_with("Comment") =>
        {
            f.class = Class::Ddl;
        }
        _ => {}
    }
    super::details::add(kind, b, &mut f);
    f
}

fn relpersistence(f: &mut Facts, rv: Option<&Value>) {
    if let Some(rv) = rv {
        let p = str_field(rv, "relpersistence");
        f.flag(Flag::Temporary, p == "t");
        f.flag(Flag::Unlogged, p == "u");
    }
}

fn is_cascade(b: &Value) -> bool {
    DropBehavior::try_from(int_field(b, "behavior")) == Ok(DropBehavior::DropCascade)
}

fn defelem_present(options: Option<&Value>, name: &str) -> bool {
    options
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| node_body(o, "DefElem"))
        .any(|d| {
            str_field(d, "defname") == name
                && d.get("arg")
                    .is_none_or(|a| a.is_null() || const_text(a).is_none_or(|t| is_true_word(&t)))
        })
}

/// `set_config('role', 'admin', false)` changes a setting like SET does: reported as a SET
/// operation so the same rules catch both. A name that is not a constant is reported as `*`.
fn set_config_facts(b: &Value, nesting: Nesting) -> Facts {
    let mut f = Facts::new("SET", Class::Session, nesting);
    let args: Vec<&Value> = b
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let name = args
        .first()
        .and_then(|a| const_text(a))
        .map(|n| n.to_ascii_lowercase())
        .unwrap_or_else(|| "*".into());
    // A value that is not a constant is unknown until run time: `*`, like the name.
    let value = args
        .get(1)
        .map(|a| const_text(a).unwrap_or_else(|| "*".into()))
        .map(|v| canonical_value(&name, v));
    let local = args
        .get(2)
        .and_then(|a| const_text(a))
        .is_some_and(|t| is_true_word(&t));
    if matches!(name.as_str(), "role" | "session_authorization" | "*") {
        f.roles.push(value.clone().unwrap_or_else(|| "*".into()));
    }
    f.set = Some(SetFacts { name, value, local });
    f
}

pub(super) fn set_facts(f: &mut Facts, b: &Value) {
    f.class = Class::Session;
    let kind = VariableSetKind::try_from(int_field(b, "kind"));
    let name = str_field(b, "name").to_ascii_lowercase();
    let (tag, value) = match kind {
        Ok(VariableSetKind::VarSetValue) => {
            let vals: Vec<String> = b
                .get("args")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(const_text)
                .collect();
            ("SET", Some(canonical_value(&name, vals.join(", "))))
        }
        Ok(VariableSetKind::VarSetDefault) => ("SET", None),
        Ok(VariableSetKind::VarReset) | Ok(VariableSetKind::VarResetAll) => ("RESET", None),
        Ok(VariableSetKind::VarSetCurrent) => ("SET", None),
        // SET TRANSACTION / SET SESSION CHARACTERISTICS and friends.
        _ => ("SET", None),
    };
    let name = if name.is_empty() && kind == Ok(VariableSetKind::VarResetAll) {
        "all".to_owned()
    } else {
        name
    };
    f.tag = tag.into();
    if matches!(name.as_str(), "role" | "session_authorization") {
        if let Some(v) = &value {
            f.roles.push(v.clone());
        }
    }
    f.set = Some(SetFacts {
        name,
        value,
        local: bool_field(b, "is_local"),
    });
}

/// A setting's value as the server will hold it, where spellings differ: client_encoding
/// names are matched as PostgreSQL matches them (case and punctuation ignored, aliases
/// resolved), so `'Shift-JIS'`, `'sjis'` and `'MS_Kanji'` are all reported as `SJIS`.
fn canonical_value(name: &str, value: String) -> String {
    if name == "client_encoding" {
        if let Some(c) = canonical_encoding(&value) {
            return c.to_owned();
        }
    }
    value
}

/// PostgreSQL's name for an encoding given by any of its aliases (src/common/encnames.c),
/// or `None` when PostgreSQL would reject the name.
pub(super) fn canonical_encoding(s: &str) -> Option<&'static str> {
    let clean: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Some(match clean.as_str() {
        "abc" | "tcvn" | "tcvn5712" | "vscii" | "win1258" | "windows1258" => "WIN1258",
        "alt" | "win866" | "windows866" => "WIN866",
        "big5" | "win950" | "windows950" => "BIG5",
        "euccn" => "EUC_CN",
        "eucjis2004" => "EUC_JIS_2004",
        "eucjp" => "EUC_JP",
        "euckr" => "EUC_KR",
        "euctw" => "EUC_TW",
        "gb18030" => "GB18030",
        "gbk" | "win936" | "windows936" => "GBK",
        "iso88591" | "latin1" => "LATIN1",
        "iso88592" | "latin2" => "LATIN2",
        "iso88593" | "latin3" => "LATIN3",
        "iso88594" | "latin4" => "LATIN4",
        "iso88599" | "latin5" => "LATIN5",
        "iso885910" | "latin6" => "LATIN6",
        "iso885913" | "latin7" => "LATIN7",
        "iso885914" | "latin8" => "LATIN8",
        "iso885915" | "latin9" => "LATIN9",
        "iso885916" | "latin10" => "LATIN10",
        "iso88595" => "ISO_8859_5",
        "iso88596" => "ISO_8859_6",
        "iso88597" => "ISO_8859_7",
        "iso88598" => "ISO_8859_8",
        "johab" => "JOHAB",
        "koi8" | "koi8r" => "KOI8R",
        "koi8u" => "KOI8U",
        "mskanji" | "shiftjis" | "sjis" | "win932" | "windows932" => "SJIS",
        "shiftjis2004" => "SHIFT_JIS_2004",
        "muleinternal" => "MULE_INTERNAL",
        "sqlascii" => "SQL_ASCII",
        "uhc" | "win949" | "windows949" => "UHC",
        "unicode" | "utf8" => "UTF8",
        "win" | "win1251" | "windows1251" => "WIN1251",
        "win1250" | "windows1250" => "WIN1250",
        "win1252" | "windows1252" => "WIN1252",
        "win1253" | "windows1253" => "WIN1253",
        "win1254" | "windows1254" => "WIN1254",
        "win1255" | "windows1255" => "WIN1255",
        "win1256" | "windows1256" => "WIN1256",
        "win1257" | "windows1257" => "WIN1257",
        "win874" | "windows874" => "WIN874",
        _ => return None,
    })
}
