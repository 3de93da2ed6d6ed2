//! The outcome a statement meets, decided offline (`pgwarden policy test` cases and
//! `pgwarden check --ticket`): the decision routed exactly as the session routes it, with the
//! attached ticket checked as the store checks it (no use is counted).

use super::{attached_ticket, route, showing, Resumed, Route, Standing};
use crate::approval::cover::{cover, Uncovered};
use crate::approval::model::Ticket;
use crate::policy::{Action, Decision, OnMissingTicket, Policy, SessionContext};
use crate::sql::Inspection;

/// What the session brings: the attached ticket's id, the ticket as the store has it (none:
/// unknown), and a break-glass reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attached<'a> {
    pub ticket: Option<&'a str>,
    pub known: Option<&'a Ticket>,
    pub break_glass: Option<&'a str>,
}

/// Where the statement ends up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `allow` when it runs (allowed, covered by the ticket, break-glass); `alert` when it
    /// runs and is reported; `hold` when it waits for approval; `require_ticket` or `block`
    /// when it is refused.
    pub action: Action,
    /// The refusal's detail, when refused.
    pub why: Option<String>,
    /// The ticket whose cover let it run.
    pub ticket: Option<String>,
}

/// Routes decision `d` on `ins` for a session with `attached`.
pub fn offline(
    policy: &Policy,
    ins: &Inspection,
    d: &Decision,
    session: &SessionContext,
    attached: Attached<'_>,
    on_missing_ticket: OnMissingTicket,
) -> Outcome {
    let standing = Standing {
        store: true,
        approvers: true,
        ticket: attached_ticket(d, ins, attached.ticket),
        break_glass: attached
            .break_glass
            .filter(|_| policy.break_glass_allows(&session.user)),
        on_missing_ticket,
    };
    let done = |action, why, ticket| Outcome {
        action,
        why,
        ticket,
    };
    let mut resumed = None;
    loop {
        match route(d, ins, standing, resumed.as_ref()) {
            Route::Forward { ticket, .. } if d.action.refuses() => {
                return done(Action::Allow, None, ticket)
            }
            Route::BreakGlass { .. } => return done(Action::Allow, None, None),
            Route::Forward { .. } => return done(d.action, None, None),
            Route::Hold { note } => return done(Action::Hold, note, None),
            Route::Refuse(e) => return done(d.action, e.detail, None),
            Route::CheckTicket { id } => {
                // A ticket other than the known one is unknown to the store.
                let shown = showing(
                    d,
                    ins,
                    &policy.environment,
                    &session.database,
                    &session.user,
                    None,
                );
                let outcome = match attached.known.filter(|t| t.id == id) {
                    Some(t) => cover(t, &shown.presented(session.now))
                        .map(|()| t.clone())
                        .map_err(|u| u.to_string()),
                    None => Err(Uncovered::Unknown.to_string()),
                };
                resumed = Some(Resumed::Ticket {
                    key: String::new(),
                    id,
                    outcome,
                });
            }
        }
    }
}
