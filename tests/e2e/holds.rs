//! Holds on the wire: a statement waits at pgwarden until approvers decide, through the real
//! admin API and CLI, with real psql and tokio-postgres sessions on the machine's server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::admin::{api, cli, hold_reaches, pending_hold, policy_dir, Tokens};
use crate::support::{connect, direct, sqlstate, unique, within, Proxy, PG_USER};

pub const RULES: &str = r#"
[[rule]]
id = "test.hold-drop"
description = "Dropping a table needs a human approval."
action = "hold"
message = "DROP TABLE needs an approval"
hint = "Ask a DBA to approve it."
[rule.match]
tags = ["DROP TABLE"]

[[rule]]
id = "test.two-approvals"
description = "Tables named two_* need two DBAs."
action = "hold"
message = "two DBAs must approve"
approvals = 2
approver_groups = ["dba"]
[rule.match]
tags = ["DROP TABLE"]
objects = ["*two_*"]

[[rule]]
id = "test.brief"
description = "Holds of brief_* tables time out at once."
action = "hold"
message = "brief hold"
hold_timeout = "1s"
[rule.match]
tags = ["DROP TABLE"]
objects = ["*brief_*"]
"#;

pub struct Fixture {
    pub proxy: Proxy,
    pub tokens: Tokens,
    pub admin: String,
    _policies: tempfile::TempDir,
}

/// Approvers: `dev` is the database user the tests connect as (so approving is
/// self-approval), `bob` and `carol` are DBAs, `vera` only views, `root` is an admin.
pub async fn fixture(rules: &str) -> Fixture {
    fixture_with(rules, |_| {}).await
}

pub async fn fixture_with(rules: &str, f: impl FnOnce(&mut pgwarden::config::Config)) -> Fixture {
    let policies = policy_dir(rules);
    let tokens = Tokens::new(&[
        ("dev", "approver", Some(PG_USER), &[]),
        ("bob", "approver", Some("bob"), &["dba"]),
        ("carol", "approver", Some("carol"), &["dba"]),
        ("vera", "viewer", None, &[]),
        ("root", "admin", Some("root_admin"), &[]),
    ]);
    let (p, t) = (policies.path().to_path_buf(), tokens.file.clone());
    let proxy = Proxy::start_with(move |c| {
        c.policies = p;
        c.admin.tokens = Some(t);
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        f(c);
    })
    .await;
    let admin = proxy.admin_url();
    Fixture {
        proxy,
        tokens,
        admin,
        _policies: policies,
    }
}

impl Fixture {
    pub fn secret(&self, name: &str) -> &str {
        self.tokens.secret(name)
    }

    pub async fn approve(&self, id: u64, who: &str) -> (u16, serde_json::Value) {
        api(
            "POST",
            &format!("{}/api/holds/{id}/approve", self.admin),
            Some(self.secret(who)),
            Some(json!({"comment": "looks fine"})),
        )
        .await
    }

    pub async fn pending(&self, needle: &str) -> u64 {
        pending_hold(&self.admin, self.secret("vera"), needle).await["id"]
            .as_u64()
            .unwrap()
    }
}

async fn table(name: &str) {
    direct()
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int)"
        ))
        .await
        .unwrap();
}

/// Drops `name` directly (not through the proxy).
async fn drop_table(name: &str) {
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {name}"))
        .await
        .unwrap();
}

