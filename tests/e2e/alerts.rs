//! Alerts by webhook from the real binary: a statement refused on the wire reaches a local
//! receiver as a signed Standard Webhooks delivery that `pgwarden webhook verify` accepts,
//! and a receiver that never answers does not hold up traffic.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

use crate::support::process::Process;
use crate::support::{connect, shipped_policies, sqlstate, unique, within};

const BOUND: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A request as the receiver saw it, saved the way a capture tool writes it.
pub type Saved = Vec<u8>;

async fn hook(
    State(tx): State<mpsc::UnboundedSender<Saved>>,
    h: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut s = b"POST /hook HTTP/1.1\r\n".to_vec();
    for (n, v) in &h {
        s.extend_from_slice(format!("{}: ", n.as_str()).as_bytes());
        s.extend_from_slice(v.as_bytes());
        s.extend_from_slice(b"\r\n");
    }
    s.extend_from_slice(b"\r\n");
    s.extend_from_slice(&body);
    let _ = tx.send(s);
    StatusCode::OK
}

/// A receiver on 127.0.0.1:0: its URL and the requests it gets.
pub async fn receiver() -> (String, mpsc::UnboundedReceiver<Saved>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(tx);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/hook"), rx)
}

/// pgwarden with the shipped pack in front of the machine's PostgreSQL, and `webhook`.
fn start(dir: &Path, webhook: &str) -> Process {
    let cfg = dir.join("pgwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\npolicies = \"{}\"\n[state]\ndir = \"{}\"\n[admin]\nlisten = \"off\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n{webhook}\n",
            shipped_policies().display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    Process::start(&cfg, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_the_wire_arrives_as_a_signed_webhook_that_verifies() {
    let (url, mut rx) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let p = start(
        dir.path(),
        &format!(
            "[[webhook]]\nname = \"ops\"\nurl = \"{url}\"\nevents = [\"refused\"]\nsecret_file = \"{}\"\n",
            secret_file.display()
        ),
    );
    let c = connect(&p.dsn()).await;
    let t = unique("alert_gone");
    let e = c
        .simple_query(&format!("DROP TABLE {t}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");

    let saved = within(BOUND, "the webhook delivery", rx.recv())
        .await
        .expect("the receiver runs");
    let text = String::from_utf8_lossy(&saved).into_owned();
    let body: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["type"], "pgwarden.refused", "{text}");
    assert_eq!(body["data"]["rule"], "destructive.drop-table", "{text}");
    assert_eq!(body["data"]["event"]["refused"], true);
    assert_eq!(body["data"]["event"]["user"], "postgres");

    // The CLI accepts it, and refuses it once a byte of the body changes.
    let file = dir.path().join("delivery.http");
    std::fs::write(&file, &saved).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args([
            "webhook",
            "verify",
            "--secret",
            SECRET,
            "--tolerance",
            "10m",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("valid: webhook-id msg_"), "{stdout}");
    let mut tampered = saved.clone();
    let last = tampered.len() - 1;
    tampered[last] = b' ';
    std::fs::write(&file, &tampered).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["webhook", "verify", "--secret-file"])
        .arg(&secret_file)
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.trim(), "invalid: no signature matches the secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_answers_does_not_hold_up_statements() {
    // Accepts connections and never answers; the sockets stay open.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, mut accepts) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
            let _ = accepted.send(());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let p = start(
        dir.path(),
        &format!(
            "[[webhook]]\nurl = \"http://{addr}/hook\"\nsecret = \"{SECRET}\"\ntimeout = \"1h\"\nqueue = 4\ncollapse_window = \"0s\"\n"
        ),
    );
    let c = connect(&p.dsn()).await;
    let t = unique("alert_never");
    // 200 statements, half of them refused (an alert each): every one completes.
    within(BOUND, "200 statements", async {
        for i in 0..200 {
            if i % 2 == 0 {
                let e = c
                    .simple_query(&format!("DROP TABLE {t}"))
                    .await
                    .unwrap_err();
                assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
            } else {
                let n: i32 = c.query_one("SELECT $1::int", &[&i]).await.unwrap().get(0);
                assert_eq!(n, i);
            }
        }
    })
    .await;
    // The alerts did go out: the receiver holds a connection that never gets an answer.
    within(BOUND, "a delivery attempt", accepts.recv()).await;
}
