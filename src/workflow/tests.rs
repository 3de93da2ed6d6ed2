use super::*;
use crate::approval::model::Ticket;
use crate::approval::model::{Approval, HeldRule};
use crate::policy::{RuleMatch, Severity as RuleSeverity, Workflow};
use crate::sql::ReadAs;

fn decision(action: Action, workflow: Workflow) -> Decision {
    Decision {
        action,
        strictest: action,
        matches: vec![RuleMatch {
            rule: "destructive.drop-table".into(),
            action,
            severity: RuleSeverity::High,
            monitor: false,
            statement: 0,
            message: "DROP TABLE destroys data".into(),
            hint: Some("Attach a ticket.".into()),
            file: "destructive.toml".into(),
            workflow,
        }],
        policy_version: "v1".into(),
    }
}

fn ins() -> Inspection {
    crate::sql::inspect("DROP TABLE t", ReadAs::default())
}

fn standing<'a>(ticket: Option<&'a str>, bg: Option<&'a str>) -> Standing<'a> {
    Standing {
        store: true,
        approvers: true,
        ticket,
        break_glass: bg,
        on_missing_ticket: OnMissingTicket::Refuse,
    }
}

fn hold(status: HoldStatus) -> Hold {
    Hold {
        id: 42,
        status,
        sql: "DROP TABLE t".into(),
        user: "dev".into(),
        database: "test".into(),
        client_addr: None,
        application_name: "psql".into(),
        rules: vec![HeldRule {
            id: "destructive.drop-table".into(),
            message: "DROP TABLE destroys data".into(),
            hint: None,
        }],
        approvals_required: 2,
        approver_groups: vec!["dba".into()],
        approvals: vec![Approval {
            by: "bob".into(),
            db_user: None,
            at: jiff::Timestamp::UNIX_EPOCH,
            comment: None,
        }],
        opened_at: jiff::Timestamp::UNIX_EPOCH,
        expires_at: jiff::Timestamp::from_second(900).unwrap(),
        closed_at: None,
        closed_by: Some("bob".into()),
        reason: Some("not during the sale".into()),
    }
}

fn resumed_hold(status: HoldStatus) -> Resumed {
    Resumed::Hold {
        key: "k".into(),
        end: HoldEnd::Ended(hold(status)),
    }
}

