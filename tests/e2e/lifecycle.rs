//! The `pgwarden` binary: flags and config errors, and shutdown on SIGTERM (idle sessions get
//! FATAL 57P01 at once, sessions in a transaction may finish within the grace period, the
//! process exits 0).

use std::process::Command;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::support::process::Process;
use crate::support::{direct, unique, within};

const BOUND: Duration = Duration::from_secs(60);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgwarden"))
}

/// A pgwarden process with a config of its own (and `extra_config` in it).
struct Running {
    p: Process,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(extra_config: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("pgwarden.toml");
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\npolicies = \"{}\"\n{extra_config}\n[state]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n",
                dir.path().join("policies").display(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        Running {
            p: Process::start(&cfg, false),
            _dir: dir,
        }
    }

    fn dsn(&self) -> String {
        self.p.dsn()
    }

    fn sigterm(&self) {
        self.p.sigterm()
    }

    async fn exit_code(mut self) -> i32 {
        self.p.exit_code().await
    }
}

/// Connects and returns the client plus a receiver for how its connection ended.
async fn session(
    dsn: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::oneshot::Receiver<Option<String>>,
) {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let code = conn
            .await
            .err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned()));
        let _ = tx.send(code);
    });
    (client, rx)
}

#[test]
fn help_lists_every_flag() {
    let out = bin().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--listen", "--upstream"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn bad_config_lists_every_error_with_lines_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "listen = 5\nmax_client_conections = 3\n[upstream]\ntls = \"maybe\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let path = cfg.display().to_string();
    assert!(err.contains(&format!("{path}:1: listen")), "{err}");
    assert!(
        err.contains(&format!("{path}:2: max_client_conections: unknown key")),
        "{err}"
    );
    assert!(err.contains(&format!("{path}:4: upstream.tls")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_idle_sessions_and_lets_a_transaction_finish() {
    let p = Running::start("shutdown_grace = \"60s\"");
    let (idle, idle_end) = session(&p.dsn()).await;
    let (busy, busy_end) = session(&p.dsn()).await;
    let table = unique("shutdown_tx");
    let d = direct().await;
    d.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    busy.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    idle.query_one("SELECT 1", &[]).await.unwrap();

    p.sigterm();
    // The idle session is told 57P01.
    let code = within(BOUND, "idle session end", idle_end).await.unwrap();
    assert_eq!(code.as_deref(), Some("57P01"));
    // The transaction goes on, commits, and then that session is closed too.
    busy.batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
        .await
        .unwrap();
    busy.batch_execute("COMMIT").await.unwrap();
    let code = within(BOUND, "busy session end", busy_end).await.unwrap();
    assert_eq!(code.as_deref(), Some("57P01"));
    assert_eq!(p.exit_code().await, 0);
    let n: i64 = d
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    d.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_grace_period_ends_a_lingering_transaction() {
    let p = Running::start("shutdown_grace = \"1s\"");
    let (busy, busy_end) = session(&p.dsn()).await;
    let table = unique("shutdown_grace");
    let d = direct().await;
    d.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    busy.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    p.sigterm();
    let code = within(BOUND, "session closed after grace", busy_end)
        .await
        .unwrap();
    assert_eq!(code.as_deref(), Some("57P01"));
    assert_eq!(p.exit_code().await, 0);
    // The transaction never committed.
    let n: i64 = d
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    d.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
