//! The relay: one loop that reads both links at once (so a pipelining client can never
//! deadlock it against a server that is busy writing), hands the bytes to the session state
//! to be framed and checked, and writes what is ready. It also ends the session in the ways
//! a proxy must: client or server gone, protocol violation, login timeout, shutdown.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, Instant};

use super::state::{Links, Phase, SessionState};
use super::verdict::{Gate, Step, Waiting};
use super::Shared;
use crate::cancel::{CancelGuard, CancelSignal, CancelTarget};
use crate::net::Stream;
use crate::wire::messages::{PgError, TERMINATE};
use crate::wire::sqlstate::SqlState;

/// Read-buffer growth step of a busy link.
const READ_CHUNK: usize = 32 * 1024;
/// Read-buffer size of a quiet link (small messages, or idle): an idle session holds only
/// buffers of this size, so a thousand idle clients cost little memory.
const SMALL_CHUNK: usize = 2 * 1024;
/// Reads in a row below half a small chunk after which a busy link counts as quiet again.
const QUIET_READS: u32 = 32;
/// Stop reading a link while this much is waiting to be written to the other one.
const HIGH_WATER: usize = 256 * 1024;

/// How much a client may send behind a waiting message before pgwarden stops reading it
/// (a hang-up behind more than this is noticed when the wait ends).
const WAITING_HIGH_WATER: usize = 4 * HIGH_WATER;

/// The length of the frame at the head of `b` (tag and length word included), 0 when its
/// header has not arrived.
fn head_frame_len(b: &[u8]) -> usize {
    match b.get(1..5) {
        Some(l) => 1 + u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize,
        None => 0,
    }
}
/// How long pgwarden tries to deliver its last words when a session ends.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the relay needs from its session.
pub struct Context<'a> {
    pub shared: &'a Shared,
    pub session_id: u64,
    /// Authentication must be done (first ReadyForQuery) by then.
    pub startup_deadline: Instant,
    /// Rung by CancelRequests for this session's key.
    pub cancel: CancelSignal,
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    ClientTerminated,
    ServerClosed,
    ClientProtocolViolation,
    ServerProtocolViolation,
    StartupTimeout,
    Shutdown,
    ClientIo(io::ErrorKind),
    ServerIo(io::ErrorKind),
}

/// The four halves of the two links. Plain TCP on both sides (the common case) is split
/// by borrowing, with no lock between the halves; anything else goes through
/// `tokio::io::split`.
struct Io<CR, CW, SR, SW> {
    cr: CR,
    cw: CW,
    sr: SR,
    sw: SW,
}

/// Relays a session from the forwarded StartupMessage to its end.
pub async fn run(
    ctx: Context<'_>,
    client: Stream,
    server: Stream,
    startup_packet: BytesMut,
    client_rest: BytesMut,
    gate: &mut (dyn Gate + Send),
) -> End {
    let links = Links {
        client_tls: client.is_tls(),
        upstream_tls: server.is_tls(),
    };
    match (client, server) {
        (Stream::Tcp(mut c), Stream::Tcp(mut s)) => {
            let (cr, cw) = c.split();
            let (sr, sw) = s.split();
            let io = Io { cr, cw, sr, sw };
            relay(ctx, io, links, startup_packet, client_rest, gate).await
        }
        (client, server) => {
            let (cr, cw) = tokio::io::split(client);
            let (sr, sw) = tokio::io::split(server);
            let io = Io { cr, cw, sr, sw };
            relay(ctx, io, links, startup_packet, client_rest, gate).await
        }
    }
}