fn ticket() -> Ticket {
    serde_json::from_value(serde_json::json!({
        "id": "CHG-1", "title": "t", "requester": {}, "status": "approved", "approvals": [],
        "approvals_required": 1, "uses": 1, "scope": {}, "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

#[test]
fn allow_and_block_need_no_workflow() {
    let i = ins();
    assert!(matches!(
        route(&Decision::allow("v"), &i, standing(None, None), None),
        Route::Forward { .. }
    ));
    let Route::Refuse(e) = route(
        &decision(Action::Block, Workflow::default()),
        &i,
        standing(Some("CHG-1"), Some("fire")),
        None,
    ) else {
        panic!("a block is refused whatever the session brings")
    };
    assert_eq!(e.code, SqlState::INSUFFICIENT_PRIVILEGE);
}

#[test]
fn ticket_route_checks_then_forwards_or_explains() {
    let i = ins();
    let d = decision(Action::RequireTicket, Workflow::default());
    assert_eq!(
        route(&d, &i, standing(Some("CHG-1"), None), None),
        Route::CheckTicket { id: "CHG-1".into() }
    );
    let ok = Resumed::Ticket {
        key: "k".into(),
        id: "CHG-1".into(),
        outcome: Ok(ticket()),
    };
    assert_eq!(
        route(&d, &i, standing(Some("CHG-1"), None), Some(&ok)),
        Route::Forward {
            ticket: Some("CHG-1".into()),
            break_glass: false,
            hold: None
        }
    );
    let bad = Resumed::Ticket {
        key: "k".into(),
        id: "CHG-1".into(),
        outcome: Err("it is pending (0 of 1 approvals)".into()),
    };
    let Route::Refuse(e) = route(&d, &i, standing(Some("CHG-1"), None), Some(&bad)) else {
        panic!("an uncovering ticket refuses")
    };
    let detail = e.detail.unwrap();
    assert!(
        detail
            .contains("Ticket CHG-1 was attached but does not cover this statement: it is pending"),
        "{detail}"
    );
    // The rule's own hint, once: no second ticket sentence.
    assert_eq!(e.hint.as_deref(), Some("Attach a ticket."));
    // An answer about another ticket (the session switched tickets) is not used.
    assert_eq!(
        route(&d, &i, standing(Some("CHG-2"), None), Some(&ok)),
        Route::CheckTicket { id: "CHG-2".into() }
    );
    let Route::Refuse(e) = route(&d, &i, standing(None, None), None) else {
        panic!("no ticket refuses")
    };
    assert!(e.detail.unwrap().contains("No change ticket is attached."));
}

#[test]
fn missing_ticket_may_hold_by_rule_or_default() {
    let i = ins();
    let by_rule = decision(
        Action::RequireTicket,
        Workflow {
            on_missing_ticket: Some(OnMissingTicket::Hold),
            ..Default::default()
        },
    );
    assert!(matches!(
        route(&by_rule, &i, standing(None, None), None),
        Route::Hold { note: Some(n) } if n.contains("No change ticket")
    ));
    let d = decision(Action::RequireTicket, Workflow::default());
    let mut s = standing(None, None);
    s.on_missing_ticket = OnMissingTicket::Hold;
    assert!(matches!(route(&d, &i, s, None), Route::Hold { .. }));
    // Once the hold ended, its answer decides: the ticket is not asked again.
    assert!(matches!(
        route(&d, &i, s, Some(&resumed_hold(HoldStatus::Approved))),
        Route::Forward { hold: Some(42), .. }
    ));
}

#[test]
fn hold_endings() {
    let i = ins();
    let d = decision(Action::Hold, Workflow::default());
    let s = standing(None, None);
    assert_eq!(route(&d, &i, s, None), Route::Hold { note: None });
    let Route::Refuse(denied) = route(&d, &i, s, Some(&resumed_hold(HoldStatus::Denied))) else {
        panic!("denied refuses")
    };
    assert_eq!(denied.code, SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(
        denied.message,
        "pgwarden: destructive.drop-table: hold 42 denied by bob: not during the sale"
    );
    let Route::Refuse(expired) = route(&d, &i, s, Some(&resumed_hold(HoldStatus::Expired))) else {
        panic!("expired refuses")
    };
    assert!(
        expired.message.contains("timed out after 15m"),
        "{}",
        expired.message
    );
    let cancelled = Resumed::Hold {
        key: "k".into(),
        end: HoldEnd::Cancelled(hold(HoldStatus::Withdrawn)),
    };
    let Route::Refuse(c) = route(&d, &i, s, Some(&cancelled)) else {
        panic!("cancel refuses")
    };
    assert_eq!(c.code, SqlState::QUERY_CANCELED);
    assert_eq!(c.message, "canceling statement due to user request");
    let failed = Resumed::Hold {
        key: "k".into(),
        end: HoldEnd::Failed("disk full".into()),
    };
    assert!(matches!(route(&d, &i, s, Some(&failed)), Route::Refuse(_)));
}

#[test]
fn break_glass_records_first_and_never_passes_blocks() {
    let i = ins();
    let d = decision(Action::Hold, Workflow::default());
    let s = standing(None, Some("prod down"));
    assert_eq!(
        route(&d, &i, s, None),
        Route::BreakGlass {
            reason: "prod down".into()
        }
    );
    let failed = Resumed::BreakGlass {
        key: "k".into(),
        outcome: Err("disk full".into()),
    };
    assert!(matches!(route(&d, &i, s, Some(&failed)), Route::Refuse(_)));
}

#[test]
fn without_a_store_holds_and_tickets_refuse() {
    let i = ins();
    let mut s = standing(Some("CHG-1"), None);
    s.store = false;
    for a in [Action::Hold, Action::RequireTicket] {
        let Route::Refuse(e) = route(&decision(a, Workflow::default()), &i, s, None) else {
            panic!("refused without a store")
        };
        assert!(e.detail.unwrap().contains("no state store"));
    }
}

#[test]
fn notices_name_the_hold_and_the_way_to_approve() {
    let h = hold(HoldStatus::Pending);
    let n = held_notice(&h, Some("No change ticket is attached."));
    assert_eq!(n.severity, Severity::Notice);
    assert_eq!(
        n.message,
        "pgwarden: statement held for approval as hold 42"
    );
    assert!(n
        .hint
        .as_deref()
        .unwrap()
        .contains("pgwarden holds approve 42"));
    let d = n.detail.clone().unwrap();
    assert!(
        d.contains("2 approvals by distinct approvers from dba are needed"),
        "{d}"
    );
    let r = reminder_notice(&h);
    assert!(r.message.contains("(1 of 2 approvals)"));
    assert_eq!(n.to_bytes()[0], b'N');
}

#[test]
fn without_approvers_holds_refuse_at_once_but_tickets_are_still_checked() {
    let i = ins();
    let mut s = standing(None, None);
    s.approvers = false;
    let Route::Refuse(e) = route(&decision(Action::Hold, Workflow::default()), &i, s, None) else {
        panic!("a hold nobody can approve refuses")
    };
    assert!(e.detail.unwrap().contains("admin listener"));
    let wf = Workflow {
        on_missing_ticket: Some(OnMissingTicket::Hold),
        ..Workflow::default()
    };
    let Route::Refuse(e) = route(&decision(Action::RequireTicket, wf.clone()), &i, s, None) else {
        panic!("a missing ticket cannot fall back to a hold nobody can approve")
    };
    let detail = e.detail.unwrap();
    assert!(detail.contains("No change ticket is attached."), "{detail}");
    s.ticket = Some("CHG-1");
    assert!(matches!(
        route(&decision(Action::RequireTicket, wf), &i, s, None),
        Route::CheckTicket { .. }
    ));
}

#[test]
fn shipped_pack_passes_its_own_test_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let results = cases::run_dir(&dir).expect("the shipped pack loads");
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let rules = crate::policy::load_dir(&dir, "production")
        .unwrap()
        .rules
        .len();
    assert!(
        results.len() >= 2 * rules,
        "{} cases for {rules} rules",
        results.len()
    );
}

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies/examples")
        .join(name)
}

#[test]
fn change_window_example_passes_its_cases() {
    let results = cases::run_dir(&example("change-windows")).expect("the example loads");
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(results.len() >= 10);
}

#[test]
fn a_case_that_expects_the_wrong_outcome_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.toml"),
        "[[rule]]\nid = \"t.drop\"\ndescription = \"d\"\naction = \"require_ticket\"\nmessage = \"m\"\n[rule.match]\ntags = [\"DROP TABLE\"]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/c.toml"),
        r#"
[[case]]
name = "covered, but expected refused"
sql = "DROP TABLE t"
ticket = "CHG-1"
expect = "require_ticket"

[[case]]
name = "revoked, but expected to run"
sql = "DROP TABLE t"
ticket = "CHG-1"
ticket_status = "revoked"
expect = "allow"

[[case]]
name = "a bad status is an error"
sql = "DROP TABLE t"
ticket = "CHG-1"
ticket_status = "maybe"
expect = "allow"
"#,
    )
    .unwrap();
    let results = cases::run_dir(dir.path()).unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| !r.passed), "{results:#?}");
    assert!(results[0]
        .detail
        .contains("expected require_ticket, got allow"));
    assert!(results[1]
        .detail
        .contains("expected allow, got require_ticket"));
    assert!(results[2].detail.contains("not a ticket status"));
}

