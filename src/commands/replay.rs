//! `pgwarden policy replay --audit FILE... --policies DIR [--environment E]`: re-decides
//! every recorded statement with another policy set and reports which statements it would
//! newly refuse and newly let through, per rule, with a few examples.
//!
//! The decision is the real one: the recorded text goes through `sql::inspect` and
//! `Policy::decide` (enforcing, whatever mode recorded it) in a `SessionContext` made from
//! the record (user, role, database, application, client address, TLS, the recorded
//! ticket, and the record's `ts` as the time, so change windows and freezes replay as they
//! were), then through the session's own routing (`workflow::offline`): block refuses;
//! break-glass, when recorded and the new set's `[break_glass] users` allow the user, lets
//! holds and tickets through; a `require_ticket` is checked against the ticket as the log's
//! last `ticket_*` record before the statement shows it (scope, status, validity, uses).
//! When the log has no record of the recorded ticket, a `require_ticket` counts as covered
//! (it ran under that ticket once) and the output says how many were assumed so. A hold
//! counts as refusing, except for a statement that ran after its hold was approved: it would
//! wait for the same approval again.
//!
//! What the record cannot say is taken as unset: objects created earlier in the session
//! (exempt from some rules), `lock_timeout`, an open transaction, live-catalog facts (every
//! table counts as large); literals are redacted in recorded text. The output says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{load_or_report, EXIT_ERROR, EXIT_OK};
use crate::approval::model::Ticket;
use crate::audit_report::read::{self, Body, Log, Record, StatementRecord};
use crate::policy::{Action, Mode, OnMissingTicket, Policy, SessionContext};
use crate::sql::{self, ReadAs};
use crate::workflow::offline::{offline, Attached};

/// Examples kept per rule.
pub const EXAMPLES: usize = 3;

/// One statement shown as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    pub seq: u64,
    pub ts: String,
    pub user: String,
    pub database: String,
    pub old_action: String,
    /// How it went then: `refused`, `ran`, `ran under ticket CHG-7`, `ran under
    /// break-glass`, `ran once hold 4 was approved`.
    pub old_outcome: String,
    pub new_action: String,
    pub text: String,
}

/// Statements a rule newly refuses (or no longer refuses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RuleDiff {
    pub rule: String,
    pub count: u64,
    /// The new actions these statements met.
    pub actions: BTreeSet<String>,
    pub examples: Vec<Example>,
}

/// What changed between the recorded decisions and the new policy set's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Diff {
    pub policy_version: String,
    pub environment: String,
    pub statements: u64,
    pub newly_refused: u64,
    pub newly_allowed: u64,
    pub still_refused: u64,
    pub still_allowed: u64,
    /// Refusal unchanged, but the enforced action differs (alert where it was allow, say).
    pub action_changed: u64,
    /// `require_ticket` counted as covered by a recorded ticket the log has no record of.
    pub assumed_covered: u64,
    pub newly_refused_by_rule: Vec<RuleDiff>,
    pub newly_allowed_by_rule: Vec<RuleDiff>,
}

/// How the new policy set treats one recorded statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redecided {
    /// Where the statement ends up (the routed outcome: allow when a ticket covers it).
    pub action: Action,
    pub refused: bool,
    /// The enforced rules that decide `action` (for a refusal), else every enforced match.
    pub rules: Vec<String>,
    /// Rules matching with a refusing, enforced action.
    pub refusing_rules: BTreeSet<String>,
    pub enforced: Action,
    pub assumed_covered: bool,
}

