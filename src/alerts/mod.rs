//! Real-time alerts by webhook. Each `[[webhook]]` gets two tasks:
//!
//! ```text
//! EventSink ──broadcast──▶ dispatcher ──try_send──▶ bounded queue ──▶ worker ──POST──▶ receiver
//!   (never waits)          alert_for → filter         (full: drop,      retry, backoff,
//!                          → collapse → body          counted, logged)  signature per attempt
//! ```
//!
//! Nothing on the traffic path waits for HTTP: sessions emit into the broadcast channel,
//! a dispatcher that falls behind loses events (counted as drops), and a full queue drops
//! the newest alert.
//!
//! - [`settings`]: what one `[[webhook]]` says.
//! - [`alert`]: event → alert, pure.
//! - [`collapse`]: repeats of one rule and session within a window → one summary, pure.
//! - [`format`]: the `json` (Standard Webhooks) and `slack` bodies.
//! - [`sign`]: Standard Webhooks signatures, and checking a saved delivery.
//! - [`deliver`]: the queue and the delivery worker.

pub mod alert;
pub mod collapse;
pub mod deliver;
pub mod format;
pub mod settings;
pub mod sign;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub use deliver::{Counts, Stats};
pub use settings::{Filter, Format, Secret, WebhookConfig};

use crate::approval::events::EventSink;

/// The running webhooks: their counters, by name.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    webhooks: Vec<(String, Arc<Stats>)>,
}

impl Alerts {
    /// The counters of webhook `name`.
    pub fn counts(&self, name: &str) -> Option<Counts> {
        self.webhooks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.counts())
    }
}

/// Starts a dispatcher and a delivery worker for each webhook, subscribed to `events` now
/// (so that nothing emitted after this call is missed); they stop when `shutdown` fires.
/// A webhook whose secret or HTTP client cannot be set up is logged and left out (the
/// config parser has checked the secret already).
pub fn start(
    webhooks: Vec<WebhookConfig>,
    events: &EventSink,
    shutdown: CancellationToken,
) -> Alerts {
    let mut running = Alerts::default();
    for cfg in webhooks {
        let key = match cfg
            .secret
            .as_ref()
            .map(|s| sign::key(s.expose()))
            .transpose()
        {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(webhook = %cfg.name, error = %e, "webhook disabled: unusable secret");
                continue;
            }
        };
        let client = match reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pgwarden/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(webhook = %cfg.name, error = %e, "webhook disabled: no HTTP client");
                continue;
            }
        };
        let stats = Arc::new(Stats::default());
        let cfg = Arc::new(cfg);
        let queue = deliver::spawn(cfg.clone(), key, client, stats.clone(), shutdown.clone());
        tracing::info!(webhook = %cfg.name, url = %redacted_url(&cfg.url), events = ?cfg.events.iter().map(|f| f.name()).collect::<Vec<_>>(), "webhook alerts on");
        tokio::spawn(dispatch(
            cfg.clone(),
            events.subscribe(),
            queue,
            shutdown.clone(),
        ));
        running.webhooks.push((cfg.name.clone(), stats));
    }
    running
}

/// Reads the event stream for one webhook: its alerts, collapsed, formatted, queued.
async fn dispatch(
    cfg: Arc<WebhookConfig>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<crate::approval::events::Emitted>>,
    mut queue: deliver::Queue,
    shutdown: CancellationToken,
) {
    let mut collapser = collapse::Collapser::new(cfg.collapse_window);
    let send = |queue: &mut deliver::Queue, alerts: Vec<alert::Alert>| {
        for a in alerts {
            queue.push(deliver::Delivery {
                id: sign::message_id(),
                body: format::body(cfg.format, &a).into(),
            });
        }
    };
    loop {
        let deadline = collapser.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                let due = collapser.flush(tokio::time::Instant::now());
                send(&mut queue, due);
            }
            r = rx.recv() => match r {
                Ok(e) => {
                    let Some(a) = alert::alert_for(&e) else { continue };
                    if cfg.events.contains(&a.filter) {
                        let out = collapser.offer(a, tokio::time::Instant::now());
                        send(&mut queue, out);
                    }
                }
                Err(RecvError::Lagged(n)) => queue.dropped(n, "webhook dispatcher fell behind the event stream: events dropped"),
                Err(RecvError::Closed) => break,
            },
        }
    }
    let owed = collapser.drain();
    if !owed.is_empty() {
        tracing::info!(webhook = %cfg.name, summaries = owed.len(), "shutting down: summaries of collapsed repeats not sent");
    }
}

/// `url`'s scheme, host and port only: its path, query or user info may be a credential
/// (a Slack webhook URL is one).
fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "<invalid>".into(),
    }
}
