//! Workflow as code, pure: what a refusing decision turns into. The routing from a policy decision, the
//! session's ticket and break-glass, and the answer of the last wait for the same text, to
//! the next step (forward, refuse, check the ticket, hold for approval, record a
//! break-glass use); and the texts clients see for each ending (refusal, denial, timeout,
//! cancel, hold notices). The session's gate performs the steps; nothing here does I/O.
//! [`cases`] runs `pgwarden policy test` cases through the same decisions and routing.

use std::time::Duration;

use crate::approval::cover::Shown;
use crate::approval::model::{Hold, HoldStatus, Review, Ticket};
use crate::catalog::Answers;
use crate::policy::{Action, Decision, OnMissingTicket};
use crate::sql::{Inspection, ReadAs};
use crate::wire::messages::{PgError, Severity};
use crate::wire::sqlstate::SqlState;

/// The name of the session setting that attaches a change ticket.
pub const TICKET_SETTING: &str = "pgwarden.ticket";
/// The name of the session setting that turns break-glass on, with its reason.
pub const BREAK_GLASS_SETTING: &str = "pgwarden.break_glass";

pub mod cases;
pub mod offline;
pub mod stages;

/// How a wait ended: the answer the gate decides the waiting message with.
#[derive(Debug)]
pub enum Resumed {
    /// Live-catalog answers for one reading (`key`) of the waiting text.
    Answers { key: String, answers: Answers },
    /// The hold of the waiting text (`key`) ended.
    Hold { key: String, end: HoldEnd },
    /// The attached ticket was checked against the waiting text (and a use counted).
    Ticket {
        key: String,
        id: String,
        outcome: Result<Ticket, String>,
    },
    /// The break-glass use was recorded for review (or could not be).
    BreakGlass {
        key: String,
        outcome: Result<Review, String>,
    },
    /// The statement's audit record was synced (its seq), or could not be written.
    Audited {
        key: String,
        outcome: Result<u64, String>,
    },
}

impl Resumed {
    /// The text (one reading of it) the answer is for.
    pub fn key(&self) -> &str {
        match self {
            Resumed::Answers { key, .. }
            | Resumed::Hold { key, .. }
            | Resumed::Ticket { key, .. }
            | Resumed::BreakGlass { key, .. }
            | Resumed::Audited { key, .. } => key,
        }
    }
}

/// The ways a hold ends, as the session sees them.
#[derive(Debug, Clone)]
pub enum HoldEnd {
    /// Approved, denied, expired or withdrawn by an admin: the record says which.
    Ended(Hold),
    /// The client cancelled (CancelRequest): withdrawn.
    Cancelled(Hold),
    /// The hold could not be recorded: nothing may run unrecorded.
    Failed(String),
}

/// Where a decided statement goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Forward {
        /// The ticket whose use let it through.
        ticket: Option<String>,
        break_glass: bool,
        /// The hold whose approval let it through.
        hold: Option<u64>,
    },
    Refuse(PgError),
    /// Check ticket `id` against the statement (counting a use if it covers it).
    CheckTicket {
        id: String,
    },
    /// Hold the statement for approval; `note` says why a ticket did not do.
    Hold {
        note: Option<String>,
    },
    /// Record a break-glass use, then forward.
    BreakGlass {
        reason: String,
    },
}

/// What the session brings to the routing.
#[derive(Debug, Clone, Copy)]
pub struct Standing<'a> {
    /// Tickets and holds can be served (a state store is open).
    pub store: bool,
    /// Holds can be approved (the admin listener is on): otherwise a hold refuses at once.
    pub approvers: bool,
    /// The ticket attached to the statement or the session.
    pub ticket: Option<&'a str>,
    /// The break-glass reason, when the session set one and the policy lets this user.
    pub break_glass: Option<&'a str>,
    /// `[holds] on_missing_ticket`, for rules that do not say.
    pub on_missing_ticket: OnMissingTicket,
}

