//! Refusing a statement on the wire so that the server ends in exactly the state PostgreSQL
//! itself would leave after raising the error: pgwarden forwards, in place of the refused
//! Query or Parse, a statement certain to fail at that point (a syntax error carrying a
//! unique marker), then replaces the server's error with its own. The server thereby aborts
//! an explicit transaction, rolls back an implicit one, and skips the rest of an extended-
//! protocol batch until Sync — its own rules, not an imitation of them.

use std::collections::VecDeque;

use crate::wire::messages::PgError;
use crate::wire::read;

/// The SQLSTATE PostgreSQL raises for the marker statement.
const SYNTAX_ERROR: &str = "42601";
/// The SQLSTATE PostgreSQL raises for a FunctionCall of OID 0.
const UNDEFINED_FUNCTION: &str = "42883";
/// What the server answers a Bind of a prepared statement that does not exist.
const UNDEFINED_PSTATEMENT: &str = "26000";
/// What the server answers an Execute of a portal that does not exist.
const UNDEFINED_CURSOR: &str = "34000";

#[derive(Debug)]
struct Pending {
    /// The SQLSTATE and a piece of the message the server's answer to the stand-in carries
    /// (the marker itself, without the quotes a translated message may change).
    code: &'static str,
    needle: Option<String>,
    error: PgError,
    /// The ReadyForQuery (counted from the session's start) that ends this refusal's batch.
    until_ready: u64,
}

/// Refusals whose server-side error has not come back yet, in the order they were made.
#[derive(Debug, Default)]
pub struct Refusals {
    pending: VecDeque<Pending>,
}

/// An unguessable marker: a client cannot make one of its own errors look like a refusal.
fn marker() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x7067_7761_7264_656e);
    format!("pgwarden_refused_{:016x}", h.finish())
}

impl Refusals {
    /// Records a refusal and returns the marker text to send in its place. `batch_end` is
    /// the number of the ReadyForQuery (counted from the session's start) ending its batch.
    pub fn refuse(&mut self, error: PgError, batch_end: u64) -> String {
        let marker = marker();
        self.push(SYNTAX_ERROR, Some(marker.clone()), error, batch_end);
        marker
    }

    /// Records a refused Bind and returns the name of the (nonexistent) prepared statement
    /// its stand-in ([`bind_frame`]) binds.
    pub fn refuse_bind(&mut self, error: PgError, batch_end: u64) -> String {
        let marker = marker();
        self.push(UNDEFINED_PSTATEMENT, Some(marker.clone()), error, batch_end);
        marker
    }

    /// Records a refused Execute and returns the name of the (nonexistent) portal its
    /// stand-in ([`execute_frame`]) runs.
    pub fn refuse_execute(&mut self, error: PgError, batch_end: u64) -> String {
        let marker = marker();
        self.push(UNDEFINED_CURSOR, Some(marker.clone()), error, batch_end);
        marker
    }

    /// Records a refused FunctionCall; the stand-in is [`function_call_frame`] (OID 0).
    pub fn refuse_function_call(&mut self, error: PgError, batch_end: u64) {
        self.push(UNDEFINED_FUNCTION, None, error, batch_end);
    }

    fn push(&mut self, code: &'static str, needle: Option<String>, error: PgError, batch_end: u64) {
        if self
            .pending
            .back()
            .is_some_and(|p| p.until_ready == batch_end)
        {
            // An earlier stand-in of this batch fails first, and the server then skips
            // everything up to Sync: this one never runs, so its error is not kept (a client
            // sending refused messages without Sync grows nothing).
            return;
        }
        self.pending.push_back(Pending {
            code,
            needle,
            error,
            until_ready: batch_end,
        });
    }

    /// A ReadyForQuery arrived: batches end; refusals whose stand-in never ran (an earlier
    /// error in the batch skipped it, as PostgreSQL would have skipped the statement) expire.
    /// Entries are in batch order, so this only looks at the front.
    pub fn on_ready(&mut self, ready: u64) {
        while self.pending.front().is_some_and(|p| p.until_ready <= ready) {
            self.pending.pop_front();
        }
    }

