//! The report as text (for a terminal), CSV (one row per statement record, for
//! spreadsheets) and JSON (the whole report, for scripts). HTML is [`super::html`].
//!
//! Statement text comes from clients, so nothing of it reaches a terminal raw: control
//! characters are escaped in text output, and CSV cells that a spreadsheet would run as a
//! formula are defused.

use std::fmt::Write;

use serde_json::json;

use super::{Entry, Group, Report, Status};

/// The CSV columns, in order (documented in the command's help and the README).
pub const CSV_COLUMNS: &[&str] = &[
    "log_id",
    "seq",
    "ts",
    "session",
    "user",
    "role",
    "database",
    "application_name",
    "client_addr",
    "change",
    "action",
    "refused",
    "mode",
    "rules",
    "ticket",
    "break_glass",
    "hold",
    "approvers",
    "classes",
    "tags",
    "objects",
    "outcome",
    "sqlstate",
    "error",
    "rows",
    "duration_us",
    "policy_version",
    "fingerprint",
    "text",
];

/// One CSV field, RFC 4180: quoted when it holds a comma, quote, CR or LF, quotes doubled.
/// A field starting with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`, so a spreadsheet
/// shows it instead of evaluating it (statement text is written by database clients).
pub fn csv_field(s: &str) -> String {
    let defused;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        defused = format!("'{s}");
        defused.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// The outcome column: `succeeded`, `failed`, `no outcome`, or `refused`.
fn outcome_name(e: &Entry) -> &'static str {
    match &e.outcome {
        Some(o) => o.status.name(),
        None => "refused",
    }
}

/// One row per statement record in range; list columns are joined with `;`.
pub fn csv(r: &Report) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    for e in &r.statements {
        let o = e.outcome.as_ref();
        let error = match (&e.refusal, o) {
            (Some(f), _) => (Some(f.sqlstate.clone()), Some(f.message.clone())),
            (None, Some(o)) => (o.sqlstate.clone(), o.message.clone()),
            (None, None) => (None, None),
        };
        let row: Vec<String> = vec![
            e.log_id.clone(),
            e.seq.to_string(),
            e.ts.to_string(),
            e.session.id.to_string(),
            e.session.user.clone(),
            opt(&e.session.role).to_owned(),
            e.session.database.clone(),
            opt(&e.session.application_name).to_owned(),
            opt(&e.session.client_addr).to_owned(),
            e.change.to_string(),
            e.decision.action.clone(),
            e.decision.refused.to_string(),
            e.decision.mode.clone(),
            e.decision.rules.join(";"),
            opt(&e.decision.ticket).to_owned(),
            e.decision.break_glass.to_string(),
            e.approval
                .as_ref()
                .map(|a| a.hold.to_string())
                .unwrap_or_default(),
            e.approval
                .as_ref()
                .map(|a| a.approvers.join(";"))
                .unwrap_or_default(),
            e.statement.classes.join(";"),
            e.statement.tags.join(";"),
            e.statement.objects.join(";"),
            outcome_name(e).to_owned(),
            opt(&error.0).to_owned(),
            opt(&error.1).to_owned(),
            o.and_then(|o| o.rows)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            o.and_then(|o| o.duration_us)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            e.decision.policy_version.clone(),
            e.statement.fingerprint.clone(),
            e.statement.text.clone(),
        ];
        let cells: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

fn entry_json(e: &Entry) -> serde_json::Value {
    json!({
        "log_id": e.log_id,
        "seq": e.seq,
        "ts": e.ts,
        "session": e.session,
        "statement": e.statement,
        "decision": e.decision,
        "approval": e.approval,
        "refusal": e.refusal,
        "outcome": e.outcome,
    })
}

/// The whole report: summary, groups, holds, break-glass uses, and the changes and
/// refusals themselves.
pub fn json(r: &Report) -> serde_json::Value {
    let mut v = serde_json::to_value(r).expect("a report is plain data");
    v["changes"] = r.changes().map(entry_json).collect();
    v["refusals"] = r.refusals().map(entry_json).collect();
    v
}

/// `s` on one line for a terminal: whitespace runs become one space, control characters
/// are escaped, and at most `max` characters are kept.
pub fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut space = false;
    for c in s.trim().chars() {
        if n >= max {
            out.push('…');
            break;
        }
        if c == ' ' || c == '\n' || c == '\t' || c == '\r' {
            space = true;
            continue;
        }
        if space {
            out.push(' ');
            n += 1;
            space = false;
        }
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
        n += 1;
    }
    out
}

fn range_text(r: &Report) -> String {
    match (r.since, r.until) {
        (None, None) => "all records".into(),
        (Some(s), None) => format!("since {s}"),
        (None, Some(u)) => format!("before {u}"),
        (Some(s), Some(u)) => format!("{s} to {u} (exclusive)"),
    }
}

fn status_counts(g: &Group) -> String {
    let mut parts = vec![format!("{} succeeded", g.succeeded)];
    if g.failed > 0 {
        parts.push(format!("{} failed", g.failed));
    }
    if g.no_outcome > 0 {
        parts.push(format!("{} no outcome", g.no_outcome));
    }
    parts.join(", ")
}

fn groups_text(out: &mut String, title: &str, groups: &[Group], none: &str, also: &str) {
    let _ = writeln!(out, "\n{title}");
    if groups.is_empty() {
        let _ = writeln!(out, "  none");
        return;
    }
    let width = groups
        .iter()
        .map(|g| g.key.as_deref().unwrap_or(none).chars().count())
        .max()
        .unwrap_or(0);
    for g in groups {
        let key = one_line(g.key.as_deref().unwrap_or(none), 60);
        let list: Vec<&str> = match also {
            "users" => g.users.iter().map(String::as_str).collect(),
            "tickets" => g.tickets.iter().map(String::as_str).collect(),
            _ => g.databases.iter().map(String::as_str).collect(),
        };
        let list = if list.is_empty() {
            "none".to_owned()
        } else {
            one_line(&list.join(", "), 80)
        };
        let _ = writeln!(
            out,
            "  {key:<width$}  {:>4} change{} ({})  {also}: {list}",
            g.changes,
            if g.changes == 1 { " " } else { "s" },
            status_counts(g),
        );
    }
}

