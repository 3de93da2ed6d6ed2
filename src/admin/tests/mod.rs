//! Router tests against a real [`Approvals`] on a temporary store, through
//! `tower::ServiceExt::oneshot`; the listener (plain and TLS) and the CLI against a served
//! router on port 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::auth::{add_token, NewToken};
use super::*;
use crate::approval::events::EventSink;
use crate::approval::model::{HeldRule, NewHold, NewReview, Role};
use crate::approval::Approvals;

struct Fixture {
    _dir: tempfile::TempDir,
    state: AdminState,
    policy_ok: Arc<AtomicBool>,
    viewer: String,
    approver: String,
    approver2: String,
    admin: String,
}

fn token(file: &std::path::Path, name: &str, role: Role, db_user: &str) -> String {
    add_token(
        file,
        &NewToken {
            name: name.into(),
            role,
            groups: vec!["dba".into()],
            db_user: Some(db_user.into()),
        },
    )
    .unwrap()
}

fn fixture_with(upstream: Option<UpstreamAddr>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let viewer = token(&file, "vera", Role::Viewer, "vera");
    let approver = token(&file, "alice", Role::Approver, "alice");
    let approver2 = token(&file, "bob", Role::Approver, "bob");
    let admin = token(&file, "root", Role::Admin, "postgres");
    let tokens = Arc::new(TokenSet::load(&file).unwrap());
    let approvals = Approvals::open(&dir.path().join("state"), EventSink::new()).unwrap();
    let policy_ok = Arc::new(AtomicBool::new(true));
    let flag = policy_ok.clone();
    let readiness = Readiness::new(
        move || {
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no policy loaded".into())
            }
        },
        upstream,
    )
    .connect_timeout(Duration::from_secs(2));
    Fixture {
        _dir: dir,
        state: AdminState::new(approvals, tokens, readiness),
        policy_ok,
        viewer,
        approver,
        approver2,
        admin,
    }
}

fn fixture() -> Fixture {
    fixture_with(None)
}

/// One request through the router: status, JSON body (Null if none) and the raw text.
async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(HttpBody::from(body.unwrap_or("").to_owned()))
        .unwrap();
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value, text)
}

