//! What the inspector says about a statement: typed facts that policies match on. One SQL
//! string holds statements; each statement holds operations: itself and every statement
//! nested in it that will run (data-modifying CTEs, EXPLAIN ANALYZE, COPY (query), CREATE
//! TABLE AS, PREPARE, CREATE RULE actions).

use serde::Serialize;

/// pgAudit's statement classes, refined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Read,
    Write,
    Ddl,
    Role,
    Function,
    Tcl,
    Session,
    Maintenance,
    Unknown,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 9] = [
        Class::Read,
        Class::Write,
        Class::Ddl,
        Class::Role,
        Class::Function,
        Class::Tcl,
        Class::Session,
        Class::Maintenance,
        Class::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Role => "role",
            Class::Function => "function",
            Class::Tcl => "tcl",
            Class::Session => "session",
            Class::Maintenance => "maintenance",
            Class::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Some(match s {
            "read" => Class::Read,
            "write" => Class::Write,
            "ddl" => Class::Ddl,
            "role" | "dcl" => Class::Role,
            "function" => Class::Function,
            "tcl" => Class::Tcl,
            "session" | "set" => Class::Session,
            "maintenance" => Class::Maintenance,
            "unknown" => Class::Unknown,
            _ => return None,
        })
    }
}

/// Where an operation sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Nesting {
    TopLevel,
    Cte,
    ExplainAnalyze,
    CopyQuery,
    CreateTableAs,
    Prepare,
    Rule,
    DoBlock,
    /// In the body (or a SET clause) of a function or procedure being created: it runs
    /// whenever the routine is called, not now.
    FunctionBody,
}

impl Nesting {
    pub fn parse(s: &str) -> Option<Nesting> {
        Some(match s {
            "top_level" => Nesting::TopLevel,
            "cte" => Nesting::Cte,
            "explain_analyze" => Nesting::ExplainAnalyze,
            "copy_query" => Nesting::CopyQuery,
            "create_table_as" => Nesting::CreateTableAs,
            "prepare" => Nesting::Prepare,
            "rule" => Nesting::Rule,
            "do_block" => Nesting::DoBlock,
            "function_body" => Nesting::FunctionBody,
            _ => return None,
        })
    }
}

/// Statement flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    Concurrently,
    IfExists,
    IfNotExists,
    Cascade,
    NotValid,
    Only,
    OrReplace,
    Temporary,
    Unlogged,
    Analyze,
}

impl Flag {
    pub const ALL: [Flag; 10] = [
        Flag::Concurrently,
        Flag::IfExists,
        Flag::IfNotExists,
        Flag::Cascade,
        Flag::NotValid,
        Flag::Only,
        Flag::OrReplace,
        Flag::Temporary,
        Flag::Unlogged,
        Flag::Analyze,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Flag::Concurrently => "concurrently",
            Flag::IfExists => "if_exists",
            Flag::IfNotExists => "if_not_exists",
            Flag::Cascade => "cascade",
            Flag::NotValid => "not_valid",
            Flag::Only => "only",
            Flag::OrReplace => "or_replace",
            Flag::Temporary => "temporary",
            Flag::Unlogged => "unlogged",
            Flag::Analyze => "analyze",
        }
    }

    pub fn parse(s: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// The WHERE clause of an UPDATE or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhereState {
    NotApplicable,
    Absent,
    Present,
    /// Present but always true: `true`, `1=1`, `x=x`, `... OR true`. For writes (UPDATE,
    /// DELETE, MERGE actions, ON CONFLICT DO UPDATE) also a condition that no column of the
    /// target row decides (`WHERE $1`, `WHERE now() > ...`): every row or none.
    TriviallyTrue,
}

impl WhereState {
    pub fn parse(s: &str) -> Option<WhereState> {
        Some(match s {
            "absent" => WhereState::Absent,
            "present" => WhereState::Present,
            "trivially_true" => WhereState::TriviallyTrue,
            "not_applicable" => WhereState::NotApplicable,
            _ => return None,
        })
    }
}

/// COPY's direction and the kind of its far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyTarget {
    /// STDIN / STDOUT: data flows through the connection.
    Client,
    /// A file on the database server.
    ServerFile,
    /// A program run on the database server.
    Program,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyFacts {
    pub from: bool,
    pub target: CopyTarget,
}