async fn relay<CR, CW, SR, SW>(
    ctx: Context<'_>,
    mut io: Io<CR, CW, SR, SW>,
    links: Links,
    startup_packet: BytesMut,
    client_rest: BytesMut,
    gate: &mut (dyn Gate + Send),
) -> End
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let mut st = SessionState::new(links);
    st.max_statement_bytes = ctx.shared.config.limits.max_statement_bytes;
    let mut cin = client_rest;
    let mut sin = BytesMut::with_capacity(SMALL_CHUNK);
    let mut c2s = startup_packet;
    let mut s2c = BytesMut::with_capacity(SMALL_CHUNK);
    let (mut s_size, mut c_size) = (Sizing::default(), Sizing::default());
    let mut cancel_guard: Option<CancelGuard> = None;
    let (mut c_flush, mut s_flush) = (false, false);
    let mut drain_deadline: Option<Instant> = None;
    // Built once, not on every turn of the loop: select! evaluates every branch's future
    // each time, and a timer or notification made per turn costs more than the framing.
    let cancelled = ctx.shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    let startup_timer = sleep_until(ctx.startup_deadline);
    tokio::pin!(startup_timer);
    let drain_timer = sleep_until(ctx.startup_deadline);
    tokio::pin!(drain_timer);
    let grace = ctx.shared.config.shutdown_grace;

    // A client message waiting for the gate (a catalog lookup, a hold): it and everything
    // behind it stay in `cin`; the client is still read (hang-up and cancel are noticed), and
    // the server's traffic keeps flowing.
    let mut waiting: Option<Waiting> = None;
    // Notices of a wait not yet delivered (the server was half-way through a frame).
    let mut notices = BytesMut::new();
    let mut cancels = ctx.cancel.listen();
    let mut end = match st.client_frames(&mut cin, &mut c2s, gate) {
        Ok(w) => {
            waiting = begin_wait(w, &mut cancels);
            None
        }
        Err(fatal) => Some(client_violation(&st, fatal, &mut s2c)),
    };

    loop {
        if let Some(end) = end.take() {
            finish(&mut io, &st, &cin, &mut c2s, &mut s2c).await;
            drop(cancel_guard);
            return end;
        }
        if st.client_terminated && c2s.is_empty() {
            end = Some(End::ClientTerminated);
            continue;
        }
        if !notices.is_empty() && st.at_server_frame_boundary() {
            s2c.extend_from_slice(&notices.split());
        }
        s_size.fit(&mut sin, &mut s2c);
        c_size.fit(&mut cin, &mut c2s);
        // Whatever was forwarded last turn is answered in frames read from now on.
        st.collect_answers = gate.wants_answers();
        st.watch_parses = gate.wants_parse_answers();
        let startup_pending = st.phase != Phase::Ready;
        // While a message waits, the client is read (up to a bound past the waiting message,
        // which heads `cin`, so a hang-up is noticed however large it is) but not framed.
        let read_client = !st.client_terminated
            && match waiting {
                // Messages sent ahead of authentication wait in `cin`: bounded too.
                None if st.phase == Phase::Authenticating => {
                    c2s.len() < HIGH_WATER && cin.len() < HIGH_WATER
                }
                None => c2s.len() < HIGH_WATER,
                Some(_) => cin.len() < WAITING_HIGH_WATER + head_frame_len(&cin),
            };
        tokio::select! {
            biased;
            r = drain(&mut io.sw, &c2s), if !c2s.is_empty() || s_flush => match r {
                Out::Wrote(Ok(0)) => end = Some(End::ServerClosed),
                // Only TLS buffers records until flushed; a TCP flush is a no-op not worth a turn.
                Out::Wrote(Ok(n)) => { c2s.advance(n); s_flush = links.upstream_tls; }
                Out::Flushed(Ok(())) => s_flush = false,
                Out::Wrote(Err(e)) | Out::Flushed(Err(e)) => end = Some(End::ServerIo(e.kind())),
            },
            r = drain(&mut io.cw, &s2c), if !s2c.is_empty() || c_flush => match r {
                Out::Wrote(Ok(0)) => end = Some(End::ClientClosed),
                Out::Wrote(Ok(n)) => { s2c.advance(n); c_flush = links.client_tls; }
                Out::Flushed(Ok(())) => c_flush = false,
                Out::Wrote(Err(e)) | Out::Flushed(Err(e)) => end = Some(End::ClientIo(e.kind())),
            },
            r = io.sr.read_buf(&mut sin), if s2c.len() < HIGH_WATER => match r {
                Ok(0) => end = Some(server_gone(&st, &mut s2c)),
                Ok(n) => match (s_size.read(n), st.phase, st.server_frames(&mut sin, &mut s2c)) {
                    ((), before, Ok(())) => {
                        if before == Phase::Authenticating && !cin.is_empty() && waiting.is_none() {
                            // Client messages held during authentication: framed now that
                            // the server answered (or asked for a password).
                            match st.client_frames(&mut cin, &mut c2s, gate) {
                                Ok(w) => waiting = begin_wait(w, &mut cancels),
                                Err(fatal) => end = Some(client_violation(&st, fatal, &mut s2c)),
                            }
                        }
                        for a in st.parse_answers.drain(..) {
                            gate.on_parse_answer(a);
                        }
                        for (failed, tx, ready, answer) in st.ready_events.drain(..) {
                            gate.on_ready(failed, tx, ready, &answer);
                        }
                        if let Some(key) = st.new_cancel_key.take() {
                            cancel_guard = Some(ctx.shared.cancels.register(key, CancelTarget {
                                session_id: ctx.session_id,
                                upstream: ctx.shared.upstream.clone(),
                                signal: ctx.cancel.clone(),
                            }));
                        }
                        if drain_deadline.is_some() && st.is_idle() && waiting.is_none() {
                            end = Some(shutdown(&st, &cin, &mut c2s, &mut s2c));
                        }
                    }
                    ((), _, Err(e)) => {
                        tracing::warn!(error = %e, "server broke the protocol");
                        if st.at_server_frame_boundary() {
                            PgError::fatal(SqlState::PROTOCOL_VIOLATION, format!("pgwarden: invalid message from server: {e}"))
                                .encode(&mut s2c);
                        }
                        end = Some(End::ServerProtocolViolation);
                    }
                },
                Err(e) => {
                    let _ = server_gone(&st, &mut s2c);
                    end = Some(End::ServerIo(e.kind()));
                }
            },
            step = next_step(&mut waiting), if waiting.is_some() => match step {
                Some(Step::Notice(n)) => n.encode(&mut notices),
                done => {
                    waiting = None;
                    if let Some(Step::Done(answer)) = done {
                        gate.resume(*answer);
                    }
                    match st.client_frames(&mut cin, &mut c2s, gate) {
                        Ok(w) => waiting = begin_wait(w, &mut cancels),
                        Err(fatal) => end = Some(client_violation(&st, fatal, &mut s2c)),
                    }
                }
            },
            r = cancels.changed(), if waiting.is_some() => {
                if r.is_ok() {
                    if let Some(w) = waiting.as_mut() {
                        w.interrupt();
                    }
                }
            },
            r = io.cr.read_buf(&mut cin), if read_client => match r.inspect(|&n| c_size.read(n)) {
                Ok(0) => end = Some(End::ClientClosed),
                Ok(_) if waiting.is_some() => {}
                Ok(_) => match st.client_frames(&mut cin, &mut c2s, gate) {
                    Ok(w) => waiting = begin_wait(w, &mut cancels),
                    Err(fatal) => end = Some(client_violation(&st, fatal, &mut s2c)),
                },
                Err(e) => end = Some(End::ClientIo(e.kind())),
            },
            _ = &mut cancelled, if drain_deadline.is_none() => {
                if (st.is_idle() && waiting.is_none()) || st.phase != Phase::Ready {
                    end = Some(shutdown(&st, &cin, &mut c2s, &mut s2c));
                } else {
                    tracing::info!(grace = ?grace, "shutdown: waiting for the transaction to end");
                    let d = Instant::now() + grace;
                    drain_deadline = Some(d);
                    drain_timer.as_mut().reset(d);
                }
            },
            _ = &mut drain_timer, if drain_deadline.is_some() => {
                tracing::info!("shutdown: grace period over, closing a busy session");
                end = Some(shutdown(&st, &cin, &mut c2s, &mut s2c));
            },
            _ = &mut startup_timer, if startup_pending => {
                if st.at_server_frame_boundary() {
                    PgError::fatal(SqlState::QUERY_CANCELED, "pgwarden: canceling authentication due to timeout")
                        .encode(&mut s2c);
                }
                end = Some(End::StartupTimeout);
            },
        }
    }
}

