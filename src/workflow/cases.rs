//! `pgwarden policy test`: test cases kept beside the policies (`tests/*.toml` in the policy
//! directory), each a SQL string, a session (its ticket with status and scope, break-glass,
//! the clock), and the expected outcome and rules, decided and routed by the same code as the
//! wire. The outcome is what the statement meets: `allow` (it runs: allowed, or covered by
//! the ticket, or break-glass), `alert` (it runs, reported), `hold` (it waits for
//! approval), `require_ticket` or `block` (refused).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::offline::{offline, Attached};
use crate::approval::model::{Requester, Scope, Ticket, TicketStatus};
use crate::catalog::{self, Answer, Answers, Question, Thresholds};
use crate::policy::raw::{RawCase, RawCatalog, RawTestFile};
use crate::policy::OnMissingTicket;
use crate::policy::{compile, Action, Mode, Policy, PolicyError, PolicyErrors, SessionContext};
use crate::sql::Lookup;
use crate::sql::{self, ReadAs};

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    /// What was decided, and what was expected when they differ.
    pub detail: String,
}

/// Is text in this client_encoding read by pgwarden exactly as the server reads it?
/// UTF-8 is read as is; SQL_ASCII is passed to the server unconverted (and must be valid in
/// the server encoding). Others, notably those whose multibyte characters can contain a
/// quote or backslash byte (SJIS, BIG5, GBK, GB18030, UHC, JOHAB), are not.
pub fn encoding_readable(enc: &str) -> bool {
    let e = enc.to_ascii_uppercase().replace(['-', '_'], "");
    matches!(e.as_str(), "UTF8" | "UNICODE" | "SQLASCII")
}

/// The session a case describes.
pub fn case_session(c: &RawCase) -> Result<SessionContext, String> {
    let now = match &c.at {
        Some(t) => t
            .parse::<jiff::Timestamp>()
            .map_err(|e| format!("at {t:?}: {e}"))?,
        None => jiff::Timestamp::now(),
    };
    let client_addr = match &c.client_addr {
        Some(a) => Some(
            a.parse()
                .map_err(|_| format!("client_addr {a:?} is not an IP address"))?,
        ),
        None => None,
    };
    Ok(SessionContext {
        user: c.user.clone().unwrap_or_else(|| "app".into()),
        database: c.database.clone().unwrap_or_else(|| "app".into()),
        role: c.role.clone(),
        application: c.application.clone().unwrap_or_default(),
        client_addr,
        tls: c.tls.unwrap_or(false),
        in_transaction: c.in_transaction.unwrap_or(false),
        ticket: c.ticket.clone(),
        unreadable_encoding: c
            .client_encoding
            .as_deref()
            .is_some_and(|e| !encoding_readable(e)),
        created: std::sync::Arc::new(c.created.iter().flatten().cloned().collect()),
        lock_timeout_set: c.lock_timeout_set.unwrap_or(false),
        now,
    })
}

/// Reads every test file under `dir/tests` (syntax and key errors are reported, all at once).
pub fn read_cases(dir: &Path) -> Result<Vec<(PathBuf, RawCase)>, PolicyErrors> {
    let tdir = dir.join("tests");
    if !tdir.is_dir() {
        return Ok(Vec::new());
    }
    let files = compile::policy_files(&tdir)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        match toml_edit::de::from_str::<RawTestFile>(&text) {
            Ok(t) => out.extend(t.case.into_iter().map(|c| (f.clone(), c))),
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                    .unwrap_or(0);
                errors.push(PolicyError {
                    file: f.clone(),
                    line,
                    rule: None,
                    message: e.message().trim().to_owned(),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PolicyErrors(errors))
    }
}

/// Runs every case in `dir/tests` against the policy in `dir`.
pub fn run_dir(dir: &Path) -> Result<Vec<CaseResult>, PolicyErrors> {
    let cases = read_cases(dir)?;
    let mut policies: HashMap<String, Policy> = HashMap::new();
    let mut results = Vec::new();
    for (file, c) in cases {
        let env = c.env.clone().unwrap_or_else(|| "production".into());
        if !policies.contains_key(&env) {
            policies.insert(env.clone(), compile::load_dir(dir, &env)?);
        }
        let policy = &policies[&env];
        results.push(run_case(policy, &file, &c));
    }
    Ok(results)
}

fn run_case(policy: &Policy, file: &Path, c: &RawCase) -> CaseResult {
    let fail = |detail: String| CaseResult {
        file: file.to_path_buf(),
        name: c.name.clone(),
        passed: false,
        detail,
    };
    let Some(expect) = Action::parse(&c.expect) else {
        return fail(format!("expect {:?} is not an action", c.expect));
    };
    let ticket = match case_ticket(c) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let on_missing_ticket = match c.on_missing_ticket.as_deref() {
        None | Some("refuse") => OnMissingTicket::Refuse,
        Some("hold") => OnMissingTicket::Hold,
        Some(o) => {
            return fail(format!(
                "on_missing_ticket {o:?}: use \"refuse\" or \"hold\""
            ))
        }
    };
    let session = match case_session(c) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let read_as = ReadAs {
        standard_conforming_strings: c.standard_conforming_strings.unwrap_or(true),
    };
    let mut ins = sql::inspect(&c.sql, read_as);
    if let Some(cat) = &c.catalog {
        let qs = catalog::questions(&ins, policy.needs_for(&ins), &session.created);
        let answers = case_answers(cat, &qs);
        ins = catalog::enrich(&ins, &answers, &session.created, &Thresholds::default());
    }
    let d = policy.decide(&ins, &session, Mode::Enforce);
    let mut got_rules: Vec<&str> = d.matches.iter().map(|m| m.rule.as_str()).collect();
    got_rules.sort();
    got_rules.dedup();
    let mut problems = Vec::new();
    let bg = c.break_glass.as_deref();
    let got = offline(
        policy,
        &ins,
        &d,
        &session,
        Attached {
            ticket: ticket.as_ref().map(|t| t.id.as_str()),
            known: ticket.as_ref(),
            break_glass: bg,
        },
        on_missing_ticket,
    )
    .action;
    if got != expect {
        problems.push(format!("expected {}, got {}", expect.name(), got.name()));
    }
    if let Some(want) = &c.rules {
        let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
        want.sort();
        want.dedup();
        if want != got_rules {
            problems.push(format!("expected rules {want:?}, got {got_rules:?}"));
        }
    }
    CaseResult {
        file: file.to_path_buf(),
        name: c.name.clone(),
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{} {:?}", got.name(), got_rules)
        } else {
            problems.join("; ")
        },
    }
}

