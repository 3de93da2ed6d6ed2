//! Policy engine tests: loading errors, matching, strictest-wins, monitor, environments.

use std::path::PathBuf;

use super::compile::compile_sources;
use super::*;
use crate::sql::{inspect, ReadAs};

fn policy(text: &str, env: &str) -> Result<Policy, PolicyErrors> {
    compile_sources(&[(PathBuf::from("p.toml"), text.to_owned())], env)
}

fn decide(p: &Policy, sql: &str) -> Decision {
    p.decide(
        &inspect(sql, ReadAs::default()),
        &SessionContext::default(),
        Mode::Enforce,
    )
}

const RULES: &str = r#"
[[rule]]
id = "drop-table"
description = "d"
action = "require_ticket"
message = "DROP TABLE destroys data"
hint = "attach a ticket"
[rule.match]
tags = ["DROP TABLE"]
[rule.environments.development]
action = "alert"

[[rule]]
id = "cascade"
description = "d"
action = "hold"
message = "cascade"
[rule.match]
flags = ["cascade"]

[[rule]]
id = "delete-all"
description = "d"
action = "block"
message = "no where"
[rule.match]
tags = ["delete"]
where = ["absent", "trivially_true"]
"#;

#[test]
fn strictest_wins_and_every_match_is_reported() {
    let p = policy(RULES, "production").unwrap();
    let d = decide(&p, "drop table t cascade");
    assert_eq!(d.action, Action::Hold);
    let ids: Vec<_> = d.matches.iter().map(|m| m.rule.as_str()).collect();
    assert_eq!(ids, vec!["drop-table", "cascade"]);
    assert_eq!(d.deciding().unwrap().rule, "cascade");
    assert_eq!(decide(&p, "SELECT 1").action, Action::Allow);
    assert_eq!(
        decide(&p, "WITH x AS (DELETE FROM t) SELECT 1").action,
        Action::Block
    );
    assert_eq!(
        decide(&p, "DELETE FROM t WHERE id = 1").action,
        Action::Allow
    );
}

#[test]
fn environments_change_actions() {
    let p = policy(RULES, "development").unwrap();
    assert_eq!(decide(&p, "drop table t").action, Action::Alert);
}

#[test]
fn monitor_mode_reports_without_enforcing() {
    let p = policy(RULES, "production").unwrap();
    let d = p.decide(
        &inspect("drop table t", ReadAs::default()),
        &SessionContext::default(),
        Mode::Monitor,
    );
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.strictest, Action::RequireTicket);
    assert!(d.matches[0].monitor);
}

#[test]
fn all_errors_at_once_with_lines() {
    let text = r#"[[rule]]
id = "a"
description = "d"
action = "explode"
message = "m"

[[rule]]
id = "b"
description = "d"
action = "block"
message = "m"
[rule.match]
tagz = ["x"]

[[rule]]
id = "a"
description = "d"
action = "block"
message = "m"
[rule.match]
objects = ["[unclosed"]
"#;
    let e = policy(text, "production").unwrap_err();
    let got: Vec<_> =
        e.0.iter()
            .map(|e| (e.line, e.rule.clone().unwrap_or_default()))
            .collect();
    assert_eq!(got.len(), 3, "{e}");
    assert_eq!(got[0], (1, "a".to_owned()));
    assert_eq!(got[1], (13, "b".to_owned()));
    assert!(e.to_string().contains("duplicate rule id"), "{e}");
}

#[test]
fn session_conditions() {
    let p = policy(
        r#"[[rule]]
id = "office-hours-only"
description = "d"
action = "block"
message = "m"
[rule.match]
classes = ["ddl"]
[rule.session]
users = ["deploy*"]
client_cidrs = ["10.0.0.0/8"]
window = { tz = "Europe/Berlin", days = ["sat", "sun"] }
"#,
        "production",
    )
    .unwrap();
    let ins = inspect("CREATE TABLE t (a int)", ReadAs::default());
    let mut s = SessionContext {
        user: "deploy-bot".into(),
        client_addr: Some("10.1.2.3".parse().unwrap()),
        now: "2026-11-28T12:00:00Z".parse().unwrap(), // a Saturday
        ..SessionContext::default()
    };
    assert_eq!(p.decide(&ins, &s, Mode::Enforce).action, Action::Block);
    s.now = "2026-11-26T12:00:00Z".parse().unwrap(); // a Thursday
    assert_eq!(p.decide(&ins, &s, Mode::Enforce).action, Action::Allow);
    s.now = "2026-11-28T12:00:00Z".parse().unwrap();
    s.client_addr = Some("192.168.1.1".parse().unwrap());
    assert_eq!(p.decide(&ins, &s, Mode::Enforce).action, Action::Allow);
}