/// Routes decision `d` on `ins`; `resumed` is the answer of the last wait for this text.
pub fn route(d: &Decision, ins: &Inspection, s: Standing<'_>, resumed: Option<&Resumed>) -> Route {
    if !d.action.refuses() {
        return forward(None, false, None);
    }
    if d.action == Action::Block {
        return Route::Refuse(refusal(d, ins, None));
    }
    if !s.store {
        return Route::Refuse(refusal(
            d,
            ins,
            Some("This pgwarden has no state store for tickets and holds, so the statement cannot be approved here."),
        ));
    }
    if let Some(reason) = s.break_glass {
        return match resumed {
            Some(Resumed::BreakGlass { outcome: Ok(_), .. }) => forward(None, true, None),
            Some(Resumed::BreakGlass { outcome: Err(e), .. }) => Route::Refuse(refusal(
                d,
                ins,
                Some(&format!("Break-glass is set, but its use could not be recorded for review ({e}), so the statement did not run.")),
            )),
            _ => Route::BreakGlass {
                reason: reason.to_owned(),
            },
        };
    }
    if let Some(Resumed::Hold { end, .. }) = resumed {
        return hold_ended(d, ins, end);
    }
    // A statement that needs a ticket needs it also when another rule holds it: an approval
    // of the hold does not stand in for the ticket (unless on_missing_ticket says hold).
    if needs_ticket(d) {
        let why = match (s.ticket, resumed) {
            (Some(t), Some(Resumed::Ticket { id, outcome, .. })) if id == t => match outcome {
                Ok(_) if d.action == Action::RequireTicket => {
                    return forward(Some(t.to_owned()), false, None)
                }
                Ok(_) => {
                    return hold(
                        d,
                        ins,
                        s,
                        Some(format!("Ticket {t} covers what needs a ticket.")),
                    )
                }
                Err(why) => {
                    format!("Ticket {t} was attached but does not cover this statement: {why}.")
                }
            },
            (Some(t), _) => return Route::CheckTicket { id: t.to_owned() },
            (None, _) => "No change ticket is attached.".to_owned(),
        };
        let on_missing = d
            .workflow()
            .on_missing_ticket
            .unwrap_or(s.on_missing_ticket);
        return match on_missing {
            OnMissingTicket::Hold => hold(d, ins, s, Some(why)),
            OnMissingTicket::Refuse => Route::Refuse(refusal(d, ins, Some(&why))),
        };
    }
    hold(d, ins, s, None)
}

/// Some enforced rule asks for a change ticket.
fn needs_ticket(d: &Decision) -> bool {
    d.matches
        .iter()
        .any(|m| !m.monitor && m.action == Action::RequireTicket)
}

/// The ticket the statements that need one bring: each its own `/* pgwarden:ticket=.. */`,
/// else the session's. When they bring different ones, none (one check covers one ticket:
/// such statements are sent separately). Without such statements, the first comment's or the
/// session's.
pub fn attached_ticket<'a>(
    d: &Decision,
    ins: &'a Inspection,
    session: Option<&'a str>,
) -> Option<&'a str> {
    // A SET pgwarden.ticket earlier in the same string counts for the statements after it.
    let set_before = |i: usize| -> Option<Option<&'a str>> {
        ins.statements[..i.min(ins.statements.len())]
            .iter()
            .flat_map(|s| &s.ops)
            .filter_map(|o| o.set.as_ref())
            .rfind(|set| set.name == TICKET_SETTING && !set.local)
            .map(|set| set.value.as_deref().filter(|v| !v.trim().is_empty()))
    };
    let own = |i: usize| {
        ins.statements
            .get(i)
            .and_then(|s| s.tickets.first())
            .map(String::as_str)
            .or_else(|| set_before(i).unwrap_or(session))
    };
    let mut needing = d
        .matches
        .iter()
        .filter(|m| !m.monitor && m.action == Action::RequireTicket)
        .map(|m| m.statement);
    let Some(first) = needing.next() else {
        return statement_ticket(ins).or(session);
    };
    let t = own(first);
    needing.all(|i| own(i) == t).then_some(t).flatten()
}

/// Holds the statement, when someone can approve it.
fn hold(d: &Decision, ins: &Inspection, s: Standing<'_>, note: Option<String>) -> Route {
    if let Some(conflict) = d.workflow().groups_conflict {
        let why = format!(
            "{}Nobody could approve a hold: {conflict}. Send the statements separately.",
            note.map(|n| n + " ").unwrap_or_default()
        );
        return Route::Refuse(refusal(d, ins, Some(&why)));
    }
    if s.approvers {
        return Route::Hold { note };
    }
    let why = format!(
        "{}The admin listener ([admin] listen) is off, so nobody could approve a hold: the statement is refused instead.",
        note.map(|n| n + " ").unwrap_or_default()
    );
    Route::Refuse(refusal(d, ins, Some(&why)))
}

