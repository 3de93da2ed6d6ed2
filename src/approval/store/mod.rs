//! Where tickets, holds and break-glass reviews are kept. [`Store`] is the seam (sync
//! methods, called off the async threads) so another backend can be added; every change is
//! load-check-write in one transaction, the check being a [`super::lifecycle`] rule.
//! [`SqliteStore`] (`store/sqlite.rs`, a file for one instance, the default) and
//! [`PgStore`] (`store/pg.rs`, a control schema in PostgreSQL that many instances
//! share) implement it; both pass the same test suite (`approval/tests.rs`).

mod pg;
mod sqlite;

pub use pg::{valid_schema, Changed, Notice, PgStore, PgTarget, MIGRATIONS};
pub use sqlite::{SqliteStore, FILE};

use std::path::PathBuf;

use jiff::Timestamp;

use super::cover::Uncovered;
use super::model::{Hold, HoldStatus, Refused, Review, Ticket};
use super::{ApprovalError, Result, UseError};

/// A change to a record, run inside the store's transaction; `Err` leaves it as it was.
pub type Change<'a, T> = &'a mut dyn FnMut(&mut T) -> std::result::Result<(), Refused>;

/// Durable state of change management. Each method is atomic; `update_*` loads the record,
/// applies the change and writes it back in one transaction ([`Refused::NotFound`] when
/// there is no such record).
pub trait Store: Send + Sync {
    /// Creates a ticket with id `id`, or `CHG-<n>` when none is given, as `make(id)` builds
    /// it. [`Refused::Conflict`] when the id is taken.
    fn create_ticket(
        &self,
        id: Option<&str>,
        make: &mut dyn FnMut(String) -> std::result::Result<Ticket, Refused>,
    ) -> Result<Ticket>;
    /// All tickets, oldest first.
    fn tickets(&self) -> Result<Vec<Ticket>>;
    fn ticket(&self, id: &str) -> Result<Option<Ticket>>;
    fn update_ticket(&self, id: &str, change: Change<'_, Ticket>) -> Result<Ticket>;
    /// Loads ticket `id`, runs `check` on it and, when it passes, counts `uses` uses (0:
    /// only checks); the check and the count are one transaction.
    fn use_ticket(
        &self,
        id: &str,
        check: &mut dyn FnMut(&Ticket) -> std::result::Result<(), Uncovered>,
        uses: u32,
    ) -> std::result::Result<Ticket, UseError>;
    /// Ids of pending or approved tickets whose `valid_until` is at or before `now`.
    fn tickets_due(&self, now: Timestamp) -> Result<Vec<String>>;
    /// The earliest `valid_until` of a pending or approved ticket.
    fn next_ticket_deadline(&self) -> Result<Option<Timestamp>>;

    /// Stores a new hold; the store assigns its id (never reused), ignoring `hold.id`.
    fn insert_hold(&self, hold: Hold) -> Result<Hold>;
    /// Holds, oldest first, of one status or all.
    fn holds(&self, status: Option<HoldStatus>) -> Result<Vec<Hold>>;
    fn hold(&self, id: u64) -> Result<Option<Hold>>;
    fn update_hold(&self, id: u64, change: Change<'_, Hold>) -> Result<Hold>;

    /// Stores a new review; the store assigns its id, ignoring `review.id`.
    fn insert_review(&self, review: Review) -> Result<Review>;
    /// Reviews, oldest first; only those nobody has reviewed when `pending_only`.
    fn reviews(&self, pending_only: bool) -> Result<Vec<Review>>;
    fn update_review(&self, id: u64, change: Change<'_, Review>) -> Result<Review>;

    /// Pending holds this instance opened (at start: its sessions are gone). One instance
    /// per store: all of them.
    fn own_pending_holds(&self) -> Result<Vec<Hold>> {
        self.holds(Some(HoldStatus::Pending))
    }
    /// Ids of pending holds whose `expires_at` is at or before `at`, whoever opened them.
    fn holds_overdue(&self, at: Timestamp) -> Result<Vec<u64>>;
    /// Where other instances sharing this store announce their changes (none: this
    /// instance is alone with it).
    fn remote(&self) -> Option<&PgTarget> {
        None
    }
}

/// A timestamp as fixed-width RFC 3339 text (nanoseconds, `Z`): readable by people, and
/// text order is time order.
pub(crate) fn ts_text(t: Timestamp) -> String {
    jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(9))
        .timestamp_to_string(&t)
}

/// What went wrong in the store itself (always our side, never the client's).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path} has schema version {found}; this pgwarden knows versions up to {known}")]
    Version {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The control database (PostgreSQL backend), with what was being done.
    #[error("{0}")]
    Postgres(String),
}

impl From<StoreError> for UseError {
    fn from(e: StoreError) -> Self {
        UseError::Store(e.to_string())
    }
}

impl From<StoreError> for ApprovalError {
    fn from(e: StoreError) -> Self {
        ApprovalError::Store(e.to_string())
    }
}

impl From<rusqlite::Error> for ApprovalError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e).into()
    }
}

impl From<rusqlite::Error> for UseError {
    fn from(e: rusqlite::Error) -> Self {
        UseError::Store(StoreError::Sqlite(e).to_string())
    }
}
