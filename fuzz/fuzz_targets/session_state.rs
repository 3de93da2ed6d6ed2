//! Fuzzes the session state machine, `pgwarden::session::state::SessionState`, by driving
//! `client_frames` (with a fuzz-controlled `Gate`) and `server_frames` with the input cut
//! into chunks at arbitrary points, and the message decoders of `pgwarden::wire::read` on
//! arbitrary bytes.
//!
//! Input layout: byte 0 picks the `Links` (bit 0 client TLS, bit 1 upstream TLS) and the
//! gate (bits 2-3: 0 forwards everything, 1 refuses every Query/Parse/FunctionCall, 2 refuses
//! SQL containing `!` and odd FunctionCall OIDs, 3 refuses SQL of odd length and odd OIDs);
//! byte 1 gives the number `k` (0..=31) of schedule bytes that follow; each schedule byte `s`
//! says which direction gets the next chunk (bit 0: 0 = client, 1 = server) and its size
//! (`s >> 1`, 0..=127 bytes); the schedule repeats until the rest of the input (the payload)
//! is used up. With no schedule bytes, the payload alternates in 16-byte chunks.
//!
//! Checked, per direction, after every call that returned `Ok`: what was forwarded is exactly
//! the bytes fed, in order, frame by frame, nothing invented or lost, and what was not
//! forwarded is still buffered untouched — except for the documented rewrites, which are
//! checked against an independent model: a refused Query/Parse/FunctionCall is replaced by
//! its stand-in (`pgwarden_refused_N` marker Query/Parse, FunctionCall of OID 0); to a
//! plaintext client, AuthenticationSASL loses its `-PLUS` mechanisms; a server ErrorResponse
//! may be replaced by the gate's own refusal error once a refusal is pending. Only streamed
//! frames (client CopyData/Bind over 64 KiB, server frames pgwarden does not read) may be
//! forwarded partially. Nothing is forwarded after the client's Terminate. No panic. After
//! an `Err` the session is over and nothing more is checked, except that the client-side
//! error encodes to a well-formed FATAL ErrorResponse. With no refusal made, server-side
//! framing depends only on server bytes, so the server output and state are also compared
//! with a fresh session fed the same server bytes in one piece (chunking must not matter).
//!
//! The same payload is also handed to every `read::*` decoder (error_fields, auth_request,
//! sasl_initial_response, parameter_status, backend_key_data, ready_for_query), with light
//! consistency checks on what they return.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden::session::verdict::{Gate, Verdict, View};
use pgwarden::session::state::{Links, SessionState};
use pgwarden::wire::frame::{parse_header, read_cstr, Limits, HEADER_LEN};
use pgwarden::wire::messages::{PgError, Severity};
use pgwarden::wire::read::{self, AuthRequest};
use pgwarden::wire::sqlstate::SqlState;

/// `state.rs`'s READ_LIMIT: larger frames of streamable types are forwarded as they arrive.
const READ_LIMIT: usize = 64 * 1024;
/// How the fuzz gate's refusal errors start.
const REFUSED: &str = "fuzz gate refused";

fn check_decoders(body: &[u8]) {
    if let Some(f) = read::error_fields(body) {
        let _ = f.is_fatal();
        assert!(!f.severity.contains('\0') && !f.code.contains('\0') && !f.message.contains('\0'));
    }
    if let Some(AuthRequest::Sasl(mechs)) = read::auth_request(body) {
        for m in mechs {
            assert!(!m.is_empty() && !m.contains('\0'));
        }
    }
    if read::auth_request(body).is_some() {
        assert!(body.len() >= 4);
    }
    if let Some((mech, _flag)) = read::sasl_initial_response(body) {
        assert!(!mech.contains('\0'));
    }
    if let Some((name, value)) = read::parameter_status(body) {
        assert!(!name.contains(&0) && !value.contains(&0));
        assert_eq!(name.len() + value.len() + 2, body.len());
    }
    match read::backend_key_data(body) {
        Some(k) => {
            assert!((8..=260).contains(&body.len()));
            assert_eq!(k.pid.to_be_bytes(), body[..4]);
            assert_eq!(&k.secret[..], &body[4..]);
        }
        None => assert!(!(8..=260).contains(&body.len())),
    }
    if read::ready_for_query(body).is_some() {
        assert_eq!(body.len(), 1);
    }
}