fn new_hold(user: &str) -> NewHold {
    NewHold {
        sql: "DROP TABLE orders".into(),
        user: user.into(),
        database: "shop".into(),
        client_addr: Some("10.0.0.7".into()),
        application_name: "psql".into(),
        rules: vec![HeldRule {
            id: "ddl.drop-table".into(),
            message: "dropping a table needs approval".into(),
            hint: None,
        }],
        approvals_required: 1,
        approver_groups: vec![],
        timeout: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn health_needs_no_token_and_readiness_names_the_failed_check() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let f = fixture_with(Some(UpstreamAddr::Tcp {
        host: "127.0.0.1".into(),
        port,
    }));
    let (s, v, _) = call(&f, "GET", "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));

    let (s, v, _) = call(&f, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["checks"]["upstream"], "ok");
    assert_eq!(v["checks"]["store"], "ok");

    f.policy_ok.store(false, Ordering::SeqCst);
    let (s, v, _) = call(&f, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["error"], "policy: no policy loaded");
    assert_eq!(v["checks"]["upstream"], "ok");

    f.policy_ok.store(true, Ordering::SeqCst);
    drop(upstream);
    let (s, v, _) = call(&f, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("upstream: 127.0.0.1:"),
        "{v}"
    );
}

#[tokio::test]
async fn no_token_and_wrong_token_are_401_and_never_echo_the_token() {
    let f = fixture();
    let (s, v, _) = call(&f, "GET", "/api/holds", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].is_string());

    let wrong = format!("{}x", f.approver);
    for path in ["/api/holds", "/api/tickets", "/api/reviews", "/api/nothing"] {
        let (s, v, text) = call(&f, "GET", path, Some(&wrong), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(v["error"], "invalid token");
        assert!(!text.contains(&wrong) && !text.contains(&f.approver[4..]));
    }
    // Not even in a body error after a valid token.
    let (s, _, text) = call(
        &f,
        "POST",
        "/api/tickets",
        Some(&f.approver),
        Some("{\"title\": 1}"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(!text.contains(&f.approver[4..]));

    let (s, _, _) = call(&f, "GET", "/api/holds", Some(&f.viewer), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v, _) = call(&f, "GET", "/api/nothing", Some(&f.viewer), None).await;
    assert_eq!((s, v["error"].is_string()), (StatusCode::NOT_FOUND, true));
}

#[tokio::test]
async fn a_token_added_after_start_works_after_reload() {
    let f = fixture();
    let file = f.state.tokens().path().unwrap().to_path_buf();
    let late = token(&file, "late", Role::Viewer, "late");
    let (s, _, _) = call(&f, "GET", "/api/holds", Some(&late), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(f.state.tokens().reload().unwrap(), 5);
    let (s, _, _) = call(&f, "GET", "/api/holds", Some(&late), None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn tickets_create_approve_and_the_refusals() {
    let f = fixture();
    // A viewer may not create.
    let body = r#"{"id": "CHG-1", "title": "drop old orders", "approvals_required": 2}"#;
    let (s, _, _) = call(&f, "POST", "/api/tickets", Some(&f.viewer), Some(body)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, t, _) = call(&f, "POST", "/api/tickets", Some(&f.approver), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["id"], "CHG-1");
    assert_eq!(t["status"], "pending");
    assert_eq!(t["requester"]["token"], "alice");

    let (s, _, _) = call(&f, "POST", "/api/tickets", Some(&f.approver2), Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT, "the id exists");

    // Self-approval.
    let (s, v, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/approve",
        Some(&f.approver),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // A viewer approving.
    let (s, _, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/approve",
        Some(&f.viewer),
        Some("{}"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // First approval, then the same approver again.
    let (s, t, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/approve",
        Some(&f.approver2),
        Some(r#"{"comment": "looks fine"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["approvals"][0]["by"], "bob");
    assert_eq!(t["approvals"][0]["comment"], "looks fine");
    assert_eq!(t["status"], "pending", "1 of 2");
    let (s, _, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/approve",
        Some(&f.approver2),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "double approval");

    // The admin gives the second; an approver may not revoke, the admin may.
    let (s, t, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/approve",
        Some(&f.admin),
        None,
    )
    .await;
    assert_eq!(
        (s, t["status"].as_str()),
        (StatusCode::OK, Some("approved"))
    );
    let revoke = r#"{"reason": "window missed"}"#;
    let (s, _, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/revoke",
        Some(&f.approver2),
        Some(revoke),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/revoke",
        Some(&f.admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "revoking needs a reason");
    let (s, t, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-1/revoke",
        Some(&f.admin),
        Some(revoke),
    )
    .await;
    assert_eq!((s, t["status"].as_str()), (StatusCode::OK, Some("revoked")));

    let (s, list, _) = call(&f, "GET", "/api/tickets", Some(&f.viewer), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, list, _) = call(
        &f,
        "GET",
        "/api/tickets?status=pending",
        Some(&f.viewer),
        None,
    )
    .await;
    assert_eq!((s, list.as_array().unwrap().len()), (StatusCode::OK, 0));
    let (s, t, _) = call(&f, "GET", "/api/tickets/CHG-1", Some(&f.viewer), None).await;
    assert_eq!(
        (s, t["reason"].as_str()),
        (StatusCode::OK, Some("window missed"))
    );
    let (s, v, _) = call(&f, "GET", "/api/tickets/CHG-404", Some(&f.viewer), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "ticket CHG-404 not found");
    let (s, _, _) = call(
        &f,
        "POST",
        "/api/tickets/CHG-404/approve",
        Some(&f.approver),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_bodies_and_queries_are_400_in_json() {
    let f = fixture();
    let t = Some(f.approver.as_str());
    for body in [
        "{",
        "[]",
        r#"{"title": "x", "bogus": 1}"#,
        r#"{"title": "x", "scope": {"tables": ["t"]}}"#,
        r#"{"title": "x", "approvals_required": -1}"#,
    ] {
        let (s, v, _) = call(&f, "POST", "/api/tickets", t, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid request body"),
            "{v}"
        );
    }
    let (s, v, _) = call(&f, "GET", "/api/holds?status=waiting", t, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].is_string());
    let (s, _, _) = call(&f, "GET", "/api/holds?state=pending", t, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown parameter");
    let (s, v, _) = call(&f, "GET", "/api/holds/abc", t, None).await;
    assert_eq!((s, v["error"].is_string()), (StatusCode::BAD_REQUEST, true));
    let (s, v, _) = call(&f, "DELETE", "/api/holds", t, None).await;
    assert_eq!(
        (s, v["error"].is_string()),
        (StatusCode::METHOD_NOT_ALLOWED, true)
    );
}

#[tokio::test]
async fn holds_approve_deny_and_revoke() {
    let f = fixture();
    let approvals = f.state.approvals().clone();
    // alice's own statement, and one of somebody else.
    let mut own = approvals.open_hold(new_hold("alice")).await.unwrap();
    let mut other = approvals.open_hold(new_hold("carol")).await.unwrap();
    let third = approvals.open_hold(new_hold("carol")).await.unwrap();

    let (s, list, _) = call(
        &f,
        "GET",
        "/api/holds?status=pending",
        Some(&f.viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let (s, h, _) = call(
        &f,
        "GET",
        &format!("/api/holds/{}", own.id()),
        Some(&f.viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["sql"], "DROP TABLE orders");
    assert_eq!(h["rules"][0]["id"], "ddl.drop-table");

    let approve = |id: u64| format!("/api/holds/{id}/approve");
    let (s, _, _) = call(&f, "POST", &approve(other.id()), Some(&f.viewer), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "viewer approving");
    let (s, _, _) = call(&f, "POST", &approve(own.id()), Some(&f.approver), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "approving one's own statement");

    let deny = format!("/api/holds/{}/deny", own.id());
    let (s, v, _) = call(&f, "POST", &deny, Some(&f.viewer), Some("{}")).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "the role is checked before the body: {v}"
    );
    assert_eq!(
        v["error"].as_str().unwrap(),
        format!("token vera has role viewer; POST {deny} needs approver or admin")
    );
    let (s, v, _) = call(&f, "POST", &deny, Some(&f.approver2), Some("{}")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "deny without a reason: {v}");
    let (s, _, _) = call(&f, "POST", &deny, Some(&f.approver2), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "deny without a body");
    let (s, _, _) = call(
        &f,
        "POST",
        &deny,
        Some(&f.approver2),
        Some(r#"{"reason": "  "}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a blank reason");
    let (s, h, _) = call(
        &f,
        "POST",
        &deny,
        Some(&f.approver2),
        Some(r#"{"reason": "not in business hours"}"#),
    )
    .await;
    assert_eq!((s, h["status"].as_str()), (StatusCode::OK, Some("denied")));
    assert_eq!(
        own.ended().await.reason.as_deref(),
        Some("not in business hours")
    );

    let (s, h, _) = call(
        &f,
        "POST",
        &approve(other.id()),
        Some(&f.approver),
        Some(r#"{"comment": "ok"}"#),
    )
    .await;
    assert_eq!(
        (s, h["status"].as_str()),
        (StatusCode::OK, Some("approved"))
    );
    assert_eq!(
        other.ended().await.status,
        crate::approval::model::HoldStatus::Approved
    );
    let (s, _, _) = call(&f, "POST", &approve(other.id()), Some(&f.approver2), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "no longer pending");

    let revoke = format!("/api/holds/{}/revoke", third.id());
    let (s, _, _) = call(&f, "POST", &revoke, Some(&f.approver), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "approver revoking");
    let (s, h, _) = call(&f, "POST", &revoke, Some(&f.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{h}");
    assert_ne!(h["status"], "pending");

    let (s, v, _) = call(&f, "GET", "/api/holds/999999", Some(&f.viewer), None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("hold 999999 not found"))
    );
    let (s, _, _) = call(&f, "POST", &approve(999_999), Some(&f.approver), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, list, _) = call(
        &f,
        "GET",
        "/api/holds?status=pending",
        Some(&f.viewer),
        None,
    )
    .await;
    assert_eq!((s, list.as_array().unwrap().len()), (StatusCode::OK, 0));
    let (_, list, _) = call(&f, "GET", "/api/holds", Some(&f.viewer), None).await;
    assert_eq!(list.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn break_glass_reviews() {
    let f = fixture();
    let r = f
        .state
        .approvals()
        .record_break_glass(NewReview {
            user: "alice".into(),
            database: "shop".into(),
            client_addr: None,
            reason: "INC-7 outage".into(),
            sql: "DELETE FROM sessions".into(),
            rules: vec!["dml.unbounded-delete".into()],
        })
        .await
        .unwrap();
    let (s, list, _) = call(&f, "GET", "/api/reviews", Some(&f.viewer), None).await;
    assert_eq!((s, list.as_array().unwrap().len()), (StatusCode::OK, 1));
    let mark = format!("/api/reviews/{}/reviewed", r.id);
    let (s, _, _) = call(&f, "POST", &mark, Some(&f.viewer), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = call(&f, "POST", &mark, Some(&f.approver), None).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "alice reviewing her own break-glass use"
    );
    let (s, v, _) = call(
        &f,
        "POST",
        &mark,
        Some(&f.approver2),
        Some(r#"{"comment": "justified"}"#),
    )
    .await;
    assert_eq!(
        (s, v["reviewed_by"].as_str()),
        (StatusCode::OK, Some("bob"))
    );
    let (s, _, _) = call(&f, "POST", &mark, Some(&f.admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "reviewed already");
    let (_, pending, _) = call(
        &f,
        "GET",
        "/api/reviews?status=pending",
        Some(&f.viewer),
        None,
    )
    .await;
    assert_eq!(pending.as_array().unwrap().len(), 0);
    let (_, all, _) = call(&f, "GET", "/api/reviews?status=all", Some(&f.viewer), None).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    let (s, _, _) = call(&f, "GET", "/api/reviews?status=old", Some(&f.viewer), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// Serves the fixture's router on port 0 (`tls`: HTTPS); returns its address.
async fn spawn_server(
    f: &Fixture,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, router(f.state.clone()), tls, shutdown));
    (addr, task)
}

#[tokio::test]
async fn serves_https_and_stops_on_shutdown() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let acceptor = crate::tls::http_acceptor(&cert, &key).unwrap();
    let shutdown = CancellationToken::new();
    let (addr, task) = spawn_server(&f, Some(acceptor), shutdown.clone()).await;

    // A client that never finishes its handshake does not stop the others.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let r = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{url}/api/holds"))
        .bearer_auth(&f.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the HTTPS port gets nowhere.
    assert!(reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err());

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

mod cli;