#[test]
fn unparsed_text_matches_only_unparsed_rules() {
    let p = policy(
        r#"[[rule]]
id = "unparsed"
description = "d"
action = "block"
message = "m"
[rule.match]
unparsed = true
"#,
        "production",
    )
    .unwrap();
    assert_eq!(decide(&p, "DELET FROM t").action, Action::Block);
    assert_eq!(decide(&p, "DELETE FROM t").action, Action::Allow);
}

#[test]
fn version_is_a_hash_of_the_files() {
    let a = policy(RULES, "production").unwrap();
    let b = policy(&format!("{RULES}\n# changed"), "production").unwrap();
    assert_ne!(a.version, b.version);
    assert_eq!(a.version, policy(RULES, "production").unwrap().version);
}

#[test]
fn cel_expressions_say_what_fields_cannot() {
    let p = policy(
        r#"[[rule]]
id = "audit-schema"
description = "d"
action = "block"
message = "m"
[rule.match]
classes = ["ddl"]
expr = 'statement.ops.exists(o, o.objects.exists(x, x.startsWith("audit."))) && session.user != "dba"'
"#,
        "production",
    )
    .unwrap();
    let ins = inspect("DROP TABLE audit.log", ReadAs::default());
    let mut s = SessionContext {
        user: "app".into(),
        ..SessionContext::default()
    };
    assert_eq!(p.decide(&ins, &s, Mode::Enforce).action, Action::Block);
    s.user = "dba".into();
    assert_eq!(p.decide(&ins, &s, Mode::Enforce).action, Action::Allow);
    let other = inspect("DROP TABLE public.log", ReadAs::default());
    s.user = "app".into();
    assert_eq!(p.decide(&other, &s, Mode::Enforce).action, Action::Allow);
    let bad = policy("[[rule]]\nid = \"x\"\ndescription = \"d\"\naction = \"block\"\nmessage = \"m\"\n[rule.match]\nexpr = \"statement.ops.exists(\"\n", "production");
    assert!(bad.unwrap_err().to_string().contains("expr"));
}

#[test]
fn attributes_and_objects_created_in_the_session() {
    let p = policy(
        r#"[[rule]]
id = "drop"
description = "d"
action = "require_ticket"
message = "m"
[rule.match]
tags = ["DROP TABLE"]
created_in_session = false

[[rule]]
id = "timeout"
description = "d"
action = "alert"
message = "m"
[rule.match]
tags = ["DROP TABLE"]
[rule.session]
lock_timeout_set = false
"#,
        "production",
    )
    .unwrap();
    let ins = inspect("DROP TABLE t", ReadAs::default());
    let mut s = SessionContext::default();
    assert_eq!(
        p.decide(&ins, &s, Mode::Enforce).action,
        Action::RequireTicket
    );
    s.created = std::sync::Arc::new(["t".to_owned()].into_iter().collect());
    assert_eq!(p.decide(&ins, &s, Mode::Enforce).action, Action::Alert);
    s.lock_timeout_set = true;
    assert_eq!(p.decide(&ins, &s, Mode::Enforce).action, Action::Allow);
}

#[test]
fn rules_name_their_file_relative_to_the_policy_directory() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let p = load_dir(&dir, "production").unwrap();
    assert!(!p.rules.is_empty());
    for r in &p.rules {
        assert!(
            r.file.is_relative() && r.file.components().count() == 1,
            "{}: {}",
            r.id,
            r.file.display()
        );
    }
    let d = p.decide(
        &inspect("DROP DATABASE d", ReadAs::default()),
        &SessionContext::default(),
        Mode::Enforce,
    );
    assert_eq!(d.matches[0].file, "destructive.toml");
}