/// What SET / RESET / set_config changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetFacts {
    /// Lower-cased variable name (`role`, `session_authorization`, `pgwarden.ticket`).
    pub name: String,
    /// The value as text; `None` for RESET / SET ... TO DEFAULT.
    pub value: Option<String>,
    pub local: bool,
}

/// One operation: a statement or a statement nested in one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// PostgreSQL's command tag, e.g. `DROP TABLE`, `ALTER TABLE`, `DELETE`, `SET`.
    pub tag: String,
    pub class: Class,
    pub nesting: Nesting,
    /// Objects the operation targets, schema-qualified when written so, folded as PostgreSQL
    /// folds identifiers (unquoted lower-cased, quoted kept).
    pub objects: Vec<String>,
    pub flags: Vec<Flag>,
    /// ALTER sub-commands, e.g. `DROP COLUMN`, `ALTER CONSTRAINT`, `DISABLE TRIGGER`.
    pub subcommands: Vec<String>,
    pub where_clause: WhereState,
    pub copy: Option<CopyFacts>,
    pub set: Option<SetFacts>,
    /// A SET clause of CREATE / ALTER FUNCTION / PROCEDURE: applied whenever the routine
    /// runs, not now. Rules on `set_names` / `set_values` match it as they match `set`;
    /// the session does not apply it to itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_set: Option<SetFacts>,
    /// Roles named: grantees, SET ROLE targets, role names in role statements.
    pub roles: Vec<String>,
    /// DO blocks and function bodies that build SQL at run time (EXECUTE, format(), quote_ident).
    pub dynamic_sql: bool,
    /// Name of a SQL-level prepared statement this operation defines or runs.
    pub prepared_name: Option<String>,
    /// Further facts as `name` or `name:value` words, for the details rules need that have no
    /// field of their own (`constraint:foreign_key`, `lock_mode:access exclusive`,
    /// `role_attribute:superuser`, `language:c`, `security_definer`…). Matched with globs.
    pub attributes: Vec<String>,
    /// Questions only the live catalog can answer about this operation, beyond the sizes of
    /// its target objects (see `crate::catalog`).
    pub lookups: Vec<Lookup>,
}

/// A question for the live catalog that a statement's text raises.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lookup {
    /// A table whose size counts (a target, a foreign key's referenced table).
    Relation { name: String },
    /// An index whose table's size counts (DROP INDEX, REINDEX INDEX).
    Index { name: String },
    /// SET NOT NULL: does a validated `CHECK (column IS NOT NULL)` already prove it?
    NotNullProof { table: String, column: String },
    /// ALTER COLUMN TYPE without USING: is the change from the current type binary-coercible?
    TypeChange {
        table: String,
        column: String,
        new_type: String,
    },
    /// A role switched to or granted: its attributes and memberships.
    Role { name: String },
    /// An extension created or updated: is it trusted?
    Extension { name: String },
}

impl Facts {
    pub fn new(tag: impl Into<String>, class: Class, nesting: Nesting) -> Facts {
        Facts {
            tag: tag.into(),
            class,
            nesting,
            objects: Vec::new(),
            flags: Vec::new(),
            subcommands: Vec::new(),
            where_clause: WhereState::NotApplicable,
            copy: None,
            set: None,
            call_set: None,
            roles: Vec::new(),
            dynamic_sql: false,
            prepared_name: None,
            attributes: Vec::new(),
            lookups: Vec::new(),
        }
    }

    /// Does this operation, the statement `first` (not a statement nested in CREATE SCHEMA
    /// or a DO body, which may not run), create a table that outlives its transaction?
    /// IF NOT EXISTS may have created nothing; ON COMMIT DROP is gone at commit.
    pub fn creates_table(&self, first: bool) -> bool {
        first
            && matches!(
                self.tag.as_str(),
                "CREATE TABLE" | "CREATE TABLE AS" | "SELECT INTO" | "CREATE MATERIALIZED VIEW"
            )
            && !self.has(Flag::IfNotExists)
            && !self.attributes.iter().any(|a| a == "on_commit_drop")
    }

