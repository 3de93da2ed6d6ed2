//! Compiled match conditions and the pure functions that test them against facts and a
//! session. No I/O, no logging.

use std::net::IpAddr;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;

use crate::sql::{Class, CopyTarget, Facts, Flag, Nesting, Statement, WhereState};

/// A set of globs, matched case-sensitively or not.
#[derive(Debug, Clone)]
pub struct Globs(GlobSet);

impl Globs {
    pub fn new(patterns: &[String], case_insensitive: bool) -> Result<Globs, String> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let g = GlobBuilder::new(p)
                .case_insensitive(case_insensitive)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("bad glob {p:?}: {e}"))?;
            b.add(g);
        }
        b.build().map(Globs).map_err(|e| e.to_string())
    }

    pub fn any(&self, s: &str) -> bool {
        self.0.is_match(s)
    }
}

/// Conditions on one operation, and on the statement it belongs to.
#[derive(Debug, Clone, Default)]
pub struct StatementMatcher {
    pub tags: Option<Globs>,
    pub classes: Option<Vec<Class>>,
    pub subcommands: Option<Globs>,
    pub objects: Option<Globs>,
    pub flags: Vec<Flag>,
    pub not_flags: Vec<Flag>,
    pub where_clause: Option<Vec<WhereState>>,
    pub nesting: Option<Vec<Nesting>>,
    /// Qualified patterns (with a dot) and unqualified ones.
    pub functions: Option<(Option<Globs>, Option<Globs>)>,
    pub set_names: Option<Globs>,
    pub set_values: Option<Vec<String>>,
    pub copy_targets: Option<Vec<CopyTarget>>,
    pub copy_from: Option<bool>,
    pub roles: Option<Globs>,
    pub dynamic_sql: Option<bool>,
    pub attributes: Option<Globs>,
    pub not_attributes: Option<Globs>,
    pub created_in_session: Option<bool>,
    pub unparsed: Option<bool>,
    pub unreadable_encoding: Option<bool>,
    /// Checked per decision, after the conditions above: see [`Expr`].
    pub expr: Option<Expr>,
}

/// A compiled CEL expression. Variables: `statement` (`ops` — each with `tag`, `class`,
/// `nesting`, `objects`, `flags`, `subcommands`, `where_clause`, `copy`, `set`, `roles`,
/// `dynamic_sql` — `functions`, `tickets`) and `session` (`user`, `database`, `role`,
/// `application`, `client_addr`, `tls`, `in_transaction`, `ticket`, `lock_timeout_set`).
#[derive(Clone)]
pub struct Expr {
    pub source: String,
    program: std::sync::Arc<cel_interpreter::Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

#[derive(serde::Serialize)]
struct SessionVars<'a> {
    user: &'a str,
    database: &'a str,
    role: &'a str,
    application: &'a str,
    client_addr: String,
    tls: bool,
    in_transaction: bool,
    ticket: &'a str,
    lock_timeout_set: bool,
}

impl Expr {
    pub fn compile(source: &str) -> Result<Expr, String> {
        let program = cel_interpreter::Program::compile(source).map_err(|e| e.to_string())?;
        Ok(Expr {
            source: source.to_owned(),
            program: std::sync::Arc::new(program),
        })
    }

    /// Evaluates to true or false. An expression that fails at run time (a missing field, a
    /// type error) counts as matching: a rule never silently stops applying.
    pub fn eval(&self, stmt: Option<&Statement>, s: &SessionContext) -> bool {
        let mut ctx = cel_interpreter::Context::default();
        let empty = Statement {
            location: 0,
            text: String::new(),
            ops: Vec::new(),
            functions: Vec::new(),
            tickets: Vec::new(),
        };
        let stmt = stmt.unwrap_or(&empty);
        let vars = SessionVars {
            user: &s.user,
            database: &s.database,
            role: s.role.as_deref().unwrap_or(&s.user),
            application: &s.application,
            client_addr: s.client_addr.map(|a| a.to_string()).unwrap_or_default(),
            tls: s.tls,
            in_transaction: s.in_transaction,
            ticket: s.ticket.as_deref().unwrap_or(""),
            lock_timeout_set: s.lock_timeout_set,
        };
        let (Ok(sv), Ok(st)) = (
            cel_interpreter::to_value(&vars),
            cel_interpreter::to_value(stmt),
        ) else {
            return true;
        };
        ctx.add_variable_from_value("session", sv);
        ctx.add_variable_from_value("statement", st);
        !matches!(
            self.program.execute(&ctx),
            Ok(cel_interpreter::Value::Bool(false))
        )
    }
}

