//! What a session remembers of its prepared statements (extended protocol): each one's
//! text and what its decision at Parse rested on ([`Stamp`]), so that a Bind made after any
//! of that changed decides it again; what running it changes in the session (applied at each
//! Bind, not at Parse); and the byte budget all of it, client-controlled, stays within.

use std::sync::Arc;
use std::time::Instant;

use crate::audit::record::StatementRecord;
use crate::sql::Inspection;
use crate::wire::messages::PgError;
use crate::wire::read::TxStatus;
use crate::wire::sqlstate::SqlState;

/// A Parse forwarded whose effect on its name (its record, its one-run limit, its text for
/// deciding again) waits for the server's ParseComplete.
pub(super) struct PendingParse {
    pub(super) batch_end: u64,
    pub(super) name: Vec<u8>,
    /// What it costs (counted in `named_bytes`).
    pub(super) bytes: usize,
    /// What running it changes in the session (settings, creations), applied at each Bind
    /// that runs it, not at Parse; none for plain reads and writes.
    pub(super) effects: Option<Arc<Inspection>>,
    pub(super) text: Arc<[u8]>,
    pub(super) stamp: Stamp,
    pub(super) record: Option<StatementRecord>,
    pub(super) once_only: bool,
    /// A Bind already ran it before the server confirmed it.
    pub(super) once_used: bool,
    /// It names objects the server resolves only when its portal runs.
    pub(super) late: bool,
}

/// A prepared statement (extended protocol) the server confirmed.
pub(super) struct Named {
    pub(super) bytes: usize,
    pub(super) effects: Option<Arc<Inspection>>,
    pub(super) text: Arc<[u8]>,
    pub(super) stamp: Stamp,
    /// The record made when its Parse was decided, written again at each Bind.
    pub(super) record: Option<StatementRecord>,
    /// Let through by a ticket, an approval or break-glass: whether its one run is unused.
    pub(super) once: Option<bool>,
    /// It names objects the server resolves only when its portal runs.
    pub(super) late: bool,
}

/// What a decision rested on, beyond the statement's text: when any of it differs at a
/// Bind, the statement is decided again. Comparing it is the whole cost of a Bind whose
/// statement nothing has changed for.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Stamp {
    /// The ledger's generation: settings, creations, DDL, prepared statements.
    pub(super) generation: u64,
    pub(super) tx: TxStatus,
    /// Server parameters (how the text was read, who runs it).
    pub(super) params: crate::session::params::ServerParams,
    /// Whether the text was read with nothing unanswered before it.
    pub(super) settled: bool,
    pub(super) policy: String,
    pub(super) at: Instant,
}

/// How long a decision stands without being made again (catalog facts and the clock move).
pub(super) const DECISION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

/// The most statement text (names, texts, records of prepared statements, protocol-level
/// and SQL PREPARE alike) one session may have pgwarden remember: a Parse or PREPARE beyond
/// it is refused with 54000, and the session stays usable (Close or DEALLOCATE frees room).
pub const STATEMENT_BUDGET: usize = 16 << 20;

/// What remembering a prepared statement costs.
pub(super) fn named_size(name: &[u8], text: &[u8], record: Option<&StatementRecord>) -> usize {
    name.len() + text.len() + record.map_or(0, |r| r.statement.text.len() + 256)
}

/// A statement whose running changes nothing the ledger follows: plain reads and writes.
pub(super) fn inert(ins: &Inspection) -> bool {
    ins.unparsed.is_none()
        && ins.statements.iter().all(|s| {
            s.functions.is_empty()
                && s.ops.iter().enumerate().all(|(k, op)| {
                    matches!(op.class, crate::sql::Class::Read | crate::sql::Class::Write)
                        && op.set.is_none()
                        && op.prepared_name.is_none()
                        && !op.creates_table(k == 0)
                })
        })
}

/// How the client names prepared statement `statement` in messages.
pub(super) fn statement_name(statement: &[u8]) -> String {
    if statement.is_empty() {
        "the unnamed prepared statement".to_owned()
    } else {
        format!(
            "prepared statement \"{}\"",
            String::from_utf8_lossy(statement)
        )
    }
}

/// A Bind of a statement no Parse pgwarden let through defined.
pub(super) fn unknown_statement(statement: &[u8]) -> PgError {
    let name = statement_name(statement);
    PgError::error(
        SqlState("26000"),
        format!("pgwarden: {name} does not exist"),
    )
    .with_detail("pgwarden let no Parse of it through (it was refused, closed or deallocated), so it cannot decide what it runs.")
    .with_hint("Prepare it again (Parse).")
}

/// A Parse or PREPARE whose text would take the session past [`STATEMENT_BUDGET`].
pub(super) fn budget_refusal(used: usize, wanted: usize) -> PgError {
    PgError::error(
        SqlState::PROGRAM_LIMIT_EXCEEDED,
        format!("pgwarden: this session's prepared statements would take {} bytes of pgwarden's memory, more than its limit of {STATEMENT_BUDGET}", used + wanted),
    )
    .with_detail(format!("Prepared statements remembered: {used} bytes; this one: {wanted} bytes."))
    .with_hint("Close (or DEALLOCATE) prepared statements no longer used, or run large statements unprepared.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{inspect, ReadAs};

    fn is_inert(sql: &str) -> bool {
        inert(&inspect(sql, ReadAs::default()))
    }

    #[test]
    fn only_plain_reads_and_writes_are_inert() {
        assert!(is_inert("SELECT a FROM t WHERE b = $1"));
        assert!(is_inert("INSERT INTO t VALUES ($1)"));
        assert!(!is_inert("SET ROLE admin"));
        assert!(!is_inert("RESET ROLE"));
        assert!(!is_inert("CREATE TABLE t2 AS SELECT 1"));
        assert!(!is_inert("SELECT set_config('search_path', 'x', false)"));
        assert!(!is_inert("PREPARE p AS SELECT 1"));
        assert!(!is_inert("DROP TABLE t"));
        assert!(!is_inert("SELEC 1"));
    }

    #[test]
    fn the_budget_counts_names_texts_and_records() {
        assert_eq!(named_size(b"s1", b"SELECT 1", None), 10);
    }
}
