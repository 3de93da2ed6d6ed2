//! Which events are alerts: a pure mapping from the instance's event stream to [`Alert`]
//! values with their kind ([`Filter`]), a one-line readable summary, and what makes two
//! of them repeats of each other (rule and session).

use std::sync::Arc;

use super::settings::Filter;
use crate::approval::events::{Emitted, Event};
use crate::approval::model::{HoldStatus, TicketStatus};

/// Longest statement text quoted in a summary (the full event is in `data.event`).
const SQL_IN_SUMMARY: usize = 200;

/// One alert to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub filter: Filter,
    /// The rule(s) it is about, for collapsing (`None`: not tied to a rule).
    pub rule: Option<String>,
    /// The client session it is about, for collapsing.
    pub session: Option<u64>,
    /// Whether repeats may be collapsed: refusals and the instance's own alarms (upstream
    /// down, audit sink failing, policy reload failed) repeat in floods; a hold, a ticket
    /// or a break-glass use is something one person acts on and is always sent.
    pub collapsible: bool,
    /// One readable line.
    pub summary: String,
    /// The event (for a summary of repeats: the last of them).
    pub event: Arc<Emitted>,
    /// Occurrences this alert stands for: 1, or for a summary of repeats, how many came
    /// after the first one within the window.
    pub count: u64,
    /// A summary of repeats (`count` more like an alert already sent).
    pub repeat: bool,
}

/// The key under which repeats collapse.
pub type CollapseKey = (Filter, Option<String>, Option<u64>);

impl Alert {
    pub fn key(&self) -> CollapseKey {
        (self.filter, self.rule.clone(), self.session)
    }
}

/// The alert `e` is, if any. Partial approvals, created or used tickets, withdrawn holds,
/// sessions, successful reloads and recoveries are not alerts.
pub fn alert_for(e: &Arc<Emitted>) -> Option<Alert> {
    let (filter, rule, session, collapsible, summary) = match &e.event {
        Event::Decision {
            session,
            user,
            database,
            rules,
            tags,
            refused: true,
            ..
        } => {
            let rule = rules.join(", ");
            let what = if tags.is_empty() {
                "a statement".to_owned()
            } else {
                tags.join(", ")
            };
            (
                Filter::Refused,
                Some(rule.clone()),
                Some(*session),
                true,
                format!("refused {what} by {user} on {database} (session {session}): {rule}"),
            )
        }
        Event::HoldOpened { hold } => (
            Filter::Held,
            Some(rule_ids(&hold.rules)),
            None,
            false,
            format!(
                "hold {} waits for approval: {} on {}, {}: {}",
                hold.id,
                hold.user,
                hold.database,
                rule_ids(&hold.rules),
                clip(&hold.sql)
            ),
        ),
        Event::HoldApproved { hold } if hold.status == HoldStatus::Approved => (
            Filter::Approved,
            Some(rule_ids(&hold.rules)),
            None,
            false,
            format!(
                "hold {} approved{}: {} on {}",
                hold.id,
                by(hold.approvals.last().map(|a| a.by.as_str())),
                hold.user,
                hold.database
            ),
        ),
        Event::TicketApproved { ticket } if ticket.status == TicketStatus::Approved => (
            Filter::Approved,
            None,
            None,
            false,
            format!(
                "ticket {} approved{}: {}",
                ticket.id,
                by(ticket.approvals.last().map(|a| a.by.as_str())),
                ticket.title
            ),
        ),
        Event::HoldDenied { hold } => (
            Filter::Denied,
            Some(rule_ids(&hold.rules)),
            None,
            false,
            format!(
                "hold {} denied{}{}: {} on {}",
                hold.id,
                by(hold.closed_by.as_deref()),
                because(hold.reason.as_deref()),
                hold.user,
                hold.database
            ),
        ),
        Event::TicketRejected { ticket } | Event::TicketRevoked { ticket } => (
            Filter::Denied,
            None,
            None,
            false,
            format!(
                "ticket {} {}{}{}: {}",
                ticket.id,
                ticket.status.name(),
                by(ticket.closed_by.as_deref()),
                because(ticket.reason.as_deref()),
                ticket.title
            ),
        ),
        Event::HoldExpired { hold } => (
            Filter::Expired,
            Some(rule_ids(&hold.rules)),
            None,
            false,
            format!(
                "hold {} expired without a verdict: {} on {}",
                hold.id, hold.user, hold.database
            ),
        ),
        Event::TicketExpired { ticket } => (
            Filter::Expired,
            None,
            None,
            false,
            format!("ticket {} expired: {}", ticket.id, ticket.title),
        ),
        Event::BreakGlassUsed { review } => (
            Filter::BreakGlass,
            Some(review.rules.join(", ")),
            None,
            false,
            format!(
                "break-glass by {} on {} (review {}): {:?}, rules {}: {}",
                review.user,
                review.database,
                review.id,
                review.reason,
                review.rules.join(", "),
                clip(&review.sql)
            ),
        ),
        Event::PolicyReloaded {
            version,
            ok: false,
            error,
        } => (
            Filter::PolicyReloadFailed,
            None,
            None,
            true,
            format!(
                "policy reload refused (version {version}); the running policy stays: {}",
                error.as_deref().unwrap_or("no reason given")
            ),
        ),
        Event::AuditSinkFailing { error } => (
            Filter::AuditSinkFailing,
            None,
            None,
            true,
            format!(
                "the audit log cannot be written; statements it must record are refused: {error}"
            ),
        ),
        Event::UpstreamDown { error } => (
            Filter::UpstreamDown,
            None,
            None,
            true,
            format!("PostgreSQL is unreachable: {error}"),
        ),
        Event::AuditCheckpoint {
            log_id, seq, hash, ..
        } => (
            Filter::Checkpoint,
            None,
            None,
            false,
            format!("audit checkpoint of log {log_id}: record {seq}, hash {hash}"),
        ),
        _ => return None,
    };
    Some(Alert {
        filter,
        rule,
        session,
        collapsible,
        summary,
        event: e.clone(),
        count: 1,
        repeat: false,
    })
}

