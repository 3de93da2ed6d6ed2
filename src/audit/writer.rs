//! The audit writer: one OS thread that owns the log file. Records arrive on a channel;
//! whatever has queued up while the last group was being synced is written and synced as the
//! next group (group commit, bounded by [`MAX_GROUP`] records and by one sync), and only then
//! is each record acknowledged with its sequence number. A failed write is cut back off the
//! file and every record of its group is answered with the error (the statements waiting on
//! them are refused); the next group tries again. Files rotate by size with the chain going
//! on; signed checkpoints are written periodically and whenever the log goes idle.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::chain::{seal, GENESIS};
use super::checkpoint::Checkpoint;
use super::{Settings, Shared};
use crate::approval::events::{Event, EventSink};
use crate::telemetry as m;

/// The most records written and synced as one group.
pub const MAX_GROUP: usize = 512;

pub(super) enum Request {
    Record {
        payload: Map<String, Value>,
        ack: Option<oneshot::Sender<Result<u64, String>>>,
    },
    /// Answered once everything sent before it is written (and a checkpoint made).
    Flush(oneshot::Sender<()>),
}

/// Where the chain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub log_id: String,
    pub seq: u64,
    pub hash: String,
}

pub(super) struct Writer {
    settings: Settings,
    shared: std::sync::Arc<Shared>,
    events: EventSink,
    key: SigningKey,
    file: Option<File>,
    /// Bytes in the active file that are known written (a failed write is cut back to it).
    size: u64,
    head: Head,
    /// The seq of the last checkpoint, and when it was made.
    checkpointed: u64,
    last_checkpoint: Instant,
    failing: bool,
}

impl Writer {
    /// Opens the active file and finds the head of the chain (in it, or in the newest rotated
    /// file), cutting off a torn last line a crash left.
    pub(super) fn open(
        settings: Settings,
        shared: std::sync::Arc<Shared>,
        events: EventSink,
        key: SigningKey,
    ) -> std::io::Result<(Writer, Option<u64>)> {
        let path = &settings.file;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let regular = file.metadata()?.is_file();
        let mut discarded = None;
        let mut head = None;
        let mut size = 0;
        if regular {
            let (h, good, len) = scan(path)?;
            if good < len {
                // A write cut short: it was never acknowledged.
                file.set_len(good)?;
                file.sync_all()?;
                discarded = Some(len - good);
                tracing::warn!(file = %path.display(), bytes = len - good, "audit log: incomplete last line removed");
            }
            size = good;
            head = h;
            if head.is_none() {
                if let Some(prev) = newest_rotated(path) {
                    head = scan(&prev)?.0;
                }
            }
        }
        let head = head.unwrap_or_else(|| Head {
            log_id: new_log_id(),
            seq: 0,
            hash: GENESIS.to_owned(),
        });
        let checkpointed = last_checkpoint_seq(&settings.checkpoints, &head.log_id);
        Ok((
            Writer {
                settings,
                shared,
                events,
                key,
                file: Some(file),
                size,
                checkpointed,
                last_checkpoint: Instant::now(),
                head,
                failing: false,
            },
            discarded,
        ))
    }

    pub(super) fn head(&self) -> &Head {
        &self.head
    }

