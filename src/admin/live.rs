//! `GET /metrics` (Prometheus text, no token: it holds counts, rule ids and the policy
//! version, nothing secret) and `GET /api/events` (Server-Sent Events, any valid token):
//! what happens, live. With an audit log, the events are its records as they are synced,
//! `id` their seq, so a client that reconnects with `Last-Event-ID` gets what it missed from
//! the files; without one, the instance's event stream (no resume). `?types=refused,held_opened`
//! keeps only those types (`refused` is a refused statement record; other names are record
//! or event types: `statement`, `outcome`, `hold_opened`, `session_started`, ...).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::auth::Authenticated;
use super::handlers::Params;
use super::AdminState;
use crate::approval::events::{Emitted, Event, EventSink};
use crate::audit::{AuditLog, Written};

/// What the live endpoints read.
#[derive(Clone)]
pub struct Live {
    pub events: EventSink,
    pub audit: Option<AuditLog>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Ends open event streams at shutdown.
    pub shutdown: CancellationToken,
}

/// At most this many missed records are read back from the files per catch-up.
const BACKLOG: usize = 10_000;

/// Live readers reading missed records back from the files at once (each holds at most
/// `crate::audit::BACKLOG_BYTES` until it has sent them).
static CATCH_UPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    match state.live().and_then(|l| l.metrics.clone()) {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct EventsParams {
    types: Option<String>,
}

pub(super) async fn events(
    Authenticated(_): Authenticated,
    State(state): State<AdminState>,
    Params(p): Params<EventsParams>,
    headers: HeaderMap,
) -> Response {
    let Some(live) = state.live().cloned() else {
        return (StatusCode::NOT_FOUND, "live events are not enabled\n").into_response();
    };
    let types: Option<Arc<HashSet<String>>> = p.types.map(|t| {
        Arc::new(
            t.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    });
    let keep = move |kind: &str| types.as_ref().is_none_or(|t| t.contains(kind));
    let last: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let shutdown = live.shutdown.clone();
    let body = match live.audit.clone() {
        Some(log) => records(log, last, keep, shutdown).boxed(),
        None => emitted(live.events.clone(), keep, shutdown).boxed(),
    };
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The audit log's records after `last` (from the files), then as they are synced.
fn records(
    log: AuditLog,
    last: Option<u64>,
    keep: impl Fn(&str) -> bool + Send + Sync + Clone + 'static,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    struct St {
        log: AuditLog,
        rx: tokio::sync::broadcast::Receiver<Arc<Written>>,
        queue: VecDeque<Written>,
        /// The seq of the last record passed (sent or filtered out); `None`: live only.
        last: Option<u64>,
        catch_up: bool,
    }
    let st = St {
        rx: log.subscribe(),
        log,
        queue: VecDeque::new(),
        last,
        catch_up: last.is_some(),
    };
    stream::unfold(st, move |mut st| {
        let keep = keep.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                if st.catch_up {
                    st.catch_up = false;
                    let (log, after) = (st.log.clone(), st.last.unwrap_or(0));
                    // One catch-up at a time per instance: each holds up to BACKLOG_BYTES.
                    let permit = CATCH_UPS.acquire().await.ok();
                    let (back, more) =
                        tokio::task::spawn_blocking(move || log.backlog(after, BACKLOG))
                            .await
                            .unwrap_or_default();
                    drop(permit);
                    st.catch_up = more;
                    st.queue.extend(back);
                }
                if let Some(w) = st.queue.pop_front() {
                    if st.last.is_some_and(|l| w.seq <= l) {
                        continue;
                    }
                    st.last = Some(w.seq);
                    if keep(&w.kind) {
                        let ev = SseEvent::default()
                            .id(w.seq.to_string())
                            .event(w.kind)
                            .data(w.line);
                        return Some((Ok(ev), st));
                    }
                    continue;
                }
                let got = tokio::select! {
                    r = st.rx.recv() => r,
                    _ = shutdown.cancelled() => return None,
                };
                match got {
                    Ok(w) => st.queue.push_back((*w).clone()),
                    // Fell behind: read what was missed back from the files.
                    Err(RecvError::Lagged(_)) => st.catch_up = st.last.is_some(),
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// The event type as a live reader sees it.
fn kind(e: &Emitted) -> &'static str {
    match &e.event {
        Event::Decision { refused: true, .. } => "refused",
        other => other.kind(),
    }
}

/// The instance's events as they are emitted (no audit log: no resume).
fn emitted(
    events: EventSink,
    keep: impl Fn(&str) -> bool + Send + Sync + Clone + 'static,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    stream::unfold(events.subscribe(), move |mut rx| {
        let keep = keep.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                let got = tokio::select! {
                    r = rx.recv() => r,
                    _ = shutdown.cancelled() => return None,
                };
                match got {
                    Ok(e) if keep(kind(&e)) => {
                        let data = serde_json::to_string(&*e).unwrap_or_default();
                        let ev = SseEvent::default()
                            .id(e.seq.to_string())
                            .event(kind(&e))
                            .data(data);
                        return Some((Ok(ev), rx));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        let ev = SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"));
                        return Some((Ok(ev), rx));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}
