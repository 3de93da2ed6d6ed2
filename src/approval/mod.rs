//! Change management: tickets, holds, approvals and break-glass reviews ([`model`]), the
//! rules that change them ([`lifecycle`]), the durable store that keeps them ([`store`]),
//! whether a ticket covers a statement ([`cover`]), and the typed event stream
//! ([`events`]) every part of pgwarden emits through.
//!
//! [`Approvals`] is the cheap-clone handle the sessions and the admin API share. Every
//! store call runs on the blocking pool, together with the event it emits and the wake-up
//! of the session waiting on a hold, so a caller that gives up half-way (a dropped future)
//! never leaves a change done but unannounced. Changes go through one writer lock (a std
//! mutex, never held across `.await`), so events come out in the order of the writes.
//! Sessions waiting on a hold watch it through a [`HoldGuard`]; [`Approvals::spawn_expiry`]
//! ends holds at their timeout and tickets at their `valid_until`.

pub mod cover;
pub mod events;
mod expiry;
mod guard;
pub mod lifecycle;
pub mod model;
mod remote;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub use cover::{cover, Presented, Shown, Uncovered};
pub use guard::HoldGuard;
pub use model::{
    Actor, Approval, HeldRule, Hold, HoldStatus, NewHold, NewReview, NewTicket, Refused, Requester,
    Review, Role, Scope, Ticket, TicketStatus,
};

use events::{Event, EventSink};
use store::{PgStore, PgTarget, SqliteStore, Store};

pub type Result<T> = std::result::Result<T, ApprovalError>;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The request is refused: 404, 403, 409 or 400 by variant.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The state store failed (our side).
    #[error("state store: {0}")]
    Store(String),
}

impl ApprovalError {
    /// The HTTP status the admin API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ApprovalError::Refused(Refused::NotFound(_)) => 404,
            ApprovalError::Refused(Refused::Forbidden(_)) => 403,
            ApprovalError::Refused(Refused::Conflict(_)) => 409,
            ApprovalError::Refused(Refused::Invalid(_)) => 400,
            ApprovalError::Store(_) => 500,
        }
    }
}

/// Why a ticket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UseError {
    /// It does not cover the statement (the client's side).
    #[error("{0}")]
    Uncovered(#[from] Uncovered),
    /// The state store failed (our side).
    #[error("state store: {0}")]
    Store(String),
}

/// Why a hold was withdrawn when pgwarden found it pending at start.
pub const RESTARTED: &str = "pgwarden restarted; the session that waited is gone";
/// Why a hold was withdrawn when its guard was dropped.
pub const DISCONNECTED: &str = "the client disconnected";

/// The shared handle. Clone it freely.
#[derive(Clone)]
pub struct Approvals {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").finish_non_exhaustive()
    }
}

struct Shared {
    store: Box<dyn Store>,
    events: EventSink,
    /// Holds of this process still pending: their watchers and deadlines.
    live: Mutex<HashMap<u64, Live>>,
    /// Taken around each change, its event and its wake-up, so they keep the store's order.
    writes: Mutex<()>,
    /// Wakes the expiry task: a hold opened, a ticket changed, the handle is gone.
    wake: Arc<Notify>,
    clock: Clock,
}