fn client_addr(s: Option<&str>) -> Option<std::net::IpAddr> {
    let s = s?;
    s.parse()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The session the statement was decided in, as far as the record tells.
pub fn session_of(r: &Record, s: &StatementRecord) -> SessionContext {
    SessionContext {
        user: s.session.user.clone(),
        database: s.session.database.clone(),
        role: s.session.role.clone(),
        application: s.session.application_name.clone().unwrap_or_default(),
        client_addr: client_addr(s.session.client_addr.as_deref()),
        tls: s.session.tls,
        ticket: s.decision.ticket.clone(),
        now: r.ts,
        ..SessionContext::default()
    }
}

/// Re-decides one statement record with `policy`; `ticket` is the recorded ticket as the log
/// last showed it before the statement.
pub fn redecide(
    policy: &Policy,
    r: &Record,
    s: &StatementRecord,
    ticket: Option<&Ticket>,
    on_missing_ticket: OnMissingTicket,
) -> Redecided {
    let ins = sql::inspect(&s.statement.text, ReadAs::default());
    let ctx = session_of(r, s);
    let d = policy.decide(&ins, &ctx, Mode::Enforce);
    let mut refusing_rules = BTreeSet::new();
    for m in d
        .matches
        .iter()
        .filter(|m| !m.monitor && m.action.refuses())
    {
        refusing_rules.insert(m.rule.clone());
    }
    let mut rules: Vec<String> = Vec::new();
    for m in d
        .matches
        .iter()
        .filter(|m| !m.monitor && (m.action == d.action || !d.action.refuses()))
    {
        if !rules.contains(&m.rule) {
            rules.push(m.rule.clone());
        }
    }
    let assumed_covered =
        d.action == Action::RequireTicket && s.decision.ticket.is_some() && ticket.is_none();
    let action = if assumed_covered {
        Action::Allow
    } else if !d.action.refuses() {
        d.action
    } else {
        let attached = Attached {
            ticket: s.decision.ticket.as_deref(),
            known: ticket,
            break_glass: s.decision.break_glass.then_some("recorded break-glass"),
        };
        offline(policy, &ins, &d, &ctx, attached, on_missing_ticket).action
    };
    // It ran once this hold was approved: held again, it waits for that approval again.
    let approved_before = action == Action::Hold && s.approval.is_some();
    Redecided {
        action,
        refused: action.refuses() && !approved_before,
        rules,
        refusing_rules,
        enforced: d.action,
        assumed_covered,
    }
}

fn old_outcome(s: &StatementRecord) -> String {
    let d = &s.decision;
    match (&s.approval, &d.ticket) {
        _ if d.refused => "refused".into(),
        _ if d.break_glass => "ran under break-glass".into(),
        (Some(a), _) => format!("ran once hold {} was approved", a.hold),
        (None, Some(t)) if Action::parse(&d.action) == Some(Action::RequireTicket) => {
            format!("ran under ticket {t}")
        }
        _ => "ran".into(),
    }
}

fn example(r: &Record, s: &StatementRecord, new: &Redecided) -> Example {
    Example {
        seq: r.seq,
        ts: r.ts.to_string(),
        user: s.session.user.clone(),
        database: s.session.database.clone(),
        old_action: s.decision.action.clone(),
        old_outcome: old_outcome(s),
        new_action: new.action.name().to_owned(),
        text: s.statement.text.clone(),
    }
}

fn tally(
    by_rule: &mut BTreeMap<String, RuleDiff>,
    rules: &[String],
    r: &Record,
    s: &StatementRecord,
    new: &Redecided,
) {
    for rule in rules {
        let d = by_rule.entry(rule.clone()).or_insert_with(|| RuleDiff {
            rule: rule.clone(),
            ..RuleDiff::default()
        });
        d.count += 1;
        d.actions.insert(new.action.name().to_owned());
        if d.examples.len() < EXAMPLES {
            d.examples.push(example(r, s, new));
        }
    }
}

fn sorted(by_rule: BTreeMap<String, RuleDiff>) -> Vec<RuleDiff> {
    let mut v: Vec<RuleDiff> = by_rule.into_values().collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.rule.cmp(&b.rule)));
    v
}