#[test]
fn a_freeze_period_must_end_after_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.toml"),
        "[[rule]]\nid = \"t.freeze\"\ndescription = \"d\"\naction = \"hold\"\nmessage = \"m\"\n[rule.session]\nduring = [{ from = \"2026-12-20T00:00:00Z\", until = \"2026-12-19T00:00:00Z\" }, { from = \"tomorrow\", until = \"2026-12-19T00:00:00Z\" }]\n",
    )
    .unwrap();
    let e = crate::policy::load_dir(dir.path(), "production")
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not after from"), "{e}");
    assert!(e.contains("during.from \"tomorrow\""), "{e}");
}

#[test]
fn explain_workflow_names_every_stage() {
    let dir = example("change-windows");
    let policy = crate::policy::load_dir(&dir, "production").unwrap();
    let holds = crate::config::Config::default().holds;
    let rule = |id: &str| policy.rules.iter().find(|r| r.id == id).unwrap();
    let text = stages::stages(&policy, rule("window.ddl-outside-maintenance"), &holds).join("\n");
    assert!(
        text.contains("only outside Sat 02:00-06:00 Europe/Berlin"),
        "{text}"
    );
    assert!(text.contains("one approver in group dba"), "{text}");
    assert!(
        text.contains("Not decided within 15m (the rule's hold_timeout)"),
        "{text}"
    );
    let text = stages::stages(&policy, rule("freeze.year-end"), &holds).join("\n");
    assert!(
        text.contains("2 distinct approvers in group change-board"),
        "{text}"
    );
    assert!(
        text.contains("only during 2026-12-17T23:00:00Z to 2027-01-03T23:00:00Z"),
        "{text}"
    );
    let text = stages::stages(&policy, rule("ticket.delete-without-where"), &holds).join("\n");
    assert!(
        text.contains("the rule's on_missing_ticket = \"hold\""),
        "{text}"
    );
    assert!(text.contains("Hold: the statement waits"), "{text}");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let policy = crate::policy::load_dir(&shipped, "production").unwrap();
    let r = policy
        .rules
        .iter()
        .find(|r| r.id == "destructive.drop-table")
        .unwrap();
    let text = stages::stages(&policy, r, &holds).join("\n");
    assert!(
        text.contains("[holds] on_missing_ticket = \"refuse\""),
        "{text}"
    );
    assert!(!text.contains("Hold:"), "{text}");
}

