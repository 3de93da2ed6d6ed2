//! `pgwarden audit report`, pure: audit records ([`read`]) → a [`Report`] (changes by
//! ticket, user and database; refusals; holds and their approvers; break-glass uses) →
//! text, CSV, JSON or a self-contained HTML page with inline SVG charts ([`render`],
//! [`html`]). The command itself (files, flags, stdout) is `crate::commands::audit_report`.
//!
//! A *change* is a statement record that was not refused and has a class other than
//! `read`; its outcome is the `outcome` record whose `decisions` name its `seq` in the same
//! log (found anywhere in the files read, so a batch that ended after `--until` still
//! shows how it ended). Every other record is left out unless its `ts` is in
//! `[since, until)`.

pub mod html;
pub mod read;
pub mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use serde::Serialize;

use read::{Body, ErrorInfo, Log, Range, Record, StatementRecord};

/// How a change ended at the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded,
    Failed,
    /// No outcome record names it (the session ended first, or the log was cut).
    NoOutcome,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::NoOutcome => "no outcome",
        }
    }
}

/// A statement's outcome, joined by `seq`. The outcome is the batch's: when a batch of
/// several statements failed, each of them shows the failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeView {
    pub status: Status,
    pub sqlstate: Option<String>,
    pub message: Option<String>,
    /// Rows the batch's commands reported (sum; none when no command reported a count).
    pub rows: Option<u64>,
    pub duration_us: Option<u64>,
}

/// One statement record, with what the report derives from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub log_id: String,
    pub seq: u64,
    pub ts: Timestamp,
    pub session: read::SessionInfo,
    pub statement: read::StatementInfo,
    pub decision: read::DecisionInfo,
    pub approval: Option<read::ApprovalInfo>,
    pub refusal: Option<ErrorInfo>,
    pub change: bool,
    /// For a statement that was not refused.
    pub outcome: Option<OutcomeView>,
}

/// Changes grouped under one key (a ticket, a user, a database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Group {
    /// Null in JSON for changes without a ticket.
    pub key: Option<String>,
    pub changes: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub no_outcome: u64,
    pub users: BTreeSet<String>,
    pub databases: BTreeSet<String>,
    pub tickets: BTreeSet<String>,
}

/// A count per key (refusals by rule, by user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Count {
    pub key: String,
    pub count: u64,
}

/// A hold: its last lifecycle record in range, and the statement its approval let run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoldView {
    pub id: u64,
    pub status: String,
    pub user: String,
    pub database: String,
    pub sql: String,
    pub rules: Vec<String>,
    pub approvals_required: u32,
    pub approvers: Vec<String>,
    pub opened_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    pub closed_by: Option<String>,
    pub reason: Option<String>,
    /// The `seq` of the statement record that ran under this hold's approval.
    pub ran_as: Option<u64>,
}

/// A break-glass use (a `break_glass_used` record).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakGlassView {
    pub review: u64,
    pub at: Timestamp,
    pub user: String,
    pub database: String,
    pub reason: String,
    pub rules: Vec<String>,
    pub sql: String,
    pub reviewed_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Summary {
    pub records: u64,
    pub skipped_lines: u64,
    pub statements: u64,
    pub changes: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub no_outcome: u64,
    pub refusals: u64,
    pub holds: u64,
    pub holds_approved: u64,
    pub break_glass_uses: u64,
    /// Statement records whose decision says break-glass let them through.
    pub break_glass_statements: u64,
    /// Records in range, by `type`.
    pub by_type: BTreeMap<String, u64>,
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub files: Vec<String>,
    pub summary: Summary,
    /// Every statement record in range, in log order (CSV has one row each).
    #[serde(skip)]
    pub statements: Vec<Entry>,
    pub by_ticket: Vec<Group>,
    pub by_user: Vec<Group>,
    pub by_database: Vec<Group>,
    pub refusals_by_rule: Vec<Count>,
    pub holds: Vec<HoldView>,
    pub break_glass: Vec<BreakGlassView>,
}