/// The ticket a case attaches: approved and unlimited unless it says otherwise.
fn case_ticket(c: &RawCase) -> Result<Option<Ticket>, String> {
    let Some(id) = &c.ticket else {
        return Ok(None);
    };
    let status = match c.ticket_status.as_deref() {
        None => TicketStatus::Approved,
        Some(s) => TicketStatus::parse(s)
            .ok_or_else(|| format!("ticket_status {s:?} is not a ticket status"))?,
    };
    let scope: Scope = match &c.ticket_scope {
        None => Scope::default(),
        Some(m) => serde_json::to_value(m)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("ticket_scope: {e}"))?,
    };
    let instant = |what: &str, v: &Option<String>| -> Result<Option<jiff::Timestamp>, String> {
        v.as_deref()
            .map(|t| t.parse().map_err(|e| format!("{what} {t:?}: {e}")))
            .transpose()
    };
    Ok(Some(Ticket {
        id: id.clone(),
        title: "test case".into(),
        requester: Requester::default(),
        status,
        approvals: Vec::new(),
        approvals_required: 1,
        approver_groups: Vec::new(),
        valid_from: instant("ticket_valid_from", &c.ticket_valid_from)?,
        valid_until: instant("ticket_valid_until", &c.ticket_valid_until)?,
        max_uses: c.ticket_max_uses,
        uses: c.ticket_uses.unwrap_or(0),
        scope,
        created_at: jiff::Timestamp::UNIX_EPOCH,
        closed_by: None,
        reason: None,
    }))
}

/// The answers a case's `[case.catalog]` gives to `qs`, as the live catalog would.
pub fn case_answers(cat: &RawCatalog, qs: &[Question]) -> Answers {
    qs.iter()
        .map(|q| {
            let a = if cat.failed {
                Answer::Failed("the test case's catalog fails".into())
            } else {
                match q {
                    Question::Lookup(Lookup::Relation { name } | Lookup::Index { name }) => {
                        match cat.relations.get(name) {
                            Some(r) => Answer::Relation(r.clone()),
                            None => Answer::NotFound,
                        }
                    }
                    Question::Lookup(Lookup::NotNullProof { table, column }) => {
                        Answer::Yes(cat.not_null_proven.contains(&format!("{table}.{column}")))
                    }
                    Question::Lookup(Lookup::TypeChange { table, column, .. }) => {
                        match cat.column_types.get(&format!("{table}.{column}")) {
                            Some(t) => Answer::ColumnType(t.clone()),
                            None => Answer::NotFound,
                        }
                    }
                    Question::Lookup(Lookup::Role { name }) => Answer::Role {
                        privileged: cat.privileged_roles.contains(name),
                    },
                    Question::Lookup(Lookup::Extension { name }) => Answer::Extension {
                        trusted: !cat.untrusted_extensions.contains(name),
                    },
                    Question::Estimate(i) => match cat.estimates.get(*i) {
                        Some(n) => Answer::Estimate(*n),
                        None => Answer::Failed("the test case gives no estimate".into()),
                    },
                }
            };
            (q.clone(), a)
        })
        .collect()
}
