//! The report as one self-contained HTML page: inline CSS, bar charts drawn here as inline
//! SVG, no script, nothing fetched (a Content-Security-Policy of `default-src 'none'` says
//! so to the browser too), so the file can be mailed to an auditor or archived as is.
//! Everything from the log is escaped: statement text is written by database clients.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Entry, Group, Report, Status};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "&#x{:x};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

const BAR_HEIGHT: usize = 18;
const LABEL_WIDTH: usize = 220;
const BAR_WIDTH: usize = 360;
/// Bars beyond this are summed into one "others" bar.
const MAX_BARS: usize = 15;

/// A horizontal bar chart of `(label, value)` as an inline SVG element.
pub fn bar_chart(title: &str, bars: &[(String, u64)]) -> String {
    let mut bars = bars.to_vec();
    if bars.len() > MAX_BARS {
        let rest: u64 = bars[MAX_BARS - 1..].iter().map(|b| b.1).sum();
        let n = bars.len() - (MAX_BARS - 1);
        bars.truncate(MAX_BARS - 1);
        bars.push((format!("{n} others"), rest));
    }
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let width = LABEL_WIDTH + BAR_WIDTH + 60;
    let height = (bars.len().max(1)) * (BAR_HEIGHT + 6) + 30;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><title>{t}</title><text x="0" y="16" class="ct">{t}</text>"#,
        t = escape(title)
    );
    if bars.is_empty() {
        let _ = write!(s, r#"<text x="0" y="42" class="cl">none</text>"#);
    }
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = 28 + i * (BAR_HEIGHT + 6);
        let w = ((*value as f64 / max as f64) * BAR_WIDTH as f64).round() as usize;
        let label: String = if label.chars().count() > 32 {
            label.chars().take(31).chain(['…']).collect()
        } else {
            label.clone()
        };
        let _ = write!(
            s,
            r#"<text x="{lx}" y="{ty}" class="cl" text-anchor="end">{l}</text><rect x="{bx}" y="{y}" width="{w}" height="{BAR_HEIGHT}" class="bar"><title>{l}: {value}</title></rect><text x="{vx}" y="{ty}" class="cv">{value}</text>"#,
            lx = LABEL_WIDTH - 8,
            ty = y + BAR_HEIGHT - 4,
            l = escape(&label),
            bx = LABEL_WIDTH,
            vx = LABEL_WIDTH + w + 6,
        );
    }
    s.push_str("</svg>");
    s
}

fn group_bars(groups: &[Group], none: &str) -> Vec<(String, u64)> {
    groups
        .iter()
        .map(|g| (g.key.clone().unwrap_or_else(|| none.into()), g.changes))
        .collect()
}

