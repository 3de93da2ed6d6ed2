//! Report tests over a fixture log written per the audit record spec; the fixture is shared
//! with the replay tests.

use serde_json::{json, Value};

use super::read::{parse_bound, read_into, Log, Range};
use super::*;

fn rec(seq: u64, ts: &str, kind: &str, fields: Value) -> String {
    let mut v = json!({
        "log_id": "L1",
        "seq": seq,
        "ts": ts,
        "type": kind,
        "prev_hash": "00",
        "hash": "11",
    });
    for (k, x) in fields.as_object().expect("fields").clone() {
        v[k] = x;
    }
    v.to_string()
}

#[allow(clippy::too_many_arguments)]
fn statement(
    seq: u64,
    ts: &str,
    user: &str,
    text: &str,
    tags: &[&str],
    classes: &[&str],
    action: &str,
    rules: &[&str],
    ticket: Option<&str>,
    refused: bool,
    extra: Value,
) -> String {
    let mut f = json!({
        "session": {"id": 7, "user": user, "role": null, "database": "app",
                    "application_name": "psql", "client_addr": "10.0.0.5", "tls": true},
        "statement": {"text": text, "fingerprint": "abcd", "tags": tags, "classes": classes,
                      "objects": ["public.t"]},
        "decision": {"action": action, "rules": rules, "mode": "enforce", "policy_version": "v1",
                     "ticket": ticket, "break_glass": false, "refused": refused},
        "approval": null,
        "refusal": null,
        "some_future_field": {"x": 1},
    });
    for (k, x) in extra.as_object().expect("extra").clone() {
        if k == "break_glass" {
            f["decision"]["break_glass"] = x;
        } else {
            f[k] = x;
        }
    }
    rec(seq, ts, "statement", f)
}

fn outcome(seq: u64, ts: &str, of: u64, error: Value) -> String {
    rec(
        seq,
        ts,
        "outcome",
        json!({"session": {"id": 7}, "decisions": [of],
               "commands": [{"tag": "UPDATE", "rows": 3}], "error": error, "duration_us": 1500}),
    )
}

fn hold(seq: u64, ts: &str, kind: &str, status: &str, approvers: &[&str]) -> String {
    let approvals: Vec<Value> = approvers
        .iter()
        .map(|a| json!({"by": a, "db_user": null, "at": ts, "comment": null}))
        .collect();
    rec(
        seq,
        ts,
        kind,
        json!({"hold": {
            "id": 4, "status": status, "sql": "CREATE INDEX i ON big (a)", "user": "carol",
            "database": "app", "client_addr": null, "application_name": "",
            "rules": [{"id": "lock.create-index", "message": "m", "hint": null}],
            "approvals_required": 2, "approver_groups": ["dba"], "approvals": approvals,
            "opened_at": "2024-05-02T09:00:00Z", "expires_at": "2024-05-02T10:00:00Z",
            "closed_at": null, "closed_by": null, "reason": null}}),
    )
}

