//! Policy files as written: serde structs that refuse unknown keys. `compile` turns them into
//! rules; nothing here decides anything.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `policies/*.toml` file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub rule: Vec<RawRule>,
    /// Who may use break-glass (`SET pgwarden.break_glass = 'reason'`).
    #[serde(default)]
    pub break_glass: Option<RawBreakGlass>,
}

/// `[break_glass] users = ["oncall_*"]`: globs on the database user.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreakGlass {
    #[serde(default)]
    pub users: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    pub description: String,
    #[serde(default)]
    pub severity: Option<String>,
    pub action: String,
    /// Size gating: the action when every table the statement locks is known to be small
    /// (the live catalog says so); `action` applies to large or unknown ones.
    #[serde(default)]
    pub small_action: Option<String>,
    pub message: String,
    #[serde(default)]
    pub hint: Option<String>,
    /// Staged rollout: decide and report, never refuse.
    #[serde(default)]
    pub monitor: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Conditions on the statement (each operation of it is tried).
    #[serde(rename = "match", default)]
    pub when: RawMatch,
    /// Conditions on the session.
    #[serde(default)]
    pub session: RawSession,
    /// Workflow: approvals a hold of this rule needs (default 1).
    #[serde(default)]
    pub approvals: Option<u32>,
    /// Workflow: approvers must belong to one of these token groups.
    #[serde(default)]
    pub approver_groups: Option<Vec<String>>,
    /// Workflow: how long a hold waits before it times out (`"15m"`).
    #[serde(default)]
    pub hold_timeout: Option<String>,
    /// Workflow: `require_ticket` without a covering ticket is `"refuse"`d or `"hold"`s.
    #[serde(default)]
    pub on_missing_ticket: Option<String>,
    /// Per-environment changes: `[rule.environments.development] action = "alert"`.
    #[serde(default)]
    pub environments: BTreeMap<String, RawEnvironment>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub small_action: Option<String>,
    #[serde(default)]
    pub monitor: Option<bool>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Statement conditions. Every condition given must hold; a list holds when any entry does
/// (except `flags`, which must all be present).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Command tags, case-insensitive, globs allowed: `"DROP TABLE"`, `"DROP *"`.
    pub tags: Option<Vec<String>>,
    pub classes: Option<Vec<String>>,
    /// ALTER sub-commands: `"DROP COLUMN"`, `"DISABLE TRIGGER*"`.
    pub subcommands: Option<Vec<String>>,
    /// Globs on target objects: `"public.*"`, `"*.audit_log"`.
    pub objects: Option<Vec<String>>,
    pub flags: Option<Vec<String>>,
    pub not_flags: Option<Vec<String>>,
    #[serde(rename = "where")]
    pub where_clause: Option<Vec<String>>,
    pub nesting: Option<Vec<String>>,
    /// Globs on functions called anywhere in the statement; a pattern without a dot matches
    /// the unqualified name.
    pub functions: Option<Vec<String>>,
    /// Globs on the variable a SET / RESET / set_config changes.
    pub set_names: Option<Vec<String>>,
    /// Values of that variable (case-insensitive).
    pub set_values: Option<Vec<String>>,
    pub copy_targets: Option<Vec<String>>,
    pub copy_from: Option<bool>,
    /// Globs on roles named (grantees, SET ROLE targets).
    pub roles: Option<Vec<String>>,
    pub dynamic_sql: Option<bool>,
    /// Globs on operation attributes (see `Facts::attributes`): any must match.
    pub attributes: Option<Vec<String>>,
    /// Globs on operation attributes: none may match.
    pub not_attributes: Option<Vec<String>>,
    /// `false`: only when some target object was not created in this session (a table
    /// created in the same session or transaction, or a temporary one, is exempt).
    pub created_in_session: Option<bool>,
    /// Text PostgreSQL's grammar rejected or pgwarden could not inspect.
    pub unparsed: Option<bool>,
    /// The session's client_encoding is one pgwarden cannot read exactly.
    pub unreadable_encoding: Option<bool>,
    /// A CEL expression over `statement` and `session` for what the fields cannot say,
    /// e.g. `statement.ops.exists(o, o.tag == "DROP TABLE" && o.objects.exists(x, x.startsWith("audit.")))`.
    pub expr: Option<String>,
}