struct Live {
    tx: watch::Sender<Hold>,
    deadline: Instant,
    /// Shown to its session as expired while the store could not record that yet.
    expired_unrecorded: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Wall-clock time for records. Tests read it from tokio's (pausable) clock instead.
enum Clock {
    System,
    #[cfg(test)]
    Tokio {
        base: Timestamp,
        at: Instant,
    },
}

impl Clock {
    fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            #[cfg(test)]
            Clock::Tokio { base, at } => lifecycle::after(*base, at.elapsed()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panic elsewhere is no reason
    // to stop.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Approvals {
    /// Opens (creates) the store `<dir>/pgwarden.db`. Holds left pending by an earlier
    /// process are withdrawn ([`RESTARTED`]), each with an event. Starts nothing; call
    /// [`Approvals::spawn_expiry`] from inside a runtime.
    pub fn open(dir: &Path, events: EventSink) -> Result<Approvals> {
        let store = SqliteStore::open(dir)?;
        Approvals::with_store(Box::new(store), events)
    }

    /// Connects to the control schema of a PostgreSQL store shared by several instances
    /// (creating and migrating it); withdraws the holds this instance left pending.
    /// Blocking: call it off the async threads. Then [`Approvals::spawn_remote`] listens
    /// for the other instances' changes.
    pub fn open_postgres(target: PgTarget, events: EventSink) -> Result<Approvals> {
        let store = PgStore::open(target)?;
        Approvals::with_store(Box::new(store), events)
    }

    /// The same over any [`Store`].
    pub fn with_store(store: Box<dyn Store>, events: EventSink) -> Result<Approvals> {
        Approvals::build(store, events, Clock::System)
    }

    /// Records times by tokio's clock, so `tokio::time::pause()` moves them too. Blocking.
    #[cfg(test)]
    fn on_tokio_clock(store: Box<dyn Store>, events: EventSink) -> Result<Approvals> {
        let clock = Clock::Tokio {
            base: Timestamp::now(),
            at: Instant::now(),
        };
        Approvals::build(store, events, clock)
    }

    fn build(store: Box<dyn Store>, events: EventSink, clock: Clock) -> Result<Approvals> {
        let shared = Shared {
            store,
            events,
            live: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
            wake: Arc::new(Notify::new()),
            clock,
        };
        for h in shared.store.own_pending_holds()? {
            let now = shared.clock.now();
            let hold = shared
                .store
                .update_hold(h.id, &mut |h| lifecycle::withdraw_hold(h, RESTARTED, now))?;
            shared.events.emit(Event::HoldWithdrawn { hold });
        }
        Ok(Approvals {
            shared: Arc::new(shared),
        })
    }

    pub fn events(&self) -> &EventSink {
        &self.shared.events
    }

    /// Runs `f` on the blocking pool. A panic in it is re-raised here.
    async fn blocking<T, E>(
        &self,
        f: impl FnOnce(&Shared) -> std::result::Result<T, E> + Send + 'static,
    ) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static + From<StoreGone>,
    {
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || f(&shared)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreGone(e.to_string()).into()),
        }
    }

    fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    // ---- tickets

    /// Creates a ticket (approver or admin); `new.id` or a generated `CHG-<n>`.
    pub async fn create_ticket(&self, new: NewTicket, by: &Actor) -> Result<Ticket> {
        lifecycle::may_create_ticket(by)?;
        if let Some(id) = &new.id {
            lifecycle::validate_ticket_id(id)?;
        }
        let (by, now) = (by.clone(), self.now());
        let ticket = self
            .blocking(move |s| {
                let _w = lock(&s.writes);
                let id = new.id.clone();
                let mut new = Some(new);
                let t = s.store.create_ticket(id.as_deref(), &mut |id| {
                    let new = new.take().unwrap_or_default();
                    lifecycle::new_ticket(new, id, &by, now)
                })?;
                s.events.emit(Event::TicketCreated { ticket: t.clone() });
                Ok::<_, ApprovalError>(t)
            })
            .await?;
        self.shared.wake.notify_one();
        Ok(ticket)
    }

    pub async fn tickets(&self) -> Result<Vec<Ticket>> {
        self.blocking(|s| s.store.tickets()).await
    }

    pub async fn ticket(&self, id: &str) -> Result<Option<Ticket>> {
        let id = id.to_string();
        self.blocking(move |s| s.store.ticket(&id)).await
    }

    /// Approves (may_approve; pending only). The ticket is approved once it has
    /// `approvals_required` approvals; each approval emits `TicketApproved`.
    pub async fn approve_ticket(
        &self,
        id: &str,
        by: &Actor,
        comment: Option<String>,
    ) -> Result<Ticket> {
        let (by, now) = (by.clone(), self.now());
        let mut comment = Some(comment);
        self.change_ticket(
            id,
            |ticket| Event::TicketApproved { ticket },
            move |t| lifecycle::approve_ticket(t, &by, comment.take().flatten(), now),
        )
        .await
    }

    /// Rejects a pending ticket (approver or admin, not one's own).
    pub async fn reject_ticket(&self, id: &str, by: &Actor, reason: String) -> Result<Ticket> {
        let (by, now) = (by.clone(), self.now());
        self.change_ticket(
            id,
            |ticket| Event::TicketRejected { ticket },
            move |t| lifecycle::reject_ticket(t, &by, reason.clone(), now),
        )
        .await
    }

