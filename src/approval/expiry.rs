//! The expiry task: one task that sleeps until the next deadline (a pending hold's timeout,
//! a ticket's `valid_until`) or until woken (a hold opened, a ticket created), then ends
//! what is due. Hold deadlines are tokio `Instant`s (so `tokio::time::pause()` drives them);
//! ticket deadlines are wall-clock, re-read at least every [`RECHECK`] so a wall clock that
//! jumps is followed. A ticket past `valid_until` covers nothing even before this task marks
//! it expired ([`super::cover`] checks the time itself).

use std::sync::{Arc, Weak};
use std::time::Duration;

use jiff::SignedDuration;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::events::Event;
use super::{lifecycle, lock, ApprovalError, Approvals, HoldStatus, Shared};

/// The longest sleep: how soon a wall-clock jump is noticed.
pub const RECHECK: Duration = Duration::from_secs(30);
/// The wait before trying again after the store failed.
const RETRY: Duration = Duration::from_secs(1);
/// How long after its deadline a hold another instance opened is expired here.
pub const FOREIGN_GRACE: Duration = Duration::from_secs(30);

impl Approvals {
    /// Background task: expires pending holds at their timeout and tickets at valid_until
    /// (status -> expired, event emitted); holds wake their waiting session. It ends when
    /// the last handle is dropped.
    pub fn spawn_expiry(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        let wake = self.shared.wake.clone();
        tokio::spawn(run(weak, wake))
    }
}

async fn run(weak: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let next = expire_due(shared).await;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Ends what is due; returns when to look again.
async fn expire_due(shared: Arc<Shared>) -> Instant {
    let start = Instant::now();
    let (due, next_hold) = {
        let live = lock(&shared.live);
        let due: Vec<u64> = live
            .iter()
            .filter(|(_, l)| l.deadline <= start)
            .map(|(id, _)| *id)
            .collect();
        let next = live
            .values()
            .map(|l| l.deadline)
            .filter(|d| *d > start)
            .min();
        (due, next)
    };
    let now = shared.clock.now();
    let done = tokio::task::spawn_blocking(move || expire_in_store(&shared, &due, now)).await;
    let mut next = start + RECHECK;
    match done {
        Ok(Ok(ticket)) => {
            if let Some(d) = ticket {
                let d = Duration::try_from(d.max(SignedDuration::ZERO)).unwrap_or(RECHECK);
                next = next.min(Instant::now() + d);
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "expiring holds and tickets failed");
            return Instant::now() + RETRY;
        }
        Err(e) => {
            tracing::error!(error = %e, "the expiry pass did not finish");
            return Instant::now() + RETRY;
        }
    }
    next_hold.map_or(next, |h| next.min(h))
}

/// Expires holds `due` and the tickets due at `now`; returns how long until the next
/// ticket's `valid_until`.
fn expire_in_store(
    s: &Shared,
    due: &[u64],
    now: jiff::Timestamp,
) -> Result<Option<SignedDuration>, ApprovalError> {
    let mut failed = None;
    for &id in due {
        let r = s.change_hold(id, |hold| Event::HoldExpired { hold }, &mut |h| {
            lifecycle::expire_hold(h, now)
        });
        match r {
            Ok(_) => {}
            // It ended some other way that its watcher has not seen (another process):
            // show the stored state.
            Err(ApprovalError::Refused(_)) => s.resync(id)?,
            Err(e) => {
                // Its session hears now (no approval can be given after the deadline);
                // the store hears on a later pass.
                s.expire_unrecorded(id, now, &e);
                failed = Some(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    // Holds other instances opened and did not end (an instance that stopped for good):
    // expired by whoever sees them first, a grace period after their deadline.
    let grace = SignedDuration::try_from(FOREIGN_GRACE).unwrap_or(SignedDuration::ZERO);
    let overdue = now.checked_sub(grace).unwrap_or(now);
    for id in s.store.holds_overdue(overdue)? {
        if lock(&s.live).contains_key(&id) {
            continue;
        }
        match s.change_hold(id, |hold| Event::HoldExpired { hold }, &mut |h| {
            lifecycle::expire_hold(h, now)
        }) {
            Ok(_) | Err(ApprovalError::Refused(_)) => {}
            Err(e) => return Err(e),
        }
    }
    for id in s.store.tickets_due(now)? {
        let _w = lock(&s.writes);
        match s
            .store
            .update_ticket(&id, &mut |t| lifecycle::expire_ticket(t, now))
        {
            Ok(ticket) => s.events.emit(Event::TicketExpired { ticket }),
            Err(ApprovalError::Refused(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(s.store
        .next_ticket_deadline()?
        .map(|t| now.duration_until(t)))
}

impl Shared {
    /// Tells the session waiting on hold `id` that it expired at `now`, while the store,
    /// failing with `e`, cannot record that; the hold stays due, so the next pass records
    /// it (with its event).
    fn expire_unrecorded(&self, id: u64, now: jiff::Timestamp, e: &ApprovalError) {
        let mut live = lock(&self.live);
        let Some(l) = live.get_mut(&id) else {
            return;
        };
        if l.expired_unrecorded {
            return;
        }
        let mut h = l.tx.borrow().clone();
        if lifecycle::expire_hold(&mut h, now).is_ok() {
            h.reason = Some(format!(
                "nobody approved or denied it before it expired (not yet recorded: {e})"
            ));
            tracing::error!(hold = id, error = %e, "a hold expired while the state store cannot record it; its session is told, the store will be");
            l.tx.send_replace(h);
            l.expired_unrecorded = true;
        }
    }

    /// Shows hold `id`'s stored state to its watcher, and forgets it once it has ended.
    pub(super) fn resync(&self, id: u64) -> Result<(), ApprovalError> {
        let stored = self.store.hold(id)?;
        let mut live = lock(&self.live);
        match stored {
            Some(h) if h.status == HoldStatus::Pending => {
                // Approvals given through another instance, not yet enough.
                if let Some(l) = live.get(&id) {
                    if !l.expired_unrecorded && l.tx.borrow().approvals != h.approvals {
                        l.tx.send_replace(h);
                    }
                }
            }
            Some(h) => {
                if let Some(l) = live.remove(&id) {
                    l.tx.send_replace(h);
                }
            }
            None => {
                live.remove(&id);
            }
        }
        Ok(())
    }
}
