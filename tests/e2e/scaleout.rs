//! Several pgwarden processes sharing one state through PostgreSQL (`[state] backend =
//! "postgres"`): a hold opened through one instance is listed and approved through another
//! and the waiting psql completes; a ticket approved on one is honoured by both; two
//! approvers racing through two instances have one winner; the control database restarting
//! mid-hold loses nothing; the instances' audit logs verify together.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::admin::{api, hold_reaches, pending_hold, policy_dir, Tokens};
use crate::support::cluster::Cluster;
use crate::support::process::Process;
use crate::support::{direct, eventually, psql, unique, within, PG_HOST, PG_PORT};

const BOUND: Duration = Duration::from_secs(60);

/// Dropping a table is held for one approval; truncating `so_tk_*` needs a ticket; dropping a
/// `so_brief_*` table is held for one second only.
const RULES: &str = r#"
[[rule]]
id = "so.hold-drop"
description = "Dropping a table needs an approval."
action = "hold"
message = "DROP TABLE needs an approval"
[rule.match]
tags = ["DROP TABLE"]

[[rule]]
id = "so.brief"
description = "Brief holds."
action = "hold"
message = "brief hold"
hold_timeout = "3s"
[rule.match]
tags = ["DROP TABLE"]
objects = ["*so_brief_*"]

[[rule]]
id = "so.ticket-truncate"
description = "Truncating an so_tk_ table needs a change ticket."
action = "require_ticket"
message = "truncating needs a change ticket"
[rule.match]
tags = ["TRUNCATE TABLE"]
objects = ["*so_tk_*"]
"#;

fn tokens() -> Tokens {
    Tokens::new(&[
        ("bob", "approver", Some("bob"), &[]),
        ("carol", "approver", Some("carol"), &[]),
        ("admin", "admin", Some("admin_db"), &[]),
    ])
}

/// Two instances, `a` and `b`, on one control schema, each with its own audit log.
struct Pair {
    a: Process,
    b: Process,
    dir: tempfile::TempDir,
    _policies: tempfile::TempDir,
}

impl Pair {
    fn start(control_dsn: &str, schema: &str, tokens: &Tokens) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let policies = policy_dir(RULES);
        let start = |name: &str| {
            let cfg = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "listen = \"127.0.0.1:0\"\npolicies = \"{}\"\nshutdown_grace = \"2s\"\n\
                     [state]\ndir = \"{}\"\nbackend = \"postgres\"\ndsn = \"{control_dsn}\"\n\
                     schema = \"{schema}\"\ninstance = \"{name}\"\n\
                     [admin]\nlisten = \"127.0.0.1:0\"\ntokens = \"{}\"\n\
                     [audit]\nfile = \"{}\"\nsigning_key = \"{}\"\ncheckpoint_interval = \"100ms\"\n\
                     [upstream]\naddress = \"{PG_HOST}:{PG_PORT}\"\n",
                    policies.path().display(),
                    dir.path().join(format!("{name}-state")).display(),
                    tokens.file.display(),
                    audit_file(dir.path(), name).display(),
                    dir.path().join(format!("{name}.key")).display(),
                ),
            )
            .unwrap();
            Process::start(&cfg, true)
        };
        let (a, b) = (start("a"), start("b"));
        Pair {
            a,
            b,
            dir,
            _policies: policies,
        }
    }

    fn audit(&self, name: &str) -> PathBuf {
        audit_file(self.dir.path(), name)
    }

    /// The instance's signed checkpoints (beside its log, the default place).
    fn checkpoints(&self, name: &str) -> PathBuf {
        let mut p = self.audit(name).into_os_string();
        p.push(".checkpoints");
        PathBuf::from(p)
    }

    /// The public half of the instance's signing key (written beside the key at start).
    fn public_key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pub"))
    }
}

fn audit_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.audit.jsonl"))
}

fn admin(p: &Process) -> String {
    p.admin.clone().expect("the admin API listens")
}

/// The local server's `test` database as the control database, with a schema of its own.
fn local_control() -> (String, String) {
    (
        format!("host={PG_HOST} port={PG_PORT} user=postgres dbname=test"),
        unique("pgwarden_so"),
    )
}

