//! Which client messages each ReadyForQuery answers, counted from the server's answers rather
//! than from what the client sent. A client can send what the server then never answers
//! (a Query or Sync skipped after an error in an extended batch, a Sync or Query swallowed
//! by a COPY in progress, a Flush, CopyDone or CopyFail out of place); counting requests
//! would then drift, and every decision keyed on "the ReadyForQuery that ends this batch"
//! (creations counted, settings confirmed or undone, refusals substituted) would be applied
//! to the wrong batch. So the messages forwarded are queued, and the server's answers,
//! frame type by frame type, are matched to them as PostgreSQL's own loop consumes them
//! (`postgres.c`: skip until Sync after an error in extended mode; `copyfromparse.c`:
//! Flush and Sync ignored during COPY FROM STDIN, any other message fails it).
//!
//! Batches are numbered as the client sends them: each Query, Sync or FunctionCall closes
//! one, and every message belongs to the batch the next of those closes (number 1 is the
//! startup's ReadyForQuery). A ReadyForQuery closes every batch up to the one it answers.
//!
//! One ordering cannot be followed: a COPY FROM STDIN that fails with messages other than
//! CopyData, CopyDone, CopyFail, Flush or Sync queued behind it, which the server may have
//! swallowed or may yet run. The model then says it is lost, and the session ends.

use std::collections::VecDeque;

/// A client message the server will read, as far as its answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Parse, Bind or Close: one answer (ParseComplete, BindComplete, CloseComplete) or an error.
    Simple,
    /// Describe: (ParameterDescription then) RowDescription or NoData, or an error.
    Describe,
    Execute,
    Flush,
    Sync,
    Query,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
}

impl Sent {
    /// The kind of a client message type, if the server reads it after startup.
    pub fn of(tag: u8) -> Option<Sent> {
        Some(match tag {
            b'P' | b'B' | b'C' => Sent::Simple,
            b'D' => Sent::Describe,
            b'E' => Sent::Execute,
            b'H' => Sent::Flush,
            b'S' => Sent::Sync,
            b'Q' => Sent::Query,
            b'F' => Sent::FunctionCall,
            b'd' => Sent::CopyData,
            b'c' => Sent::CopyDone,
            b'f' => Sent::CopyFail,
            _ => return None,
        })
    }

    fn closes(self) -> bool {
        matches!(self, Sent::Sync | Sent::Query | Sent::FunctionCall)
    }

    fn extended(self) -> bool {
        matches!(self, Sent::Simple | Sent::Describe | Sent::Execute)
    }

    fn copy(self) -> bool {
        matches!(self, Sent::CopyData | Sent::CopyDone | Sent::CopyFail)
    }
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    kind: Sent,
    batch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    None,
    In,
    Out,
}

/// What a ReadyForQuery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// It closed every batch up to this number.
    Closed(u64),
    /// It answered a Sync a failed COPY may or may not have swallowed, whose batch (empty
    /// of statements) was already counted closed.
    Spare,
    /// It fits nothing sent: the model is lost.
    Lost,
}

/// The queue of forwarded messages and the server's state in reading them.
#[derive(Debug)]
pub struct Batches {
    queue: VecDeque<Queued>,
    /// Batches numbered so far (the startup's is 1).
    sent: u64,
    /// The highest batch number a ReadyForQuery closed.
    closed: u64,
    /// Query, Sync and FunctionCall messages queued.
    open: usize,
    /// The server skips everything until Sync (an error in extended mode).
    skipping: bool,
    copy: Copy,
    /// The message at the head of the queue has had an answer.
    answered: bool,
    /// ReadyForQuery messages that may come for Syncs a failed COPY may have swallowed.
    spares: u32,
    lost: bool,
}

impl Default for Batches {
    fn default() -> Self {
        Batches {
            queue: VecDeque::new(),
            sent: 1,
            closed: 0,
            open: 0,
            skipping: false,
            copy: Copy::None,
            answered: false,
            spares: 0,
            lost: false,
        }
    }
}

