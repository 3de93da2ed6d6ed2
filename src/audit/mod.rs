//! The tamper-evident audit log: every recorded statement's decision is written and synced
//! before the statement is forwarded, its outcome after the server answered, and the
//! lifecycle events (sessions, policy, tickets, holds, break-glass) as they happen. Records
//! are JSON Lines in a hash chain ([`chain`]), with signed checkpoints of the head
//! ([`checkpoint`]) in a second file; [`verify`] names the first broken record.
//!
//! ```text
//! session gate ──append(record) + ack──▶ writer thread ──group write + fdatasync──▶ FILE
//! EventSink tap ──append_nowait──────────▶      │ rotate FILE → FILE.000001 …
//!                                               └─ checkpoints (ed25519) ──▶ FILE.checkpoints
//! ```

pub mod chain;
pub mod checkpoint;
pub mod record;
pub mod verify;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{broadcast, oneshot};

use crate::approval::events::EventSink;
use crate::config::{Audit as AuditConfig, AuditOnFailure};
use crate::sql::Class;

pub use writer::{rotated_name, Head, ACK_TIMEOUT, MAX_GROUP};

/// About how many bytes of records one catch-up of a live reader holds.
pub const BACKLOG_BYTES: usize = 1 << 20;

/// The writer's settings, resolved from `[audit]` and the state dir.
#[derive(Debug, Clone)]
pub struct Settings {
    pub file: PathBuf,
    pub checkpoints: PathBuf,
    pub signing_key: PathBuf,
    pub max_file_size: u64,
    pub checkpoint_interval: Duration,
    pub checkpoint_idle: Duration,
}

/// What the writer and the readiness check share: whether the log is failing, and why; and
/// the records as they are synced, for live readers (`GET /api/events`).
#[derive(Debug)]
pub struct Shared {
    failing: AtomicBool,
    error: Mutex<Option<String>>,
    written: broadcast::Sender<Arc<Written>>,
}

/// A record as written: its seq, its live-event type, and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub seq: u64,
    pub kind: String,
    pub line: String,
}

impl Written {
    /// Reads a line of the log (`None`: not a record).
    pub fn parse(line: &str) -> Option<Written> {
        let v: Value = serde_json::from_str(line).ok()?;
        Some(Written {
            seq: v.get("seq")?.as_u64()?,
            kind: live_kind(v.as_object()?),
            line: line.to_owned(),
        })
    }
}

/// The live-event type of a record: its `type`, except that a refused statement is
/// `refused`.
pub fn live_kind(v: &Map<String, Value>) -> String {
    let t = v.get("type").and_then(Value::as_str).unwrap_or("unknown");
    let refused = v.get("decision").and_then(|d| d.get("refused")) == Some(&Value::Bool(true));
    if t == "statement" && refused {
        "refused".into()
    } else {
        t.into()
    }
}

impl Shared {
    fn new() -> Shared {
        Shared {
            failing: AtomicBool::new(false),
            error: Mutex::new(None),
            written: broadcast::channel(4096).0,
        }
    }

    fn publish(&self, w: Written) {
        if self.written.receiver_count() > 0 {
            let _ = self.written.send(Arc::new(w));
        }
    }

    fn set_failing(&self, error: Option<String>) {
        self.failing.store(error.is_some(), Ordering::Release);
        *self.error.lock().expect("not poisoned") = error;
    }
}

/// A cheap-clone handle on the running audit log.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<writer::Request>,
    shared: Arc<Shared>,
    record: Arc<Vec<Class>>,
    pub redact_literals: bool,
    pub on_failure: AuditOnFailure,
    /// The public half of the checkpoint signing key (hex).
    pub public_key: String,
    /// The active file (rotated ones are `FILE.000001`, ...).
    pub file: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("failing", &self.failing())
            .finish()
    }
}

