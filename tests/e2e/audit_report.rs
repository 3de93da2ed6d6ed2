//! `pgwarden audit report` and `pgwarden policy replay` run as the built binary on an audit
//! log written here per the record spec (offline: no server, no proxy).

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

fn line(seq: u64, ts: &str, kind: &str, fields: Value) -> String {
    let mut v = json!({"log_id": "L1", "seq": seq, "ts": ts, "type": kind,
                       "prev_hash": "00", "hash": "11"});
    for (k, x) in fields.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

fn statement(
    seq: u64,
    ts: &str,
    user: &str,
    text: &str,
    tag: &str,
    class: &str,
    refused: bool,
) -> String {
    line(
        seq,
        ts,
        "statement",
        json!({
            "session": {"id": 1, "user": user, "role": null, "database": "app",
                        "application_name": null, "client_addr": null, "tls": false},
            "statement": {"text": text, "fingerprint": "ff", "tags": [tag], "classes": [class],
                          "objects": []},
            "decision": {"action": if refused { "block" } else { "alert" },
                         "rules": if refused { json!(["x.refused"]) } else { json!(["x.alerted"]) },
                         "mode": "enforce", "policy_version": "v1", "ticket": "CHG-1",
                         "break_glass": false, "refused": refused},
            "approval": null,
            "refusal": if refused { json!({"sqlstate": "42501", "message": "pgwarden: x.refused: no"}) } else { Value::Null },
        }),
    )
}

/// A small log: a DROP TABLE that ran (alert) and its outcome, a refused DELETE, a record of
/// an unknown type, and a torn last line.
fn write_log(dir: &Path) -> std::path::PathBuf {
    let lines = [
        statement(
            1,
            "2024-05-01T09:00:00Z",
            "alice",
            "DROP TABLE orders_old",
            "DROP TABLE",
            "ddl",
            false,
        ),
        line(
            2,
            "2024-05-01T09:00:01Z",
            "outcome",
            json!({"session": {"id": 1}, "decisions": [1],
             "commands": [{"tag": "DROP TABLE", "rows": null}], "error": null, "duration_us": 900}),
        ),
        statement(
            3,
            "2024-05-01T09:05:00Z",
            "bob",
            "DELETE FROM t",
            "DELETE",
            "write",
            true,
        ),
        line(4, "2024-05-01T09:06:00Z", "something_new", json!({"n": 1})),
        "{\"seq\": 5, \"ts\": \"2024".to_owned(),
    ];
    let f = dir.join("audit.jsonl");
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    f
}

fn policies(dir: &Path, name: &str, action: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("drop.toml"),
        format!(
            "[[rule]]\nid = \"t.drop-table\"\ndescription = \"DROP TABLE\"\naction = \"{action}\"\nmessage = \"DROP TABLE\"\n[rule.match]\ntags = [\"DROP TABLE\"]\n"
        ),
    )
    .unwrap();
    d
}

fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(args)
        .env("PGWARDEN_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn audit_report_json_on_a_written_log() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_log(tmp.path());
    let (code, out, err) = run(&[
        "audit".as_ref(),
        "report".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
        f.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipped"), "the torn line is reported: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["changes"], 1);
    assert_eq!(v["summary"]["refusals"], 1);
    assert_eq!(v["summary"]["skipped_lines"], 1);
    assert_eq!(v["changes"][0]["outcome"]["status"], "succeeded");
    assert_eq!(v["by_ticket"][0]["key"], "CHG-1");
    assert_eq!(v["refusals_by_rule"][0]["key"], "x.refused");

    // --since leaves the DROP TABLE out; a bad bound is a usage error.
    let (code, out, _) = run(&[
        "audit".as_ref(),
        "report".as_ref(),
        "--since".as_ref(),
        "2024-05-01T09:01:00Z".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
        f.as_os_str(),
    ]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["changes"], 0);
    let (code, _, err) = run(&[
        "audit".as_ref(),
        "report".as_ref(),
        "--until".as_ref(),
        "tomorrow".as_ref(),
        f.as_os_str(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--until"), "{err}");

    let (code, out, _) = run(&[
        "audit".as_ref(),
        "report".as_ref(),
        "--format".as_ref(),
        "html".as_ref(),
        f.as_os_str(),
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("<svg"));
}

#[test]
fn policy_replay_reports_drop_table_newly_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_log(tmp.path());
    let block = policies(tmp.path(), "block", "block");
    let (code, out, err) = run(&[
        "policy".as_ref(),
        "replay".as_ref(),
        "--audit".as_ref(),
        f.as_os_str(),
        "--policies".as_ref(),
        block.as_os_str(),
        "--environment".as_ref(),
        "production".as_ref(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("newly refused: 1 statement"), "{out}");
    assert!(out.contains("t.drop-table (block): 1"), "{out}");
    assert!(out.contains("DROP TABLE orders_old"), "{out}");
    // The refused DELETE has no rule in this set.
    assert!(out.contains("newly allowed: 1 statement"), "{out}");
    assert!(out.contains("x.refused"), "{out}");
    assert!(out.contains("literal values may differ"), "{out}");

    let alert = policies(tmp.path(), "alert", "alert");
    let (code, out, _) = run(&[
        "policy".as_ref(),
        "replay".as_ref(),
        "--audit".as_ref(),
        f.as_os_str(),
        "--policies".as_ref(),
        alert.as_os_str(),
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("newly refused: 0 statements"), "{out}");
}
