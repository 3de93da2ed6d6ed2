//! Policy as code: rule files (`policies/*.toml`) are read strictly ([`raw`]), compiled with
//! every error reported at once ([`compile`]), and applied by [`Policy::decide`], a pure
//! function from an inspection and a session to a [`Decision`]. The same code decides on the
//! wire, in `pgwarden check`, and in `pgwarden policy test` ([`crate::workflow::cases`]).

pub mod compile;
pub mod matcher;
pub mod raw;

use std::path::PathBuf;

use serde::Serialize;

pub use compile::{load_dir, PolicyError, PolicyErrors};
pub use matcher::SessionContext;

use crate::sql::Inspection;
use matcher::{SessionMatcher, StatementMatcher};

/// What happens to a statement. Ordered: a stricter action compares greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Alert,
    RequireTicket,
    Hold,
    Block,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "allow" => Action::Allow,
            "alert" => Action::Alert,
            "require_ticket" => Action::RequireTicket,
            "hold" => Action::Hold,
            "block" => Action::Block,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Alert => "alert",
            Action::RequireTicket => "require_ticket",
            Action::Hold => "hold",
            Action::Block => "block",
        }
    }

    /// Does this action stop the statement (for now: holds and tickets refuse too)?
    pub fn refuses(self) -> bool {
        self >= Action::RequireTicket
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// What happens to a statement a rule holds or asks a ticket for (per rule, in its file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workflow {
    /// Approvals a hold needs (none given: the proxy's default, 1).
    pub approvals: Option<u32>,
    /// Approvers must be in one of these token groups (empty: any approver).
    pub approver_groups: Vec<String>,
    /// How long a hold waits (none: the proxy's `[holds] timeout`).
    pub hold_timeout: Option<std::time::Duration>,
    /// `require_ticket` without a covering ticket: refuse, or hold for an approval (none:
    /// the proxy's `[holds] on_missing_ticket`).
    pub on_missing_ticket: Option<OnMissingTicket>,
    /// Merged from several rules whose approver groups have none in common: nobody may
    /// approve (why, for the refusal).
    pub groups_conflict: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingTicket {
    Refuse,
    Hold,
}

impl Workflow {
    /// The workflow of several rules at once: the most approvals, the groups every rule
    /// accepts, the shortest timeout, and a hold if any rule asks for one.
    pub fn merge(&self, o: &Workflow) -> Workflow {
        // Every rule's groups must be met: an approver in a group each rule accepts.
        let (groups, groups_conflict) = match (&self.approver_groups[..], &o.approver_groups[..]) {
            ([], b) => (
                b.to_vec(),
                self.groups_conflict.clone().or(o.groups_conflict.clone()),
            ),
            (a, []) => (
                a.to_vec(),
                self.groups_conflict.clone().or(o.groups_conflict.clone()),
            ),
            (a, b) => {
                let both: Vec<String> = a.iter().filter(|g| b.contains(g)).cloned().collect();
                let conflict = if both.is_empty() {
                    Some(format!(
                        "the rules that hold it accept approvers from different groups ({} / {}), and no group is accepted by all of them",
                        a.join(", "),
                        b.join(", ")
                    ))
                } else {
                    None
                };
                (
                    both,
                    conflict
                        .or(self.groups_conflict.clone())
                        .or(o.groups_conflict.clone()),
                )
            }
        };
        Workflow {
            approvals: self.approvals.max(o.approvals),
            approver_groups: groups,
            hold_timeout: match (self.hold_timeout, o.hold_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            on_missing_ticket: self.on_missing_ticket.max(o.on_missing_ticket),
            groups_conflict,
        }
    }
}

/// One compiled rule, for one environment.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub action: Action,
    /// Size gating: the action when every table the statement locks is known to be small.
    pub small_action: Option<Action>,
    /// The live-catalog facts this rule reads.
    pub needs: crate::catalog::Needs,
    pub message: String,
    pub hint: Option<String>,
    pub monitor: bool,
    pub workflow: Workflow,
    pub file: PathBuf,
    pub line: usize,
    pub statement: StatementMatcher,
    pub session: SessionMatcher,
}

/// Whether the whole proxy enforces or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Monitor,
}

/// A compiled policy set for one environment.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Hash of the files' names and contents: every decision carries it.
    pub version: String,
    pub environment: String,
    pub rules: Vec<Rule>,
    /// The live-catalog facts any rule reads (nothing else is asked).
    pub needs: crate::catalog::Needs,
    /// Users who may use break-glass (`[break_glass] users`); none: nobody.
    pub break_glass: Option<matcher::Globs>,
}

/// One rule that matched one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    pub rule: String,
    pub action: Action,
    pub severity: Severity,
    /// Matched in monitor mode (the rule's or the proxy's): reported, not enforced.
    pub monitor: bool,
    pub statement: usize,
    pub message: String,
    pub hint: Option<String>,
    pub file: String,
    #[serde(skip)]
    pub workflow: Workflow,
}

/// The policy's verdict on one SQL string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What is enforced: the strictest action among matches not in monitor mode.
    pub action: Action,
    /// The strictest action among all matches, monitor ones included.
    pub strictest: Action,
    pub matches: Vec<RuleMatch>,
    pub policy_version: String,
}

impl Decision {
    /// Allow, with no rule matched.
    pub fn allow(policy_version: &str) -> Decision {
        Decision {
            action: Action::Allow,
            strictest: Action::Allow,
            matches: Vec::new(),
            policy_version: policy_version.to_owned(),
        }
    }