    /// Were all the objects it targets created in this session (`created`)? (A foreign
    /// key's referenced table is not a target: a new table's key may reference an old one.)
    pub fn all_created(&self, created: &std::collections::HashSet<String>) -> bool {
        !self.objects.is_empty() && self.objects.iter().all(|o| created.contains(o))
    }

    /// The index names a top-level CREATE INDEX creates (`index_name:` attributes).
    pub fn created_index_names(&self, first: bool) -> Vec<String> {
        if !first || self.tag != "CREATE INDEX" || self.has(Flag::IfNotExists) {
            return Vec::new();
        }
        self.attributes
            .iter()
            .filter_map(|a| a.strip_prefix("index_name:"))
            .map(str::to_owned)
            .collect()
    }

    pub fn has(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }

    pub(crate) fn flag(&mut self, flag: Flag, on: bool) {
        if on && !self.has(flag) {
            self.flags.push(flag);
        }
    }
}

/// One statement of a SQL string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Byte offset of the statement in the inspected string.
    pub location: usize,
    /// The statement's text (trimmed), for reports; never logged at info level.
    pub text: String,
    /// The statement itself first, then nested operations.
    pub ops: Vec<Facts>,
    /// Every function called, at any depth, qualified as written, folded.
    pub functions: Vec<String>,
    /// Tickets from `/* pgwarden:ticket=CHG-123 */` comments.
    pub tickets: Vec<String>,
}

/// Why a string could not be inspected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unparsed {
    pub reason: String,
}

/// The result of inspecting one SQL string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub statements: Vec<Statement>,
    /// Set when the grammar rejected the text or the inspector could not finish: the string
    /// must be refused (fail closed).
    pub unparsed: Option<Unparsed>,
    /// Some fact depends on a literal's value: the inspection may not be shared by texts
    /// that differ only in literals.
    #[serde(skip)]
    pub literal_sensitive: bool,
    /// What the live catalog could not answer, for the refusal's DETAIL (see `catalog`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Which rules of which policy version matched which statement, on statement facts alone:
    /// computed once per cached inspection and policy, so a cache hit decides in nanoseconds.
    #[serde(skip)]
    pub memo: Memo,
}

impl Inspection {
    /// Tables that statements before statement `i` of this text create: if statement `i`
    /// runs at all, they exist and were created in this session (an error in a
    /// multi-statement Query skips the rest). IF NOT EXISTS may have created nothing.
    pub fn created_before(&self, i: usize) -> Vec<String> {
        let mut out: Vec<String> = self
            .created_at(i, &std::collections::HashSet::new())
            .unwrap_or_default()
            .into_iter()
            .collect();
        out.sort();
        out
    }

    /// What counts as created in this session when statement `i` runs, from `created`
    /// (the session's) and the statements before it in this text, followed as the session
    /// follows them: creations add; DROP, RENAME and SET SCHEMA remove their objects; a
    /// search_path change, RESET ALL, SET ROLE (`"$user"`) or DISCARD forgets every name
    /// written without a schema. `None` when no earlier statement changes anything.
    pub fn created_at(
        &self,
        i: usize,
        created: &std::collections::HashSet<String>,
    ) -> Option<std::collections::HashSet<String>> {
        CreatedWalk::new(self, created).at(i).cloned()
    }
}

/// [`Inspection::created_at`] for statements visited in order (the decision, the catalog's
/// questions and answers, the ledger): each earlier statement is applied once, so a text of
/// n statements is followed in O(n).
pub struct CreatedWalk<'a> {
    ins: &'a Inspection,
    base: &'a std::collections::HashSet<String>,
    /// Statements applied so far.
    next: usize,
    out: Option<std::collections::HashSet<String>>,
    /// Indexes created here, with their tables: dropping the table drops them.
    indexes: Vec<(String, String)>,
}

impl<'a> CreatedWalk<'a> {
    pub fn new(ins: &'a Inspection, base: &'a std::collections::HashSet<String>) -> Self {
        CreatedWalk {
            ins,
            base,
            next: 0,
            out: None,
            indexes: Vec::new(),
        }
    }