impl StatementMatcher {
    fn has_op_conditions(&self) -> bool {
        self.tags.is_some()
            || self.classes.is_some()
            || self.subcommands.is_some()
            || self.objects.is_some()
            || !self.flags.is_empty()
            || !self.not_flags.is_empty()
            || self.where_clause.is_some()
            || self.nesting.is_some()
            || self.set_names.is_some()
            || self.set_values.is_some()
            || self.copy_targets.is_some()
            || self.copy_from.is_some()
            || self.roles.is_some()
            || self.dynamic_sql.is_some()
            || self.attributes.is_some()
            || self.not_attributes.is_some()
    }

    /// The operations of `stmt` that the per-operation conditions select (every one when
    /// there are none, e.g. a rule written as one expression).
    pub fn selected_ops<'a>(&'a self, stmt: &'a Statement) -> impl Iterator<Item = &'a Facts> {
        let all = !self.has_op_conditions();
        stmt.ops.iter().filter(move |op| all || self.op_matches(op))
    }

    /// The part decided per session: encoding, objects created in this session, expression.
    pub fn session_part_matches(&self, stmt: Option<&Statement>, s: &SessionContext) -> bool {
        self.encoding_matches(s.unreadable_encoding)
            && self.created_matches(stmt, s)
            && self.expr.as_ref().is_none_or(|e| e.eval(stmt, s))
    }

    fn created_matches(&self, stmt: Option<&Statement>, s: &SessionContext) -> bool {
        let Some(want) = self.created_in_session else {
            return true;
        };
        let Some(stmt) = stmt else { return !want };
        stmt.ops.iter().any(|op| {
            let created = op.all_created(&s.created);
            self.op_matches(op) && created == want
        })
    }

    /// The session-dependent part: does the session's encoding condition hold?
    pub fn encoding_matches(&self, unreadable_encoding: bool) -> bool {
        self.unreadable_encoding
            .is_none_or(|want| want == unreadable_encoding)
    }

    /// Do the statement conditions hold? `None` statement means text that could not be
    /// inspected. (The encoding condition is checked per session: [`Self::encoding_matches`].)
    pub fn matches(&self, stmt: Option<&Statement>) -> bool {
        let Some(stmt) = stmt else {
            return self.unparsed == Some(true);
        };
        if self.unparsed == Some(true) {
            return false;
        }
        if let Some((qualified, bare)) = &self.functions {
            let hit = stmt.functions.iter().any(|f| {
                qualified.as_ref().is_some_and(|g| g.any(f))
                    || bare
                        .as_ref()
                        .is_some_and(|g| g.any(crate::sql::unqualified(f)))
            });
            if !hit {
                return false;
            }
        }
        if !self.has_op_conditions() {
            return true;
        }
        stmt.ops.iter().any(|op| self.op_matches(op))
    }

    fn op_matches(&self, op: &Facts) -> bool {
        if let Some(t) = &self.tags {
            if !t.any(&op.tag) {
                return false;
            }
        }
        if let Some(c) = &self.classes {
            if !c.contains(&op.class) {
                return false;
            }
        }
        if let Some(s) = &self.subcommands {
            if !op.subcommands.iter().any(|x| s.any(x)) {
                return false;
            }
        }
        if let Some(o) = &self.objects {
            if !op.objects.iter().any(|x| o.any(x)) {
                return false;
            }
        }
        if !self.flags.iter().all(|f| op.has(*f)) || self.not_flags.iter().any(|f| op.has(*f)) {
            return false;
        }
        if let Some(w) = &self.where_clause {
            if !w.contains(&op.where_clause) {
                return false;
            }
        }
        if let Some(n) = &self.nesting {
            if !n.contains(&op.nesting) {
                return false;
            }
        }
        if self.set_names.is_some() || self.set_values.is_some() {
            let Some(set) = op.set.as_ref().or(op.call_set.as_ref()) else {
                return false;
            };
            if let Some(n) = &self.set_names {
                if !n.any(&set.name) {
                    return false;
                }
            }
            if let Some(vals) = &self.set_values {
                let v = set
                    .value
                    .as_deref()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if !vals.iter().any(|x| x.eq_ignore_ascii_case(&v)) {
                    return false;
                }
            }
        }
        if self.copy_targets.is_some() || self.copy_from.is_some() {
            let Some(copy) = &op.copy else { return false };
            if let Some(t) = &self.copy_targets {
                if !t.contains(&copy.target) {
                    return false;
                }
            }
            if let Some(from) = self.copy_from {
                if copy.from != from {
                    return false;
                }
            }
        }
        if let Some(r) = &self.roles {
            if !op.roles.iter().any(|x| r.any(x)) {
                return false;
            }
        }
        if let Some(d) = self.dynamic_sql {
            if op.dynamic_sql != d {
                return false;
            }
        }
        if let Some(a) = &self.attributes {
            if !op.attributes.iter().any(|x| a.any(x)) {
                return false;
            }
        }
        if let Some(a) = &self.not_attributes {
            if op.attributes.iter().any(|x| a.any(x)) {
                return false;
            }
        }
        true
    }
}