/// A wait begins: cancels rung before it do not count.
fn begin_wait(
    w: Option<Waiting>,
    cancels: &mut tokio::sync::watch::Receiver<u64>,
) -> Option<Waiting> {
    if w.is_some() {
        cancels.borrow_and_update();
    }
    w
}

/// The next step of the wait in progress (a branch enabled only while there is one).
async fn next_step(w: &mut Option<Waiting>) -> Option<Step> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// One step of emptying an output buffer: a write while bytes wait, then a flush (TLS keeps
/// records buffered until flushed). Both are cancel-safe, so this can sit in `select!`.
enum Out {
    Wrote(io::Result<usize>),
    Flushed(io::Result<()>),
}

async fn drain<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> Out {
    if buf.is_empty() {
        Out::Flushed(w.flush().await)
    } else {
        Out::Wrote(w.write(buf).await)
    }
}

/// How much buffer one direction of the relay keeps: big while reads come big, small again
/// once they have been small for a while (the big buffers are then given back).
#[derive(Debug, Default)]
struct Sizing {
    busy: bool,
    quiet_reads: u32,
}

impl Sizing {
    /// A read of `n` bytes came in.
    fn read(&mut self, n: usize) {
        if n >= SMALL_CHUNK / 2 {
            self.busy = true;
            self.quiet_reads = 0;
        } else if self.busy {
            self.quiet_reads += 1;
            if self.quiet_reads >= QUIET_READS {
                self.busy = false;
            }
        }
    }