/// Session conditions.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub users: Option<Vec<String>>,
    pub databases: Option<Vec<String>>,
    /// Globs on the effective role (after SET ROLE), falling back to the user.
    pub roles: Option<Vec<String>>,
    pub applications: Option<Vec<String>>,
    pub client_cidrs: Option<Vec<String>>,
    pub tls: Option<bool>,
    pub in_transaction: Option<bool>,
    /// Whether the session has a non-zero lock_timeout (SET lock_timeout, startup options).
    pub lock_timeout_set: Option<bool>,
    /// Only inside this weekly window.
    pub window: Option<RawWindow>,
    /// Only outside this weekly window (a change window: `action` applies outside it).
    pub outside_window: Option<RawWindow>,
    /// Only during one of these periods (a freeze).
    pub during: Option<Vec<RawPeriod>>,
}

/// A period between two instants (RFC 3339, `2026-11-27T00:00:00+01:00`), `until` excluded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeriod {
    pub from: String,
    pub until: String,
}

/// A time window in a named time zone: `{ tz = "Europe/Berlin", days = ["sat", "sun"] }`,
/// `{ tz = "UTC", from = "09:00", to = "17:00" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub tz: String,
    pub days: Option<Vec<String>>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A `policies/tests/*.toml` file of test cases.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTestFile {
    #[serde(default)]
    pub case: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    pub name: String,
    pub sql: String,
    pub expect: String,
    /// When given, exactly these rules must match.
    pub rules: Option<Vec<String>>,
    pub env: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub role: Option<String>,
    pub application: Option<String>,
    pub client_addr: Option<String>,
    pub tls: Option<bool>,
    pub in_transaction: Option<bool>,
    /// The ticket attached to the session: approved and covering everything unless the
    /// fields below say otherwise.
    pub ticket: Option<String>,
    /// `pending`, `approved`, `rejected`, `revoked` or `expired`.
    pub ticket_status: Option<String>,
    /// The ticket's scope, as `POST /api/tickets` takes it: `{ objects = ["public.orders*"] }`.
    pub ticket_scope: Option<BTreeMap<String, Vec<String>>>,
    /// RFC 3339 instants bounding the ticket's validity.
    pub ticket_valid_from: Option<String>,
    pub ticket_valid_until: Option<String>,
    /// Uses so far and the ticket's limit.
    pub ticket_uses: Option<u32>,
    pub ticket_max_uses: Option<u32>,
    /// `[holds] on_missing_ticket` of the proxy the case stands for (default `refuse`).
    pub on_missing_ticket: Option<String>,
    /// The session's `pgwarden.break_glass` reason.
    pub break_glass: Option<String>,
    /// Objects created earlier in the session (for `created_in_session`).
    pub created: Option<Vec<String>>,
    pub lock_timeout_set: Option<bool>,
    pub client_encoding: Option<String>,
    pub standard_conforming_strings: Option<bool>,
    /// RFC 3339 instant the case is decided at (for time windows).
    pub at: Option<String>,
    /// What the live catalog answers (absent: no catalog connection, every table large).
    pub catalog: Option<RawCatalog>,
}

/// A test case's live-catalog answers (see `crate::catalog`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// Tables by name as written in the SQL (an index's name stands for its table).
    #[serde(default)]
    pub relations: BTreeMap<String, crate::catalog::RelationSize>,
    /// Every lookup fails (catalog down or timing out).
    #[serde(default)]
    pub failed: bool,
    /// `table.column` with a validated `CHECK (column IS NOT NULL)` (or already NOT NULL).
    #[serde(default)]
    pub not_null_proven: Vec<String>,
    /// `table.column` = current type as `format_type` prints it.
    #[serde(default)]
    pub column_types: BTreeMap<String, String>,
    /// Roles with superuser-like attributes or memberships.
    #[serde(default)]
    pub privileged_roles: Vec<String>,
    /// Extensions only a superuser may install.
    #[serde(default)]
    pub untrusted_extensions: Vec<String>,
    /// Planner row estimates, one per statement of the case's SQL.
    #[serde(default)]
    pub estimates: Vec<f64>,
}
