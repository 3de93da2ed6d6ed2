//! What operators watch: `/metrics` after a known sequence of statements (the real binary,
//! so the counts are this process's alone), and `GET /api/events` delivering a refusal live
//! and again after a reconnect with `Last-Event-ID`.

use std::time::Duration;

use crate::support::admin::{policy_dir, Tokens};
use crate::support::process::Process;
use crate::support::{
    connect, direct, eventually, shipped_policies, sqlstate, unique, via, within, Proxy,
};

const RULES: &str = r#"
[[rule]]
id = "test.no-truncate"
description = "No TRUNCATE here."
severity = "high"
action = "block"
message = "TRUNCATE is not allowed"
[rule.match]
tags = ["TRUNCATE TABLE"]
"#;

/// The value of the series `name{labels}` (labels in any order) in Prometheus text.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let series = l.split_whitespace().next().unwrap_or("");
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .next()
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_statements() {
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_dir(RULES);
    let cfg = dir.path().join("pgwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\npolicies = \"{}\"\n[state]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n[audit]\nfile = \"{}\"\n",
            policies.path().display(),
            dir.path().join("state").display(),
            dir.path().join("audit.jsonl").display(),
        ),
    )
    .unwrap();
    let p = Process::start(&cfg, true);
    let t = unique("metered");
    let c = connect(&p.dsn()).await;
    c.batch_execute(&format!("CREATE TABLE {t} (id int)"))
        .await
        .unwrap();
    for i in 0..3 {
        c.batch_execute(&format!("INSERT INTO {t} VALUES ({i})"))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        c.batch_execute("SELECT 1").await.unwrap();
    }
    let e = c.batch_execute(&format!("TRUNCATE {t}")).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    let url = format!("{}/metrics", p.admin.as_ref().unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let v = |name, labels: &[(&str, &str)]| value(&text, name, labels);
    let stmts = "pgwarden_statements_total";
    assert_eq!(
        v(stmts, &[("class", "write"), ("action", "allow")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        v(stmts, &[("class", "read"), ("action", "allow")]),
        Some(2.0)
    );
    assert_eq!(
        v(stmts, &[("class", "ddl"), ("action", "allow")]),
        Some(1.0)
    );
    assert_eq!(v(stmts, &[("action", "block")]), Some(1.0));
    assert_eq!(
        v("pgwarden_refusals_total", &[("rule", "test.no-truncate")]),
        Some(1.0)
    );
    assert_eq!(v("pgwarden_client_connections_total", &[]), Some(1.0));
    assert_eq!(v("pgwarden_client_connections", &[]), Some(1.0));
    // session_started, policy_loaded, 4 statement records before they ran and their
    // 4 outcomes, 1 refusal: at least those are written (outcomes and the refusal without
    // anyone waiting for them: polled).
    eventually(Duration::from_secs(30), "11 audit records counted", || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let n = value(&text, "pgwarden_audit_records_total", &[])?;
            (n >= 11.0).then_some(())
        }
    })
    .await;
    assert_eq!(v("pgwarden_audit_write_failures_total", &[]), Some(0.0));
    assert!(v("pgwarden_audit_write_seconds_count", &[]).unwrap() >= 1.0);
    assert!(v("pgwarden_added_latency_seconds_count", &[]).unwrap() >= 7.0);
    assert!(v("pgwarden_inspection_cache_misses_total", &[]).unwrap() >= 1.0);
    assert_eq!(v("pgwarden_holds_pending", &[]), Some(0.0));
    assert!(text.contains("pgwarden_policy_info{version=\""), "{text}");
    drop(c);
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
}

/// Reads the SSE body until `needle` has been seen; the text read so far.
async fn read_until(resp: &mut reqwest::Response, seen: &mut String, needle: &str) {
    within(Duration::from_secs(30), needle, async {
        while !seen.contains(needle) {
            let chunk = resp.chunk().await.unwrap().expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
}

#[tokio::test]
async fn live_events_deliver_a_refusal_and_resume_from_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(&[("vera", "viewer", None, &[])]);
    let (t, f) = (tokens.file.clone(), dir.path().join("audit.jsonl"));
    let proxy = Proxy::start_with(move |c| {
        c.policies = shipped_policies();
        c.admin.tokens = Some(t);
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        c.audit.file = Some(f);
    })
    .await;
    let url = format!("{}/api/events?types=refused", proxy.admin_url());
    let http = reqwest::Client::new();
    let unauth = http.get(&url).send().await.unwrap();
    assert_eq!(unauth.status().as_u16(), 401);
    let mut resp = http
        .get(&url)
        .bearer_auth(tokens.secret("vera"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let table = unique("live");
    let c = via(&proxy).await;
    // Not refused: filtered out of this stream.
    c.batch_execute("SET application_name = 'live-test'")
        .await
        .unwrap();
    let e = c
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    let mut seen = String::new();
    read_until(&mut resp, &mut seen, "destructive.drop-table").await;
    assert!(seen.contains("event: refused"), "{seen}");
    assert!(!seen.contains("application_name = "), "{seen}");
    let id: u64 = seen
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("events carry the record's seq as id");
    drop(resp);

    // Reconnect from before the refusal: it comes again, from the file.
    let mut again = http
        .get(format!("{}/api/events", proxy.admin_url()))
        .bearer_auth(tokens.secret("vera"))
        .header("Last-Event-ID", (id - 1).to_string())
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut again, &mut seen, &format!("id: {id}\n")).await;
    assert!(seen.contains("destructive.drop-table"), "{seen}");
    // ... and later records follow live.
    c.batch_execute("SET application_name = 'after'")
        .await
        .unwrap();
    read_until(&mut again, &mut seen, "event: statement").await;
    drop(again);
    proxy.stop().await;
}
