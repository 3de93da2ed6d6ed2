//! What a session knows about its own protocol state, and the two frame processors that keep
//! it current: client bytes are cut into frames and checked before they are forwarded;
//! server bytes are cut into frames, the few that matter are read, and everything is passed
//! on as the exact bytes received. Both work on buffers only (no I/O), so they are unit-tested
//! and fuzzed directly.
//!
//! Large frames the proxy does not need to read (CopyData, Bind, DataRow…) are streamed:
//! once their header is checked, their bytes are forwarded as they arrive, so a 100 MB row
//! never sits whole in pgwarden's memory.

use bytes::{Buf, BytesMut};

use super::batches::{Batches, Ready, Sent};
pub use super::params::ServerParams;
use super::refusal::{
    bind_frame, execute_frame, function_call_frame, parse_frame, query_frame, Refusals,
};
use super::verdict::{Gate, Verdict, View, Waiting};
use crate::wire::frame::{parse_header, read_cstr, FrameError, Limits, HEADER_LEN};
use crate::wire::messages::PgError;
use crate::wire::read::{self, AuthRequest, ChannelBindingFlag, TxStatus};
use crate::wire::sqlstate::SqlState;
use crate::wire::startup::CancelKey;

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Startup forwarded; the server is authenticating the client.
    Authenticating,
    /// Authentication done; waiting for the first ReadyForQuery.
    Starting,
    /// Normal operation.
    Ready,
}

/// How the two links are secured, which decides whether SCRAM channel binding can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    pub client_tls: bool,
    pub upstream_tls: bool,
}

/// Frames bigger than this are streamed through instead of being held whole, when their type
/// allows it.
const READ_LIMIT: usize = 64 * 1024;

/// Portals of utility statements a session may hold open (see `late_portals`).
const MAX_LATE_PORTALS: usize = 1024;

/// The protocol state of one session.
#[derive(Debug)]
pub struct SessionState {
    pub phase: Phase,
    pub tx: TxStatus,
    pub params: ServerParams,
    links: Links,
    /// Client messages forwarded, matched to the server's answers: which batch each
    /// ReadyForQuery closes is the one count refusals and the gate's ledger are keyed on.
    batches: Batches,
    /// Extended-protocol messages forwarded since the last Sync.
    unsynced: bool,
    /// Something that runs SQL (Query, Execute, FunctionCall) was forwarded and not all of it
    /// has been answered by ReadyForQuery.
    executed: bool,
    /// Bytes of the current client frame still to stream through.
    client_streaming: usize,
    /// Bytes of a refused oversized client frame still to skip.
    client_skipping: usize,
    /// Query, Parse and FunctionCall frames are held whole to be inspected, up to this size
    /// (`[limits] max_statement_bytes`); a larger one is refused and skipped, never held.
    pub max_statement_bytes: usize,
    /// Bytes of the current server frame still to stream through.
    server_streaming: usize,
    /// The header of the server frame at the head of the input was counted already (the
    /// frame is read whole and has not all arrived).
    server_header_seen: bool,
    /// The server offered SASL and the client's next password message is its first.
    /// The server asked for a password (or the next SASL/GSS step) and the client has not
    /// answered yet: only then is a client message other than a password response an error
    /// during authentication; otherwise it waits (PostgreSQL reads it after authentication).
    awaiting_auth_response: bool,
    expect_sasl_initial: bool,
    /// The server sent FATAL or PANIC: its closing the link is expected.
    pub server_sent_fatal: bool,
    /// The client sent Terminate.
    pub client_terminated: bool,
    /// A cancel key the server announced that the session has not registered yet.
    pub new_cancel_key: Option<CancelKey>,
    /// Statements refused whose stand-in error has not come back from the server yet.
    refusals: Refusals,
    /// An ErrorResponse arrived since the last ReadyForQuery.
    batch_error: bool,
    /// Batches that ended (failed?, transaction state after), for the gate: drained by the
    /// relay after each call to `server_frames`.
    pub ready_events: Vec<(bool, TxStatus, u64, BatchAnswer)>,
    /// Whether the server's answers (command tags, the first error) are collected for the
    /// gate's audit records; set by the relay from [`super::verdict::Gate::wants_answers`].
    pub collect_answers: bool,
    answer: BatchAnswer,
    /// What the server said of Parse messages, in order, while answers are collected: the
    /// gate applies a Parse's effects only once the server confirmed it. Drained by the relay.
    pub parse_answers: Vec<ParseAnswer>,
    /// Whether Parse answers are watched (set by the relay from the gate).
    pub watch_parses: bool,
    /// Portals bound to statements that resolve what they name when they run: the batch of
    /// their Bind and the gate's facts stamp then. An Execute in another batch, or after the
    /// facts moved, is refused (see [`Gate::bound_stamp`]).
    late_portals: std::collections::HashMap<Vec<u8>, (u64, u64)>,
}