/// Re-decides every statement record of `log` with `policy`.
pub fn replay(policy: &Policy, log: &Log, on_missing_ticket: OnMissingTicket) -> Diff {
    let mut diff = Diff {
        policy_version: policy.version.clone(),
        environment: policy.environment.clone(),
        ..Diff::default()
    };
    let mut refused: BTreeMap<String, RuleDiff> = BTreeMap::new();
    let mut allowed: BTreeMap<String, RuleDiff> = BTreeMap::new();
    // Each log's tickets as its records show them so far (log order).
    let mut tickets: HashMap<(String, String), Ticket> = HashMap::new();
    for r in &log.records {
        let s = match &r.body {
            Body::Ticket(t) => {
                tickets.insert((r.log_id.clone(), t.id.clone()), (**t).clone());
                continue;
            }
            Body::Statement(s) => s,
            _ => continue,
        };
        diff.statements += 1;
        let known = s
            .decision
            .ticket
            .as_ref()
            .and_then(|id| tickets.get(&(r.log_id.clone(), id.clone())));
        let new = redecide(policy, r, s, known, on_missing_ticket);
        if new.assumed_covered {
            diff.assumed_covered += 1;
        }
        match (s.decision.refused, new.refused) {
            (false, true) => {
                diff.newly_refused += 1;
                tally(&mut refused, &new.rules, r, s, &new);
            }
            (true, false) => {
                diff.newly_allowed += 1;
                // The recorded rules that no longer refuse it (all of them when a ticket
                // or break-glass now lets it through).
                let mut gone: Vec<String> = s
                    .decision
                    .rules
                    .iter()
                    .filter(|rule| !new.refusing_rules.contains(*rule))
                    .cloned()
                    .collect();
                if gone.is_empty() {
                    gone = s.decision.rules.clone();
                }
                if gone.is_empty() {
                    gone.push("(no rule recorded)".into());
                }
                tally(&mut allowed, &gone, r, s, &new);
            }
            (true, true) => diff.still_refused += 1,
            (false, false) => {
                diff.still_allowed += 1;
                if Action::parse(&s.decision.action).is_some_and(|a| a != new.enforced) {
                    diff.action_changed += 1;
                }
            }
        }
    }
    diff.newly_refused_by_rule = sorted(refused);
    diff.newly_allowed_by_rule = sorted(allowed);
    diff
}

/// The literal-redaction and missing-state caveat printed with every replay.
pub const CAVEAT: &str = "note: recorded statement text has its literals redacted ($1, $2, ...) unless the proxy was configured otherwise, so decisions that depend on literal values may differ; session state the record does not carry (objects created earlier in the session, lock_timeout, an open transaction, live-catalog sizes) is taken as unset.";

fn rules_text(out: &mut String, title: &str, n: u64, rules: &[RuleDiff]) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\n{title}: {n} statement{}",
        if n == 1 { "" } else { "s" }
    );
    for d in rules {
        let _ = writeln!(
            out,
            "  {} ({}): {}",
            crate::audit_report::render::one_line(&d.rule, 80),
            d.actions.iter().cloned().collect::<Vec<_>>().join(", "),
            d.count
        );
        for e in &d.examples {
            let _ = writeln!(
                out,
                "    #{} {} {}@{} was {} ({}), now {}: {}",
                e.seq,
                e.ts,
                crate::audit_report::render::one_line(&e.user, 40),
                crate::audit_report::render::one_line(&e.database, 40),
                crate::audit_report::render::one_line(&e.old_action, 20),
                crate::audit_report::render::one_line(&e.old_outcome, 60),
                e.new_action,
                crate::audit_report::render::one_line(&e.text, 100)
            );
        }
    }
}

/// The diff for a terminal.
pub fn text(diff: &Diff, files: usize, policies: &Path) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pgwarden policy replay: {} statement records from {files} file{}, re-decided with {} (version {}, environment {})",
        diff.statements,
        if files == 1 { "" } else { "s" },
        policies.display(),
        diff.policy_version,
        diff.environment
    );
    let _ = writeln!(out, "{CAVEAT}");
    rules_text(
        &mut out,
        "newly refused",
        diff.newly_refused,
        &diff.newly_refused_by_rule,
    );
    rules_text(
        &mut out,
        "newly allowed",
        diff.newly_allowed,
        &diff.newly_allowed_by_rule,
    );
    let _ = writeln!(
        out,
        "\nunchanged: {} still refused, {} still allowed ({} of them with another action, refusal unchanged)",
        diff.still_refused, diff.still_allowed, diff.action_changed
    );
    if diff.assumed_covered > 0 {
        let _ = writeln!(
            out,
            "{} require_ticket decisions counted as covered by the recorded ticket (no record of that ticket in the log)",
            diff.assumed_covered
        );
    }
    out
}

