//! Fuzzes the session state machine, `pgwarden::session::state::SessionState`, by driving
//! `client_frames` and `server_frames` with the input cut into chunks at arbitrary points,
//! and the message decoders of `pgwarden::wire::read` on arbitrary bytes.
//!
//! Input layout: byte 0 picks the `Links` (bit 0 client TLS, bit 1 upstream TLS); byte 1
//! gives the number `k` (0..=31) of schedule bytes that follow; each schedule byte `s` says
//! which direction gets the next chunk (bit 0: 0 = client, 1 = server) and its size
//! (`s >> 1`, 0..=127 bytes); the schedule repeats until the rest of the input (the payload)
//! is used up. With no schedule bytes, the payload alternates in 16-byte chunks.
//!
//! Checked, per direction, after every call that returned `Ok`: the bytes forwarded are
//! exactly a prefix of the bytes fed, in order, nothing invented; forwarded + still-buffered
//! is exactly what was fed (except that after the client's Terminate the rest is dropped);
//! no panic. After an `Err` the session is over and nothing more is checked, except that the
//! client-side error encodes to a well-formed ErrorResponse frame. Because server-side
//! framing depends only on server bytes, the server output is also compared with a fresh
//! session fed the same server bytes in one piece (chunking must not change the result).
//!
//! The same payload is also handed to every `read::*` decoder (error_fields, auth_request,
//! sasl_initial_response, parameter_status, backend_key_data, ready_for_query), with
//! light consistency checks on what they return.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden::session::state::{Links, SessionState};
use pgwarden::wire::frame::{parse_header, Limits};
use pgwarden::wire::read;

fn check_decoders(body: &[u8]) {
    if let Some(f) = read::error_fields(body) {
        let _ = f.is_fatal();
        assert!(!f.severity.contains('\0') && !f.code.contains('\0') && !f.message.contains('\0'));
    }
    if let Some(read::AuthRequest::Sasl(mechs)) = read::auth_request(body) {
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

/// Forwarded bytes must be a prefix of the fed bytes.
fn assert_prefix(out: &[u8], fed: &[u8], dir: &str) {
    assert!(
        out.len() <= fed.len() && out == &fed[..out.len()],
        "{dir}: forwarded bytes are not a prefix of the bytes fed (out {} bytes, fed {} bytes)",
        out.len(),
        fed.len()
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let links = Links {
        client_tls: data[0] & 1 != 0,
        upstream_tls: data[0] & 2 != 0,
    };
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

    let mut s = SessionState::new(links);
    let (mut cin, mut cout) = (BytesMut::new(), BytesMut::new());
    let (mut sin, mut sout) = (BytesMut::new(), BytesMut::new());
    let (mut cfed, mut sfed) = (Vec::new(), Vec::new());
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
            match s.client_frames(&mut cin, &mut cout) {
                Ok(()) => {
                    assert_prefix(&cout, &cfed, "client");
                    if s.client_terminated {
                        assert!(cin.is_empty(), "bytes after Terminate kept buffered");
                    } else {
                        assert_eq!(cout.len() + cin.len(), cfed.len(), "client bytes lost");
                        assert_eq!(&cin[..], &cfed[cout.len()..]);
                    }
                }
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
                    assert_prefix(&sout, &sfed, "server");
                    assert_eq!(sout.len() + sin.len(), sfed.len(), "server bytes lost");
                    assert_eq!(&sin[..], &sfed[sout.len()..]);
                }
                Err(e) => {
                    let _ = e.to_string();
                    server_err = Some(e);
                    break;
                }
            }
        }
    }

    // Server framing does not depend on the client side: the same bytes in one piece give
    // the same forwarded bytes and the same verdict.
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