impl Report {
    pub fn changes(&self) -> impl Iterator<Item = &Entry> {
        self.statements.iter().filter(|e| e.change)
    }

    pub fn refusals(&self) -> impl Iterator<Item = &Entry> {
        self.statements.iter().filter(|e| e.decision.refused)
    }
}

fn outcome_view(o: &read::OutcomeRecord) -> OutcomeView {
    let counted: Vec<u64> = o.commands.iter().filter_map(|c| c.rows).collect();
    OutcomeView {
        status: if o.error.is_some() {
            Status::Failed
        } else {
            Status::Succeeded
        },
        sqlstate: o.error.as_ref().map(|e| e.sqlstate.clone()),
        message: o.error.as_ref().map(|e| e.message.clone()),
        rows: (!counted.is_empty()).then(|| counted.iter().sum()),
        duration_us: Some(o.duration_us),
    }
}

fn entry(r: &Record, s: &StatementRecord, outcomes: &HashMap<(&str, u64), OutcomeView>) -> Entry {
    let outcome = (!s.decision.refused).then(|| {
        outcomes
            .get(&(r.log_id.as_str(), r.seq))
            .cloned()
            .unwrap_or(OutcomeView {
                status: Status::NoOutcome,
                sqlstate: None,
                message: None,
                rows: None,
                duration_us: None,
            })
    });
    Entry {
        log_id: r.log_id.clone(),
        seq: r.seq,
        ts: r.ts,
        session: s.session.clone(),
        statement: s.statement.clone(),
        decision: s.decision.clone(),
        approval: s.approval.clone(),
        refusal: s.refusal.clone(),
        change: s.is_change(),
        outcome,
    }
}

fn add(g: &mut Group, e: &Entry) {
    g.changes += 1;
    match e.outcome.as_ref().map(|o| o.status) {
        Some(Status::Succeeded) => g.succeeded += 1,
        Some(Status::Failed) => g.failed += 1,
        _ => g.no_outcome += 1,
    }
    g.users.insert(e.session.user.clone());
    g.databases.insert(e.session.database.clone());
    if let Some(t) = &e.decision.ticket {
        g.tickets.insert(t.clone());
    }
}

/// Groups changes by `key`, most changes first (then by key).
fn group_by(changes: &[&Entry], key: impl Fn(&Entry) -> Option<String>) -> Vec<Group> {
    let mut groups: BTreeMap<Option<String>, Group> = BTreeMap::new();
    for e in changes {
        let k = key(e);
        let g = groups.entry(k.clone()).or_insert_with(|| Group {
            key: k,
            ..Group::default()
        });
        add(g, e);
    }
    let mut v: Vec<Group> = groups.into_values().collect();
    v.sort_by(|a, b| b.changes.cmp(&a.changes).then_with(|| a.key.cmp(&b.key)));
    v
}

