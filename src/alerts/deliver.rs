//! Delivery to one webhook: a bounded queue that the dispatcher fills with `try_send` (a
//! full queue drops the alert, counted and logged; nothing upstream ever waits), and one
//! worker task that POSTs each alert in order. Connection errors, timeouts, 5xx and 429 are
//! retried with exponential backoff and full jitter up to `max_attempts`; any other answer
//! ends the alert (2xx delivered, the rest failed). Every attempt is signed afresh (new
//! `webhook-timestamp`) under the alert's one `webhook-id`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::settings::WebhookConfig;
use super::sign;
use crate::telemetry::{ALERT_DELIVERIES_TOTAL, ALERT_QUEUE_DROPS_TOTAL};

/// One alert ready to send: its body and its `webhook-id`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub body: Arc<[u8]>,
}

/// Counters of one webhook, readable while it runs (the Prometheus metrics count the same).
#[derive(Debug, Default)]
pub struct Stats {
    /// Alerts accepted into the queue.
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    /// Alerts given up on (attempts exhausted or a final answer).
    pub failed: AtomicU64,
    /// Attempts that were followed by a retry.
    pub retried: AtomicU64,
    /// Alerts lost before the queue: it was full, or the dispatcher fell behind the event
    /// stream.
    pub dropped: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: u64,
    pub delivered: u64,
    pub failed: u64,
    pub retried: u64,
    pub dropped: u64,
}

impl Stats {
    pub fn counts(&self) -> Counts {
        Counts {
            queued: self.queued.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The sending side of a webhook's queue, as the dispatcher holds it.
pub struct Queue {
    name: String,
    tx: mpsc::Sender<Delivery>,
    stats: Arc<Stats>,
    /// Drops since the last alert that got in (logged once when they start, summed when
    /// they end, so that a flood does not flood the log too).
    dropping: u64,
}

impl Queue {
    /// Queues `d` without waiting; a full (or closed) queue drops it.
    pub fn push(&mut self, d: Delivery) {
        match self.tx.try_send(d) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                if self.dropping > 0 {
                    tracing::warn!(webhook = %self.name, dropped = self.dropping, "webhook queue has room again");
                    self.dropping = 0;
                }
            }
            Err(_) => self.dropped(1, "webhook queue full: alert dropped"),
        }
    }

    /// Counts `n` alerts lost, logging the first of a run at warn.
    pub fn dropped(&mut self, n: u64, why: &'static str) {
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(ALERT_QUEUE_DROPS_TOTAL, "webhook" => self.name.clone()).increment(n);
        if self.dropping == 0 {
            tracing::warn!(webhook = %self.name, dropped = n, "{why}");
        } else {
            tracing::debug!(webhook = %self.name, dropped = n, "{why}");
        }
        self.dropping += n;
    }
}

/// Creates the queue of `cfg` and spawns its worker.
pub fn spawn(
    cfg: Arc<WebhookConfig>,
    key: Option<Vec<u8>>,
    client: reqwest::Client,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Queue {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let queue = Queue {
        name: cfg.name.clone(),
        tx,
        stats: stats.clone(),
        dropping: 0,
    };
    tokio::spawn(worker(cfg, key, client, rx, stats, shutdown));
    queue
}

async fn worker(
    cfg: Arc<WebhookConfig>,
    key: Option<Vec<u8>>,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Delivery>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    loop {
        let d = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => break },
            _ = shutdown.cancelled() => break,
        };
        tokio::select! {
            _ = deliver(&cfg, key.as_deref(), &client, &d, &stats) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    let left = rx.len();
    if left > 0 {
        tracing::warn!(webhook = %cfg.name, undelivered = left, "shutting down with alerts still queued");
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth another try; with the server's Retry-After, if it sent one.
    Retry(String, Option<Duration>),
    Final(String),
}

async fn deliver(
    cfg: &WebhookConfig,
    key: Option<&[u8]>,
    client: &reqwest::Client,
    d: &Delivery,
    stats: &Stats,
) {
    let label = |outcome: &'static str| {
        metrics::counter!(ALERT_DELIVERIES_TOTAL, "webhook" => cfg.name.clone(), "outcome" => outcome)
            .increment(1)
    };
    let attempts = cfg.max_attempts.max(1);
    for attempt in 1..=attempts {
        let why = match once(cfg, key, client, d).await {
            Attempt::Delivered => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                label("delivered");
                tracing::debug!(webhook = %cfg.name, id = %d.id, attempt, "alert delivered");
                return;
            }
            Attempt::Final(why) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                label("failed");
                tracing::warn!(webhook = %cfg.name, id = %d.id, attempt, error = %why, "alert refused by the receiver; not retried");
                return;
            }
            Attempt::Retry(why, after) if attempt < attempts => {
                let wait = after
                    .map(|a| a.min(cfg.backoff_max))
                    .unwrap_or_else(|| backoff(attempt, cfg, random()));
                stats.retried.fetch_add(1, Ordering::Relaxed);
                label("retried");
                tracing::info!(webhook = %cfg.name, id = %d.id, attempt, error = %why, retry_in = ?wait, "alert delivery failed; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            Attempt::Retry(why, _) => why,
        };
        stats.failed.fetch_add(1, Ordering::Relaxed);
        label("failed");
        tracing::warn!(webhook = %cfg.name, id = %d.id, attempts, error = %why, "alert not delivered; giving up");
    }
}

async fn once(
    cfg: &WebhookConfig,
    key: Option<&[u8]>,
    client: &reqwest::Client,
    d: &Delivery,
) -> Attempt {
    let ts = jiff::Timestamp::now().as_second();
    let mut req = client
        .post(&cfg.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", ts.to_string())
        .body(d.body.to_vec());
    if let Some(k) = key {
        req = req.header("webhook-signature", sign::sign(k, &d.id, ts, &d.body));
    }
    match req.send().await {
        Err(e) => Attempt::Retry(error_chain(&e), None),
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                Attempt::Delivered
            } else if status.is_server_error() || status.as_u16() == 429 {
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Attempt::Retry(format!("HTTP {status}"), after)
            } else {
                Attempt::Final(format!("HTTP {status}"))
            }
        }
    }
}

/// reqwest's error with its causes (the top level alone says only "error sending request").
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The wait after failed attempt `attempt` (1-based): uniformly random in
/// `[0, min(backoff_max, backoff_initial · 2^(attempt-1))]` ("full jitter"), `random`
/// being a uniform `u64`.
pub fn backoff(attempt: u32, cfg: &WebhookConfig, random: u64) -> Duration {
    let exp = cfg
        .backoff_initial
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(31));
    let cap = exp.min(cfg.backoff_max);
    let frac = random as f64 / u64::MAX as f64;
    cap.mul_f64(frac)
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_ceiling_with_full_jitter() {
        let mut cfg = WebhookConfig::new("w", "http://x");
        cfg.backoff_initial = Duration::from_millis(500);
        cfg.backoff_max = Duration::from_secs(30);
        let top = |a| backoff(a, &cfg, u64::MAX);
        assert_eq!(top(1), Duration::from_millis(500));
        assert_eq!(top(2), Duration::from_secs(1));
        assert_eq!(top(4), Duration::from_secs(4));
        assert_eq!(top(7), Duration::from_secs(30));
        assert_eq!(top(100), Duration::from_secs(30));
        assert_eq!(backoff(3, &cfg, 0), Duration::ZERO);
        assert_eq!(backoff(3, &cfg, u64::MAX / 2), Duration::from_secs(1));
    }
}