#[test]
fn unqualified_names_are_shown_as_the_sessions_search_path_reads_them() {
    assert_eq!(qualified("orders", None), "orders");
    assert_eq!(qualified("app.orders", Some("payroll")), "app.orders");
    assert_eq!(qualified("orders", Some("payroll")), "payroll.orders");
    assert_eq!(qualified("orders", Some("\"PayRoll\"")), "PayRoll.orders");
    assert_eq!(qualified("orders", Some("PayRoll")), "payroll.orders");
    assert_eq!(qualified("orders", Some("\"$user\", public")), "orders");
    assert_eq!(
        qualified("orders", Some("payroll, public")),
        "(search_path).orders"
    );
    assert_eq!(qualified("orders", Some("$user")), "(search_path).orders");
}

#[test]
fn rules_whose_approver_groups_share_none_cannot_be_approved_together() {
    let wf = |groups: &[&str]| Workflow {
        approver_groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Workflow::default()
    };
    let merged = wf(&["dba", "security"]).merge(&wf(&["security", "sre"]));
    assert_eq!(merged.approver_groups, vec!["security".to_string()]);
    assert!(merged.groups_conflict.is_none());
    assert_eq!(
        wf(&[]).merge(&wf(&["dba"])).approver_groups,
        vec!["dba".to_string()]
    );
    let apart = wf(&["security"]).merge(&wf(&["dba"]));
    assert!(apart.groups_conflict.is_some());
    // A decision of both rules is refused, not held for approvers of either group.
    let i = ins();
    let mut d = decision(Action::Hold, wf(&["security"]));
    let mut second = d.matches[0].clone();
    second.rule = "test.other".into();
    second.workflow = wf(&["dba"]);
    d.matches.push(second);
    let Route::Refuse(e) = route(&d, &i, standing(None, None), None) else {
        panic!("refused")
    };
    let detail = e.detail.unwrap();
    assert!(
        detail.contains("different groups (security / dba)"),
        "{detail}"
    );
}
