//! `pgwarden check --ticket ID --admin URL`: a migration file decided as the proxy would
//! decide it with that ticket attached, the ticket read from the real admin API.

use crate::holds::fixture;
use crate::support::admin::{bin, cli};

const RULES: &str = r#"
[[rule]]
id = "test.ticket-drop"
description = "Dropping a table needs a change ticket."
action = "require_ticket"
message = "DROP TABLE needs a change ticket"
[rule.match]
tags = ["DROP TABLE"]
"#;

/// Runs `pgwarden check` with the shipped flags: (status, stdout, stderr).
fn check(
    admin: &str,
    token: &str,
    policies: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let out = bin()
        .arg("check")
        .arg("--policies")
        .arg(policies)
        .args(["--admin", admin])
        .args(args)
        .env("PGWARDEN_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_a_ticket_decides_a_migration_as_the_proxy_would() {
    let fx = fixture(RULES).await;
    let policies = fx.proxy.shared.config.policies.clone();
    let dir = tempfile::tempdir().unwrap();
    let migration = dir.path().join("V7__drop_legacy.sql");
    std::fs::write(
        &migration,
        "DROP TABLE legacy_orders;\nDROP TABLE legacy_items;\n",
    )
    .unwrap();
    let other = dir.path().join("V8__drop_more.sql");
    std::fs::write(&other, "DROP TABLE customers;\n").unwrap();
    let (m, o) = (
        migration.to_str().unwrap().to_owned(),
        other.to_str().unwrap().to_owned(),
    );
    let (admin, bob, root) = (fx.admin.as_str(), fx.secret("bob"), fx.secret("root"));

    // Unknown ticket: refused, saying so.
    let (code, out, err) = check(admin, bob, &policies, &["--ticket", "CHG-7", &m]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "Ticket CHG-7 was attached but does not cover this statement: there is no such ticket"
        ),
        "{out}"
    );
    assert!(out.trim_end().ends_with("require_ticket"), "{out}");

    // A ticket pinned to the migration's exact statements, requested by root, still pending.
    let (code, out, err) = cli(
        admin,
        root,
        &[
            "tickets",
            "create",
            "CHG-7",
            "--title",
            "drop legacy",
            "--statements",
            &m,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = check(admin, bob, &policies, &["--ticket", "CHG-7", &m]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("it is pending"), "{out}");

    // Approved by bob: the migration passes, another file does not.
    let (code, out, err) = cli(admin, bob, &["tickets", "approve", "CHG-7"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = check(admin, bob, &policies, &["--ticket", "CHG-7", &m]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ticket CHG-7 covers it"), "{out}");
    assert!(out.trim_end().ends_with(": allow"), "{out}");
    let (code, out, _) = check(admin, bob, &policies, &["--ticket", "CHG-7", &o]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("its scope does not cover the statement"),
        "{out}"
    );

    // JSON says both the policy's decision and the outcome with the ticket.
    let (code, out, _) = check(
        admin,
        bob,
        &policies,
        &["--ticket", "CHG-7", "--format", "json", &m],
    );
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files"][0]["decision"], "require_ticket");
    assert_eq!(v["files"][0]["action"], "allow");
    assert_eq!(v["files"][0]["ticket"]["covered_by"], "CHG-7");

    // Checking uses nothing: the ticket has no uses counted.
    let (code, out, _) = cli(
        admin,
        bob,
        &["tickets", "show", "CHG-7", "--format", "json"],
    );
    assert_eq!(code, 0, "{out}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["uses"], 0, "{t}");

    // A wrong token is a clear error, not a decision.
    let (code, out, err) = check(admin, "not-a-token", &policies, &["--ticket", "CHG-7", &m]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("401"), "{err}");
    fx.proxy.stop().await;
}