    /// If this ErrorResponse is the server's answer to a stand-in, the frame to send instead.
    pub fn substitute(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        let f = read::error_fields(body)?;
        // The answer belongs to the oldest refusal of its kind: stand-ins run in order.
        let i = self.pending.iter().position(|p| {
            p.code == f.code && p.needle.as_deref().is_none_or(|n| f.message.contains(n))
        })?;
        let p = self.pending.remove(i)?;
        Some(p.error.to_bytes().to_vec())
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A Query frame carrying `text`.
pub fn query_frame(text: &str) -> Vec<u8> {
    let mut f = vec![b'Q'];
    f.extend_from_slice(&((text.len() + 5) as u32).to_be_bytes());
    f.extend_from_slice(text.as_bytes());
    f.push(0);
    f
}

/// A FunctionCall of OID 0 with no arguments: certain to fail with 42883.
pub fn function_call_frame() -> Vec<u8> {
    let mut f = vec![b'F', 0, 0, 0, 14];
    f.extend_from_slice(&[0; 10]);
    f
}

/// A Parse frame for statement `name` carrying `text`, with no parameter types.
pub fn parse_frame(name: &[u8], text: &str) -> Vec<u8> {
    let len = 4 + name.len() + 1 + text.len() + 1 + 2;
    let mut f = vec![b'P'];
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend_from_slice(name);
    f.push(0);
    f.extend_from_slice(text.as_bytes());
    f.push(0);
    f.extend_from_slice(&0i16.to_be_bytes());
    f
}

/// An Execute of portal `portal`, all rows.
pub fn execute_frame(portal: &str) -> Vec<u8> {
    let len = 4 + portal.len() + 1 + 4;
    let mut f = vec![b'E'];
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend_from_slice(portal.as_bytes());
    f.push(0);
    f.extend_from_slice(&0i32.to_be_bytes());
    f
}

/// A Bind of portal `portal` to prepared statement `statement`, without parameters.
pub fn bind_frame(portal: &[u8], statement: &str) -> Vec<u8> {
    let len = 4 + portal.len() + 1 + statement.len() + 1 + 2 + 2 + 2;
    let mut f = vec![b'B'];
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend_from_slice(portal);
    f.push(0);
    f.extend_from_slice(statement.as_bytes());
    f.push(0);
    f.extend_from_slice(&[0; 6]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sqlstate::SqlState;

    fn err(msg: &str) -> PgError {
        PgError {
            severity: crate::wire::messages::Severity::Error,
            code: SqlState::INSUFFICIENT_PRIVILEGE,
            message: msg.into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn substitutes_only_its_own_marker() {
        let mut r = Refusals::default();
        // Its batch ends with the second ReadyForQuery of the session.
        let m = r.refuse(err("no"), 2);
        // A genuine syntax error is left alone.
        assert!(r
            .substitute(b"SERROR\0VERROR\0C42601\0Msyntax error at or near \"x\"\0\0")
            .is_none());
        r.on_ready(1);
        // Translated messages quote differently: the bare marker is enough.
        let german = format!("SFEHLER\0VERROR\0C42601\0MSyntaxfehler bei \u{bb}{m}\u{ab}\0\0");
        let out = r.substitute(german.as_bytes()).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("no"));
        assert!(r.is_empty());
        assert_ne!(
            r.refuse(err("a"), 0),
            r.refuse(err("b"), 0),
            "markers are unique"
        );
    }

    #[test]
    fn skipped_markers_expire() {
        let mut r = Refusals::default();
        r.refuse(err("no"), 1);
        r.on_ready(1);
        assert!(r.is_empty());
    }

    #[test]
    fn only_the_first_refusal_of_a_batch_is_kept() {
        let mut r = Refusals::default();
        let first = r.refuse(err("first"), 2);
        for _ in 0..10_000 {
            r.refuse(err("skipped by the server"), 2);
        }
        assert_eq!(r.pending.len(), 1);
        let m = format!("SERROR\0VERROR\0C42601\0Msyntax error at or near \"{first}\"\0\0");
        assert!(String::from_utf8_lossy(&r.substitute(m.as_bytes()).unwrap()).contains("first"));
        r.refuse(err("next batch"), 3);
        assert_eq!(r.pending.len(), 1);
    }

    #[test]
    fn frames_are_well_formed() {
        let q = query_frame("x");
        assert_eq!(q, b"Q\0\0\0\x06x\0");
        let b = bind_frame(b"", "m");
        assert_eq!(b, b"B\0\0\0\x0d\0m\0\0\0\0\0\0\0");
        let p = parse_frame(b"s1", "x");
        assert_eq!(p, b"P\0\0\0\x0bs1\0x\0\0\0");
    }
}
