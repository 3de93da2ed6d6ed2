//! Delivery against real local HTTP receivers on port 0: signed deliveries verify with the
//! code `pgwarden webhook verify` runs, failing receivers are retried, and a receiver that
//! never answers slows nothing down.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::alert::tests::refusal;
use super::*;
use crate::approval::events::Event;

/// A bound for a broken build, never a timing assertion.
const LIMIT: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request as the receiver saw it, in the saved-delivery format.
pub(crate) struct Captured {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Captured {
    /// The request as a capture tool saves it: request line, headers, blank line, body.
    pub fn saved(&self) -> Vec<u8> {
        let mut s = b"POST /hook HTTP/1.1\r\n".to_vec();
        for (n, v) in &self.headers {
            s.extend_from_slice(n.as_str().as_bytes());
            s.extend_from_slice(b": ");
            s.extend_from_slice(v.as_bytes());
            s.extend_from_slice(b"\r\n");
        }
        s.extend_from_slice(b"\r\n");
        s.extend_from_slice(&self.body);
        s
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct Receiver {
    tx: mpsc::UnboundedSender<(StatusCode, Captured)>,
    fail_first: u32,
    seen: Arc<AtomicU32>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = r.seen.fetch_add(1, Ordering::SeqCst);
    let status = if n < r.fail_first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    let _ = r.tx.send((status, Captured { headers, body }));
    status
}

/// An HTTP receiver on 127.0.0.1:0 answering 503 to its first `fail_first` requests:
/// its URL and every request with the status it got.
pub(crate) async fn receiver(
    fail_first: u32,
) -> (String, mpsc::UnboundedReceiver<(StatusCode, Captured)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Receiver {
        tx,
        fail_first,
        seen: Arc::new(AtomicU32::new(0)),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

/// A receiver that accepts connections and never answers (the sockets are kept open).
async fn silent_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}/hook")
}

fn webhook(name: &str, url: &str) -> WebhookConfig {
    let mut w = WebhookConfig::new(name, url);
    w.secret = Some(Secret::new(SECRET));
    w.backoff_initial = Duration::from_millis(5);
    w.backoff_max = Duration::from_millis(50);
    w
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(StatusCode, Captured)>) -> (StatusCode, Captured) {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("the receiver gets a request")
        .expect("the receiver runs")
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_refusal_arrives_signed_and_the_signature_verifies() {
    let (url, mut rx) = receiver(0).await;
    let events = EventSink::new();
    let shutdown = CancellationToken::new();
    let alerts = start(vec![webhook("ops", &url)], &events, shutdown.clone());
    events.emit(refusal(7, "destructive.drop-table"));
    let (_, got) = next(&mut rx).await;
    let key = sign::key(SECRET).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let v = sign::verify_saved(&key, &got.saved(), Some(Duration::from_secs(300)), now)
        .expect("the signature verifies");
    assert_eq!(v.id, got.header("webhook-id"));
    assert!(got.header("webhook-signature").starts_with("v1,"));
    assert_eq!(got.header("content-type"), "application/json");
    let body = got.json();
    assert_eq!(body["type"], "pgwarden.refused");
    assert_eq!(body["data"]["rule"], "destructive.drop-table");
    assert_eq!(body["data"]["event"]["session"], 7);
    // With another secret it does not verify.
    let other = sign::key("whsec_c2VjcmV0").unwrap();
    assert_eq!(
        sign::verify_saved(&other, &got.saved(), None, now),
        Err(sign::VerifyError::Mismatch)
    );
    eventually("the delivery is counted", || {
        alerts.counts("ops").unwrap().delivered == 1
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_failing_receiver_is_retried_until_delivered_under_one_webhook_id() {
    let (url, mut rx) = receiver(2).await;
    let events = EventSink::new();
    let shutdown = CancellationToken::new();
    let alerts = start(vec![webhook("ops", &url)], &events, shutdown.clone());
    events.emit(Event::UpstreamDown {
        error: "connection refused".into(),
    });
    let mut ids = Vec::new();
    let key = sign::key(SECRET).unwrap();
    for want in [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::NO_CONTENT,
    ] {
        let (status, got) = next(&mut rx).await;
        assert_eq!(status, want);
        // Every attempt is signed on its own.
        sign::verify_saved(&key, &got.saved(), None, 0).unwrap();
        assert_eq!(got.json()["type"], "pgwarden.upstream_down");
        ids.push(got.header("webhook-id").to_owned());
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    eventually("the delivery is counted", || {
        alerts.counts("ops").unwrap().delivered == 1
    })
    .await;
    let c = alerts.counts("ops").unwrap();
    assert_eq!((c.retried, c.failed), (2, 0), "{c:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_client_error_is_not_retried_and_attempts_are_bounded() {
    // 4xx other than 429: final. A receiver that keeps failing: max_attempts, then given up.
    let (url, mut rx) = receiver(u32::MAX).await;
    let events = EventSink::new();
    let shutdown = CancellationToken::new();
    let mut w = webhook("ops", &url);
    w.max_attempts = 3;
    let mut gone = webhook(
        "gone",
        &format!("{}/missing", url.trim_end_matches("/hook")),
    );
    gone.max_attempts = 3;
    let alerts = start(vec![w, gone], &events, shutdown.clone());
    events.emit(refusal(1, "r"));
    for _ in 0..3 {
        next(&mut rx).await;
    }
    eventually("both are given up on", || {
        alerts.counts("ops").unwrap().failed == 1 && alerts.counts("gone").unwrap().failed == 1
    })
    .await;
    assert_eq!(alerts.counts("ops").unwrap().retried, 2);
    assert_eq!(alerts.counts("gone").unwrap().retried, 0, "404 is final");
    assert!(rx.try_recv().is_err(), "no fourth attempt");
    shutdown.cancel();
}

#[tokio::test]
async fn a_receiver_that_never_answers_slows_nothing_and_drops_are_counted() {
    let silent = silent_receiver().await;
    let (url, mut rx) = receiver(0).await;
    let events = EventSink::new();
    let shutdown = CancellationToken::new();
    let mut stuck = webhook("stuck", &silent);
    stuck.queue = 8;
    stuck.collapse_window = Duration::ZERO;
    stuck.timeout = Duration::from_secs(3600);
    let mut fine = webhook("fine", &url);
    fine.events = vec![Filter::Refused, Filter::PolicyReloadFailed];
    let alerts = start(vec![stuck, fine], &events, shutdown.clone());
    const N: u64 = 5000;
    // Emitting returns without waiting for either webhook (this loop finishing is the test).
    for i in 0..N {
        events.emit(refusal(i, "destructive.drop-table"));
    }
    events.emit(Event::PolicyReloaded {
        version: "v2".into(),
        ok: false,
        error: Some("bad rule".into()),
    });
    // Every event is either queued or counted as dropped; the queue holds at most 8 (plus
    // the one the worker is stuck on).
    eventually("every stuck alert accounted for", || {
        let c = alerts.counts("stuck").unwrap();
        c.queued + c.dropped == N
    })
    .await;
    let c = alerts.counts("stuck").unwrap();
    assert!(c.queued <= 9, "{c:?}");
    assert!(c.dropped >= N - 9, "{c:?}");
    assert_eq!(c.delivered, 0);
    // The other webhook still delivers: the policy alarm arrives.
    let mut kinds = Vec::new();
    while !kinds.contains(&"pgwarden.policy_reload_failed".to_owned()) {
        let (_, got) = next(&mut rx).await;
        kinds.push(got.json()["type"].as_str().unwrap().to_owned());
    }
    shutdown.cancel();
}

#[tokio::test]
async fn repeats_are_collapsed_into_one_summary_at_the_window_end() {
    // Real time (a paused clock would also fire the HTTP client's timeouts); the window
    // is long enough for five emits in a row on any machine, and the test only waits.
    let (url, mut rx) = receiver(0).await;
    let events = EventSink::new();
    let shutdown = CancellationToken::new();
    let mut w = webhook("ops", &url);
    w.format = Format::Slack;
    w.collapse_window = Duration::from_secs(2);
    let _alerts = start(vec![w], &events, shutdown.clone());
    for _ in 0..5 {
        events.emit(refusal(3, "destructive.drop-table"));
    }
    let (_, first) = next(&mut rx).await;
    let text = first.json()["text"].as_str().unwrap().to_owned();
    assert!(text.starts_with("pgwarden refused: refused"), "{text}");
    let (_, summary) = next(&mut rx).await;
    let text = summary.json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("pgwarden refused: 4 more: refused"),
        "{text}"
    );
    shutdown.cancel();
}