fn table(out: &mut String, head: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        out.push_str("<p class=\"none\">none</p>\n");
        return;
    }
    out.push_str("<table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            // Cells are escaped by the caller (some hold markup of their own: <code>).
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn code(s: &str) -> String {
    format!("<code>{}</code>", escape(s))
}

fn outcome_cell(e: &Entry) -> String {
    match &e.outcome {
        None => "refused".into(),
        Some(o) => match (&o.status, &o.sqlstate, &o.message) {
            (Status::Failed, code, msg) => format!(
                "<span class=\"bad\">failed {}</span> {}",
                escape(code.as_deref().unwrap_or("")),
                escape(msg.as_deref().unwrap_or(""))
            ),
            (st, _, _) => escape(st.name()),
        },
    }
}

fn group_rows(groups: &[Group], none: &str) -> Vec<Vec<String>> {
    groups
        .iter()
        .map(|g| {
            vec![
                escape(g.key.as_deref().unwrap_or(none)),
                g.changes.to_string(),
                g.succeeded.to_string(),
                g.failed.to_string(),
                g.no_outcome.to_string(),
                escape(&g.users.iter().cloned().collect::<Vec<_>>().join(", ")),
                escape(&g.databases.iter().cloned().collect::<Vec<_>>().join(", ")),
            ]
        })
        .collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}\
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}code{font-size:.95em;white-space:pre-wrap;word-break:break-word}\
.charts{display:flex;flex-wrap:wrap;gap:1.5em}.chart{border:1px solid #eee;padding:.5em}\
.bar{fill:#3b6ea8}.ct{font-weight:bold;font-size:13px}.cl,.cv{font-size:12px}\
.bad{color:#a00;font-weight:bold}.none{color:#777}.summary td{text-align:right}";

/// The whole page.
pub fn html(r: &Report) -> String {
    let s = &r.summary;
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    out.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n");
    out.push_str("<title>pgwarden audit report</title>\n");
    let _ = writeln!(out, "<style>{STYLE}</style></head><body>");
    out.push_str("<h1>pgwarden audit report</h1>\n");
    let range = match (r.since, r.until) {
        (None, None) => "all records".to_owned(),
        (a, b) => format!(
            "from {} until {} (exclusive)",
            a.map_or("the start".into(), |t| t.to_string()),
            b.map_or("the end".into(), |t| t.to_string())
        ),
    };
    let _ = writeln!(
        out,
        "<p>{} &middot; files: {}</p>",
        escape(&range),
        escape(&r.files.join(", "))
    );
    out.push_str("<table class=\"summary\"><tbody>\n");
    for (k, v) in [
        ("records", s.records),
        ("unreadable lines skipped", s.skipped_lines),
        ("statements", s.statements),
        ("changes", s.changes),
        ("changes succeeded", s.succeeded),
        ("changes failed", s.failed),
        ("changes without outcome", s.no_outcome),
        ("refused", s.refusals),
        ("holds", s.holds),
        ("holds approved", s.holds_approved),
        ("break-glass uses", s.break_glass_uses),
    ] {
        let _ = writeln!(out, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    out.push_str("</tbody></table>\n");

    let mut per_day: BTreeMap<String, u64> = BTreeMap::new();
    for e in r.changes() {
        let day = e.ts.to_string().chars().take(10).collect::<String>();
        *per_day.entry(day).or_default() += 1;
    }
    out.push_str("<h2>Charts</h2><div class=\"charts\">\n");
    for chart in [
        bar_chart(
            "Changes by ticket",
            &group_bars(&r.by_ticket, "(no ticket)"),
        ),
        bar_chart("Changes by user", &group_bars(&r.by_user, "")),
        bar_chart("Changes by database", &group_bars(&r.by_database, "")),
        bar_chart(
            "Changes per day (UTC)",
            &per_day.into_iter().collect::<Vec<_>>(),
        ),
        bar_chart(
            "Refusals by rule",
            &r.refusals_by_rule
                .iter()
                .map(|c| (c.key.clone(), c.count))
                .collect::<Vec<_>>(),
        ),
    ] {
        out.push_str(&chart);
        out.push('\n');
    }
    out.push_str("</div>\n");

    let head = [
        "key",
        "changes",
        "succeeded",
        "failed",
        "no outcome",
        "users",
        "databases",
    ];
    out.push_str("<h2>Changes by ticket</h2>\n");
    table(&mut out, &head, group_rows(&r.by_ticket, "(no ticket)"));
    out.push_str("<h2>Changes by user</h2>\n");
    table(&mut out, &head, group_rows(&r.by_user, ""));
    out.push_str("<h2>Changes by database</h2>\n");
    table(&mut out, &head, group_rows(&r.by_database, ""));

    out.push_str("<h2>Changes</h2>\n");
    table(
        &mut out,
        &[
            "time",
            "seq",
            "user",
            "database",
            "ticket",
            "approval",
            "tags",
            "outcome",
            "rows",
            "statement",
        ],
        r.changes()
            .map(|e| {
                vec![
                    escape(&e.ts.to_string()),
                    e.seq.to_string(),
                    escape(&e.session.user),
                    escape(&e.session.database),
                    escape(e.decision.ticket.as_deref().unwrap_or("")),
                    match (&e.approval, e.decision.break_glass) {
                        (Some(a), _) => {
                            escape(&format!("hold {} by {}", a.hold, a.approvers.join(", ")))
                        }
                        (None, true) => "break-glass".into(),
                        (None, false) => String::new(),
                    },
                    escape(&e.statement.tags.join(", ")),
                    outcome_cell(e),
                    e.outcome
                        .as_ref()
                        .and_then(|o| o.rows)
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    code(&e.statement.text),
                ]
            })
            .collect(),
    );

    out.push_str("<h2>Refusals</h2>\n");
    table(
        &mut out,
        &[
            "time",
            "seq",
            "user",
            "database",
            "action",
            "rules",
            "error",
            "statement",
        ],
        r.refusals()
            .map(|e| {
                vec![
                    escape(&e.ts.to_string()),
                    e.seq.to_string(),
                    escape(&e.session.user),
                    escape(&e.session.database),
                    escape(&e.decision.action),
                    escape(&e.decision.rules.join(", ")),
                    e.refusal
                        .as_ref()
                        .map(|f| escape(&format!("{} {}", f.sqlstate, f.message)))
                        .unwrap_or_default(),
                    code(&e.statement.text),
                ]
            })
            .collect(),
    );

    out.push_str("<h2>Holds</h2>\n");
    table(
        &mut out,
        &[
            "hold",
            "status",
            "user",
            "database",
            "rules",
            "approvers",
            "opened",
            "closed",
            "closed by",
            "reason",
            "ran as",
            "statement",
        ],
        r.holds
            .iter()
            .map(|h| {
                vec![
                    h.id.to_string(),
                    escape(&h.status),
                    escape(&h.user),
                    escape(&h.database),
                    escape(&h.rules.join(", ")),
                    escape(&format!(
                        "{}{}",
                        h.approvers.join(", "),
                        if h.approvals_required > 0 {
                            format!(" ({} of {})", h.approvers.len(), h.approvals_required)
                        } else {
                            String::new()
                        }
                    )),
                    h.opened_at.map(|t| t.to_string()).unwrap_or_default(),
                    h.closed_at.map(|t| t.to_string()).unwrap_or_default(),
                    escape(h.closed_by.as_deref().unwrap_or("")),
                    escape(h.reason.as_deref().unwrap_or("")),
                    h.ran_as.map(|s| format!("#{s}")).unwrap_or_default(),
                    code(&h.sql),
                ]
            })
            .collect(),
    );

    out.push_str("<h2>Break-glass uses</h2>\n");
    table(
        &mut out,
        &[
            "review",
            "time",
            "user",
            "database",
            "reason",
            "rules",
            "reviewed by",
            "statement",
        ],
        r.break_glass
            .iter()
            .map(|b| {
                vec![
                    b.review.to_string(),
                    escape(&b.at.to_string()),
                    escape(&b.user),
                    escape(&b.database),
                    escape(&b.reason),
                    escape(&b.rules.join(", ")),
                    escape(b.reviewed_by.as_deref().unwrap_or("not reviewed")),
                    code(&b.sql),
                ]
            })
            .collect(),
    );
    out.push_str("</body></html>\n");
    out
}