/// The server's word on the Parse messages of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseAnswer {
    /// ParseComplete: the oldest unanswered Parse took effect.
    Complete,
    /// An error in batch `batch_end` (see `View::batch_end`): its Parses still unanswered
    /// were skipped (or failed) and took no effect.
    Failed { batch_end: u64 },
}

/// What the server answered in one batch (up to its ReadyForQuery), when collected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchAnswer {
    /// CommandComplete tags, in order.
    pub commands: Vec<String>,
    /// The first ErrorResponse as the client saw it: SQLSTATE and message.
    pub error: Option<(String, String)>,
}

/// What becomes of one gated client frame.
enum Gated {
    Forward,
    /// Refused: this frame goes to the server in its place.
    StandIn(Vec<u8>),
    /// Not decided yet: the frame waits in the input buffer.
    Wait(Waiting),
}

impl SessionState {
    pub fn new(links: Links) -> Self {
        SessionState {
            phase: Phase::Authenticating,
            tx: TxStatus::Idle,
            params: ServerParams::default(),
            links,
            batches: Batches::default(),
            unsynced: false,
            executed: false,
            client_streaming: 0,
            client_skipping: 0,
            max_statement_bytes: crate::config::Limits::DEFAULT_MAX_STATEMENT_BYTES,
            server_streaming: 0,
            server_header_seen: false,
            expect_sasl_initial: false,
            awaiting_auth_response: false,
            server_sent_fatal: false,
            client_terminated: false,
            new_cancel_key: None,
            refusals: Refusals::default(),
            batch_error: false,
            ready_events: Vec::new(),
            collect_answers: false,
            answer: BatchAnswer::default(),
            parse_answers: Vec::new(),
            watch_parses: false,
            late_portals: Default::default(),
        }
    }