/// A gate whose decisions are a pure function of the SQL text / OID, so the model can
/// predict them.
#[derive(Clone, Copy)]
struct FuzzGate {
    mode: u8,
    refusals: usize,
}

impl FuzzGate {
    fn refuses_sql(mode: u8, text: &[u8]) -> bool {
        match mode {
            0 => false,
            1 => true,
            2 => text.contains(&b'!'),
            _ => text.len() % 2 == 1,
        }
    }

    fn refuses_oid(mode: u8, oid: u32) -> bool {
        match mode {
            0 => false,
            1 => true,
            _ => oid % 2 == 1,
        }
    }

    fn refusal(&mut self, what: String) -> Verdict {
        self.refusals += 1;
        Verdict::Refuse(PgError {
            severity: Severity::Error,
            code: SqlState::INSUFFICIENT_PRIVILEGE,
            // Arbitrary bytes (NULs included) end up in the error the client sees.
            message: format!("{REFUSED}: {what}"),
            detail: None,
            hint: Some("fuzz".into()),
        })
    }
}

impl Gate for FuzzGate {
    fn check(&mut self, text: &[u8], _view: &View<'_>) -> Verdict {
        if Self::refuses_sql(self.mode, text) {
            self.refusal(String::from_utf8_lossy(text).into_owned())
        } else {
            Verdict::Forward
        }
    }

    fn check_function_call(&mut self, oid: u32, _view: &View<'_>) -> Verdict {
        if Self::refuses_oid(self.mode, oid) {
            self.refusal(format!("function {oid}"))
        } else {
            Verdict::Forward
        }
    }
}

/// What the model expects in place of one whole frame.
enum Expect {
    Exact,
    Replace(Vec<u8>),
    /// The frame as is, or the gate's refusal error substituted for it.
    ExactOrRefusal,
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Follows one direction's output incrementally and checks it against the bytes fed.
#[derive(Default)]
struct Model {
    /// Bytes of the fed stream accounted for by the output so far.
    fed_pos: usize,
    /// Bytes of the output checked so far.
    out_pos: usize,
    /// Bytes of a streamed frame still to come.
    stream_left: usize,
    /// Refusal markers issued (client side).
    markers: u32,
    /// Server errors replaced by refusal errors.
    substituted: usize,
    /// A Terminate was forwarded.
    terminated: bool,
}

impl Model {
    fn check(
        &mut self,
        dir: &str,
        fed: &[u8],
        out: &[u8],
        streamable: impl Fn(u8, usize) -> bool,
        mut expect: impl FnMut(&mut Self, u8, &[u8]) -> Expect,
    ) -> usize {
        while self.out_pos < out.len() {
            assert!(!self.terminated, "{dir}: bytes forwarded after Terminate");
            let o = &out[self.out_pos..];
            let f = &fed[self.fed_pos..];
            if self.stream_left > 0 {
                let n = self.stream_left.min(o.len());
                assert!(n <= f.len(), "{dir}: streamed more bytes than were fed");
                assert_eq!(
                    &o[..n],
                    &f[..n],
                    "{dir}: streamed bytes differ from those fed"
                );
                self.fed_pos += n;
                self.out_pos += n;
                self.stream_left -= n;
                continue;
            }
            assert!(
                f.len() >= HEADER_LEN,
                "{dir}: output without a full header fed"
            );
            let tag = f[0];
            let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]);
            assert!(len >= 4, "{dir}: output past a length word below 4");
            let flen = len as usize + 1;
            if streamable(tag, flen) {
                self.stream_left = flen;
                continue;
            }
            assert!(f.len() >= flen, "{dir}: output for an incomplete frame");
            let whole = &f[..flen];
            match expect(self, tag, &whole[HEADER_LEN..]) {
                Expect::Exact => {
                    assert!(
                        o.starts_with(whole),
                        "{dir}: frame {:?} not forwarded as fed",
                        tag as char
                    );
                    self.out_pos += flen;
                }
                Expect::Replace(r) => {
                    assert!(
                        o.starts_with(&r),
                        "{dir}: frame {:?} not rewritten as expected",
                        tag as char
                    );
                    self.out_pos += r.len();
                }
                Expect::ExactOrRefusal => {
                    if o.starts_with(whole) {
                        self.out_pos += flen;
                    } else {
                        let h = parse_header(o, Limits::Backend)
                            .expect("substituted error refused by the framer")
                            .expect("substituted error shorter than a header");
                        assert_eq!(h.tag, b'E', "{dir}: ErrorResponse replaced by non-error");
                        assert!(o.len() >= h.frame_len(), "substituted error cut short");
                        let fields = read::error_fields(&o[HEADER_LEN..h.frame_len()])
                            .expect("substituted error unreadable");
                        assert!(fields.message.starts_with(REFUSED), "{fields:?}");
                        assert_eq!(fields.code, "42501");
                        assert_eq!(fields.severity, "ERROR");
                        self.substituted += 1;
                        self.out_pos += h.frame_len();
                    }
                }
            }
            self.fed_pos += flen;
            if tag == b'X' && dir == "client" {
                self.terminated = true;
            }
        }
        self.fed_pos
    }
}