    /// The workflow of the enforced matches that decide the action.
    pub fn workflow(&self) -> Workflow {
        self.matches
            .iter()
            .filter(|m| !m.monitor && m.action == self.action)
            .fold(Workflow::default(), |w, m| w.merge(&m.workflow))
    }

    /// The match that decides the enforced action (the first of the strictest).
    pub fn deciding(&self) -> Option<&RuleMatch> {
        self.matches
            .iter()
            .filter(|m| !m.monitor && m.action == self.action)
            .min_by_key(|m| m.statement)
    }
}

impl Policy {
    /// May `user` use break-glass?
    pub fn break_glass_allows(&self, user: &str) -> bool {
        self.break_glass.as_ref().is_some_and(|g| g.any(user))
    }

    /// An empty policy: allows everything (used when no policy directory exists).
    pub fn empty(environment: &str) -> Policy {
        Policy {
            version: "empty".into(),
            environment: environment.into(),
            rules: Vec::new(),
            needs: Default::default(),
            break_glass: None,
        }
    }

    /// True when no rule's statement conditions hold for `ins`: whatever the session, the
    /// decision is to allow with no match (the hot path of a busy proxy).
    pub fn matches_nothing(&self, ins: &Inspection) -> bool {
        ins.memo
            .get_or(&self.version, || self.statement_matches(ins))
            .1
            .is_empty()
    }

    /// Decides on every statement of `ins` in `session`. Pure (the memo only caches).
    pub fn decide(&self, ins: &Inspection, session: &SessionContext, mode: Mode) -> Decision {
        // Statement conditions do not depend on the session: computed once per inspection
        // and policy version, then only session conditions are checked per call.
        let memo = ins
            .memo
            .get_or(&self.version, || self.statement_matches(ins));
        let mut matches = Vec::new();
        let mut local: Option<(u32, SessionContext)> = None;
        let mut walk = crate::sql::facts::CreatedWalk::new(ins, &session.created);
        for &(stmt, rule) in &memo.1 {
            let r = &self.rules[rule as usize];
            let facts = ins.statements.get(stmt as usize);
            // Earlier statements of the same text change what counts as created.
            let session = if local.as_ref().is_some_and(|(i, _)| *i == stmt) {
                &local.as_ref().expect("checked").1
            } else {
                match walk.at(stmt as usize) {
                    None => session,
                    Some(c) => {
                        let mut s = session.clone();
                        s.created = std::sync::Arc::new(c.clone());
                        &local.insert((stmt, s)).1
                    }
                }
            };
            if r.session.matches(session) && r.statement.session_part_matches(facts, session) {
                let action = match r.small_action {
                    Some(small) if facts.is_some_and(|f| all_small(r, f, session)) => small,
                    _ => r.action,
                };
                matches.push(RuleMatch {
                    rule: r.id.clone(),
                    action,
                    severity: r.severity,
                    monitor: r.monitor || mode == Mode::Monitor,
                    statement: stmt as usize,
                    message: r.message.clone(),
                    hint: r.hint.clone(),
                    file: r.file.display().to_string(),
                    workflow: r.workflow.clone(),
                });
            }
        }
        let enforced = |m: &&RuleMatch| !m.monitor;
        Decision {
            action: matches
                .iter()
                .filter(enforced)
                .map(|m| m.action)
                .max()
                .unwrap_or(Action::Allow),
            strictest: matches
                .iter()
                .map(|m| m.action)
                .max()
                .unwrap_or(Action::Allow),
            matches,
            policy_version: self.version.clone(),
        }
    }

    /// (statement, rule) pairs whose statement conditions hold, in statement then rule order.
    fn statement_matches(&self, ins: &Inspection) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut consider = |i: usize, stmt: Option<&crate::sql::Statement>| {
            for (ri, r) in self.rules.iter().enumerate() {
                if r.statement.matches(stmt) {
                    out.push((i as u32, ri as u32));
                }
            }
        };
        if ins.unparsed.is_some() {
            consider(0, None);
        } else {
            for (i, s) in ins.statements.iter().enumerate() {
                consider(i, Some(s));
            }
        }
        out
    }
}

/// True when the live catalog found small every table that the operations `rule` matched
/// lock (`size:small` on each, tables created in this session aside): the rule then takes
/// its `small_action`. Without catalog answers there is no size attribute, and every table
/// counts as large; so does an operation the catalog cannot size (ALTER DOMAIN, say).
fn all_small(rule: &Rule, s: &crate::sql::Statement, session: &SessionContext) -> bool {
    let mut sized = false;
    for op in rule.statement.selected_ops(s) {
        if op.all_created(&session.created) {
            continue;
        }
        if !op.attributes.iter().any(|a| a == "size:small") {
            return false;
        }
        sized = true;
    }
    sized
}

impl Policy {
    /// The catalog facts worth asking for `ins`: sizes and exemption proofs only when a rule
    /// that reads them matches the statement already (they can only soften a decision);
    /// roles, extensions and estimates whenever some rule reads them (they can only make a
    /// rule match).
    pub fn needs_for(&self, ins: &Inspection) -> crate::catalog::Needs {
        let mut n = crate::catalog::Needs {
            roles: self.needs.roles,
            extensions: self.needs.extensions,
            estimates: self.needs.estimates,
            ..Default::default()
        };
        if self.needs.sizes || self.needs.proofs {
            let memo = ins
                .memo
                .get_or(&self.version, || self.statement_matches(ins));
            for &(_, rule) in &memo.1 {
                let r = &self.rules[rule as usize].needs;
                n.sizes |= r.sizes;
                n.proofs |= r.proofs;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests;