    /// True when nothing is in flight: the last ReadyForQuery said idle, every request has
    /// been answered, and no frame is half-way in either direction.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Ready
            && self.tx == TxStatus::Idle
            && !self.batches.awaiting_ready()
            && !self.unsynced
            && self.client_streaming == 0
            && self.client_skipping == 0
            && self.server_streaming == 0
    }

    /// True when pgwarden may add a message of its own to the client stream.
    pub fn at_server_frame_boundary(&self) -> bool {
        self.server_streaming == 0
    }

    /// True when pgwarden may add a message of its own to the server stream.
    pub fn at_client_frame_boundary(&self, cin: &[u8]) -> bool {
        self.client_streaming == 0 && self.client_skipping == 0 && cin.is_empty()
    }

    fn client_limits(&self) -> Limits {
        match self.phase {
            Phase::Authenticating => Limits::FrontendAuth,
            _ => Limits::Frontend,
        }
    }

    /// Moves every complete (or streamable) client frame from `cin` to `out`, asking `gate`
    /// about the SQL of each Query and Parse. An error is the FATAL to send the client before
    /// closing the session.
    ///
    /// `Ok(Some(waiting))`: the gate waits before it can decide on the next frame, which
    /// stays in `cin` (with everything behind it); hand the gate the wait's answer
    /// ([`Gate::resume`]) and call again.
    pub fn client_frames(
        &mut self,
        cin: &mut BytesMut,
        out: &mut BytesMut,
        gate: &mut dyn Gate,
    ) -> Result<Option<Waiting>, PgError> {
        loop {
            if self.client_streaming > 0 {
                let n = self.client_streaming.min(cin.len());
                if n == 0 {
                    return Ok(None);
                }
                out.extend_from_slice(&cin[..n]);
                cin.advance(n);
                self.client_streaming -= n;
                continue;
            }
            if self.client_skipping > 0 {
                let n = self.client_skipping.min(cin.len());
                if n == 0 {
                    return Ok(None);
                }
                cin.advance(n);
                self.client_skipping -= n;
                continue;
            }
            if self.batches.is_lost() && self.phase == Phase::Ready {
                return Err(protocol_violation(
                    "pgwarden cannot tell which messages the server ran: a COPY FROM STDIN failed with messages other than COPY data queued behind it, or the server answered what was not asked; reconnect",
                ));
            }
            if self.client_terminated {
                // Nothing after Terminate is forwarded.
                cin.clear();
                return Ok(None);
            }
            if self.phase == Phase::Authenticating
                && !self.awaiting_auth_response
                && cin.first().is_some_and(|t| !matches!(t, b'p' | b'X'))
            {
                // Sent ahead of authentication (a Query in the same write as the startup
                // packet, say): it waits until the session is established.
                return Ok(None);
            }
            let h = match parse_header(cin, self.client_limits()) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(e) => return Err(client_frame_error(e, self.phase)),
            };
            let frame_len = h.frame_len();
            if h.tag == b'B' && frame_len > READ_LIMIT {
                // Streamed (its parameters are not read by the proxy), but decided first on
                // its portal and statement names, which open it.
                let seen = &cin[HEADER_LEN..cin.len().min(frame_len)];
                let Some(names) = seen
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b == 0)
                    .nth(1)
                    .map(|(i, _)| i + 1)
                else {
                    if seen.len() >= READ_LIMIT || cin.len() >= frame_len {
                        return Err(protocol_violation("invalid Bind message"));
                    }
                    return Ok(None);
                };
                match self.gate_frame(h.tag, &seen[..names], gate)? {
                    Gated::Forward => self.client_streaming = frame_len,
                    Gated::StandIn(f) => {
                        out.extend_from_slice(&f);
                        self.client_skipping = frame_len;
                    }
                    Gated::Wait(p) => return Ok(Some(p)),
                }
                self.note_client_message(h.tag);
                continue;
            }
            if h.tag == b'd' && frame_len > READ_LIMIT {
                // Streamed: its content is not read by the proxy.
                self.note_client_message(h.tag);
                self.client_streaming = frame_len;
                continue;
            }
            if matches!(h.tag, b'Q' | b'P' | b'F') && frame_len > self.max_statement_bytes {
                // Statements are inspected whole, so they are held whole: past the limit one
                // is refused (ERROR, as the server refuses what it cannot take) and skipped.
                let Some(stand_in) = self.refuse_oversized(h, cin) else {
                    return Ok(None);
                };
                out.extend_from_slice(&stand_in);
                self.note_client_message(h.tag);
                self.client_skipping = frame_len;
                continue;
            }
            if cin.len() < frame_len {
                return Ok(None);
            }
            self.check_client_frame(h.tag, &cin[HEADER_LEN..frame_len])?;
            let outcome = self.gate_frame(h.tag, &cin[HEADER_LEN..frame_len], gate)?;
            let stand_in = match outcome {
                Gated::Forward => None,
                Gated::StandIn(f) => Some(f),
                Gated::Wait(p) => return Ok(Some(p)),
            };
            self.note_client_message(h.tag);
            match stand_in {
                Some(f) => out.extend_from_slice(&f),
                None => out.extend_from_slice(&cin[..frame_len]),
            }
            cin.advance(frame_len);
        }
    }

    /// The stand-in for an oversized statement frame at the head of `cin`; `None` until the
    /// first bytes of a Parse's name are there (PostgreSQL tells statements apart by their
    /// first 63 bytes, so the stand-in fails under the same name).
    fn refuse_oversized(&mut self, h: crate::wire::frame::Header, cin: &[u8]) -> Option<Vec<u8>> {
        let error =
            crate::wire::messages::statement_too_large(h.tag, h.len, self.max_statement_bytes);
        let batch_end = self.batch_end();
        Some(match h.tag {
            b'Q' => query_frame(&self.refusals.refuse(error, batch_end)),
            b'P' => {
                let head = cin.get(HEADER_LEN..HEADER_LEN + 64)?;
                let name = &head[..head.iter().position(|&b| b == 0).unwrap_or(63)];
                parse_frame(name, &self.refusals.refuse(error, batch_end))
            }
            _ => {
                self.refusals.refuse_function_call(error, batch_end);
                function_call_frame()
            }
        })
    }

    /// Asks the gate about a Query, Parse, Bind or FunctionCall.
    fn gate_frame(&mut self, tag: u8, body: &[u8], gate: &mut dyn Gate) -> Result<Gated, PgError> {
        if tag == b'F' {
            let oid = body
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| protocol_violation("invalid FunctionCall message"))?;
            let view = self.view(None);
            return Ok(match gate.check_function_call(oid, &view) {
                Verdict::Forward => Gated::Forward,
                Verdict::Wait(p) => Gated::Wait(p),
                Verdict::Refuse(error) => {
                    self.refusals.refuse_function_call(error, self.batch_end());
                    Gated::StandIn(function_call_frame())
                }
            });
        }
        if tag == b'B' {
            let mut pos = 0;
            let portal = read_cstr(body, &mut pos)
                .ok_or_else(|| protocol_violation("invalid Bind message"))?;
            let statement = read_cstr(body, &mut pos)
                .ok_or_else(|| protocol_violation("invalid Bind message"))?;
            let view = self.view(None);
            let verdict = match gate.check_bind(statement, &view) {
                Verdict::Forward => match gate.bound_stamp() {
                    None => {
                        self.late_portals.remove(portal);
                        Verdict::Forward
                    }
                    Some(_) if self.late_portals.len() >= MAX_LATE_PORTALS => {
                        Verdict::Refuse(PgError::error(
                            SqlState::PROGRAM_LIMIT_EXCEEDED,
                            format!("pgwarden: more than {MAX_LATE_PORTALS} portals of utility statements are open in this session"),
                        ).with_hint("Execute portals of utility statements (TRUNCATE, DROP, ALTER) right after their Bind, or end the transaction."))
                    }
                    Some(stamp) => {
                        self.late_portals
                            .insert(portal.to_vec(), (self.batch_end(), stamp));
                        Verdict::Forward
                    }
                },
                other => other,
            };
            return Ok(match verdict {
                Verdict::Forward => Gated::Forward,
                Verdict::Wait(p) => Gated::Wait(p),
                Verdict::Refuse(error) => {
                    self.late_portals.remove(portal);
                    let marker = self.refusals.refuse_bind(error, self.batch_end());
                    Gated::StandIn(bind_frame(portal, &marker))
                }
            });
        }
        if tag == b'E' {
            let mut pos = 0;
            let portal = read_cstr(body, &mut pos)
                .ok_or_else(|| protocol_violation("invalid Execute message"))?;
            if let Some(&(batch, stamp)) = self.late_portals.get(portal) {
                if batch != self.batch_end() || stamp != gate.facts_stamp() {
                    let name = if portal.is_empty() {
                        "the unnamed portal".to_owned()
                    } else {
                        format!("portal \"{}\"", String::from_utf8_lossy(portal))
                    };
                    let error = PgError::error(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        format!("pgwarden: {name} was decided before the session changed"),
                    )
                    .with_detail("Its statement names objects it resolves only when it runs, and what the decision at Bind rested on has changed since (or the Bind was in an earlier batch).")
                    .with_hint("Bind it again, and Execute it right after the Bind.");
                    tracing::warn!(portal = %name, "Execute refused: decided before the session changed");
                    let marker = self.refusals.refuse_execute(error, self.batch_end());
                    return Ok(Gated::StandIn(execute_frame(&marker)));
                }
            }
            return Ok(Gated::Forward);
        }
        if tag == b'C' {
            // Close: of a prepared statement, the gate forgets it (a Close the server skips
            // leaves it there, which a later Bind then finds unknown to the gate: refused).
            let mut pos = 1;
            if body.first() == Some(&b'S') {
                let name = read_cstr(body, &mut pos)
                    .ok_or_else(|| protocol_violation("invalid Close message"))?;
                gate.on_close(name);
            } else if body.first() == Some(&b'P') {
                if let Some(name) = read_cstr(body, &mut pos) {
                    self.late_portals.remove(name);
                }
            }
            return Ok(Gated::Forward);
        }
        let (name, text) = match tag {
            // Checked above: exactly one NUL, at the end.
            b'Q' => (None, &body[..body.len() - 1]),
            b'P' => {
                let mut pos = 0;
                let name = read_cstr(body, &mut pos)
                    .ok_or_else(|| protocol_violation("invalid Parse message"))?;
                let text = read_cstr(body, &mut pos)
                    .ok_or_else(|| protocol_violation("invalid Parse message"))?;
                (Some(name), text)
            }
            _ => return Ok(Gated::Forward),
        };
        let view = self.view(name);
        match gate.check(text, &view) {
            Verdict::Forward => Ok(Gated::Forward),
            Verdict::Wait(p) => Ok(Gated::Wait(p)),
            Verdict::Refuse(error) => {
                let marker = self.refusals.refuse(error, self.batch_end());
                Ok(Gated::StandIn(match name {
                    None => query_frame(&marker),
                    Some(n) => parse_frame(n, &marker),
                }))
            }
        }
    }

    fn view<'a>(&'a self, parse_name: Option<&'a [u8]>) -> View<'a> {
        View {
            params: &self.params,
            tx: self.tx,
            settled: self.phase == Phase::Ready
                && !self.batches.awaiting_ready()
                && !self.executed
                && !self.batches.is_lost(),
            batch_end: self.batch_end(),
            parse_name,
        }
    }

    fn note_client_message(&mut self, tag: u8) {
        if matches!(tag, b'Q' | b'F' | b'E') {
            self.executed = true;
        }
        if self.phase != Phase::Authenticating {
            if let Some(kind) = Sent::of(tag) {
                self.batches.sent(kind);
            }
        }
        match tag {
            b'S' => self.unsynced = false,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
            b'X' => self.client_terminated = true,
            b'p' => self.awaiting_auth_response = false,
            _ => {}
        }
    }

    fn check_client_frame(&mut self, tag: u8, body: &[u8]) -> Result<(), PgError> {
        match tag {
            // One C string filling the whole body: what PostgreSQL reads is what the proxy
            // reads. Anything else is how requests get smuggled past inspection.
            b'Q' if body.iter().position(|&b| b == 0) != Some(body.len().wrapping_sub(1)) => {
                return Err(protocol_violation("invalid string in Query message"));
            }
            b'p' if self.expect_sasl_initial => {
                self.expect_sasl_initial = false;
                let (mech, flag) = read::sasl_initial_response(body)
                    .ok_or_else(|| protocol_violation("malformed SASLInitialResponse"))?;
                check_channel_binding(&mech, flag, self.links)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves server frames from `sin` to `out`, reading the ones that carry session state.
    /// An error means the server broke the protocol; the session must end.
    pub fn server_frames(
        &mut self,
        sin: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        loop {
            if self.server_streaming > 0 {
                let n = self.server_streaming.min(sin.len());
                if n == 0 {
                    return Ok(());
                }
                out.extend_from_slice(&sin[..n]);
                sin.advance(n);
                self.server_streaming -= n;
                continue;
            }
            let Some(h) = parse_header(sin, Limits::Backend)? else {
                return Ok(());
            };
            let frame_len = h.frame_len();
            if self.phase == Phase::Ready && h.tag != b'Z' && !self.server_header_seen {
                // Once per frame, even when it arrives in pieces.
                self.batches.on_server(h.tag);
            }
            self.server_header_seen = true;
            let wanted = matches!(h.tag, b'Z' | b'K' | b'S' | b'R' | b'E')
                || (h.tag == b'C' && self.collect_answers)
                || (h.tag == b'1' && self.watch_parses);
            if !wanted || frame_len > READ_LIMIT {
                self.server_streaming = frame_len;
                self.server_header_seen = false;
                continue;
            }
            if sin.len() < frame_len {
                return Ok(());
            }
            self.server_header_seen = false;
            let rewritten = self.rewrite_server_frame(h.tag, &sin[HEADER_LEN..frame_len]);
            if self.watch_parses {
                match h.tag {
                    b'1' => self.parse_answers.push(ParseAnswer::Complete),
                    b'E' => self.parse_answers.push(ParseAnswer::Failed {
                        batch_end: self.batches.front_batch(),
                    }),
                    _ => {}
                }
            }
            if self.collect_answers {
                let body = match &rewritten {
                    Some(f) => &f[HEADER_LEN..],
                    None => &sin[HEADER_LEN..frame_len],
                };
                self.collect_answer(h.tag, body);
            }
            self.read_server_frame(h.tag, &sin[HEADER_LEN..frame_len]);
            match rewritten {
                Some(frame) => out.extend_from_slice(&frame),
                None => out.extend_from_slice(&sin[..frame_len]),
            }
            sin.advance(frame_len);
        }
    }

    /// The server frames pgwarden changes: the error answering a refusal's stand-in becomes
    /// pgwarden's refusal; and to a plaintext client, AuthenticationSASL
    /// offering SCRAM-SHA-256-PLUS (which the server offers on its TLS link to pgwarden) is
    /// sent without it, since libpq refuses a -PLUS offer over a non-TLS link. The client
    /// then uses plain SCRAM with flag `n`, which the server accepts.
    fn rewrite_server_frame(&mut self, tag: u8, body: &[u8]) -> Option<Vec<u8>> {
        if tag == b'E' {
            return self.refusals.substitute(body);
        }
        if tag != b'R' || self.links.client_tls {
            return None;
        }
        let Some(AuthRequest::Sasl(mechs)) = read::auth_request(body) else {
            return None;
        };
        let kept: Vec<&String> = mechs.iter().filter(|m| !m.ends_with("-PLUS")).collect();
        if kept.len() == mechs.len() || kept.is_empty() {
            return None;
        }
        let mut b = 10i32.to_be_bytes().to_vec();
        for m in kept {
            b.extend_from_slice(m.as_bytes());
            b.push(0);
        }
        b.push(0);
        let mut frame = vec![b'R'];
        frame.extend_from_slice(&((b.len() + 4) as u32).to_be_bytes());
        frame.extend(b);
        Some(frame)
    }

    fn collect_answer(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'C' => {
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                self.answer
                    .commands
                    .push(String::from_utf8_lossy(&body[..end]).into_owned());
            }
            b'E' if self.answer.error.is_none() => {
                if let Some(f) = read::error_fields(body) {
                    self.answer.error = Some((f.code, f.message));
                }
            }
            _ => {}
        }
    }

    /// The number of the ReadyForQuery that ends the batch a message sent now belongs to.
    fn batch_end(&self) -> u64 {
        self.batches.batch_end()
    }

    fn read_server_frame(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                if let Some(tx) = read::ready_for_query(body) {
                    self.tx = tx;
                }
                let ready = match self.phase {
                    Phase::Ready => self.batches.on_server(b'Z'),
                    _ => {
                        self.batches.started();
                        None
                    }
                };
                if !self.batches.awaiting_ready() {
                    self.executed = false;
                    if self.tx == TxStatus::Idle {
                        // No transaction, nothing sent ahead: no portal is open.
                        self.late_portals.clear();
                    }
                }
                if let Some(Ready::Closed(closed)) = ready {
                    self.refusals.on_ready(closed);
                    let answer = std::mem::take(&mut self.answer);
                    self.ready_events
                        .push((self.batch_error, self.tx, closed, answer));
                    self.batch_error = false;
                }
                self.phase = Phase::Ready;
            }
            b'K' => self.new_cancel_key = read::backend_key_data(body),
            b'S' => {
                if let Some((name, value)) = read::parameter_status(body) {
                    self.params.set(name, value);
                }
            }
            b'R' => match read::auth_request(body) {
                Some(AuthRequest::Ok) => {
                    self.phase = Phase::Starting;
                    self.awaiting_auth_response = false;
                }
                Some(AuthRequest::Sasl(_)) => {
                    self.expect_sasl_initial = true;
                    self.awaiting_auth_response = true;
                }
                // SASLFinal carries the server's last word: nothing to answer.
                Some(AuthRequest::SaslFinal) => {}
                _ => self.awaiting_auth_response = true,
            },
            b'E' => {
                self.batch_error = true;
                if read::error_fields(body).is_some_and(|f| f.is_fatal()) {
                    self.server_sent_fatal = true;
                }
            }
            _ => {}
        }
    }
}