fn client_expect(mode: u8) -> impl FnMut(&mut Model, u8, &[u8]) -> Expect {
    move |m, tag, body| {
        let marker = |m: &mut Model| {
            m.markers += 1;
            format!("pgwarden_refused_{}", m.markers)
        };
        match tag {
            b'Q' if body.iter().position(|&b| b == 0) == Some(body.len().wrapping_sub(1)) => {
                if FuzzGate::refuses_sql(mode, &body[..body.len() - 1]) {
                    let mut b = marker(m).into_bytes();
                    b.push(0);
                    Expect::Replace(frame(b'Q', &b))
                } else {
                    Expect::Exact
                }
            }
            b'P' => {
                let mut pos = 0;
                let (Some(name), Some(text)) =
                    (read_cstr(body, &mut pos), read_cstr(body, &mut pos))
                else {
                    return Expect::Exact; // refused as malformed: never forwarded
                };
                if FuzzGate::refuses_sql(mode, text) {
                    let mut b = name.to_vec();
                    b.push(0);
                    b.extend_from_slice(marker(m).as_bytes());
                    b.extend_from_slice(&[0, 0, 0]);
                    Expect::Replace(frame(b'P', &b))
                } else {
                    Expect::Exact
                }
            }
            b'F' if body.len() >= 4 => {
                let oid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if FuzzGate::refuses_oid(mode, oid) {
                    Expect::Replace(frame(b'F', &[0; 10]))
                } else {
                    Expect::Exact
                }
            }
            _ => Expect::Exact,
        }
    }
}

fn server_expect(links: Links, refusals: usize) -> impl FnMut(&mut Model, u8, &[u8]) -> Expect {
    move |_m, tag, body| match tag {
        b'R' if !links.client_tls => {
            let Some(AuthRequest::Sasl(mechs)) = read::auth_request(body) else {
                return Expect::Exact;
            };
            let kept: Vec<&String> = mechs.iter().filter(|m| !m.ends_with("-PLUS")).collect();
            if kept.len() == mechs.len() || kept.is_empty() {
                return Expect::Exact;
            }
            let mut b = 10i32.to_be_bytes().to_vec();
            for m in kept {
                b.extend_from_slice(m.as_bytes());
                b.push(0);
            }
            b.push(0);
            Expect::Replace(frame(b'R', &b))
        }
        b'E' if refusals > 0 => Expect::ExactOrRefusal,
        _ => Expect::Exact,
    }
}

fn client_streamable(tag: u8, flen: usize) -> bool {
    matches!(tag, b'd' | b'B') && flen > READ_LIMIT
}