/// A weekly time window in a time zone.
#[derive(Debug, Clone)]
pub struct Window {
    pub tz: jiff::tz::TimeZone,
    /// Days of the week (Monday = 1 … Sunday = 7); empty = every day.
    pub days: Vec<i8>,
    /// Minutes since midnight, [from, to); `to < from` wraps past midnight.
    pub from: Option<u16>,
    pub to: Option<u16>,
}

impl Window {
    pub fn contains(&self, at: jiff::Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let day = local.weekday().to_monday_one_offset();
        if !self.days.is_empty() && !self.days.contains(&day) {
            return false;
        }
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        match (self.from, self.to) {
            (Some(f), Some(t)) if f <= t => (f..t).contains(&minute),
            (Some(f), Some(t)) => minute >= f || minute < t,
            (Some(f), None) => minute >= f,
            (None, Some(t)) => minute < t,
            (None, None) => true,
        }
    }
}

/// A period between two instants, `until` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: jiff::Timestamp,
    pub until: jiff::Timestamp,
}

impl Period {
    pub fn contains(&self, at: jiff::Timestamp) -> bool {
        self.from <= at && at < self.until
    }
}

/// The session a statement arrives in.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub user: String,
    pub database: String,
    /// The effective role when the server reported one (SET ROLE), else the user.
    pub role: Option<String>,
    pub application: String,
    pub client_addr: Option<IpAddr>,
    pub tls: bool,
    pub in_transaction: bool,
    /// The ticket attached with SET pgwarden.ticket / startup options.
    pub ticket: Option<String>,
    pub unreadable_encoding: bool,
    /// Objects created in this session (tables, including temporary ones), as the inspector
    /// names them: dropping or altering these is exempt from rules that ask.
    pub created: std::sync::Arc<std::collections::HashSet<String>>,
    /// The session's lock_timeout is set to something other than 0.
    pub lock_timeout_set: bool,
    pub now: jiff::Timestamp,
}

impl Default for SessionContext {
    fn default() -> Self {
        SessionContext {
            user: String::new(),
            database: String::new(),
            role: None,
            application: String::new(),
            client_addr: None,
            tls: false,
            in_transaction: false,
            ticket: None,
            unreadable_encoding: false,
            created: Default::default(),
            lock_timeout_set: false,
            now: jiff::Timestamp::now(),
        }
    }
}

/// Conditions on the session.
#[derive(Debug, Clone, Default)]
pub struct SessionMatcher {
    pub users: Option<Globs>,
    pub databases: Option<Globs>,
    pub roles: Option<Globs>,
    pub applications: Option<Globs>,
    pub client_cidrs: Option<Vec<IpNet>>,
    pub tls: Option<bool>,
    pub in_transaction: Option<bool>,
    pub lock_timeout_set: Option<bool>,
    pub window: Option<Window>,
    pub outside_window: Option<Window>,
    pub during: Option<Vec<Period>>,
}

impl SessionMatcher {
    pub fn matches(&self, s: &SessionContext) -> bool {
        let glob = |g: &Option<Globs>, v: &str| g.as_ref().is_none_or(|g| g.any(v));
        glob(&self.users, &s.user)
            && glob(&self.databases, &s.database)
            && glob(&self.roles, s.role.as_deref().unwrap_or(&s.user))
            && glob(&self.applications, &s.application)
            && self.client_cidrs.as_ref().is_none_or(|nets| {
                s.client_addr
                    .is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
            })
            && self.tls.is_none_or(|t| t == s.tls)
            && self.in_transaction.is_none_or(|t| t == s.in_transaction)
            && self
                .lock_timeout_set
                .is_none_or(|t| t == s.lock_timeout_set)
            && self.window.as_ref().is_none_or(|w| w.contains(s.now))
            && self
                .outside_window
                .as_ref()
                .is_none_or(|w| !w.contains(s.now))
            && self
                .during
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p.contains(s.now)))
    }
}