    pub(super) fn run(mut self, rx: Receiver<Request>) {
        loop {
            let first = match rx.recv_timeout(self.settings.checkpoint_idle) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.write_group(group);
            if self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
                self.checkpoint();
            }
        }
        self.checkpoint();
    }

    fn write_group(&mut self, group: Vec<Request>) {
        let started = Instant::now();
        let mut buf = String::new();
        let mut acks = Vec::new();
        let mut flushes = Vec::new();
        let mut written = Vec::new();
        let mut head = self.head.clone();
        for r in group {
            match r {
                Request::Record { mut payload, ack } => {
                    head.seq += 1;
                    payload.insert("log_id".into(), Value::String(head.log_id.clone()));
                    payload.insert("seq".into(), Value::from(head.seq));
                    payload.insert(
                        "ts".into(),
                        Value::String(jiff::Timestamp::now().to_string()),
                    );
                    payload.insert("prev_hash".into(), Value::String(head.hash.clone()));
                    let kind = super::live_kind(&payload);
                    let (line, hash) = seal(payload);
                    head.hash = hash;
                    buf.push_str(&line);
                    buf.push('\n');
                    acks.push((head.seq, ack));
                    written.push(super::Written {
                        seq: head.seq,
                        kind,
                        line,
                    });
                }
                Request::Flush(done) => flushes.push(done),
            }
        }
        if !acks.is_empty() {
            match self.append(buf.as_bytes()) {
                Ok(()) => {
                    self.head = head;
                    metrics::histogram!(m::AUDIT_WRITE_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!(m::AUDIT_RECORDS_TOTAL).increment(acks.len() as u64);
                    if self.failing {
                        self.failing = false;
                        self.shared.set_failing(None);
                        tracing::warn!(file = %self.settings.file.display(), "audit log written again");
                        self.events.emit(Event::AuditSinkRecovered);
                    }
                    for (seq, ack) in acks {
                        if let Some(a) = ack {
                            let _ = a.send(Ok(seq));
                        }
                    }
                    for w in written {
                        self.shared.publish(w);
                    }
                    self.rotate_if_full();
                }
                Err(e) => {
                    let msg = e.to_string();
                    metrics::counter!(m::AUDIT_WRITE_FAILURES_TOTAL).increment(1);
                    let lost = acks.iter().filter(|(_, a)| a.is_none()).count();
                    tracing::error!(file = %self.settings.file.display(), error = %msg, records = acks.len(), unacknowledged_records_lost = lost, "audit log write failed");
                    // Failing is said before anyone hears of the failure.
                    if !self.failing {
                        self.failing = true;
                        self.shared.set_failing(Some(msg.clone()));
                        self.events
                            .emit(Event::AuditSinkFailing { error: msg.clone() });
                    }
                    for (_, ack) in acks {
                        if let Some(a) = ack {
                            let _ = a.send(Err(msg.clone()));
                        }
                    }
                }
            }
        }
        if !flushes.is_empty() {
            self.checkpoint();
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    /// Appends and syncs `bytes`; on failure cuts the file back to what was there.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = open_append(&self.settings.file)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened");
        let r = f.write_all(bytes).and_then(|()| f.sync_data());
        match r {
            Ok(()) => {
                self.size += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if f.metadata().is_ok_and(|md| md.is_file()) && f.set_len(self.size).is_err() {
                    // The file cannot even be cut back: reopen next time.
                    self.file = None;
                }
                Err(e)
            }
        }
    }

    fn rotate_if_full(&mut self) {
        let regular = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|md| md.is_file());
        if !regular || self.size < self.settings.max_file_size {
            return;
        }
        let path = &self.settings.file;
        let next = rotated_name(path, newest_rotated_index(path) + 1);
        if let Err(e) = std::fs::rename(path, &next) {
            tracing::error!(file = %path.display(), error = %e, "audit log rotation failed; writing on");
            return;
        }
        self.file = None;
        self.size = 0;
        match open_append(path) {
            Ok(f) => {
                self.file = Some(f);
                sync_dir(path);
                tracing::info!(rotated = %next.display(), "audit log rotated");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "audit log: new file could not be opened after rotation")
            }
        }
    }

    /// Signs the head, when records came since the last checkpoint.
    fn checkpoint(&mut self) {
        if self.head.seq == self.checkpointed {
            return;
        }
        let ts = jiff::Timestamp::now().to_string();
        let cp = Checkpoint::sign(
            &self.key,
            &self.head.log_id,
            self.head.seq,
            &self.head.hash,
            &ts,
        );
        let r = open_append(&self.settings.checkpoints).and_then(|mut f| {
            f.write_all(format!("{}\n", cp.line()).as_bytes())?;
            f.sync_data()
        });
        self.last_checkpoint = Instant::now();
        match r {
            Ok(()) => {
                self.checkpointed = self.head.seq;
                self.events.emit(Event::AuditCheckpoint {
                    log_id: cp.log_id,
                    seq: cp.seq,
                    hash: cp.hash,
                    signature: cp.signature,
                });
            }
            Err(e) => {
                metrics::counter!(m::AUDIT_WRITE_FAILURES_TOTAL).increment(1);
                tracing::error!(file = %self.settings.checkpoints.display(), error = %e, "audit checkpoint could not be written");
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// The last record's head, the length up to the end of the last complete line, and the
/// file's length.
fn scan(path: &Path) -> std::io::Result<(Option<Head>, u64, u64)> {
    let mut f = File::open(path)?;
    let len = f.seek(std::io::SeekFrom::End(0))?;
    f.rewind()?;
    let mut r = BufReader::new(f);
    let mut good = 0u64;
    let mut last: Option<Vec<u8>> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        good += n as u64;
        last = Some(std::mem::take(&mut line));
    }
    let head = match last {
        None => None,
        Some(l) => Some(head_of(&l).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: the last line is not an audit record; move the file aside to start a new log",
                    path.display()
                ),
            )
        })?),
    };
    Ok((head, good, len))
}

fn head_of(line: &[u8]) -> Option<Head> {
    let v: Value = serde_json::from_slice(line).ok()?;
    Some(Head {
        log_id: v.get("log_id")?.as_str()?.to_owned(),
        seq: v.get("seq")?.as_u64()?,
        hash: v.get("hash")?.as_str()?.to_owned(),
    })
}

fn new_log_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    hex::encode(b)
}

/// `FILE.000001`, ...: rotated files sort in chain order.
pub fn rotated_name(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n:06}"));
    PathBuf::from(s)
}

fn newest_rotated_index(path: &Path) -> u64 {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let rest = n.strip_prefix(&prefix)?;
            (rest.len() == 6)
                .then(|| rest.parse::<u64>().ok())
                .flatten()
        })
        .max()
        .unwrap_or(0)
}

fn newest_rotated(path: &Path) -> Option<PathBuf> {
    match newest_rotated_index(path) {
        0 => None,
        n => Some(rotated_name(path, n)),
    }
}

/// The seq of the newest checkpoint of `log_id` already in the file (0: none).
fn last_checkpoint_seq(path: &Path, log_id: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Checkpoint>(l).ok())
        .filter(|c| c.log_id == log_id)
        .map(|c| c.seq)
        .max()
        .unwrap_or(0)
}

/// How long to wait for the writer's answer before a statement is refused anyway.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