fn server_streamable(tag: u8, flen: usize) -> bool {
    !matches!(tag, b'Z' | b'K' | b'S' | b'R' | b'E') || flen > READ_LIMIT
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let links = Links {
        client_tls: data[0] & 1 != 0,
        upstream_tls: data[0] & 2 != 0,
    };
    let mode = (data[0] >> 2) & 3;
    let k = (data[1] & 31) as usize;
    let sched_end = (2 + k).min(data.len());
    let schedule: Vec<u8> = if sched_end > 2 {
        data[2..sched_end].to_vec()
    } else {
        vec![16 << 1, (16 << 1) | 1]
    };
    let payload = &data[sched_end..];

    check_decoders(payload);
    for start in 0..payload.len().min(8) {
        check_decoders(&payload[start..]);
    }

    let mut gate = FuzzGate { mode, refusals: 0 };
    let mut s = SessionState::new(links);
    let (mut cin, mut cout) = (BytesMut::new(), BytesMut::new());
    let (mut sin, mut sout) = (BytesMut::new(), BytesMut::new());
    let (mut cfed, mut sfed) = (Vec::new(), Vec::new());
    let (mut cmodel, mut smodel) = (Model::default(), Model::default());
    let mut server_err = None;
    let mut pos = 0usize;
    let mut step = 0usize;
    let mut idle_steps = 0usize;
    while pos < payload.len() {
        let sb = schedule[step % schedule.len()];
        step += 1;
        let size = ((sb >> 1) as usize).min(payload.len() - pos);
        if size == 0 {
            idle_steps += 1;
            if idle_steps > schedule.len() {
                break; // a schedule of only empty chunks never ends
            }
        } else {
            idle_steps = 0;
        }
        let chunk = &payload[pos..pos + size];
        pos += size;
        if sb & 1 == 0 {
            cfed.extend_from_slice(chunk);
            cin.extend_from_slice(chunk);
            match s.client_frames(&mut cin, &mut cout, &mut gate) {
                Ok(None) => {
                    let used = cmodel.check(
                        "client",
                        &cfed,
                        &cout,
                        client_streamable,
                        client_expect(mode),
                    );
                    // Markers are issued for refused Query/Parse only.
                    assert!(cmodel.markers as usize <= gate.refusals);
                    if s.client_terminated {
                        assert!(cmodel.terminated, "Terminate noted but not forwarded");
                        assert!(cin.is_empty(), "bytes after Terminate kept buffered");
                    } else {
                        assert!(!cmodel.terminated);
                        assert_eq!(used + cin.len(), cfed.len(), "client bytes lost");
                        assert_eq!(&cin[..], &cfed[used..], "client buffer altered");
                    }
                }
                Ok(Some(_)) => unreachable!("this gate never waits"),
                Err(e) => {
                    // The relay sends this to the client before closing: it must encode.
                    let b = e.to_bytes();
                    let h = parse_header(&b, Limits::Backend)
                        .expect("own ErrorResponse refused by the framer")
                        .expect("own ErrorResponse shorter than a header");
                    assert_eq!(h.tag, b'E');
                    assert_eq!(h.frame_len(), b.len());
                    assert!(read::error_fields(&b[5..]).is_some_and(|f| f.is_fatal()));
                    break;
                }
            }
        } else {
            sfed.extend_from_slice(chunk);
            sin.extend_from_slice(chunk);
            match s.server_frames(&mut sin, &mut sout) {
                Ok(()) => {
                    let used = smodel.check(
                        "server",
                        &sfed,
                        &sout,
                        server_streamable,
                        server_expect(links, gate.refusals),
                    );
                    assert!(
                        smodel.substituted <= gate.refusals,
                        "more errors replaced than refusals"
                    );
                    assert_eq!(used + sin.len(), sfed.len(), "server bytes lost");
                    assert_eq!(&sin[..], &sfed[used..], "server buffer altered");
                }
                Err(e) => {
                    let _ = e.to_string();
                    server_err = Some(e);
                    break;
                }
            }
        }
    }

    if gate.refusals > 0 {
        return;
    }
    // With nothing refused, server framing does not depend on the client side: the same
    // bytes in one piece give the same forwarded bytes, verdict and state.
    let mut fresh = SessionState::new(links);
    let mut one_in = BytesMut::from(&sfed[..]);
    let mut one_out = BytesMut::new();
    let one = fresh.server_frames(&mut one_in, &mut one_out);
    assert_eq!(one.err(), server_err, "server verdict depends on chunking");
    assert_eq!(&one_out[..], &sout[..], "server output depends on chunking");
    assert_eq!(fresh.phase, s.phase);
    assert_eq!(fresh.tx, s.tx);
    assert_eq!(fresh.params, s.params);
    assert_eq!(fresh.new_cancel_key, s.new_cancel_key);
    assert_eq!(fresh.server_sent_fatal, s.server_sent_fatal);
    assert_eq!(
        fresh.at_server_frame_boundary(),
        s.at_server_frame_boundary()
    );
});
