//! The one typed event stream of a pgwarden instance: decisions, hold and ticket lifecycle,
//! break-glass uses, policy reloads. Emitting never blocks and never waits for a reader
//! (a broadcast channel: a reader that falls behind is told how much it missed); the
//! audit log, alerts, metrics and the live API subscribe to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use super::model::{Hold, Review, Ticket};
use crate::policy::Action;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Decision {
        session: u64,
        user: String,
        database: String,
        action: Action,
        rules: Vec<String>,
        tags: Vec<String>,
        policy_version: String,
        ticket: Option<String>,
        break_glass: bool,
        /// The statement was refused (else forwarded).
        refused: bool,
    },
    HoldOpened {
        hold: Hold,
    },
    /// An approval was given; `hold.status` is `approved` once it has enough of them.
    HoldApproved {
        hold: Hold,
    },
    /// Denied by an approver, or revoked by an admin.
    HoldDenied {
        hold: Hold,
    },
    HoldExpired {
        hold: Hold,
    },
    HoldWithdrawn {
        hold: Hold,
    },
    TicketCreated {
        ticket: Ticket,
    },
    /// An approval was given; `ticket.status` is `approved` once it has enough of them.
    TicketApproved {
        ticket: Ticket,
    },
    TicketRejected {
        ticket: Ticket,
    },
    TicketRevoked {
        ticket: Ticket,
    },
    TicketExpired {
        ticket: Ticket,
    },
    /// A statement ran under the ticket (`ticket.uses` counts it); session 0: not a session.
    TicketUsed {
        ticket: Ticket,
        session: u64,
    },
    BreakGlassUsed {
        review: Review,
    },
    PolicyReloaded {
        version: String,
        ok: bool,
        error: Option<String>,
    },
    /// The policy the instance started with.
    PolicyLoaded {
        version: String,
    },
    /// A client session was authenticated and is ready.
    SessionStarted {
        session: u64,
        user: String,
        database: String,
        application_name: Option<String>,
        client_addr: Option<String>,
        tls: bool,
    },
    /// A session that started ended (`reason` says how).
    SessionEnded {
        session: u64,
        user: String,
        database: String,
        reason: String,
        duration_ms: u64,
    },
    /// The audit log cannot be written: statements it must record are refused.
    AuditSinkFailing {
        error: String,
    },
    /// The audit log is written again.
    AuditSinkRecovered,
    /// A signed checkpoint of the audit log's head was written.
    AuditCheckpoint {
        log_id: String,
        seq: u64,
        hash: String,
        signature: String,
    },
    /// pgwarden could not reach the PostgreSQL server for a client.
    UpstreamDown {
        error: String,
    },
}

impl Event {
    /// The event's type name as it appears in JSON (`hold_opened`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Decision { .. } => "decision",
            Event::HoldOpened { .. } => "hold_opened",
            Event::HoldApproved { .. } => "hold_approved",
            Event::HoldDenied { .. } => "hold_denied",
            Event::HoldExpired { .. } => "hold_expired",
            Event::HoldWithdrawn { .. } => "hold_withdrawn",
            Event::TicketCreated { .. } => "ticket_created",
            Event::TicketApproved { .. } => "ticket_approved",
            Event::TicketRejected { .. } => "ticket_rejected",
            Event::TicketRevoked { .. } => "ticket_revoked",
            Event::TicketExpired { .. } => "ticket_expired",
            Event::TicketUsed { .. } => "ticket_used",
            Event::BreakGlassUsed { .. } => "break_glass_used",
            Event::PolicyReloaded { .. } => "policy_reloaded",
            Event::PolicyLoaded { .. } => "policy_loaded",
            Event::SessionStarted { .. } => "session_started",
            Event::SessionEnded { .. } => "session_ended",
            Event::AuditSinkFailing { .. } => "audit_sink_failing",
            Event::AuditSinkRecovered => "audit_sink_recovered",
            Event::AuditCheckpoint { .. } => "audit_checkpoint",
            Event::UpstreamDown { .. } => "upstream_down",
        }
    }
}

/// An event as emitted: numbered in this instance's order, with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Emitted {
    pub seq: u64,
    pub at: jiff::Timestamp,
    #[serde(flatten)]
    pub event: Event,
}

/// Readers that fall further behind than this miss events (and are told how many).
const CAPACITY: usize = 4096;

/// Called with every event as it is emitted, before readers see it (the audit log's way in:
/// it must not miss events a lagging reader would).
pub type Tap = Box<dyn Fn(&Emitted) + Send + Sync>;

/// A cheap-clone handle: every part of pgwarden emits through it.
#[derive(Clone)]
pub struct EventSink {
    tx: broadcast::Sender<Arc<Emitted>>,
    seq: Arc<AtomicU64>,
    tap: Arc<std::sync::OnceLock<Tap>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("tapped", &self.tap.get().is_some())
            .finish()
    }
}

impl Default for EventSink {
    fn default() -> Self {
        Self::new()
    }
}

impl EventSink {
    pub fn new() -> Self {
        EventSink {
            tx: broadcast::channel(CAPACITY).0,
            seq: Arc::new(AtomicU64::new(0)),
            tap: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Sets the tap (once; a second is ignored).
    pub fn set_tap(&self, tap: Tap) {
        let _ = self.tap.set(tap);
    }

    /// Emits `e`; never blocks (with no subscriber the event is only logged at debug level).
    pub fn emit(&self, event: Event) {
        tracing::debug!(event = event.kind(), "event");
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let e = Arc::new(Emitted {
            seq,
            at: jiff::Timestamp::now(),
            event,
        });
        if let Some(tap) = self.tap.get() {
            tap(&e);
        }
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Emitted>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_see_events_in_order_and_emitting_never_waits() {
        let sink = EventSink::new();
        // No subscriber: nothing blocks, nothing fails.
        sink.emit(Event::PolicyReloaded {
            version: "a".into(),
            ok: true,
            error: None,
        });
        let mut rx = sink.subscribe();
        for v in ["b", "c"] {
            sink.emit(Event::PolicyReloaded {
                version: v.into(),
                ok: true,
                error: None,
            });
        }
        let first = rx.try_recv().unwrap();
        let second = rx.try_recv().unwrap();
        assert_eq!((first.seq, second.seq), (2, 3));
        let json = serde_json::to_value(&*second).unwrap();
        assert_eq!(json["type"], "policy_reloaded");
        assert_eq!(json["version"], "c");
    }
}