    /// Before reading into `input` (whose frames are copied into `output`): room for the
    /// next read, and big buffers of a quiet direction released while they are empty.
    fn fit(&self, input: &mut BytesMut, output: &mut BytesMut) {
        for b in [&mut *input, &mut *output] {
            // A buffer that grew for one large frame (a 50 MiB statement) never keeps it.
            let oversized = b.capacity() > 16 * READ_CHUNK;
            if b.is_empty() && (oversized || (!self.busy && b.capacity() > 4 * SMALL_CHUNK)) {
                *b = BytesMut::with_capacity(SMALL_CHUNK);
            }
        }
        let step = if self.busy { READ_CHUNK } else { SMALL_CHUNK };
        if input.capacity() - input.len() < step / 4 {
            input.reserve(step);
        }
    }
}

/// The client broke the protocol: tell it (when a frame boundary allows) and end.
fn client_violation(st: &SessionState, fatal: PgError, s2c: &mut BytesMut) -> End {
    tracing::info!(message = %fatal.message, "client protocol violation");
    if st.at_server_frame_boundary() {
        fatal.encode(s2c);
    }
    End::ClientProtocolViolation
}

/// The server closed its link. Unless it said why (a FATAL), the client is told.
fn server_gone(st: &SessionState, s2c: &mut BytesMut) -> End {
    if !st.server_sent_fatal && st.at_server_frame_boundary() {
        PgError::fatal(
            SqlState::CONNECTION_FAILURE,
            "pgwarden: the server closed the connection unexpectedly",
        )
        .with_hint("The server may have been restarted or terminated the backend; reconnect.")
        .encode(s2c);
    }
    End::ServerClosed
}

/// Ends the session for a proxy shutdown: FATAL 57P01 to the client, Terminate upstream.
fn shutdown(st: &SessionState, cin: &[u8], c2s: &mut BytesMut, s2c: &mut BytesMut) -> End {
    if st.at_server_frame_boundary() {
        PgError::fatal(
            SqlState::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .with_detail("pgwarden is shutting down.")
        .encode(s2c);
    }
    if st.at_client_frame_boundary(cin) && !st.client_terminated {
        c2s.extend_from_slice(&TERMINATE);
    }
    End::Shutdown
}

/// Delivers what is left to both sides (bounded in time), then closes both links.
async fn finish<CR, CW: AsyncWrite + Unpin, SR, SW: AsyncWrite + Unpin>(
    io: &mut Io<CR, CW, SR, SW>,
    st: &SessionState,
    cin: &[u8],
    c2s: &mut BytesMut,
    s2c: &mut BytesMut,
) {
    if st.at_client_frame_boundary(cin) && !st.client_terminated && !c2s.ends_with(&TERMINATE) {
        c2s.extend_from_slice(&TERMINATE);
    }
    let to_server = async {
        io.sw.write_all(c2s).await?;
        io.sw.flush().await?;
        io.sw.shutdown().await
    };
    let _ = timeout(FINAL_WRITE_TIMEOUT, to_server).await;
    let to_client = async {
        io.cw.write_all(s2c).await?;
        io.cw.flush().await?;
        io.cw.shutdown().await
    };
    let _ = timeout(FINAL_WRITE_TIMEOUT, to_client).await;
}