fn rule_ids(rules: &[crate::approval::model::HeldRule]) -> String {
    rules
        .iter()
        .map(|r| r.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn by(who: Option<&str>) -> String {
    who.map(|w| format!(" by {w}")).unwrap_or_default()
}

fn because(reason: Option<&str>) -> String {
    reason.map(|r| format!(" ({r:?})")).unwrap_or_default()
}

/// `sql` on one line, cut at a character boundary.
fn clip(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(SQL_IN_SUMMARY) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::Action;

    pub(crate) fn emitted(seq: u64, event: Event) -> Arc<Emitted> {
        Arc::new(Emitted {
            seq,
            at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            event,
        })
    }

    pub(crate) fn refusal(session: u64, rule: &str) -> Event {
        Event::Decision {
            session,
            user: "app".into(),
            database: "shop".into(),
            action: Action::RequireTicket,
            rules: vec![rule.into()],
            tags: vec!["DROP TABLE".into()],
            policy_version: "v1".into(),
            ticket: None,
            break_glass: false,
            refused: true,
        }
    }

    #[test]
    fn a_refusal_is_an_alert_keyed_by_rule_and_session_and_a_forward_is_not() {
        let a = alert_for(&emitted(1, refusal(7, "destructive.drop-table"))).unwrap();
        assert_eq!(a.filter, Filter::Refused);
        assert_eq!(
            a.key(),
            (
                Filter::Refused,
                Some("destructive.drop-table".into()),
                Some(7)
            )
        );
        assert!(a.collapsible);
        assert_eq!(
            a.summary,
            "refused DROP TABLE by app on shop (session 7): destructive.drop-table"
        );
        let mut forwarded = refusal(7, "r");
        if let Event::Decision { refused, .. } = &mut forwarded {
            *refused = false;
        }
        assert_eq!(alert_for(&emitted(2, forwarded)), None);
    }

    #[test]
    fn system_alarms_map_to_their_filters() {
        let cases = [
            (
                Event::PolicyReloaded {
                    version: "v2".into(),
                    ok: false,
                    error: Some("bad rule".into()),
                },
                Some(Filter::PolicyReloadFailed),
            ),
            (
                Event::PolicyReloaded {
                    version: "v2".into(),
                    ok: true,
                    error: None,
                },
                None,
            ),
            (
                Event::AuditSinkFailing {
                    error: "disk full".into(),
                },
                Some(Filter::AuditSinkFailing),
            ),
            (Event::AuditSinkRecovered, None),
            (
                Event::UpstreamDown {
                    error: "refused".into(),
                },
                Some(Filter::UpstreamDown),
            ),
            (
                Event::AuditCheckpoint {
                    log_id: "l".into(),
                    seq: 9,
                    hash: "h".into(),
                    signature: "s".into(),
                },
                Some(Filter::Checkpoint),
            ),
            (
                Event::PolicyLoaded {
                    version: "v".into(),
                },
                None,
            ),
        ];
        for (event, want) in cases {
            let got = alert_for(&emitted(1, event.clone())).map(|a| a.filter);
            assert_eq!(got, want, "{event:?}");
        }
    }

    fn hold(status: HoldStatus) -> crate::approval::model::Hold {
        let at = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        crate::approval::model::Hold {
            id: 42,
            status,
            sql: "DROP TABLE orders".into(),
            user: "app".into(),
            database: "shop".into(),
            client_addr: None,
            application_name: String::new(),
            rules: vec![crate::approval::model::HeldRule {
                id: "locking.big".into(),
                message: "m".into(),
                hint: None,
            }],
            approvals_required: 2,
            approver_groups: vec![],
            approvals: vec![],
            opened_at: at,
            expires_at: at,
            closed_at: None,
            closed_by: Some("dana".into()),
            reason: Some("not now".into()),
        }
    }

    #[test]
    fn holds_map_to_held_approved_denied_expired_and_partial_approvals_are_not_alerts() {
        let f = |e| alert_for(&emitted(1, e)).map(|a| (a.filter, a.collapsible, a.summary));
        let (filter, collapsible, summary) = f(Event::HoldOpened {
            hold: hold(HoldStatus::Pending),
        })
        .unwrap();
        assert_eq!((filter, collapsible), (Filter::Held, false));
        assert_eq!(
            summary,
            "hold 42 waits for approval: app on shop, locking.big: DROP TABLE orders"
        );
        assert_eq!(
            f(Event::HoldApproved {
                hold: hold(HoldStatus::Pending)
            }),
            None,
            "one approval of two"
        );
        assert_eq!(
            f(Event::HoldApproved {
                hold: hold(HoldStatus::Approved)
            })
            .map(|a| a.0),
            Some(Filter::Approved)
        );
        let (filter, _, summary) = f(Event::HoldDenied {
            hold: hold(HoldStatus::Denied),
        })
        .unwrap();
        assert_eq!(filter, Filter::Denied);
        assert_eq!(summary, "hold 42 denied by dana (\"not now\"): app on shop");
        assert_eq!(
            f(Event::HoldExpired {
                hold: hold(HoldStatus::Expired)
            })
            .map(|a| a.0),
            Some(Filter::Expired)
        );
        assert_eq!(
            f(Event::HoldWithdrawn {
                hold: hold(HoldStatus::Withdrawn)
            }),
            None
        );
    }

    #[test]
    fn statement_text_in_a_summary_is_one_line_and_clipped() {
        assert_eq!(clip("SELECT\n  1"), "SELECT 1");
        let long = "x".repeat(500);
        assert_eq!(clip(&long).chars().count(), SQL_IN_SUMMARY + 1);
        let wide = "é".repeat(300);
        assert!(clip(&wide).ends_with('…'));
    }
}
