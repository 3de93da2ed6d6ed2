//! What a gate answers about a client message ([`Verdict`]), what it sees of the session
//! ([`View`]), and waiting as a first-class outcome: a [`Waiting`] is a stream of steps
//! (notices for the client while it waits) that ends with the answer ([`Resumed`]) the gate
//! is handed back ([`Gate::resume`]) before it decides the same message again. The relay keeps
//! reading the client while a message waits, so a hang-up or a cancel is noticed at once.

use std::future::Future;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::oneshot;

use super::params::ServerParams;
use super::state::{BatchAnswer, ParseAnswer};
use crate::wire::messages::PgError;
use crate::wire::read::TxStatus;
pub use crate::workflow::{HoldEnd, Resumed};

/// What the session does with a client message.
#[derive(Debug)]
pub enum Verdict {
    Forward,
    Refuse(PgError),
    /// Not decided yet: the message (and everything behind it) waits.
    Wait(Waiting),
}

/// The session's view offered to a gate.
pub struct View<'a> {
    pub params: &'a ServerParams,
    pub tx: TxStatus,
    /// False when something forwarded earlier may still change the session before this text
    /// runs (a statement not yet answered by ReadyForQuery, an Execute earlier in the batch,
    /// the session not ready yet): settings like standard_conforming_strings may then differ
    /// from what the last ParameterStatus said.
    pub settled: bool,
    /// The number (counted from the session's start, the session state's one count) of the
    /// ReadyForQuery that ends the batch this text belongs to.
    pub batch_end: u64,
    /// For a Parse: the name of the prepared statement it defines (empty: the unnamed one).
    pub parse_name: Option<&'a [u8]>,
}

/// Decides on the client messages that carry SQL before they are forwarded.
pub trait Gate {
    fn check(&mut self, text: &[u8], view: &View<'_>) -> Verdict;

    /// Decides on a Bind of prepared statement `statement` (empty: the unnamed one).
    fn check_bind(&mut self, _statement: &[u8], _view: &View<'_>) -> Verdict {
        Verdict::Forward
    }

    /// A Close of prepared statement `statement` was forwarded: the server forgets it.
    fn on_close(&mut self, _statement: &[u8]) {}

    /// After a Bind was forwarded: `Some(stamp)` when the statement bound resolves what it
    /// names only when its portal runs (utility statements: TRUNCATE, DROP, ALTER), so that
    /// an Execute of the portal is refused once [`Self::facts_stamp`] moved past it.
    fn bound_stamp(&self) -> Option<u64> {
        None
    }

    /// A number that changes whenever something decisions read may have changed.
    fn facts_stamp(&self) -> u64 {
        0
    }

    /// Decides on a FunctionCall message (the fast-path protocol large objects use).
    fn check_function_call(&mut self, _oid: u32, _view: &View<'_>) -> Verdict {
        Verdict::Forward
    }

    /// A batch ended with ReadyForQuery number `ready` (see [`View::batch_end`]): whether an
    /// error was raised in it, and the transaction state after it. Effects of statements take
    /// hold here, not when forwarded.
    fn on_ready(&mut self, _failed: bool, _tx: TxStatus, _ready: u64, _answer: &BatchAnswer) {}

    /// The server answered a Parse (see [`ParseAnswer`]); called before `on_ready` for the
    /// same read, in order.
    fn on_parse_answer(&mut self, _answer: ParseAnswer) {}

    /// Whether [`Self::on_parse_answer`] is wanted now.
    fn wants_parse_answers(&self) -> bool {
        false
    }

    /// Whether the server's answers (command tags, errors) are wanted in [`Self::on_ready`]:
    /// collecting them costs a little, so only while something waits for them.
    fn wants_answers(&self) -> bool {
        false
    }

    /// A wait this gate asked for ended with `answer`; the same message is checked next.
    fn resume(&mut self, _answer: Resumed) {}
}

/// A gate that lets everything through (bare proxy, tests).
pub struct OpenGate;

impl Gate for OpenGate {
    fn check(&mut self, _: &[u8], _: &View<'_>) -> Verdict {
        Verdict::Forward
    }
}

/// One step of a wait.
#[derive(Debug)]
pub enum Step {
    /// A notice for the client (sent at the next server frame boundary).
    Notice(Box<PgError>),
    /// The wait is over: the answer to resume the gate with.
    Done(Box<Resumed>),
}

/// A wait in progress. Dropping it (the session ends) drops whatever it owns: a hold's
/// guard then withdraws the hold.
pub struct Waiting {
    steps: BoxStream<'static, Step>,
    interrupt: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("interruptible", &self.interrupt.is_some())
            .finish()
    }
}

impl Waiting {
    /// A wait for one piece of work, which a cancel does not interrupt (it is bounded by
    /// its own timeout).
    pub fn once(work: impl Future<Output = Resumed> + Send + 'static) -> Waiting {
        Waiting {
            steps: stream::once(async move { Step::Done(Box::new(work.await)) }).boxed(),
            interrupt: None,
        }
    }

    /// A wait made of `steps`, which the receiving end of `interrupt` lets a client's
    /// cancel cut short: the stream must then end soon with its `Done`.
    pub fn interruptible(
        steps: BoxStream<'static, Step>,
        interrupt: oneshot::Sender<()>,
    ) -> Waiting {
        Waiting {
            steps,
            interrupt: Some(interrupt),
        }
    }

    /// The next step; `None` when the stream ended without an answer. Cancel-safe.
    pub async fn next(&mut self) -> Option<Step> {
        self.steps.next().await
    }

    /// The client asked to cancel: passed on when this wait can be cut short.
    pub fn interrupt(&mut self) {
        if let Some(tx) = self.interrupt.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn once_yields_its_answer_and_ignores_interrupts() {
        let mut w = Waiting::once(async {
            Resumed::Answers {
                key: "k".into(),
                answers: Default::default(),
            }
        });
        w.interrupt();
        match w.next().await {
            Some(Step::Done(r)) => assert_eq!(r.key(), "k"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(w.next().await.is_none());
    }
}