fn who(e: &Entry) -> String {
    one_line(&format!("{}@{}", e.session.user, e.session.database), 60)
}

/// The report for a terminal.
pub fn text(r: &Report) -> String {
    let s = &r.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pgwarden audit report: {} ({} file{}: {} records, {} statements{})",
        range_text(r),
        r.files.len(),
        if r.files.len() == 1 { "" } else { "s" },
        s.records,
        s.statements,
        if s.skipped_lines > 0 {
            format!(", {} unreadable lines skipped", s.skipped_lines)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "changes: {} ({} succeeded, {} failed, {} without outcome); refused: {}; holds: {} ({} approved); break-glass uses: {}",
        s.changes, s.succeeded, s.failed, s.no_outcome, s.refusals, s.holds, s.holds_approved, s.break_glass_uses
    );
    groups_text(
        &mut out,
        "Changes by ticket",
        &r.by_ticket,
        "(no ticket)",
        "users",
    );
    groups_text(&mut out, "Changes by user", &r.by_user, "", "tickets");
    groups_text(&mut out, "Changes by database", &r.by_database, "", "users");

    let _ = writeln!(out, "\nChanges");
    if s.changes == 0 {
        let _ = writeln!(out, "  none");
    }
    for e in r.changes() {
        let o = e.outcome.as_ref().expect("a change was not refused");
        let status = match (&o.status, &o.sqlstate) {
            (Status::Failed, Some(code)) => format!("failed {code}"),
            (st, _) => st.name().to_owned(),
        };
        let mut via = Vec::new();
        if let Some(t) = &e.decision.ticket {
            via.push(format!("ticket {}", one_line(t, 40)));
        }
        if let Some(a) = &e.approval {
            via.push(format!(
                "hold {} approved by {}",
                a.hold,
                one_line(&a.approvers.join(", "), 60)
            ));
        }
        if e.decision.break_glass {
            via.push("break-glass".into());
        }
        let _ = writeln!(
            out,
            "  {}  #{}  {}  {}  {}{}  {}",
            e.ts,
            e.seq,
            who(e),
            if e.statement.tags.is_empty() {
                "?".to_owned()
            } else {
                one_line(&e.statement.tags.join(", "), 40)
            },
            status,
            if via.is_empty() {
                String::new()
            } else {
                format!("  [{}]", via.join("; "))
            },
            one_line(&e.statement.text, 100)
        );
    }

    let _ = writeln!(out, "\nRefusals");
    if s.refusals == 0 {
        let _ = writeln!(out, "  none");
    }
    for e in r.refusals() {
        let _ = writeln!(
            out,
            "  {}  #{}  {}  {}  {}  {}",
            e.ts,
            e.seq,
            who(e),
            e.decision.action,
            one_line(&e.decision.rules.join(", "), 80),
            one_line(&e.statement.text, 100)
        );
    }
    if !r.refusals_by_rule.is_empty() {
        let list: Vec<String> = r
            .refusals_by_rule
            .iter()
            .map(|c| format!("{} {}", one_line(&c.key, 60), c.count))
            .collect();
        let _ = writeln!(out, "  by rule: {}", list.join(", "));
    }

    let _ = writeln!(out, "\nHolds");
    if r.holds.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for h in &r.holds {
        let approvers = if h.approvers.is_empty() {
            "no approvals".to_owned()
        } else {
            format!("approved by {}", one_line(&h.approvers.join(", "), 80))
        };
        let needed = if h.approvals_required > 0 {
            format!(
                " ({} of {} needed)",
                h.approvers.len(),
                h.approvals_required
            )
        } else {
            String::new()
        };
        let mut tail = String::new();
        if let Some(by) = &h.closed_by {
            let _ = write!(tail, "  closed by {}", one_line(by, 40));
        }
        if let Some(why) = &h.reason {
            let _ = write!(tail, " ({})", one_line(why, 80));
        }
        if let Some(seq) = h.ran_as {
            let _ = write!(tail, "  ran as #{seq}");
        }
        let _ = writeln!(
            out,
            "  hold {}  {}  {}@{}  {}{}  {}{}  {}",
            h.id,
            one_line(&h.status, 20),
            one_line(&h.user, 40),
            one_line(&h.database, 40),
            approvers,
            needed,
            one_line(&h.rules.join(", "), 80),
            tail,
            one_line(&h.sql, 100)
        );
    }

    let _ = writeln!(out, "\nBreak-glass uses");
    if r.break_glass.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for b in &r.break_glass {
        let _ = writeln!(
            out,
            "  review {}  {}  {}@{}  reason: {}  rules: {}  {}  {}",
            b.review,
            b.at,
            one_line(&b.user, 40),
            one_line(&b.database, 40),
            one_line(&b.reason, 80),
            one_line(&b.rules.join(", "), 80),
            match &b.reviewed_by {
                Some(by) => format!("reviewed by {}", one_line(by, 40)),
                None => "not reviewed".into(),
            },
            one_line(&b.sql, 100)
        );
    }
    if s.break_glass_statements as usize != r.break_glass.len() {
        let _ = writeln!(
            out,
            "  ({} statement records say break-glass let them through)",
            s.break_glass_statements
        );
    }
    out
}