    /// Revokes a pending or approved ticket (admin only).
    pub async fn revoke_ticket(&self, id: &str, by: &Actor, reason: String) -> Result<Ticket> {
        let by = by.clone();
        self.change_ticket(
            id,
            |ticket| Event::TicketRevoked { ticket },
            move |t| lifecycle::revoke_ticket(t, &by, reason.clone()),
        )
        .await
    }

    async fn change_ticket(
        &self,
        id: &str,
        event: fn(Ticket) -> Event,
        mut change: impl FnMut(&mut Ticket) -> std::result::Result<(), Refused> + Send + 'static,
    ) -> Result<Ticket> {
        let id = id.to_string();
        self.blocking(move |s| {
            let _w = lock(&s.writes);
            let t = s.store.update_ticket(&id, &mut change)?;
            s.events.emit(event(t.clone()));
            Ok(t)
        })
        .await
    }

    /// Atomically: loads ticket `id`, runs [`cover`], and if covered counts one use.
    /// Returns the ticket after the use. Its `TicketUsed` event names session 0; a session
    /// uses [`Approvals::use_ticket_in_session`].
    pub async fn use_ticket(
        &self,
        id: &str,
        p: &Presented<'_>,
    ) -> std::result::Result<Ticket, UseError> {
        self.use_or_check(id, p, Some(0)).await
    }

    /// [`Approvals::use_ticket`] with the session the `TicketUsed` event names.
    pub async fn use_ticket_in_session(
        &self,
        id: &str,
        session: u64,
        p: &Presented<'_>,
    ) -> std::result::Result<Ticket, UseError> {
        self.use_or_check(id, p, Some(session)).await
    }

    /// The same check without counting a use (for `pgwarden check --ticket`).
    pub async fn check_ticket(
        &self,
        id: &str,
        p: &Presented<'_>,
    ) -> std::result::Result<Ticket, UseError> {
        self.use_or_check(id, p, None).await
    }

    async fn use_or_check(
        &self,
        id: &str,
        p: &Presented<'_>,
        session: Option<u64>,
    ) -> std::result::Result<Ticket, UseError> {
        // Owned, to cross onto the blocking pool.
        let (id, now, shown) = (id.to_string(), p.now, Shown::of(p));
        self.blocking(move |s| {
            let p = shown.presented(now);
            let mut check = |t: &Ticket| cover(t, &p);
            let Some(session) = session else {
                return s.store.use_ticket(&id, &mut check, 0);
            };
            let _w = lock(&s.writes);
            // One use per statement the ticket lets through.
            let uses = p.fingerprints.len().max(1) as u32;
            let ticket = s.store.use_ticket(&id, &mut check, uses)?;
            s.events.emit(Event::TicketUsed {
                ticket: ticket.clone(),
                session,
            });
            Ok(ticket)
        })
        .await
    }

    // ---- holds

    /// Records a pending hold and returns its guard. Dropping the guard while the hold is
    /// pending withdraws it ([`DISCONNECTED`]); so does dropping this future once the hold
    /// is recorded. The hold expires `new.timeout` from now (tokio time) when the expiry
    /// task runs.
    pub async fn open_hold(&self, new: NewHold) -> Result<HoldGuard> {
        let deadline = Instant::now()
            .checked_add(new.timeout)
            .unwrap_or_else(far_future);
        let (now, this) = (self.now(), self.clone());
        self.blocking(move |s| {
            let w = lock(&s.writes);
            let hold = s.store.insert_hold(lifecycle::new_hold(new, now))?;
            let (tx, rx) = watch::channel(hold.clone());
            lock(&s.live).insert(
                hold.id,
                Live {
                    tx,
                    deadline,
                    expired_unrecorded: false,
                },
            );
            s.events.emit(Event::HoldOpened { hold });
            drop(w);
            s.wake.notify_one();
            Ok(HoldGuard::new(this, rx))
        })
        .await
    }

    pub async fn holds(&self, status: Option<HoldStatus>) -> Result<Vec<Hold>> {
        self.blocking(move |s| s.store.holds(status)).await
    }

    pub async fn hold(&self, id: u64) -> Result<Option<Hold>> {
        self.blocking(move |s| s.store.hold(id)).await
    }