/// What the statement shows a ticket: the require_ticket rules that matched and the tags,
/// objects and fingerprints of the statements they matched. `search_path`: what the session
/// set it to (none: the server's default, under which a ticket reads an unqualified name as
/// `public.name`); unqualified names are then shown as that search_path reads them.
pub fn showing(
    d: &Decision,
    ins: &Inspection,
    environment: &str,
    database: &str,
    user: &str,
    search_path: Option<&str>,
) -> Shown {
    let needing: Vec<&crate::policy::RuleMatch> = d
        .matches
        .iter()
        .filter(|m| !m.monitor && m.action == Action::RequireTicket)
        .collect();
    let mut s = Shown {
        environment: environment.to_owned(),
        database: database.to_owned(),
        user: user.to_owned(),
        ..Default::default()
    };
    for m in &needing {
        if !s.rules.contains(&m.rule) {
            s.rules.push(m.rule.clone());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &needing {
        if !seen.insert(m.statement) {
            continue;
        }
        let Some(st) = ins.statements.get(m.statement) else {
            continue;
        };
        if let Some(op) = st.ops.first() {
            s.tags.push(op.tag.clone());
        }
        for op in &st.ops {
            s.objects
                .extend(op.objects.iter().map(|o| qualified(o, search_path)));
        }
        // A statement with no fingerprint matches no pinned statement.
        s.fingerprints.push(
            crate::sql::fingerprint(&st.text, ReadAs::default())
                .unwrap_or_else(|_| "unreadable".into()),
        );
    }
    s
}

/// `name` as a ticket sees it under the session's `search_path`: unchanged when qualified or
/// under the default path; qualified with the one schema a set path names; otherwise shown
/// as `(search_path).name`, which only a scope naming any schema (`*.name`) covers.
pub fn qualified(name: &str, search_path: Option<&str>) -> String {
    let Some(path) = search_path else {
        return name.to_owned();
    };
    if name.contains('.') {
        return name.to_owned();
    }
    let schemas: Vec<String> = path
        .split(',')
        .map(|p| {
            let p = p.trim();
            match p.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                Some(q) => q.replace("\"\"", "\""),
                None => p.to_ascii_lowercase(),
            }
        })
        .filter(|p| !p.is_empty())
        .collect();
    match schemas.as_slice() {
        [u, p] if u == "$user" && p == "public" => name.to_owned(),
        [one] if one != "$user" && one != "pg_catalog" => format!("{one}.{name}"),
        _ => format!("(search_path).{name}"),
    }
}

/// The ticket named in a statement's `/* pgwarden:ticket=CHG-7 */` comment, which takes
/// precedence over the session's.
pub fn statement_ticket(ins: &Inspection) -> Option<&str> {
    ins.statements
        .iter()
        .flat_map(|s| s.tickets.first())
        .next()
        .map(String::as_str)
}

fn forward(ticket: Option<String>, break_glass: bool, hold: Option<u64>) -> Route {
    Route::Forward {
        ticket,
        break_glass,
        hold,
    }
}

/// How a finished hold ends the statement.
fn hold_ended(d: &Decision, ins: &Inspection, end: &HoldEnd) -> Route {
    let h = match end {
        HoldEnd::Failed(e) => {
            return Route::Refuse(refusal(
                d,
                ins,
                Some(&format!(
                    "The statement could not be held for approval ({e})."
                )),
            ))
        }
        HoldEnd::Cancelled(h) => {
            return Route::Refuse(PgError {
                severity: Severity::Error,
                code: SqlState::QUERY_CANCELED,
                message: "canceling statement due to user request".into(),
                detail: Some(format!(
                    "pgwarden withdrew hold {} before it was approved.",
                    h.id
                )),
                hint: None,
            })
        }
        HoldEnd::Ended(h) => h,
    };
    let (message, why) = match h.status {
        HoldStatus::Approved => return forward(None, false, Some(h.id)),
        HoldStatus::Denied => (
            format!(
                "hold {} denied by {}: {}",
                h.id,
                h.closed_by.as_deref().unwrap_or("an approver"),
                h.reason.as_deref().unwrap_or("no reason given")
            ),
            "denied",
        ),
        HoldStatus::Expired => (
            format!(
                "hold {} timed out after {} without approval",
                h.id,
                waited(h)
            ),
            "timed out",
        ),
        HoldStatus::Withdrawn | HoldStatus::Pending => (
            format!(
                "hold {} was withdrawn: {}",
                h.id,
                h.reason.as_deref().unwrap_or("no reason given")
            ),
            "withdrawn",
        ),
    };
    let mut e = refusal(d, ins, Some(&format!("The hold {why}.")));
    if let Some(m) = d.deciding() {
        e.message = format!("pgwarden: {}: {message}", m.rule);
    }
    Route::Refuse(e)
}

/// How long a hold was open, rounded to the second.
fn waited(h: &Hold) -> String {
    let secs = h.expires_at.duration_since(h.opened_at).as_secs().max(0) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The error a refused statement gets: 42501, the rule, its file, the way through. `why`
/// says what the workflow found (the ticket seen and why it did not do, say).
pub fn refusal(d: &Decision, ins: &Inspection, why: Option<&str>) -> PgError {
    let m = d
        .deciding()
        .expect("a refusing decision has a deciding match");
    let others: Vec<&str> = d
        .matches
        .iter()
        .filter(|o| o.rule != m.rule)
        .map(|o| o.rule.as_str())
        .collect();
    let mut detail = format!(
        "Refused by rule {} ({}) in policy file {}, policy version {}.",
        m.rule,
        m.action.name(),
        m.file,
        d.policy_version
    );
    if !others.is_empty() {
        detail.push_str(&format!(" Also matched: {}.", others.join(", ")));
    }
    if let Some(w) = why {
        detail.push_str(&format!(" {w}"));
    }
    if let Some(u) = &ins.unparsed {
        detail.push_str(&format!(" {}", u.reason));
    }
    for n in &ins.notes {
        detail.push_str(&format!(" {n}"));
    }
    // The rule's own hint says the way through; a rule without one gets the general way.
    let hint = m.hint.clone().or_else(|| match m.action {
        Action::RequireTicket => Some("Attach an approved change ticket: SET pgwarden.ticket = 'CHG-123', or add /* pgwarden:ticket=CHG-123 */ to the statement.".to_owned()),
        Action::Hold => Some("This statement needs a human approval.".to_owned()),
        _ => None,
    });
    PgError {
        severity: Severity::Error,
        code: SqlState::INSUFFICIENT_PRIVILEGE,
        message: format!("pgwarden: {}: {}", m.rule, m.message),
        detail: Some(detail),
        hint,
    }
}

/// The notice a client gets the moment its statement is held.
pub fn held_notice(h: &Hold, note: Option<&str>) -> PgError {
    let rules: Vec<String> = h
        .rules
        .iter()
        .map(|r| format!("{} ({})", r.id, r.message))
        .collect();
    let mut detail = format!(
        "Rule {}. {} needed; it times out at {}.",
        rules.join(", "),
        approvals_needed(h),
        h.expires_at
    );
    if let Some(n) = note {
        detail.push(' ');
        detail.push_str(n);
    }
    PgError::notice(format!(
        "pgwarden: statement held for approval as hold {}",
        h.id
    ))
    .with_detail(detail)
    .with_hint(format!(
        "An approver runs: pgwarden holds approve {} (or denies it: pgwarden holds deny {} --reason ...). Cancel the statement to withdraw it.",
        h.id, h.id
    ))
}

/// The reminder sent while a hold waits.
pub fn reminder_notice(h: &Hold) -> PgError {
    PgError::notice(format!(
        "pgwarden: hold {} is still waiting for approval ({} of {} approvals)",
        h.id,
        h.approvals.len(),
        h.approvals_required
    ))
    .with_detail(format!("It times out at {}.", h.expires_at))
    .with_hint(format!("An approver runs: pgwarden holds approve {}", h.id))
}

fn approvals_needed(h: &Hold) -> String {
    let groups = if h.approver_groups.is_empty() {
        String::new()
    } else {
        format!(" from {}", h.approver_groups.join(" or "))
    };
    match h.approvals_required {
        1 => format!("One approval{groups} is"),
        n => format!("{n} approvals by distinct approvers{groups} are"),
    }
}

#[cfg(test)]
mod tests;