pub fn run(audit: &[PathBuf], policies: &Path, environment: &str) -> i32 {
    let Some(policy) = load_or_report(policies, environment) else {
        return EXIT_ERROR;
    };
    let log = match read::read_files(audit) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return EXIT_ERROR;
        }
    };
    for s in &log.skipped {
        eprintln!("pgwarden: warning: {s}");
    }
    let on_missing_ticket = crate::config::Config::default().holds.on_missing_ticket;
    let diff = replay(&policy, &log, on_missing_ticket);
    let _ = std::io::stdout()
        .lock()
        .write_all(text(&diff, audit.len(), policies).as_bytes());
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::model::{Requester, Scope, TicketStatus};
    use crate::audit_report::read::read_files;
    use crate::audit_report::tests::fixture;

    /// A policy directory with one rule: `tag` decided with `action`, and `extra` TOML.
    fn policy_dir(dir: &Path, name: &str, rules: &[(&str, &str, &str)], extra: &str) -> Policy {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut toml = String::from(extra);
        for (id, tag, action) in rules {
            toml.push_str(&format!(
                "[[rule]]\nid = \"{id}\"\ndescription = \"{tag}\"\nseverity = \"high\"\naction = \"{action}\"\nmessage = \"{tag} is {action}\"\n[rule.match]\ntags = [\"{tag}\"]\n\n"
            ));
        }
        std::fs::write(d.join("rules.toml"), toml).unwrap();
        crate::policy::load_dir(&d, "production").expect("policy compiles")
    }

    /// The fixture written to a file and read back as the command reads it.
    fn fixture_in(dir: &Path, extra_first: &str) -> Log {
        let f = dir.join("audit.jsonl");
        std::fs::write(&f, format!("{extra_first}{}", fixture())).unwrap();
        let log = read_files(&[&f]).unwrap();
        assert_eq!(log.skipped.len(), 1, "the torn last line");
        log
    }

    fn replayed(p: &Policy, log: &Log) -> Diff {
        replay(p, log, OnMissingTicket::Refuse)
    }

    #[test]
    fn drop_table_from_alert_to_block_is_newly_refused_by_that_rule() {
        let tmp = tempfile::tempdir().unwrap();
        let log = fixture_in(tmp.path(), "");
        let alert = policy_dir(
            tmp.path(),
            "alert",
            &[("t.drop-table", "DROP TABLE", "alert")],
            "",
        );
        let block = policy_dir(
            tmp.path(),
            "block",
            &[("t.drop-table", "DROP TABLE", "block")],
            "",
        );

        let a = replayed(&alert, &log);
        assert_eq!(a.statements, 6);
        assert_eq!(a.newly_refused, 0);
        // The recorded DROP DATABASE refusal has no rule in this set.
        assert_eq!(a.newly_allowed, 1);
        assert_eq!(a.newly_allowed_by_rule[0].rule, "destructive.drop-database");
        assert_eq!(a.newly_allowed_by_rule[0].examples[0].seq, 9);

        let b = replayed(&block, &log);
        assert_eq!(b.newly_refused, 1);
        let d = &b.newly_refused_by_rule[0];
        assert_eq!(d.rule, "t.drop-table");
        assert_eq!(d.count, 1);
        assert_eq!(d.actions.iter().collect::<Vec<_>>(), ["block"]);
        assert_eq!(d.examples[0].seq, 3);
        assert_eq!(d.examples[0].old_action, "require_ticket");
        assert_eq!(d.examples[0].text, "DROP TABLE orders_old");
        assert_eq!(b.still_refused, 0);
        assert_eq!(b.still_allowed, 4);

        let t = text(&b, 1, Path::new("block"));
        assert!(t.contains("newly refused: 1 statement"));
        assert!(t.contains("t.drop-table (block): 1"));
        assert!(t.contains("#3 2024-05-01T09:00:00Z alice@app was require_ticket (ran under ticket CHG-7), now block: DROP TABLE orders_old"));
        assert!(t.contains("literals redacted"));
    }

    #[test]
    fn require_ticket_under_a_recorded_ticket_the_log_does_not_show_counts_as_covered() {
        let tmp = tempfile::tempdir().unwrap();
        let log = fixture_in(tmp.path(), "");
        let p = policy_dir(
            tmp.path(),
            "ticket",
            &[("t.drop-table", "DROP TABLE", "require_ticket")],
            "",
        );
        let d = replayed(&p, &log);
        assert_eq!(d.newly_refused, 0);
        assert_eq!(d.assumed_covered, 1);
        assert!(text(&d, 1, Path::new("ticket"))
            .contains("1 require_ticket decisions counted as covered"));
    }

    fn ticket_record(rules: &[&str]) -> String {
        let t = Ticket {
            id: "CHG-7".into(),
            title: "drop old orders".into(),
            requester: Requester::default(),
            status: TicketStatus::Approved,
            approvals: Vec::new(),
            approvals_required: 1,
            approver_groups: Vec::new(),
            valid_from: None,
            valid_until: None,
            max_uses: None,
            uses: 0,
            scope: Scope {
                rules: rules.iter().map(|r| r.to_string()).collect(),
                ..Scope::default()
            },
            created_at: "2024-05-01T07:00:00Z".parse().unwrap(),
            closed_by: None,
            reason: None,
        };
        let mut v = serde_json::json!({
            "log_id": "L1", "seq": 100, "ts": "2024-05-01T07:00:00Z",
            "type": "ticket_approved", "prev_hash": "0", "hash": "1",
        });
        v["ticket"] = serde_json::to_value(&t).unwrap();
        format!("{v}\n")
    }

    #[test]
    fn a_ticket_the_log_shows_is_checked_for_cover_under_the_new_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let p = policy_dir(
            tmp.path(),
            "ticket",
            &[("t.drop-table", "DROP TABLE", "require_ticket")],
            "",
        );
        // Scoped to another rule: the new rule is not covered.
        let narrow = fixture_in(tmp.path(), &ticket_record(&["destructive.drop-table"]));
        let d = replayed(&p, &narrow);
        assert_eq!(d.assumed_covered, 0);
        assert_eq!(d.newly_refused, 1);
        assert_eq!(d.newly_refused_by_rule[0].rule, "t.drop-table");
        assert_eq!(
            d.newly_refused_by_rule[0].examples[0].new_action,
            "require_ticket"
        );
        // Scoped to it: covered.
        let wide = fixture_in(tmp.path(), &ticket_record(&["t.drop-table"]));
        assert_eq!(replayed(&p, &wide).newly_refused, 0);
    }

    #[test]
    fn break_glass_replays_only_for_users_the_new_set_allows() {
        let tmp = tempfile::tempdir().unwrap();
        let log = fixture_in(tmp.path(), "");
        let rules = [("t.truncate", "TRUNCATE TABLE", "require_ticket")];
        let allowed = policy_dir(
            tmp.path(),
            "bg",
            &rules,
            "[break_glass]\nusers = [\"root\"]\n\n",
        );
        assert_eq!(replayed(&allowed, &log).newly_refused, 0);
        let nobody = policy_dir(tmp.path(), "nobg", &rules, "");
        let d = replayed(&nobody, &log);
        assert_eq!(d.newly_refused, 1);
        assert_eq!(d.newly_refused_by_rule[0].examples[0].seq, 15);
    }

    #[test]
    fn a_statement_that_ran_after_approval_is_not_newly_refused_by_a_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let log = fixture_in(tmp.path(), "");
        let hold = policy_dir(
            tmp.path(),
            "hold",
            &[("t.index", "CREATE INDEX", "hold")],
            "",
        );
        assert_eq!(replayed(&hold, &log).newly_refused, 0);
        let block = policy_dir(
            tmp.path(),
            "block",
            &[("t.index", "CREATE INDEX", "block")],
            "",
        );
        assert_eq!(replayed(&block, &log).newly_refused, 1);
    }

    #[test]
    fn the_session_and_time_come_from_the_record() {
        let log = crate::audit_report::tests::fixture_log();
        let r = &log.records[2];
        let Body::Statement(s) = &r.body else {
            panic!("statement")
        };
        let ctx = session_of(r, s);
        assert_eq!(ctx.user, "alice");
        assert_eq!(ctx.database, "app");
        assert_eq!(ctx.application, "psql");
        assert_eq!(ctx.client_addr, Some("10.0.0.5".parse().unwrap()));
        assert!(ctx.tls);
        assert_eq!(ctx.ticket.as_deref(), Some("CHG-7"));
        assert_eq!(ctx.now, "2024-05-01T09:00:00Z".parse().unwrap());
        assert_eq!(
            client_addr(Some("10.0.0.5:5432")),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(client_addr(Some("/tmp/.s.PGSQL.5432")), None);
    }
}