impl AuditLog {
    /// Opens the log of `cfg` (which has a file), starts its writer thread, and taps `events`
    /// so lifecycle events are recorded.
    pub fn start(
        cfg: &AuditConfig,
        state_dir: &std::path::Path,
        events: &EventSink,
    ) -> std::io::Result<AuditLog> {
        let file = cfg
            .file
            .clone()
            .ok_or_else(|| std::io::Error::other("no audit file configured"))?;
        let settings = Settings {
            checkpoints: cfg.checkpoints_path().expect("a file is set"),
            signing_key: cfg
                .signing_key
                .clone()
                .unwrap_or_else(|| state_dir.join("audit-signing.key")),
            file,
            max_file_size: cfg.max_file_size,
            checkpoint_interval: cfg.checkpoint_interval,
            checkpoint_idle: cfg.checkpoint_idle,
        };
        let key = checkpoint::load_or_create_key(&settings.signing_key)?;
        let public_key = hex::encode(key.verifying_key().as_bytes());
        let shared = Arc::new(Shared::new());
        let (w, discarded) =
            writer::Writer::open(settings.clone(), shared.clone(), events.clone(), key)?;
        tracing::info!(file = %settings.file.display(), checkpoints = %settings.checkpoints.display(), log_id = %w.head().log_id, seq = w.head().seq, public_key = %public_key, "audit log open");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pgwarden-audit".into())
            .spawn(move || w.run(rx))?;
        let log = AuditLog {
            tx,
            shared,
            record: Arc::new(cfg.record.clone()),
            redact_literals: cfg.redact_literals,
            on_failure: cfg.on_failure,
            public_key,
            file: settings.file.clone(),
        };
        if let Some(n) = discarded {
            let mut p = Map::new();
            p.insert("type".into(), Value::String("log_recovered".into()));
            p.insert("discarded_bytes".into(), Value::from(n));
            log.append_nowait(p);
        }
        let tap = log.clone();
        events.set_tap(Box::new(move |e| {
            if let Some(p) = record::event_payload(&e.event) {
                tap.append_nowait(p);
            }
        }));
        Ok(log)
    }

    /// Whether statements of these classes are recorded before they run.
    pub fn records_class(&self, classes: impl IntoIterator<Item = Class>) -> bool {
        classes.into_iter().any(|c| self.record.contains(&c))
    }

    /// Appends a record; the answer (its seq, or the write error) comes once it is synced.
    pub fn append(&self, payload: Map<String, Value>) -> oneshot::Receiver<Result<u64, String>> {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(writer::Request::Record {
                payload,
                ack: Some(tx),
            })
            .is_err()
        {
            tracing::error!("audit writer stopped: record not written");
        }
        rx
    }

    /// Appends a record nobody waits for (a failure to write it is counted and logged).
    pub fn append_nowait(&self, payload: Map<String, Value>) {
        if self
            .tx
            .send(writer::Request::Record { payload, ack: None })
            .is_err()
        {
            tracing::error!("audit writer stopped: record not written");
        }
    }

    /// Waits until everything appended so far is written and a checkpoint signed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(writer::Request::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Records as they are synced, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Written>> {
        self.shared.written.subscribe()
    }

    /// Records already written with a seq above `after`, oldest first (rotated files are read
    /// from the first one that may hold them), at most `limit` of them and about
    /// [`BACKLOG_BYTES`]; `true` with them when more remain. Blocking file IO: call from a
    /// blocking task.
    pub fn backlog(&self, after: u64, limit: usize) -> (Vec<Written>, bool) {
        let mut files: Vec<PathBuf> = (1..)
            .map(|n| rotated_name(&self.file, n))
            .take_while(|p| p.exists())
            .collect();
        files.push(self.file.clone());
        // Skip whole rotated files that end before `after`.
        let mut start = 0;
        for (i, f) in files.iter().enumerate().rev() {
            let first = std::fs::File::open(f).ok().and_then(|f| {
                use std::io::BufRead;
                let mut l = String::new();
                std::io::BufReader::new(f).read_line(&mut l).ok()?;
                Written::parse(l.trim_end()).map(|w| w.seq)
            });
            if first.is_some_and(|s| s <= after + 1) {
                start = i;
                break;
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for f in &files[start..] {
            use std::io::BufRead;
            let Ok(file) = std::fs::File::open(f) else {
                continue;
            };
            // Line by line: a reader catching up never holds more than `limit` records.
            for l in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                if let Some(w) = Written::parse(&l).filter(|w| w.seq > after) {
                    bytes += w.line.len();
                    out.push(w);
                    if out.len() >= limit || bytes >= BACKLOG_BYTES {
                        return (out, true);
                    }
                }
            }
        }
        (out, false)
    }

    /// The last write error while the log is failing.
    pub fn failing(&self) -> Option<String> {
        if !self.shared.failing.load(Ordering::Acquire) {
            return None;
        }
        self.shared.error.lock().expect("not poisoned").clone()
    }
}

#[cfg(test)]
mod tests;
