//! `pgwarden policy explain-workflow RULE`: the stages a statement of one rule goes through,
//! from the compiled rule and the proxy's `[holds]` defaults. Pure text; the stages are the
//! ones [`super::route`] takes.

use std::time::Duration;

use crate::config::Holds;
use crate::policy::matcher::{Period, Window};
use crate::policy::{Action, OnMissingTicket, Policy, Rule};

/// The stages of `rule` in `policy`, one line each.
pub fn stages(policy: &Policy, rule: &Rule, holds: &Holds) -> Vec<String> {
    let mut out = vec![format!(
        "{} ({} environment, {}:{}): {}",
        rule.id,
        policy.environment,
        rule.file.display(),
        rule.line,
        rule.description
    )];
    let mut when = Vec::new();
    if let Some(w) = &rule.session.window {
        when.push(format!("only inside {}", window(w)));
    }
    if let Some(w) = &rule.session.outside_window {
        when.push(format!("only outside {}", window(w)));
    }
    if let Some(ps) = &rule.session.during {
        let ps: Vec<String> = ps.iter().map(period).collect();
        when.push(format!("only during {}", ps.join(" or ")));
    }
    let step = |out: &mut Vec<String>, s: String| {
        let n = out.len();
        out.push(format!("{n}. {s}"));
    };
    step(
        &mut out,
        format!(
            "Matches: the statement meets the rule's conditions{}.",
            if when.is_empty() {
                String::new()
            } else {
                format!(", {}", when.join(", "))
            }
        ),
    );
    if rule.monitor {
        step(
            &mut out,
            format!(
                "Monitor: decided as {} and reported, never refused; the statement runs.",
                rule.action.name()
            ),
        );
        return out;
    }
    if let Some(small) = rule.small_action {
        step(
            &mut out,
            format!(
                "Size: when the live catalog shows every table it locks is small, the action is {} instead of {}.",
                small.name(),
                rule.action.name()
            ),
        );
    }
    let wf = &rule.workflow;
    match rule.action {
        Action::Allow => step(&mut out, "Runs.".into()),
        Action::Alert => step(
            &mut out,
            format!("Runs, reported as {}.", rule.action.name()),
        ),
        Action::Block => step(
            &mut out,
            "Refused (SQLSTATE 42501) with the rule's message and hint. No ticket, approval or break-glass lets it run.".into(),
        ),
        Action::RequireTicket | Action::Hold => {
            step(&mut out, break_glass(policy));
            if rule.action == Action::RequireTicket {
                step(
                    &mut out,
                    "Ticket: it runs under an approved change ticket attached with SET pgwarden.ticket, PGOPTIONS='-c pgwarden.ticket=ID' or /* pgwarden:ticket=ID */, that is valid now, has uses left and whose scope covers the environment, database, user, rule, statement tag, objects and (when pinned) the exact statement; the use is counted.".into(),
                );
                let on_missing = wf.on_missing_ticket.unwrap_or(holds.on_missing_ticket);
                let whose = if wf.on_missing_ticket.is_some() {
                    "the rule's on_missing_ticket"
                } else {
                    "the proxy's [holds] on_missing_ticket"
                };
                match on_missing {
                    OnMissingTicket::Refuse => {
                        step(
                            &mut out,
                            format!("No covering ticket ({whose} = \"refuse\"): refused (SQLSTATE 42501), saying which ticket was seen and why it did not cover the statement."),
                        );
                        return out;
                    }
                    OnMissingTicket::Hold => step(
                        &mut out,
                        format!("No covering ticket ({whose} = \"hold\"): held for approval, as below."),
                    ),
                }
            }
            for s in hold_stages(rule, holds) {
                step(&mut out, s);
            }
        }
    }
    out
}

fn hold_stages(rule: &Rule, holds: &Holds) -> Vec<String> {
    let wf = &rule.workflow;
    let n = wf.approvals.unwrap_or(1).max(1);
    let groups = if wf.approver_groups.is_empty() {
        String::new()
    } else {
        format!(" in group {}", wf.approver_groups.join(" or "))
    };
    let timeout = wf.hold_timeout.unwrap_or(holds.timeout);
    vec![
        format!(
            "Hold: the statement waits at pgwarden (the session keeps its place); the client gets a NOTICE naming the hold and how to approve it (pgwarden holds approve ID), and a reminder every {}.",
            duration(holds.reminder)
        ),
        format!(
            "Approval: {} (approver or admin tokens), never from the one who asked (same token or database user).",
            if n == 1 {
                format!("one approver{groups}")
            } else {
                format!("{n} distinct approvers{groups}")
            }
        ),
        "Approved: the statement runs and the client sees its normal result.".into(),
        "Denied: refused (SQLSTATE 42501) with the approver's reason.".into(),
        format!(
            "Not decided within {}{}: refused (SQLSTATE 42501), timed out.",
            duration(timeout),
            if wf.hold_timeout.is_some() {
                " (the rule's hold_timeout)"
            } else {
                " (the proxy's [holds] timeout)"
            }
        ),
        "Cancelled by the client (Ctrl-C): withdrawn, SQLSTATE 57014. Client gone or proxy restarted: withdrawn.".into(),
    ]
}

fn break_glass(policy: &Policy) -> String {
    if policy.break_glass.is_some() {
        "Break-glass: users named in [break_glass] who SET pgwarden.break_glass = 'reason' run it at once; the use is recorded and listed for review.".into()
    } else {
        "Break-glass: nobody (the policy names no [break_glass] users).".into()
    }
}

fn window(w: &Window) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let days = if w.days.is_empty() {
        "every day".to_owned()
    } else {
        w.days
            .iter()
            .filter_map(|d| DAYS.get((*d as usize).wrapping_sub(1)))
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    };
    let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
    let time = match (w.from, w.to) {
        (None, None) => String::new(),
        (f, t) => format!(
            " {}-{}",
            f.map(hm).unwrap_or_else(|| "00:00".into()),
            t.map(hm).unwrap_or_else(|| "24:00".into())
        ),
    };
    format!(
        "{days}{time} {}",
        w.tz.iana_name().unwrap_or("(fixed offset)")
    )
}

fn period(p: &Period) -> String {
    format!("{} to {}", p.from, p.until)
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s >= 60 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
