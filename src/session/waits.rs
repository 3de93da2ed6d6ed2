//! The waits of change management, each a [`Waiting`] the relay drives: a hold (opened in
//! the store, a notice at once and a reminder every so often, ended by an approver, the
//! expiry task, or the client's cancel), a ticket check (counting one use when the ticket
//! covers the statement), and the record of a break-glass use. They own what they need, so
//! the session can go on framing server traffic while they run; dropping one (the client
//! went away) drops its hold guard, which withdraws the hold.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

use super::verdict::{HoldEnd, Resumed, Step, Waiting};
use crate::approval::cover::Shown;
use crate::approval::model::{HoldStatus, NewHold, NewReview};
use crate::approval::{Approvals, HoldGuard};
use crate::workflow::{held_notice, reminder_notice};

/// Why a hold the client cancelled was withdrawn.
pub const CANCELLED: &str = "the client cancelled the statement";

enum HoldState {
    Opening {
        approvals: Approvals,
        new: Box<NewHold>,
        note: Option<String>,
    },
    Waiting {
        guard: Box<HoldGuard>,
        next_reminder: Instant,
    },
    Done,
}

/// Holds a statement: `key` names the text it is for, `note` tells the client why a ticket
/// did not do, `reminder` is how often the client hears it still waits.
pub fn hold(
    approvals: Approvals,
    new: NewHold,
    note: Option<String>,
    reminder: Duration,
    key: String,
) -> Waiting {
    let (tx, rx) = oneshot::channel::<()>();
    let start = HoldState::Opening {
        approvals,
        new: Box::new(new),
        note,
    };
    let steps = stream::unfold((start, Some(rx)), move |(state, mut rx)| {
        let key = key.clone();
        async move {
            let done = |end| Step::Done(Box::new(Resumed::Hold { key, end }));
            match state {
                HoldState::Done => None,
                HoldState::Opening {
                    approvals,
                    new,
                    note,
                } => match approvals.open_hold(*new).await {
                    Ok(guard) => {
                        let notice = held_notice(&guard.hold(), note.as_deref());
                        let next = HoldState::Waiting {
                            guard: Box::new(guard),
                            next_reminder: Instant::now() + reminder,
                        };
                        Some((Step::Notice(Box::new(notice)), (next, rx)))
                    }
                    Err(e) => Some((done(HoldEnd::Failed(e.to_string())), (HoldState::Done, rx))),
                },
                HoldState::Waiting {
                    mut guard,
                    next_reminder,
                } => {
                    let interrupted = async {
                        match rx.as_mut() {
                            Some(r) => r.await.is_ok(),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        h = guard.ended() => Some((done(HoldEnd::Ended(h)), (HoldState::Done, rx))),
                        _ = sleep_until(next_reminder) => {
                            let n = reminder_notice(&guard.hold());
                            let next = HoldState::Waiting { guard, next_reminder: next_reminder + reminder };
                            Some((Step::Notice(Box::new(n)), (next, rx)))
                        }
                        cancelled = interrupted => {
                            if !cancelled {
                                // The wait itself is gone; nothing listens any more.
                                return None;
                            }
                            let h = guard.withdraw(CANCELLED).await;
                            // An approval that won the race stands: the statement runs.
                            let end = if h.status == HoldStatus::Withdrawn {
                                HoldEnd::Cancelled(h)
                            } else {
                                HoldEnd::Ended(h)
                            };
                            Some((done(end), (HoldState::Done, None)))
                        }
                    }
                }
            }
        }
    });
    Waiting::interruptible(steps.boxed(), tx)
}

/// Checks ticket `id` against the statement, counting a use when it covers it.
pub fn ticket(
    approvals: Approvals,
    id: String,
    session: u64,
    showing: Shown,
    key: String,
) -> Waiting {
    Waiting::once(async move {
        let p = showing.presented(jiff::Timestamp::now());
        let outcome = approvals
            .use_ticket_in_session(&id, session, &p)
            .await
            .map_err(|e| e.to_string());
        Resumed::Ticket { key, id, outcome }
    })
}

/// Records a break-glass use for review before the statement runs.
pub fn break_glass(approvals: Approvals, review: NewReview, key: String) -> Waiting {
    Waiting::once(async move {
        let outcome = approvals
            .record_break_glass(review)
            .await
            .map_err(|e| e.to_string());
        Resumed::BreakGlass { key, outcome }
    })
}