/// Builds the report over `log`'s records in `range`.
pub fn build(log: &Log, range: Range, files: &[String]) -> Report {
    // Outcomes from every record read: a change in range may end after `until`.
    let mut outcomes: HashMap<(&str, u64), OutcomeView> = HashMap::new();
    for r in &log.records {
        if let Body::Outcome(o) = &r.body {
            let view = outcome_view(o);
            for &seq in &o.decisions {
                outcomes.insert((r.log_id.as_str(), seq), view.clone());
            }
        }
    }
    let mut summary = Summary {
        skipped_lines: log.skipped.len() as u64,
        ..Summary::default()
    };
    let mut statements = Vec::new();
    let mut holds: BTreeMap<u64, HoldView> = BTreeMap::new();
    let mut ran: Vec<(u64, u64, Vec<String>)> = Vec::new();
    let mut break_glass = Vec::new();
    for r in log.records.iter().filter(|r| range.contains(r.ts)) {
        summary.records += 1;
        *summary.by_type.entry(r.kind.clone()).or_default() += 1;
        match &r.body {
            Body::Statement(s) => {
                if let Some(a) = &s.approval {
                    ran.push((a.hold, r.seq, a.approvers.clone()));
                }
                statements.push(entry(r, s, &outcomes));
            }
            Body::Hold(h) => {
                // Records come in log order: the last one is the hold's latest state.
                holds.insert(
                    h.id,
                    HoldView {
                        id: h.id,
                        status: h.status.clone(),
                        user: h.user.clone(),
                        database: h.database.clone(),
                        sql: h.sql.clone(),
                        rules: h.rules.iter().map(|r| r.id.clone()).collect(),
                        approvals_required: h.approvals_required,
                        approvers: h.approvals.iter().map(|a| a.by.clone()).collect(),
                        opened_at: h.opened_at,
                        closed_at: h.closed_at,
                        closed_by: h.closed_by.clone(),
                        reason: h.reason.clone(),
                        ran_as: None,
                    },
                );
            }
            Body::BreakGlass(v) => break_glass.push(BreakGlassView {
                review: v.id,
                at: v.at.unwrap_or(r.ts),
                user: v.user.clone(),
                database: v.database.clone(),
                reason: v.reason.clone(),
                rules: v.rules.clone(),
                sql: v.sql.clone(),
                reviewed_by: v.reviewed_by.clone(),
            }),
            Body::Outcome(_) | Body::Ticket(_) | Body::Other => {}
        }
    }
    // A statement that ran under an approval names its hold and approvers, also when the
    // hold's own records are outside the range.
    for (hold, seq, approvers) in ran {
        let h = holds.entry(hold).or_insert_with(|| {
            let e = statements
                .iter()
                .find(|e| e.seq == seq)
                .expect("pushed above");
            HoldView {
                id: hold,
                status: "approved".into(),
                user: e.session.user.clone(),
                database: e.session.database.clone(),
                sql: e.statement.text.clone(),
                rules: e.decision.rules.clone(),
                approvals_required: 0,
                approvers: Vec::new(),
                opened_at: None,
                closed_at: None,
                closed_by: None,
                reason: None,
                ran_as: None,
            }
        });
        h.ran_as = Some(seq);
        for a in approvers {
            if !h.approvers.contains(&a) {
                h.approvers.push(a);
            }
        }
    }
    let changes: Vec<&Entry> = statements.iter().filter(|e| e.change).collect();
    summary.statements = statements.len() as u64;
    summary.changes = changes.len() as u64;
    for e in &changes {
        match e.outcome.as_ref().map(|o| o.status) {
            Some(Status::Succeeded) => summary.succeeded += 1,
            Some(Status::Failed) => summary.failed += 1,
            _ => summary.no_outcome += 1,
        }
    }
    summary.break_glass_statements =
        statements.iter().filter(|e| e.decision.break_glass).count() as u64;
    let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
    for e in statements.iter().filter(|e| e.decision.refused) {
        summary.refusals += 1;
        if e.decision.rules.is_empty() {
            *by_rule.entry("(no rule recorded)".into()).or_default() += 1;
        }
        for rule in &e.decision.rules {
            *by_rule.entry(rule.clone()).or_default() += 1;
        }
    }
    let mut refusals_by_rule: Vec<Count> = by_rule
        .into_iter()
        .map(|(key, count)| Count { key, count })
        .collect();
    refusals_by_rule.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    summary.holds = holds.len() as u64;
    summary.holds_approved = holds.values().filter(|h| h.status == "approved").count() as u64;
    summary.break_glass_uses = break_glass.len() as u64;
    Report {
        since: range.since,
        until: range.until,
        files: files.to_vec(),
        by_ticket: group_by(&changes, |e| e.decision.ticket.clone()),
        by_user: group_by(&changes, |e| Some(e.session.user.clone())),
        by_database: group_by(&changes, |e| Some(e.session.database.clone())),
        summary,
        refusals_by_rule,
        holds: holds.into_values().collect(),
        break_glass,
        statements,
    }
}

#[cfg(test)]
pub(crate) mod tests;