/// The fixture log: a ticketed DROP TABLE, a read, a failed write with an awkward name,
/// a refused DROP DATABASE, a hold approved by two, a break-glass TRUNCATE, a record of an
/// unknown type, and a torn last line.
pub(crate) fn fixture() -> String {
    let lines = vec![
        rec(
            1,
            "2024-05-01T08:00:00Z",
            "policy_loaded",
            json!({"version": "v1"}),
        ),
        rec(
            2,
            "2024-05-01T08:59:00Z",
            "session_started",
            json!({"session": 7, "user": "alice", "database": "app",
                   "application_name": "psql", "client_addr": "10.0.0.5", "tls": true}),
        ),
        statement(
            3,
            "2024-05-01T09:00:00Z",
            "alice",
            "DROP TABLE orders_old",
            &["DROP TABLE"],
            &["ddl"],
            "require_ticket",
            &["destructive.drop-table"],
            Some("CHG-7"),
            false,
            json!({}),
        ),
        outcome(4, "2024-05-01T09:00:01Z", 3, Value::Null),
        statement(
            5,
            "2024-05-01T09:10:00Z",
            "bob",
            "SELECT * FROM t WHERE id = $1",
            &["SELECT"],
            &["read"],
            "allow",
            &[],
            None,
            false,
            json!({}),
        ),
        outcome(6, "2024-05-01T09:10:01Z", 5, Value::Null),
        statement(
            7,
            "2024-05-01T09:20:00Z",
            "bob",
            "UPDATE \"odd,name\" SET a = $1\nWHERE id = $2",
            &["UPDATE"],
            &["write"],
            "allow",
            &[],
            None,
            false,
            json!({}),
        ),
        outcome(
            8,
            "2024-05-01T09:20:01Z",
            7,
            json!({"sqlstate": "23505", "message": "duplicate key"}),
        ),
        statement(
            9,
            "2024-05-01T09:30:00Z",
            "mallory",
            "DROP DATABASE prod",
            &["DROP DATABASE"],
            &["ddl"],
            "block",
            &["destructive.drop-database"],
            None,
            true,
            json!({"refusal": {"sqlstate": "42501", "message": "pgwarden: destructive.drop-database: no"}}),
        ),
        hold(10, "2024-05-02T09:00:00Z", "hold_opened", "pending", &[]),
        hold(
            11,
            "2024-05-02T09:05:00Z",
            "hold_approved",
            "pending",
            &["dave"],
        ),
        hold(
            12,
            "2024-05-02T09:06:00Z",
            "hold_approved",
            "approved",
            &["dave", "erin"],
        ),
        statement(
            13,
            "2024-05-02T09:06:01Z",
            "carol",
            "CREATE INDEX i ON big (a)",
            &["CREATE INDEX"],
            &["ddl"],
            "hold",
            &["lock.create-index"],
            None,
            false,
            json!({"approval": {"hold": 4, "approvers": ["dave", "erin"]}}),
        ),
        rec(
            14,
            "2024-05-02T10:00:00Z",
            "break_glass_used",
            json!({"review": {"id": 1, "user": "root", "database": "app", "client_addr": null,
                   "reason": "incident 42", "sql": "TRUNCATE audit_tmp",
                   "rules": ["destructive.truncate"], "at": "2024-05-02T10:00:00Z",
                   "reviewed_by": null, "reviewed_at": null, "comment": null}}),
        ),
        statement(
            15,
            "2024-05-02T10:00:00Z",
            "root",
            "TRUNCATE audit_tmp",
            &["TRUNCATE TABLE"],
            &["write"],
            "require_ticket",
            &["destructive.truncate"],
            None,
            false,
            json!({"break_glass": true}),
        ),
        outcome(16, "2024-05-02T10:00:01Z", 15, Value::Null),
        rec(17, "2024-05-02T11:00:00Z", "future_thing", json!({"x": 1})),
        "{\"log_id\":\"L1\",\"seq\":18,\"ts\":\"2024-05-".to_owned(),
    ];
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

pub(crate) fn fixture_log() -> Log {
    let mut log = Log::default();
    read_into(&mut log, "audit.jsonl", fixture().as_bytes()).expect("in memory");
    log
}

fn report(range: Range) -> Report {
    build(&fixture_log(), range, &["audit.jsonl".into()])
}

#[test]
fn torn_lines_and_unknown_types_are_tolerated() {
    let log = fixture_log();
    assert_eq!(log.records.len(), 17);
    assert_eq!(log.skipped.len(), 1);
    assert_eq!(log.skipped[0].line, 18);
    assert!(matches!(log.records[16].body, read::Body::Other));
    assert_eq!(log.records[16].kind, "future_thing");
}

#[test]
fn changes_are_grouped_by_ticket_user_and_database() {
    let r = report(Range::default());
    let s = &r.summary;
    assert_eq!(s.statements, 6);
    // DROP TABLE, UPDATE, CREATE INDEX, TRUNCATE; not the SELECT, not the refused DROP DATABASE.
    assert_eq!(s.changes, 4);
    assert_eq!((s.succeeded, s.failed, s.no_outcome), (2, 1, 1));
    assert_eq!(s.refusals, 1);
    assert_eq!(s.skipped_lines, 1);
    assert_eq!(s.by_type["future_thing"], 1);

    let chg7 = r
        .by_ticket
        .iter()
        .find(|g| g.key.as_deref() == Some("CHG-7"))
        .expect("CHG-7");
    assert_eq!((chg7.changes, chg7.succeeded), (1, 1));
    assert!(chg7.users.contains("alice"));
    let none = r.by_ticket.iter().find(|g| g.key.is_none()).expect("none");
    assert_eq!(none.changes, 3);

    let bob = r
        .by_user
        .iter()
        .find(|g| g.key.as_deref() == Some("bob"))
        .expect("bob");
    assert_eq!((bob.changes, bob.failed), (1, 1));
    assert_eq!(r.by_database.len(), 1);
    assert_eq!(r.by_database[0].changes, 4);

    let failed = r.changes().find(|e| e.seq == 7).expect("update");
    let o = failed.outcome.as_ref().expect("outcome");
    assert_eq!(o.status, Status::Failed);
    assert_eq!(o.sqlstate.as_deref(), Some("23505"));
    assert_eq!(o.rows, Some(3));

    assert_eq!(r.refusals_by_rule[0].key, "destructive.drop-database");
}

#[test]
fn holds_show_their_last_state_approvers_and_the_statement_that_ran() {
    let r = report(Range::default());
    assert_eq!(r.holds.len(), 1);
    let h = &r.holds[0];
    assert_eq!(h.id, 4);
    assert_eq!(h.status, "approved");
    assert_eq!(h.approvers, ["dave", "erin"]);
    assert_eq!(h.ran_as, Some(13));
    assert_eq!(r.summary.holds_approved, 1);
    assert_eq!(r.break_glass.len(), 1);
    assert_eq!(r.break_glass[0].reason, "incident 42");
    assert_eq!(r.summary.break_glass_statements, 1);
}

#[test]
fn a_hold_known_only_from_its_statement_still_shows_its_approvers() {
    let range = Range {
        since: Some(parse_bound("2024-05-02T09:06:01Z").unwrap()),
        until: None,
    };
    let r = report(range);
    assert_eq!(r.holds.len(), 1);
    assert_eq!(r.holds[0].approvers, ["dave", "erin"]);
    assert_eq!(r.holds[0].ran_as, Some(13));
}

#[test]
fn time_bounds_are_half_open_and_dates_mean_midnight_utc() {
    assert_eq!(
        parse_bound("2024-05-02").unwrap(),
        "2024-05-02T00:00:00Z".parse::<Timestamp>().unwrap()
    );
    assert_eq!(
        parse_bound("2024-05-02T02:00:00+02:00").unwrap(),
        "2024-05-02T00:00:00Z".parse::<Timestamp>().unwrap()
    );
    assert!(parse_bound("yesterday").is_err());
    assert!(parse_bound("2024-5-2").is_err());

    let day1 = report(Range {
        since: None,
        until: Some(parse_bound("2024-05-02").unwrap()),
    });
    assert_eq!(day1.summary.statements, 4);
    assert!(day1.holds.is_empty());
    assert!(day1.break_glass.is_empty());

    let day2 = report(Range {
        since: Some(parse_bound("2024-05-02").unwrap()),
        until: None,
    });
    assert_eq!(day2.summary.statements, 2);
    assert_eq!(day2.summary.refusals, 0);

    // `until` is exclusive, `since` inclusive.
    let exact = report(Range {
        since: Some(parse_bound("2024-05-01T09:00:00Z").unwrap()),
        until: Some(parse_bound("2024-05-01T09:10:00Z").unwrap()),
    });
    assert_eq!(exact.summary.statements, 1);
    assert_eq!(exact.changes().next().unwrap().seq, 3);
}

#[test]
fn an_outcome_after_until_still_joins_its_change() {
    let r = report(Range {
        since: None,
        until: Some(parse_bound("2024-05-01T09:00:00.5Z").unwrap()),
    });
    let e = r.changes().next().expect("drop table");
    assert_eq!(e.outcome.as_ref().unwrap().status, Status::Succeeded);
}

#[test]
fn csv_fields_are_quoted_doubled_and_defused() {
    assert_eq!(render::csv_field("plain"), "plain");
    assert_eq!(render::csv_field("a,b"), "\"a,b\"");
    assert_eq!(render::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(render::csv_field("two\nlines"), "\"two\nlines\"");
    assert_eq!(render::csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    assert_eq!(render::csv_field("-- c\nDROP"), "\"'-- c\nDROP\"");
}

#[test]
fn csv_has_one_row_per_statement_record() {
    let r = report(Range::default());
    let csv = render::csv(&r);
    assert!(csv.starts_with("log_id,seq,ts,session,user,"));
    // Header + 6 statements; the UPDATE's text holds a newline inside quotes.
    assert_eq!(csv.matches("\r\n").count(), 7);
    assert!(csv.contains("\"UPDATE \"\"odd,name\"\" SET a = $1\nWHERE id = $2\""));
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header, render::CSV_COLUMNS);
    let drop_db = csv.lines().find(|l| l.contains("DROP DATABASE")).unwrap();
    assert!(drop_db.contains(",refused,42501,"));
}

#[test]
fn json_has_the_summary_groups_and_the_records() {
    let r = report(Range::default());
    let v = render::json(&r);
    assert_eq!(v["summary"]["changes"], 4);
    assert_eq!(v["changes"].as_array().unwrap().len(), 4);
    assert_eq!(v["refusals"][0]["seq"], 9);
    assert_eq!(v["refusals"][0]["refusal"]["sqlstate"], "42501");
    assert_eq!(v["changes"][0]["outcome"]["status"], "succeeded");
    assert_eq!(v["by_ticket"][0]["key"], Value::Null);
    assert_eq!(v["holds"][0]["approvers"], json!(["dave", "erin"]));
    assert_eq!(v["break_glass"][0]["review"], 1);
    assert!(v["since"].is_null());
}

#[test]
fn text_names_tickets_approvers_and_refusals() {
    let t = render::text(&report(Range::default()));
    assert!(t.contains("changes: 4 (2 succeeded, 1 failed, 1 without outcome); refused: 1;"));
    assert!(t.contains("CHG-7"));
    assert!(t.contains("failed 23505"));
    assert!(t.contains("hold 4 approved by dave, erin"));
    assert!(t.contains("destructive.drop-database"));
    assert!(t.contains("reason: incident 42"));
    // The UPDATE's newline is folded onto one line.
    assert!(t.contains("UPDATE \"odd,name\" SET a = $1 WHERE id = $2"));
}

#[test]
fn text_escapes_control_characters_from_clients() {
    assert_eq!(render::one_line("a\u{1b}[2Jb", 50), "a\\u{1b}[2Jb");
    assert_eq!(render::one_line("abcdef", 3), "abc…");
}

#[test]
fn html_is_one_file_with_svg_charts_and_escaped_sql() {
    let mut log = fixture_log();
    let line = statement(
        30,
        "2024-05-03T00:00:00Z",
        "eve",
        "SELECT '<script>alert(1)</script>'",
        &["INSERT"],
        &["write"],
        "allow",
        &[],
        None,
        false,
        json!({}),
    );
    read_into(&mut log, "x", line.as_bytes()).unwrap();
    let h = html::html(&build(&log, Range::default(), &["x".into()]));
    assert!(h.starts_with("<!DOCTYPE html>"));
    assert!(h.contains("<svg"));
    assert!(h.contains("Changes by user"));
    assert!(h.contains("<rect"));
    assert!(!h.contains("<script"));
    assert!(h.contains("&lt;script&gt;"));
    // Self-contained: nothing to fetch.
    assert!(!h.contains("src="));
    assert!(!h.contains("href="));
    assert!(h.contains("default-src 'none'"));
}

#[test]
fn bar_chart_scales_and_folds_long_tails() {
    let bars: Vec<(String, u64)> = (0..20).map(|i| (format!("u{i}"), 20 - i)).collect();
    let svg = html::bar_chart("t", &bars);
    assert_eq!(svg.matches("<rect").count(), 15);
    assert!(svg.contains("6 others"));
    assert!(html::bar_chart("empty", &[]).contains("none"));
}
