//! The session's side of a hold: a guard that sees the hold's state as approvers change it,
//! resolves when the hold ends, and withdraws the hold if the session goes away first, so
//! no session ever leaves a pending hold behind.

use tokio::sync::watch;

use super::events::Event;
use super::model::{Hold, HoldStatus, Refused};
use super::{lifecycle, ApprovalError, Approvals, DISCONNECTED};

/// Held by the session while its statement waits.
pub struct HoldGuard {
    approvals: Approvals,
    id: u64,
    rx: watch::Receiver<Hold>,
    /// The hold is known to have ended (or this guard withdrew it): nothing to do on drop.
    settled: bool,
}

impl std::fmt::Debug for HoldGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldGuard")
            .field("id", &self.id)
            .field("status", &self.rx.borrow().status)
            .finish()
    }
}

impl HoldGuard {
    pub(super) fn new(approvals: Approvals, rx: watch::Receiver<Hold>) -> HoldGuard {
        let id = rx.borrow().id;
        HoldGuard {
            approvals,
            id,
            rx,
            settled: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The latest state (approvals so far, or how it ended).
    pub fn hold(&self) -> Hold {
        self.rx.borrow().clone()
    }

    /// Resolves when the hold is no longer pending (approved, denied, expired, withdrawn)
    /// and returns it. Cancel-safe: it only reads the watched state, so it can sit in a
    /// `select!` and be called again.
    pub async fn ended(&mut self) -> Hold {
        loop {
            {
                let h = self.rx.borrow_and_update();
                if h.status != HoldStatus::Pending {
                    return h.clone();
                }
            }
            if self.rx.changed().await.is_err() {
                // The sender goes only after it has sent the final state, or after the
                // store could not be read back; what it sent last is all there is.
                return self.rx.borrow().clone();
            }
        }
    }

    /// The session withdraws the hold (cancel request, shutdown) with `why`. Returns the
    /// final hold: withdrawn, or however it had ended already.
    pub async fn withdraw(mut self, why: &str) -> Hold {
        if self.rx.borrow().status != HoldStatus::Pending {
            self.settled = true;
            return self.hold();
        }
        let (id, why, now) = (self.id, why.to_string(), self.approvals.now());
        let r = self
            .approvals
            .blocking(move |s| {
                s.change_hold(id, |hold| Event::HoldWithdrawn { hold }, &mut |h| {
                    lifecycle::withdraw_hold(h, &why, now)
                })
            })
            .await;
        match r {
            Ok(h) => {
                self.settled = true;
                h
            }
            Err(ApprovalError::Refused(_)) => {
                // Ended meanwhile; that change was shown to the watcher before ours ran.
                self.settled = true;
                self.hold()
            }
            Err(e) => {
                // Left unsettled: dropping the guard below tries once more.
                tracing::error!(hold = id, error = %e, "withdrawing a hold failed");
                self.hold()
            }
        }
    }
}

impl Drop for HoldGuard {
    /// Withdraws a still-pending hold synchronously: a spawned task could be lost to a
    /// runtime that is shutting down. The write runs on a scoped thread of its own, since
    /// a store's blocking client may not run on a thread that drives async tasks.
    fn drop(&mut self) {
        if self.settled || self.rx.borrow().status != HoldStatus::Pending {
            return;
        }
        let now = self.approvals.now();
        let (shared, id) = (&self.approvals.shared, self.id);
        let withdraw = || {
            shared.change_hold(id, |hold| Event::HoldWithdrawn { hold }, &mut |h| {
                lifecycle::withdraw_hold(h, DISCONNECTED, now)
            })
        };
        let r = std::thread::scope(|s| match s.spawn(withdraw).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        });
        match r {
            Ok(_) | Err(ApprovalError::Refused(Refused::Conflict(_))) => {}
            Err(e) => {
                // Still pending in the store: the expiry task ends it at its deadline, and
                // a restart withdraws it.
                tracing::error!(hold = self.id, error = %e, "withdrawing a dropped hold failed");
            }
        }
    }
}