    /// Approves (may_approve, the requester being the hold's database user; pending only).
    /// Approved once it has enough approvals; each approval emits `HoldApproved` and is
    /// shown to the waiting session.
    pub async fn approve_hold(&self, id: u64, by: &Actor, comment: Option<String>) -> Result<Hold> {
        let (by, now) = (by.clone(), self.now());
        let mut comment = Some(comment);
        self.change_hold(
            id,
            |hold| Event::HoldApproved { hold },
            move |h| lifecycle::approve_hold(h, &by, comment.take().flatten(), now),
        )
        .await
    }

    /// Denies (approver or admin, not one's own; pending only) and wakes the session.
    pub async fn deny_hold(&self, id: u64, by: &Actor, reason: String) -> Result<Hold> {
        let (by, now) = (by.clone(), self.now());
        self.change_hold(
            id,
            |hold| Event::HoldDenied { hold },
            move |h| lifecycle::deny_hold(h, &by, reason.clone(), now),
        )
        .await
    }

    /// Admin only: denies without the approver-group and own-hold checks.
    pub async fn revoke_hold(&self, id: u64, by: &Actor, reason: String) -> Result<Hold> {
        let (by, now) = (by.clone(), self.now());
        self.change_hold(
            id,
            |hold| Event::HoldDenied { hold },
            move |h| lifecycle::revoke_hold(h, &by, reason.clone(), now),
        )
        .await
    }

    async fn change_hold(
        &self,
        id: u64,
        event: fn(Hold) -> Event,
        mut change: impl FnMut(&mut Hold) -> std::result::Result<(), Refused> + Send + 'static,
    ) -> Result<Hold> {
        self.blocking(move |s| s.change_hold(id, event, &mut change))
            .await
    }

    // ---- break-glass reviews

    pub async fn record_break_glass(&self, r: NewReview) -> Result<Review> {
        let now = self.now();
        self.blocking(move |s| {
            let _w = lock(&s.writes);
            let review = s.store.insert_review(lifecycle::new_review(r, now))?;
            s.events.emit(Event::BreakGlassUsed {
                review: review.clone(),
            });
            Ok(review)
        })
        .await
    }

    pub async fn reviews(&self, pending_only: bool) -> Result<Vec<Review>> {
        self.blocking(move |s| s.store.reviews(pending_only)).await
    }

    /// Marks a break-glass use reviewed (approver or admin, not the user who used it; once).
    /// No event: the review is a reading of the audit trail, not a change to the database.
    pub async fn mark_reviewed(
        &self,
        id: u64,
        by: &Actor,
        comment: Option<String>,
    ) -> Result<Review> {
        let (by, now) = (by.clone(), self.now());
        let mut comment = Some(comment);
        self.blocking(move |s| {
            let _w = lock(&s.writes);
            s.store.update_review(id, &mut |r| {
                lifecycle::mark_reviewed(r, &by, comment.take().flatten(), now)
            })
        })
        .await
    }
}

impl Shared {
    /// Changes hold `id` in the store, emits `event`, then shows the new state to its
    /// session. Synchronous: also used from `HoldGuard::drop` and the expiry task.
    fn change_hold(
        &self,
        id: u64,
        event: fn(Hold) -> Event,
        change: store::Change<'_, Hold>,
    ) -> Result<Hold> {
        let _w = lock(&self.writes);
        let hold = self.store.update_hold(id, change)?;
        // The event first: whatever the session does once woken comes after it.
        self.events.emit(event(hold.clone()));
        let mut live = lock(&self.live);
        if let Some(l) = live.get(&id) {
            l.tx.send_replace(hold.clone());
            if hold.status != HoldStatus::Pending {
                live.remove(&id);
            }
        }
        Ok(hold)
    }
}

/// The blocking pool went away (the runtime is shutting down).
struct StoreGone(String);

impl From<StoreGone> for ApprovalError {
    fn from(e: StoreGone) -> Self {
        ApprovalError::Store(format!("the store's task did not finish: {}", e.0))
    }
}

impl From<StoreGone> for UseError {
    fn from(e: StoreGone) -> Self {
        UseError::Store(format!("the store's task did not finish: {}", e.0))
    }
}

/// A deadline that never comes (about 30 years ahead, as tokio does).
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86400 * 365 * 30)
}