    /// What counts as created when statement `i` runs (`None`: just `base`). Visiting an
    /// earlier statement than the last starts over.
    pub fn at(&mut self, i: usize) -> Option<&std::collections::HashSet<String>> {
        if i < self.next {
            *self = CreatedWalk::new(self.ins, self.base);
        }
        while self.next < i.min(self.ins.statements.len()) {
            for (k, op) in self.ins.statements[self.next].ops.iter().enumerate() {
                apply_created(op, k, self.base, &mut self.out, &mut self.indexes);
            }
            self.next += 1;
        }
        self.out.as_ref()
    }

    /// Like [`Self::at`], falling back to `base`.
    pub fn set_at(&mut self, i: usize) -> &std::collections::HashSet<String> {
        let base = self.base;
        self.at(i).unwrap_or(base)
    }
}

/// Follows operation `op` (the `k`th of its statement) as the session does: creations add;
/// DROP, RENAME and SET SCHEMA remove their objects; a search_path change, RESET ALL, SET
/// ROLE or DISCARD forgets every name written without a schema; a rollback forgets what
/// this text created.
fn apply_created(
    op: &Facts,
    k: usize,
    created: &std::collections::HashSet<String>,
    out: &mut Option<std::collections::HashSet<String>>,
    indexes: &mut Vec<(String, String)>,
) {
    // Runs when a routine created here is called, not now.
    if op.nesting == Nesting::FunctionBody {
        return;
    }
    let forgets_unqualified = op.set.as_ref().is_some_and(|x| {
        matches!(
            x.name.as_str(),
            "search_path" | "role" | "session_authorization"
        ) || (x.name == "all" && x.value.is_none())
    }) || op.tag == "DISCARD";
    if forgets_unqualified {
        out.get_or_insert_with(|| created.clone())
            .retain(|n| n.contains('.'));
    }
    // A rollback (to a savepoint, too) may undo creations: forget them all.
    if op.tag.starts_with("ROLLBACK") || op.tag == "ABORT" {
        let o = out.get_or_insert_with(|| created.clone());
        o.retain(|n| created.contains(n));
    }
    if op
        .subcommands
        .iter()
        .any(|c| c == "RENAME" || c == "SET SCHEMA")
        || op.tag.starts_with("DROP ")
    {
        let o = out.get_or_insert_with(|| created.clone());
        o.retain(|n| !op.objects.contains(n));
        for (idx, table) in indexes.iter() {
            if op.objects.contains(table) {
                o.remove(idx);
            }
        }
    }
    // An older table attached as a partition of a table created here: that table's DROP
    // would drop the older one's rows too, so it no longer counts as created here.
    if op.tag == "ATTACH PARTITION" {
        let o = out.get_or_insert_with(|| created.clone());
        let older = op
            .attributes
            .iter()
            .filter_map(|a| a.strip_prefix("attached:"))
            .any(|x| !o.contains(x));
        if older {
            for parent in &op.objects {
                o.remove(parent);
            }
        }
    }
    if op.creates_table(k == 0) {
        out.get_or_insert_with(|| created.clone())
            .extend(op.objects.iter().cloned());
    }
    let names = op.created_index_names(k == 0);
    if !names.is_empty() {
        let o = out.get_or_insert_with(|| created.clone());
        if op.objects.iter().all(|t| o.contains(t)) {
            for n in names {
                if let Some(t) = op.objects.first() {
                    indexes.push((n.clone(), t.clone()));
                }
                o.insert(n);
            }
        }
    }
}

/// Per-inspection memo of statement-level rule matches (see [`Inspection::memo`]).
#[derive(Default)]
pub struct Memo {
    matches: arc_swap::ArcSwapOption<(String, Vec<(u32, u32)>)>,
}

impl Memo {
    /// The matches for `version`, computed with `f` when absent or stale.
    pub fn get_or(
        &self,
        version: &str,
        f: impl FnOnce() -> Vec<(u32, u32)>,
    ) -> std::sync::Arc<(String, Vec<(u32, u32)>)> {
        if let Some(m) = self.matches.load_full() {
            if m.0 == version {
                return m;
            }
        }
        let m = std::sync::Arc::new((version.to_owned(), f()));
        self.matches.store(Some(m.clone()));
        m
    }
}

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Memo {}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}