fn protocol_violation(msg: &str) -> PgError {
    PgError::fatal(SqlState::PROTOCOL_VIOLATION, format!("pgwarden: {msg}"))
}

fn client_frame_error(e: FrameError, phase: Phase) -> PgError {
    match (e, phase) {
        (FrameError::UnexpectedType(t), Phase::Authenticating) => {
            protocol_violation(&format!("expected password response, got message type {t}"))
        }
        (e, _) => protocol_violation(&e.to_string()),
    }
}

/// SCRAM channel binding ties the authentication to the TLS certificate of the link the
/// client sees. pgwarden terminates that TLS, so the server would see a different link:
/// refuse clearly instead of letting the server fail with a confusing error.
fn check_channel_binding(
    mech: &str,
    flag: Option<ChannelBindingFlag>,
    links: Links,
) -> Result<(), PgError> {
    let why = if mech == "SCRAM-SHA-256-PLUS" || flag == Some(ChannelBindingFlag::Used) {
        "the client asked for SCRAM channel binding (SCRAM-SHA-256-PLUS), which cannot pass a proxy that terminates TLS"
    } else if flag == Some(ChannelBindingFlag::ClientOnly) && links.upstream_tls {
        "the client supports SCRAM channel binding over its TLS link to pgwarden, and the server, on its own TLS link, will take that as a downgrade attack"
    } else {
        return Ok(());
    };
    Err(PgError::fatal(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        format!("pgwarden: channel binding cannot be relayed: {why}"),
    )
    .with_hint(
        "Connect with channel_binding=disable, or connect to pgwarden without TLS, or set upstream.tls = \"disable\" (plaintext upstream on the same host) or use a Unix-socket upstream so the server does not offer channel binding.",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::verdict::OpenGate;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn ready() -> SessionState {
        let mut s = SessionState::new(Links {
            client_tls: false,
            upstream_tls: false,
        });
        s.phase = Phase::Ready;
        s
    }

    #[test]
    fn forwards_exact_bytes_frame_by_frame() {
        let mut s = ready();
        let mut input = msg(b'Q', b"SELECT 1\0");
        input.extend(msg(b'S', b""));
        let mut cin = BytesMut::from(&input[..input.len() - 2]);
        let mut out = BytesMut::new();
        s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
        assert_eq!(&out[..], &msg(b'Q', b"SELECT 1\0")[..]);
        cin.extend_from_slice(&input[input.len() - 2..]);
        s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
        assert_eq!(&out[..], &input[..]);
        assert!(cin.is_empty());
        assert!(s.batches.awaiting_ready());
        assert_eq!(s.batch_end(), 4);
    }

    #[test]
    fn unterminated_query_followed_by_query_is_refused() {
        // Regression for the smuggling probe: an unterminated Query whose text would run
        // into the next frame.
        let mut s = ready();
        let mut input = msg(b'Q', b"SELECT 1");
        input.extend(msg(b'Q', b"DROP TABLE t\0"));
        let mut cin = BytesMut::from(&input[..]);
        let mut out = BytesMut::new();
        let err = s
            .client_frames(&mut cin, &mut out, &mut OpenGate)
            .expect_err("a fatal error");
        assert_eq!(err.code, SqlState::PROTOCOL_VIOLATION);
        assert!(out.is_empty());
    }

    #[test]
    fn query_with_interior_nul_is_refused() {
        let mut s = ready();
        let mut cin = BytesMut::from(&msg(b'Q', b"SELECT 1\0DROP TABLE t\0")[..]);
        assert!(s
            .client_frames(&mut cin, &mut BytesMut::new(), &mut OpenGate)
            .is_err());
    }

    /// Regression: a statement over the limit ended the session with FATAL 54000.
    #[test]
    fn an_oversized_statement_is_refused_and_skipped_as_it_arrives() {
        let mut s = ready();
        s.max_statement_bytes = 1024;
        let before = s.batches.batch_end();
        let mut frame = msg(b'Q', &[b'x'; 100_000]);
        frame.extend(msg(b'Q', b"SELECT 1\0"));
        let mut cin = BytesMut::from(&frame[..10]);
        let mut out = BytesMut::new();
        s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
        // The stand-in goes at once; what arrived is dropped, not held.
        assert!(out.starts_with(b"Q") && out.len() < 100);
        assert!(cin.is_empty());
        let sent = out.len();
        for chunk in frame[10..].chunks(4096) {
            cin.extend_from_slice(chunk);
            s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
            assert!(cin.len() < 4096 + 14);
        }
        assert_eq!(&out[sent..], &msg(b'Q', b"SELECT 1\0")[..]);
        // Both Queries (the stand-in and the next) await their ReadyForQuery.
        assert_eq!(s.batches.batch_end() - before, 2);
        assert!(s.batches.awaiting_ready());
        // A Parse waits for its name, and its stand-in carries it.
        let mut p = b"stmt\0".to_vec();
        p.extend([b'y'; 5000]);
        let parse = msg(b'P', &p);
        let mut cin = BytesMut::from(&parse[..8]);
        let mut out = BytesMut::new();
        s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
        assert!(out.is_empty());
        cin.extend_from_slice(&parse[8..]);
        s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
        assert!(out.starts_with(b"P") && out[5..].starts_with(b"stmt\0pgwarden_refused_"));
        assert!(cin.is_empty() && s.at_client_frame_boundary(&cin));
    }

    #[test]
    fn copy_data_is_streamed() {
        let mut s = ready();
        let body = vec![b'x'; 200_000];
        let frame = msg(b'd', &body);
        let mut cin = BytesMut::from(&frame[..1000]);
        let mut out = BytesMut::new();
        s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
        assert_eq!(out.len(), 1000);
        assert!(!s.at_client_frame_boundary(&cin));
        cin.extend_from_slice(&frame[1000..]);
        s.client_frames(&mut cin, &mut out, &mut OpenGate).unwrap();
        assert_eq!(&out[..], &frame[..]);
        assert!(s.at_client_frame_boundary(&cin));
    }

    #[test]
    fn server_state_is_tracked() {
        let mut s = SessionState::new(Links {
            client_tls: false,
            upstream_tls: false,
        });
        let mut input = msg(b'R', &[0, 0, 0, 0]);
        input.extend(msg(b'S', b"server_version\x0015.4\0"));
        input.extend(msg(b'S', b"standard_conforming_strings\0on\0"));
        input.extend(msg(b'K', &[0, 0, 0, 9, 1, 2, 3, 4]));
        input.extend(msg(b'Z', b"I"));
        input.extend(msg(b'D', &vec![0u8; 100_000]));
        let mut sin = BytesMut::from(&input[..]);
        let mut out = BytesMut::new();
        s.server_frames(&mut sin, &mut out).unwrap();
        assert_eq!(&out[..], &input[..]);
        assert_eq!(s.phase, Phase::Ready);
        assert_eq!(s.params.server_version.as_deref(), Some("15.4"));
        assert_eq!(s.params.standard_conforming_strings, Some(true));
        assert_eq!(s.new_cancel_key.as_ref().map(|k| k.pid), Some(9));
        assert!(s.is_idle());
    }

    #[test]
    fn channel_binding_through_tls_is_refused_with_a_hint() {
        let links = Links {
            client_tls: true,
            upstream_tls: true,
        };
        assert!(
            check_channel_binding("SCRAM-SHA-256-PLUS", Some(ChannelBindingFlag::Used), links)
                .is_err()
        );
        let e = check_channel_binding("SCRAM-SHA-256", Some(ChannelBindingFlag::ClientOnly), links)
            .unwrap_err();
        assert!(e.hint.unwrap().contains("channel_binding=disable"));
        assert!(check_channel_binding(
            "SCRAM-SHA-256",
            Some(ChannelBindingFlag::NotSupported),
            links
        )
        .is_ok());
        let plain_upstream = Links {
            client_tls: true,
            upstream_tls: false,
        };
        assert!(check_channel_binding(
            "SCRAM-SHA-256",
            Some(ChannelBindingFlag::ClientOnly),
            plain_upstream
        )
        .is_ok());
    }

    #[test]
    fn plus_mechanism_is_hidden_from_plaintext_clients() {
        let offer = msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let mut plain = SessionState::new(Links {
            client_tls: false,
            upstream_tls: true,
        });
        let mut out = BytesMut::new();
        plain
            .server_frames(&mut BytesMut::from(&offer[..]), &mut out)
            .unwrap();
        assert_eq!(&out[..], &msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0")[..]);
        let mut tls = SessionState::new(Links {
            client_tls: true,
            upstream_tls: true,
        });
        let mut out = BytesMut::new();
        tls.server_frames(&mut BytesMut::from(&offer[..]), &mut out)
            .unwrap();
        assert_eq!(&out[..], &offer[..]);
    }

    #[test]
    fn only_password_messages_while_authenticating() {
        let mut s = SessionState::new(Links {
            client_tls: false,
            upstream_tls: false,
        });
        let mut cin = BytesMut::from(&msg(b'Q', b"SELECT 1\0")[..]);
        // Sent ahead of authentication: it waits, as PostgreSQL leaves it unread.
        let mut out = BytesMut::new();
        assert!(s
            .client_frames(&mut cin, &mut out, &mut OpenGate)
            .unwrap()
            .is_none());
        assert!(out.is_empty());
        assert!(!cin.is_empty());
        // Once the server asks for a password, anything else is an error, as there.
        s.server_frames(
            &mut BytesMut::from(&msg(b'R', &3i32.to_be_bytes())[..]),
            &mut BytesMut::new(),
        )
        .unwrap();
        let e = s
            .client_frames(&mut cin, &mut out, &mut OpenGate)
            .expect_err("a fatal error");
        assert!(e.message.contains("expected password response"));
    }
}