async fn exists(name: &str) -> bool {
    direct()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_drop_is_held_with_a_notice_and_approved_from_the_cli() {
    let fx = fixture(RULES).await;
    let t = unique("held");
    table(&t).await;
    let mut child = Command::new("psql")
        .arg("-X")
        .arg(fx.proxy.dsn(PG_USER, "test"))
        .args(["-c", &format!("DROP TABLE {t}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // psql prints the NOTICE while it waits: read it before anyone approves.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let notice = rx.recv_timeout(Duration::from_secs(30)).expect("a notice");
    assert!(
        notice.starts_with("NOTICE:  pgwarden: statement held for approval as hold "),
        "{notice}"
    );
    let id: u64 = notice.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(exists(&t).await, "nothing runs before the approval");
    let hold = hold_reaches(&fx.admin, fx.secret("vera"), id, "pending").await;
    assert_eq!(hold["user"], PG_USER);
    assert_eq!(hold["database"], "test");
    assert_eq!(hold["application_name"], "psql");
    assert_eq!(hold["rules"][0]["id"], "test.hold-drop");
    assert!(hold["sql"].as_str().unwrap().contains(&t));

    let (code, out, err) = cli(
        &fx.admin,
        fx.secret("bob"),
        &["holds", "approve", &id.to_string(), "--comment", "ok"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let out = within(Duration::from_secs(30), "psql", async {
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    })
    .await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "DROP TABLE");
    assert!(!exists(&t).await);
    let hold = hold_reaches(&fx.admin, fx.secret("vera"), id, "approved").await;
    assert_eq!(hold["approvals"][0]["by"], "bob");
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_through_the_api_and_denied_with_a_reason() {
    let fx = fixture(RULES).await;
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let (a, b) = (unique("held_api"), unique("held_deny"));
    table(&a).await;
    table(&b).await;

    let drop_a_sql = format!("DROP TABLE {a}");

    let drop_a = client.batch_execute(drop_a_sql.as_str());
    let approve = async {
        let id = fx.pending(&a).await;
        let (s, v) = fx.approve(id, "bob").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "approved");
    };
    let (r, ()) = tokio::join!(drop_a, approve);
    r.unwrap();
    assert!(!exists(&a).await);

    let drop_b_sql = format!("DROP TABLE {b}");

    let drop_b = client.batch_execute(drop_b_sql.as_str());
    let deny = async {
        let id = fx.pending(&b).await;
        let (s, v) = api(
            "POST",
            &format!("{}/api/holds/{id}/deny", fx.admin),
            Some(fx.secret("carol")),
            Some(json!({"reason": "not during the sale"})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        // Every ending is final.
        let (s, _) = fx.approve(id, "bob").await;
        assert_eq!(s, 409);
    };
    let (r, ()) = tokio::join!(drop_b, deny);
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(
        msg.contains("denied by carol: not during the sale"),
        "{msg}"
    );
    assert!(exists(&b).await);
    // The session goes on.
    client.simple_query("SELECT 1").await.unwrap();
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_approval_viewers_and_two_distinct_dbas() {
    let fx = fixture(RULES).await;
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let t = unique("two_held");
    table(&t).await;
    let drop_sql = format!("DROP TABLE {t}");
    let drop = client.batch_execute(drop_sql.as_str());
    let approvals = async {
        let id = fx.pending(&t).await;
        let h = hold_reaches(&fx.admin, fx.secret("vera"), id, "pending").await;
        assert_eq!(h["approvals_required"], 2);
        // dev connects as the user whose statement waits: their own change.
        let (s, v) = fx.approve(id, "dev").await;
        assert_eq!(s, 409, "{v}");
        assert!(!v["error"].as_str().unwrap().contains(fx.secret("dev")));
        // Viewers read, never approve; admins outside the group may not either.
        assert_eq!(fx.approve(id, "vera").await.0, 403);
        assert_eq!(fx.approve(id, "root").await.0, 403);
        let (s, v) = fx.approve(id, "bob").await;
        assert_eq!((s, v["status"].as_str()), (200, Some("pending")));
        assert_eq!(
            fx.approve(id, "bob").await.0,
            409,
            "one approver counts once"
        );
        let (s, v) = fx.approve(id, "carol").await;
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")));
        // No token, a wrong token.
        assert_eq!(
            api("GET", &format!("{}/api/holds", fx.admin), None, None)
                .await
                .0,
            401
        );
        assert_eq!(
            api(
                "GET",
                &format!("{}/api/holds", fx.admin),
                Some("pgw_wrong"),
                None
            )
            .await
            .0,
            401
        );
    };
    let (r, ()) = tokio::join!(drop, approvals);
    r.unwrap();
    assert!(!exists(&t).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_times_out() {
    let fx = fixture(RULES).await;
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let t = unique("brief_held");
    table(&t).await;
    let e = within(
        Duration::from_secs(60),
        "the timeout",
        client.batch_execute(&format!("DROP TABLE {t}")),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("timed out after 1s without approval"), "{msg}");
    assert!(exists(&t).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_withdraws_a_hold_with_57014() {
    let fx = fixture(RULES).await;
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let cancel = client.cancel_token();
    let t = unique("held_cancel");
    table(&t).await;
    let drop_sql = format!("DROP TABLE {t}");
    let drop = client.batch_execute(drop_sql.as_str());
    let ctrl_c = async {
        let id = fx.pending(&t).await;
        cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
        id
    };
    let (r, id) = tokio::join!(drop, ctrl_c);
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"));
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "canceling statement due to user request"
    );
    let h = hold_reaches(&fx.admin, fx.secret("vera"), id, "withdrawn").await;
    assert!(h["reason"].as_str().unwrap().contains("cancel"), "{h}");
    // An approval after the withdrawal is refused; the table stays.
    assert_eq!(fx.approve(id, "bob").await.0, 409);
    assert!(exists(&t).await);
    client.simple_query("SELECT 1").await.unwrap();
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_withdraws_a_hold() {
    let fx = fixture(RULES).await;
    let t = unique("held_gone");
    table(&t).await;
    let (client, conn) =
        tokio_postgres::connect(&fx.proxy.dsn(PG_USER, "test"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let sql = format!("DROP TABLE {t}");
    let waiting = tokio::spawn(async move { client.batch_execute(&sql).await });
    let id = fx.pending(&t).await;
    // The client goes away mid-wait.
    waiting.abort();
    conn.abort();
    let h = hold_reaches(&fx.admin, fx.secret("vera"), id, "withdrawn").await;
    assert!(
        h["reason"].as_str().unwrap().contains("disconnected"),
        "{h}"
    );
    assert_eq!(fx.approve(id, "bob").await.0, 409);
    assert!(exists(&t).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_batch_waits_behind_its_held_statement_in_order() {
    let fx = fixture(RULES).await;
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let t = unique("held_pipe");
    table(&t).await;
    let log = unique("pipe_log");
    table(&log).await;
    // tokio-postgres pipelines these: the extended-protocol messages of all three are sent
    // before the first answer arrives.
    let before_sql = format!("INSERT INTO {log} VALUES (1)");
    let before = client.execute(before_sql.as_str(), &[]);
    let drop_sql = format!("DROP TABLE {t}");
    let drop = client.execute(drop_sql.as_str(), &[]);
    let after_sql = format!("SELECT count(*) FROM {log}");
    let after = client.query_one(after_sql.as_str(), &[]);
    let approve = async {
        let id = fx.pending(&t).await;
        assert_eq!(fx.approve(id, "bob").await.0, 200);
    };
    let (b, d, a, ()) = tokio::join!(before, drop, after, approve);
    assert_eq!(b.unwrap(), 1);
    d.unwrap();
    let n: i64 = a.unwrap().get(0);
    assert_eq!(
        n, 1,
        "the statement behind the hold ran after the one before it"
    );
    assert!(!exists(&t).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_inside_a_transaction_then_commit_and_a_denial_aborts_it() {
    let fx = fixture(RULES).await;
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let (t, log) = (unique("held_tx"), unique("tx_log"));
    table(&t).await;
    table(&log).await;
    client
        .batch_execute(&format!("BEGIN; INSERT INTO {log} VALUES (1)"))
        .await
        .unwrap();
    let drop_sql = format!("DROP TABLE {t}");
    let drop = client.batch_execute(drop_sql.as_str());
    let approve = async {
        let id = fx.pending(&t).await;
        assert_eq!(fx.approve(id, "bob").await.0, 200);
    };
    let (r, ()) = tokio::join!(drop, approve);
    r.unwrap();
    // The transaction is still usable after the approval.
    client
        .batch_execute(&format!("INSERT INTO {log} VALUES (2)"))
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert!(!exists(&t).await);
    let n: i64 = direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {log}") as &str, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Denied inside a transaction: aborted as PostgreSQL's own error would leave it.
    let t2 = unique("held_tx_deny");
    table(&t2).await;
    client
        .batch_execute(&format!("BEGIN; INSERT INTO {log} VALUES (3)"))
        .await
        .unwrap();
    let drop_sql = format!("DROP TABLE {t2}");
    let drop = client.batch_execute(drop_sql.as_str());
    let deny = async {
        let id = fx.pending(&t2).await;
        let (s, _) = api(
            "POST",
            &format!("{}/api/holds/{id}/deny", fx.admin),
            Some(fx.secret("bob")),
            Some(json!({"reason": "no"})),
        )
        .await;
        assert_eq!(s, 200);
    };
    let (r, ()) = tokio::join!(drop, deny);
    assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("42501"));
    let e = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("25P02"),
        "in failed transaction"
    );
    client.batch_execute("COMMIT").await.unwrap();
    let n: i64 = direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {log}") as &str, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the aborted transaction's insert rolled back");
    assert!(exists(&t2).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_without_admin_tokens_file_still_list_nothing_without_auth() {
    // The token file never holds a secret.
    let fx = fixture(RULES).await;
    let file = std::fs::read_to_string(&fx.tokens.file).unwrap();
    for s in fx.tokens.all_secrets() {
        assert!(!file.contains(s));
        assert!(!file.contains(s.trim_start_matches("pgw_")));
    }
    let (s, v) = api(
        "GET",
        &format!("{}/api/holds", fx.admin),
        Some(fx.secret("vera")),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = api("GET", &format!("{}/healthz", fx.admin), None, None).await;
    assert_eq!(s, 200);
    let (s, v) = api("GET", &format!("{}/readyz", fx.admin), None, None).await;
    assert_eq!(s, 200, "{v}");
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_approval_covers_one_run_of_a_prepared_statement() {
    let fx = fixture(
        r#"
[[rule]]
id = "test.hold-update"
description = "Updates of held_* tables need an approval."
action = "hold"
message = "needs an approval"
[rule.match]
tags = ["UPDATE"]
objects = ["*held_once*"]
"#,
    )
    .await;
    let t = unique("held_once");
    direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int, v int); INSERT INTO {t} VALUES (1, 0), (2, 0)"
        ))
        .await
        .unwrap();
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let sql = format!("UPDATE {t} SET v = v + 1 WHERE id = $1");
    let prepare = client.prepare(&sql);
    let approve = async {
        let id = fx.pending(&t).await;
        let (s, v) = fx.approve(id, "bob").await;
        assert_eq!(s, 200, "{v}");
    };
    let (stmt, ()) = tokio::join!(prepare, approve);
    let stmt = stmt.unwrap();
    assert_eq!(client.execute(&stmt, &[&1i32]).await.unwrap(), 1);
    // A second run of the same prepared statement is not covered by the approval.
    let e = client.execute(&stmt, &[&2i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    assert!(
        format!("{e:?}").contains("let through for one run"),
        "{e:?}"
    );
    // The session is still usable, and the row was not touched.
    let v: i32 = direct()
        .await
        .query_one(&format!("SELECT v FROM {t} WHERE id = 2") as &str, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 0);
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    drop_table(&t).await;
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_too_large_to_review_is_refused_not_held() {
    let fx = fixture(RULES).await;
    let t = unique("held_huge");
    table(&t).await;
    let client = connect(&fx.proxy.dsn(PG_USER, "test")).await;
    let padding = "x".repeat(70 * 1024);
    let e = within(
        Duration::from_secs(30),
        "a refusal, not a hold",
        client.batch_execute(&format!("DROP TABLE {t} /* {padding} */")),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    assert!(
        format!("{e:?}").contains("too large to be reviewed"),
        "{e:?}"
    );
    assert!(exists(&t).await);
    let (s, v) = api(
        "GET",
        &format!("{}/api/holds?status=pending", fx.admin),
        Some(fx.secret("vera")),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        !v.to_string().contains(&t),
        "no hold was opened for it: {v}"
    );
    drop_table(&t).await;
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_behind_a_large_pipelined_batch_still_withdraws_the_hold() {
    use tokio::io::AsyncWriteExt;
    let fx = fixture(RULES).await;
    let t = unique("held_hangup");
    table(&t).await;
    // A raw client: startup, then a held DROP and 600 KiB of queries behind it, then gone.
    let mut s = tokio::net::TcpStream::connect(fx.proxy.addr).await.unwrap();
    let mut startup = Vec::new();
    let params = format!("user\0{PG_USER}\0database\0test\0\0");
    startup.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(params.as_bytes());
    s.write_all(&startup).await.unwrap();
    // Until the session is ready (ReadyForQuery, idle).
    let mut got = Vec::new();
    within(Duration::from_secs(30), "ReadyForQuery", async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let query = |sql: &str| {
        let mut f = vec![b'Q'];
        f.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        f.extend_from_slice(sql.as_bytes());
        f.push(0);
        f
    };
    s.write_all(&query(&format!("DROP TABLE {t}")))
        .await
        .unwrap();
    let id = fx.pending(&t).await;
    let filler = query(&format!("SELECT 1 /* {} */", "y".repeat(60 * 1024)));
    for _ in 0..10 {
        s.write_all(&filler).await.unwrap();
    }
    drop(s);
    let h = hold_reaches(&fx.admin, fx.secret("vera"), id, "withdrawn").await;
    assert_eq!(h["status"], "withdrawn");
    let (status, _) = fx.approve(id, "bob").await;
    assert_eq!(status, 409);
    assert!(exists(&t).await);
    drop_table(&t).await;
    fx.proxy.stop().await;
}