impl Batches {
    /// The number of the batch a message sent now belongs to.
    pub fn batch_end(&self) -> u64 {
        self.sent + 1
    }

    /// The highest batch number closed.
    pub fn closed(&self) -> u64 {
        self.closed
    }

    /// Whether a Query, Sync or FunctionCall forwarded is still unanswered.
    pub fn awaiting_ready(&self) -> bool {
        self.open > 0
    }

    /// The batch of the message the server answers next.
    pub fn front_batch(&self) -> u64 {
        self.queue.front().map_or(self.closed + 1, |q| q.batch)
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The session's first ReadyForQuery (startup) arrived.
    pub fn started(&mut self) {
        self.closed = self.closed.max(1);
    }

    /// A client message of `kind` was forwarded.
    pub fn sent(&mut self, kind: Sent) {
        let batch = self.batch_end();
        if kind.closes() {
            self.sent += 1;
        }
        if self.skipping && self.open == 0 && kind != Sent::Sync {
            // The server discards it unanswered (skipping until a Sync not sent yet): not
            // queued, so a client sending messages after an error without Sync grows nothing.
            return;
        }
        if kind.closes() {
            self.open += 1;
        }
        self.queue.push_back(Queued { kind, batch });
    }

    fn pop(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        if q.kind.closes() {
            self.open -= 1;
        }
        self.answered = false;
        Some(q)
    }

    /// Drops the messages at the head that the server reads without answering.
    fn advance(&mut self) {
        if self.copy != Copy::None {
            return;
        }
        while let Some(q) = self.queue.front() {
            let silent =
                (self.skipping && q.kind != Sent::Sync) || q.kind == Sent::Flush || q.kind.copy();
            if !silent {
                break;
            }
            self.pop();
        }
    }

    /// A server frame of type `tag` arrived (after startup). For ReadyForQuery, what it did.
    pub fn on_server(&mut self, tag: u8) -> Option<Ready> {
        if matches!(tag, b'N' | b'S' | b'A') || self.lost {
            // Notices, parameter changes and notifications come at any time.
            return (tag == b'Z' && self.lost).then_some(Ready::Lost);
        }
        self.advance();
        if self.copy == Copy::In {
            return self.in_copy(tag);
        }
        if self.copy == Copy::Out {
            match tag {
                b'd' => return None,
                b'c' => {
                    self.copy = Copy::None;
                    return None;
                }
                _ => self.copy = Copy::None,
            }
        }
        if tag == b'Z' {
            return Some(self.ready());
        }
        let Some(front) = self.queue.front().copied() else {
            // An error nothing asked for (a FATAL before the server closes): not counted.
            if tag != b'E' {
                self.lost = true;
            }
            return None;
        };
        self.answered = true;
        match (front.kind, tag) {
            (k, b'E') if k.extended() => {
                self.pop();
                self.skipping = true;
            }
            (_, b'E') => {}
            (Sent::Simple, b'1' | b'2' | b'3') => {
                self.pop();
            }
            (Sent::Describe, b't') => {}
            (Sent::Describe, b'T' | b'n') => {
                self.pop();
            }
            (Sent::Execute, b'C' | b'I' | b's') => {
                self.pop();
            }
            (Sent::Execute | Sent::Query, b'G' | b'W') => self.copy = Copy::In,
            (Sent::Execute | Sent::Query, b'H') => self.copy = Copy::Out,
            (Sent::Execute | Sent::Query, b'D') => {}
            (Sent::Query, b'T' | b'C' | b'I') => {}
            (Sent::FunctionCall, b'V') => {}
            _ => self.lost = true,
        }
        None
    }

    /// A ReadyForQuery: it answers the Query, Sync or FunctionCall at the head, or is a spare.
    fn ready(&mut self) -> Ready {
        let front = self.queue.front().copied();
        let spare_possible = match front {
            None => true,
            Some(q) if !q.kind.closes() => true,
            // A Query or FunctionCall always answers something before its ReadyForQuery.
            Some(q) => q.kind != Sent::Sync && !self.answered,
        };
        if spare_possible {
            if self.spares > 0 {
                self.spares -= 1;
                return Ready::Spare;
            }
            self.lost = true;
            return Ready::Lost;
        }
        let q = self.pop().expect("front checked");
        self.skipping = false;
        self.closed = q.batch;
        Ready::Closed(q.batch)
    }

    /// A frame while the server reads COPY data for the message at the head.
    fn in_copy(&mut self, tag: u8) -> Option<Ready> {
        match tag {
            // The COPY succeeded: it read everything up to the first CopyDone.
            b'C' => {
                let end = self
                    .queue
                    .iter()
                    .skip(1)
                    .position(|q| q.kind == Sent::CopyDone);
                for _ in 0..end.map_or(0, |i| i + 1) {
                    let q = self.queue.remove(1).expect("counted");
                    if q.kind.closes() {
                        self.open -= 1;
                    }
                }
                self.copy = Copy::None;
                if self.queue.front().is_some_and(|q| q.kind == Sent::Execute) {
                    self.pop();
                }
                None
            }
            // The COPY failed: the server read some of what was queued behind it, and goes on
            // with the rest (CopyData, CopyDone, CopyFail and Flush are then ignored).
            b'E' => {
                self.copy = Copy::None;
                let mut i = 1;
                while let Some(q) = self.queue.get(i).copied() {
                    match q.kind {
                        Sent::CopyDone | Sent::CopyFail => break,
                        Sent::CopyData | Sent::Flush => i += 1,
                        // Swallowed (taken as read, as it almost always is: it sits before the
                        // data), or answered by a ReadyForQuery of its own: a spare then. Its
                        // batch holds no statement either way.
                        Sent::Sync if self.only_copy_until_next_close(i) => {
                            self.queue.remove(i);
                            self.open -= 1;
                            self.spares += 1;
                        }
                        _ => {
                            self.lost = true;
                            return None;
                        }
                    }
                }
                self.answered = true;
                if self.queue.front().is_some_and(|q| q.kind == Sent::Execute) {
                    self.pop();
                    self.skipping = true;
                }
                None
            }
            b'Z' => {
                // A COPY the server never ended: nothing consistent.
                self.lost = true;
                Some(Ready::Lost)
            }
            _ => None,
        }
    }

    /// Whether the messages after position `i`, up to the next Query, Sync or FunctionCall,
    /// are COPY messages or Flushes only (a batch with no statement in it).
    fn only_copy_until_next_close(&self, i: usize) -> bool {
        self.queue
            .iter()
            .skip(i + 1)
            .take_while(|q| !q.kind.closes())
            .all(|q| q.kind.copy() || q.kind == Sent::Flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Batches {
        let mut b = Batches::default();
        b.started();
        b
    }

    fn send(b: &mut Batches, tags: &[u8]) {
        for t in tags {
            b.sent(Sent::of(*t).unwrap());
        }
    }

    /// Feeds server frames; returns what each ReadyForQuery did.
    fn answer(b: &mut Batches, tags: &[u8]) -> Vec<Ready> {
        tags.iter().filter_map(|t| b.on_server(*t)).collect()
    }

    #[test]
    fn plain_batches_close_one_by_one() {
        let mut b = session();
        send(&mut b, b"QPBES");
        assert_eq!(b.batch_end(), 4);
        assert_eq!(
            answer(&mut b, b"TDCZ12CZ"),
            vec![Ready::Closed(2), Ready::Closed(3)]
        );
        assert!(!b.awaiting_ready());
    }

    #[test]
    fn a_query_skipped_after_an_extended_error_is_closed_by_the_sync() {
        // P (fails) Q S: the server skips the Query; one ReadyForQuery closes both batches.
        let mut b = session();
        send(&mut b, b"PQS");
        assert_eq!(answer(&mut b, b"EZ"), vec![Ready::Closed(3)]);
        assert!(!b.awaiting_ready());
        send(&mut b, b"Q");
        assert_eq!(answer(&mut b, b"CZ"), vec![Ready::Closed(4)]);
    }

    #[test]
    fn messages_the_server_skips_are_not_queued() {
        let mut b = session();
        send(&mut b, b"PB");
        answer(&mut b, b"E");
        for _ in 0..100_000 {
            send(&mut b, b"BEQ");
        }
        assert!(b.queue.len() < 4, "{}", b.queue.len());
        let n = b.batch_end();
        send(&mut b, b"S");
        assert_eq!(answer(&mut b, b"Z"), vec![Ready::Closed(n)]);
        send(&mut b, b"Q");
        assert_eq!(answer(&mut b, b"CZ"), vec![Ready::Closed(n + 1)]);
    }

    #[test]
    fn a_query_inside_an_extended_batch_closes_it() {
        let mut b = session();
        send(&mut b, b"PBEQS");
        assert_eq!(
            answer(&mut b, b"12CCZZ"),
            vec![Ready::Closed(2), Ready::Closed(3)]
        );
    }

    #[test]
    fn flush_and_stray_copy_messages_are_not_answered() {
        let mut b = session();
        send(&mut b, b"HcfdSH");
        assert_eq!(answer(&mut b, b"Z"), vec![Ready::Closed(2)]);
        assert!(!b.awaiting_ready());
    }

    #[test]
    fn sync_and_query_during_copy_in() {
        // Q(COPY) then, during the copy, Sync (ignored) and CopyDone: one ReadyForQuery.
        let mut b = session();
        send(&mut b, b"QdSdc");
        assert_eq!(answer(&mut b, b"GCZ"), vec![Ready::Closed(2)]);
        assert!(!b.awaiting_ready(), "the Sync was swallowed");
        // A Query sent in the middle of COPY data: the model cannot tell; lost.
        let mut b = session();
        send(&mut b, b"QdQ");
        assert_eq!(answer(&mut b, b"GEZ"), vec![Ready::Lost]);
        assert!(b.is_lost());
    }

    #[test]
    fn extended_copy_failing_leaves_a_spare_for_the_early_sync() {
        // libpq / tokio-postgres: Bind Execute Sync, data, CopyDone, Sync. The COPY fails.
        for swallowed in [true, false] {
            let mut b = session();
            send(&mut b, b"BESddcS");
            let mut got = answer(&mut b, b"2GE");
            if swallowed {
                got.extend(answer(&mut b, b"Z"));
            } else {
                got.extend(answer(&mut b, b"ZZ"));
            }
            assert_eq!(got[0], Ready::Closed(3));
            if !swallowed {
                assert_eq!(got[1], Ready::Spare);
            }
            assert!(!b.awaiting_ready());
            send(&mut b, b"Q");
            assert_eq!(answer(&mut b, b"CZ"), vec![Ready::Closed(4)]);
        }
    }

    #[test]
    fn extended_copy_succeeding() {
        let mut b = session();
        send(&mut b, b"BESddcS");
        assert_eq!(answer(&mut b, b"2GCZ"), vec![Ready::Closed(3)]);
        assert!(!b.awaiting_ready());
    }

    #[test]
    fn copy_out_and_describe() {
        let mut b = session();
        send(&mut b, b"PDBEDS");
        assert_eq!(answer(&mut b, b"1tT2HddcCnZ"), vec![Ready::Closed(2)]);
        assert!(!b.is_lost());
    }

    #[test]
    fn sync_with_nothing_before_it() {
        let mut b = session();
        send(&mut b, b"SS");
        assert_eq!(
            answer(&mut b, b"ZZ"),
            vec![Ready::Closed(2), Ready::Closed(3)]
        );
        // An unasked ReadyForQuery is not taken for anything.
        assert_eq!(answer(&mut b, b"Z"), vec![Ready::Lost]);
    }

    #[test]
    fn function_call_and_errors_in_a_query() {
        let mut b = session();
        send(&mut b, b"FQ");
        assert_eq!(
            answer(&mut b, b"VZEZ"),
            vec![Ready::Closed(2), Ready::Closed(3)]
        );
    }
}