fn drop_schema(schema: &str) {
    let _ = Command::new("psql")
        .args(["-X", "-q", "-h", PG_HOST, "-p", &PG_PORT.to_string()])
        .args(["-U", "postgres", "-d", "test", "-c"])
        .arg(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .output();
}

async fn create_table(name: &str) {
    direct()
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int)"
        ))
        .await
        .unwrap();
}

/// psql through `p` running `sql`, off the async threads: (exit status, stdout, stderr).
fn psql_via(p: &Process, sql: &str) -> tokio::task::JoinHandle<(i32, String, String)> {
    let (dsn, sql) = (p.dsn(), sql.to_owned());
    tokio::task::spawn_blocking(move || psql(&dsn, &["-v", "ON_ERROR_STOP=1", "-c", &sql], None))
}

async fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
    api("POST", url, Some(token), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_opened_on_one_instance_is_approved_through_another() {
    let (dsn, schema) = local_control();
    let tokens = tokens();
    let pair = Pair::start(&dsn, &schema, &tokens);
    let (a, b) = (admin(&pair.a), admin(&pair.b));
    let table = unique("so_drop");
    create_table(&table).await;

    let waiting = psql_via(&pair.a, &format!("DROP TABLE {table}"));
    // Listed on both instances, opened by `a`.
    let held = pending_hold(&b, tokens.secret("bob"), &table).await;
    let on_a = pending_hold(&a, tokens.secret("bob"), &table).await;
    assert_eq!(held["id"], on_a["id"]);
    let id = held["id"].as_u64().unwrap();
    let (s, v) = post(
        &format!("{b}/api/holds/{id}/approve"),
        tokens.secret("bob"),
        json!({"comment": "approved through b"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (code, out, err) = within(BOUND, "psql through a", waiting).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DROP TABLE"), "{out}");
    let h = hold_reaches(&a, tokens.secret("bob"), id, "approved").await;
    assert_eq!(h["approvals"][0]["by"], "bob", "{h}");

    // A ticket created through `a` and approved through `b` is honoured by both, and its
    // uses are counted in one place.
    let (s, t) = post(
        &format!("{a}/api/tickets"),
        tokens.secret("admin"),
        json!({"title": "truncate the staging tables", "max_uses": 2}),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let ticket = t["id"].as_str().unwrap().to_owned();
    let (s, v) = post(
        &format!("{b}/api/tickets/{ticket}/approve"),
        tokens.secret("bob"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let tk = unique("so_tk");
    create_table(&tk).await;
    for p in [&pair.a, &pair.b] {
        let sql = format!("SET pgwarden.ticket = '{ticket}'; TRUNCATE {tk}");
        let (code, out, err) = within(BOUND, "truncate", psql_via(p, &sql)).await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("TRUNCATE TABLE"), "{out}");
    }
    // Used up: a third use is refused wherever it is tried.
    let sql = format!("SET pgwarden.ticket = '{ticket}'; TRUNCATE {tk}");
    let (code, _, err) = within(BOUND, "truncate", psql_via(&pair.b, &sql))
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("42501") || err.contains("ticket"), "{err}");
    let (_, t) = api(
        "GET",
        &format!("{b}/api/tickets/{ticket}"),
        Some(tokens.secret("bob")),
        None,
    )
    .await;
    assert_eq!(t["uses"], 2, "{t}");

    // Each instance keeps its own chain, signed with its own key; verified together (the
    // keys given in the other order: each log's checkpoints name theirs), both are intact.
    let (la, lb) = (pair.audit("a"), pair.audit("b"));
    let out = eventually(BOUND, "both audit logs to verify", || async {
        let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["audit", "verify"])
            .arg(&la)
            .arg(&lb)
            .arg("--checkpoints")
            .arg(pair.checkpoints("b"))
            .arg("--checkpoints")
            .arg(pair.checkpoints("a"))
            .arg("--public-key")
            .arg(pair.public_key("b"))
            .arg("--public-key")
            .arg(pair.public_key("a"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success()
            && text.matches("intact:").count() == 2
            && text.matches("checkpoint(s) verified").count() == 2)
            .then_some(text)
    })
    .await;
    let ids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(" of log ").nth(1))
        .map(|l| l.split(';').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert_ne!(ids[0], ids[1], "each instance has its own log_id: {out}");
    // The approval is in b's log, the statement it let through in a's.
    let (ta, tb) = (
        std::fs::read_to_string(&la).unwrap(),
        std::fs::read_to_string(&lb).unwrap(),
    );
    assert!(tb.contains("hold_approved"), "b records the approval");
    assert!(
        ta.contains(&format!("DROP TABLE {table}")),
        "a records the statement"
    );
    drop(pair);
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvals_racing_through_two_instances_have_one_winner() {
    let (dsn, schema) = local_control();
    let tokens = tokens();
    let pair = Pair::start(&dsn, &schema, &tokens);
    let (a, b) = (admin(&pair.a), admin(&pair.b));
    for round in 0..4 {
        let table = unique("so_race");
        create_table(&table).await;
        let waiting = psql_via(&pair.a, &format!("DROP TABLE {table}"));
        let id = pending_hold(&b, tokens.secret("bob"), &table).await["id"]
            .as_u64()
            .unwrap();
        let (ua, ub) = (
            format!("{a}/api/holds/{id}/approve"),
            format!("{b}/api/holds/{id}/approve"),
        );
        let ((s1, v1), (s2, v2)) = tokio::join!(
            post(&ua, tokens.secret("bob"), json!({})),
            post(&ub, tokens.secret("carol"), json!({})),
        );
        let mut statuses = [s1, s2];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: {v1} {v2}");
        let (code, out, err) = within(BOUND, "psql", waiting).await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("DROP TABLE"), "{out}");
        let h = hold_reaches(&b, tokens.secret("bob"), id, "approved").await;
        assert_eq!(h["approvals"].as_array().unwrap().len(), 1, "{h}");
    }
    drop(pair);
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_database_restarting_mid_hold_loses_nothing() {
    let control = Cluster::start(
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        "",
        &[],
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        control.port
    );
    let tokens = tokens();
    let pair = Pair::start(&dsn, "pgwarden", &tokens);
    let (a, b) = (admin(&pair.a), admin(&pair.b));

    // 1. A hold survives the restart and is approved after it; the session completes.
    let table = unique("so_restart");
    create_table(&table).await;
    let waiting = psql_via(&pair.a, &format!("DROP TABLE {table}"));
    let id = pending_hold(&b, tokens.secret("bob"), &table).await["id"]
        .as_u64()
        .unwrap();
    control.stop_fast();
    let url = format!("{b}/api/holds/{id}/approve");
    let (s, v) = post(&url, tokens.secret("bob"), json!({})).await;
    assert_eq!(
        s, 503,
        "the store is down: a clear error, not an approval: {v}"
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("control database")),
        "{v}"
    );
    let (s, ready) = api("GET", &format!("{a}/readyz"), None, None).await;
    assert_eq!(s, 503, "{ready}");
    assert!(!waiting.is_finished(), "the session still waits");
    control.start_again();
    let (s, v) = post(&url, tokens.secret("bob"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let (code, out, err) = within(BOUND, "psql through a", waiting).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DROP TABLE"), "{out}");

    // 2. A hold whose deadline passes while the store is down: the session is told it
    // expired, and the expiry reaches the store once it is back.
    let brief = unique("so_brief");
    create_table(&brief).await;
    let waiting = psql_via(&pair.a, &format!("DROP TABLE {brief}"));
    let id = pending_hold(&b, tokens.secret("bob"), &brief).await["id"]
        .as_u64()
        .unwrap();
    control.stop_fast();
    let (code, _, err) = within(BOUND, "psql through a", waiting).await.unwrap();
    assert_ne!(code, 0);
    assert!(err.contains(&format!("hold {id} timed out")), "{err}");
    control.start_again();
    let h = hold_reaches(&b, tokens.secret("bob"), id, "expired").await;
    assert_eq!(h["closed_by"], "pgwarden", "{h}");
    // The table is still there: nothing ran.
    let n: i64 = direct()
        .await
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = $1",
            &[&brief],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // Both logs record the expiry's outcome somewhere and verify.
    let st = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["audit", "verify"])
        .arg(pair.audit("a"))
        .arg(pair.audit("b"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    drop(pair);
}
