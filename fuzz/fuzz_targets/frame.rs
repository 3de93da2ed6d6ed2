//! Fuzzes the framer, `pgwarden::wire::frame::parse_header`, under each `Limits` table.
//!
//! The input is read as a stream of frames: headers are parsed one after another, advancing
//! by `frame_len()` whenever the whole frame is present and stopping at a cut (incomplete)
//! frame or at an error. Checked: no panic; a returned `Header` has `4 <= len <=
//! max_len(tag, limits)`, echoes the tag and length word it was read from, and has consistent
//! `frame_len`/`body_len`; `Ok(None)` only with fewer than 5 bytes (also for every cut
//! prefix of a header); each error kind matches its cause (`UnexpectedType` exactly when the
//! tag has no limit, `BadLength` for a length word below 4, `TooLong` above the limit). The
//! helpers `read_cstr` and `read_i32` are exercised at every frame start too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::wire::frame::{
    max_len, parse_header, read_cstr, read_i32, FrameError, Header, Limits, HEADER_LEN,
};

const ALL_LIMITS: [Limits; 3] = [Limits::FrontendAuth, Limits::Frontend, Limits::Backend];

fn check_helpers(buf: &[u8], start: usize) {
    let mut pos = start;
    match read_cstr(buf, &mut pos) {
        Some(s) => {
            assert!(!s.contains(&0), "read_cstr returned a string with a NUL");
            assert_eq!(pos, start + s.len() + 1, "read_cstr must move past the NUL");
            assert!(pos <= buf.len());
            assert_eq!(buf[pos - 1], 0);
            assert_eq!(&buf[start..start + s.len()], s);
        }
        None => {
            assert_eq!(pos, start, "read_cstr moved pos on failure");
            assert!(start > buf.len() || !buf[start..].contains(&0));
        }
    }
    let mut pos = start;
    match read_i32(buf, &mut pos) {
        Some(v) => {
            assert_eq!(pos, start + 4);
            assert_eq!(v.to_be_bytes(), buf[start..start + 4]);
        }
        None => {
            assert_eq!(pos, start);
            assert!(start + 4 > buf.len());
        }
    }
}

fn walk(data: &[u8], limits: Limits) {
    let mut pos = 0usize;
    loop {
        let rest = &data[pos..];
        check_helpers(data, pos);
        // Every cut prefix of a header means "need more bytes", never an error.
        for cut in 0..HEADER_LEN.min(rest.len() + 1) {
            assert_eq!(parse_header(&rest[..cut], limits), Ok(None));
        }
        match parse_header(rest, limits) {
            Ok(None) => {
                assert!(
                    rest.len() < HEADER_LEN,
                    "Ok(None) with a full header present"
                );
                return;
            }
            Ok(Some(h)) => {
                assert!(rest.len() >= HEADER_LEN);
                let Header { tag, len } = h;
                assert_eq!(tag, rest[0]);
                assert_eq!(
                    len,
                    u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]])
                );
                let max = max_len(tag, limits).expect("Header returned for a refused type");
                assert!(len >= 4, "header length {len} < 4");
                assert!(len <= max, "header length {len} > max {max}");
                assert_eq!(h.frame_len(), len as usize + 1);
                assert_eq!(h.body_len(), len as usize - 4);
                assert_eq!(h.frame_len(), HEADER_LEN + h.body_len());
                // Only the header is looked at: the same answer with the body cut off.
                assert_eq!(parse_header(&rest[..HEADER_LEN], limits), Ok(Some(h)));
                if rest.len() < h.frame_len() {
                    return; // cut frame: wait for more bytes
                }
                pos += h.frame_len();
            }
            Err(e) => {
                let tag = rest[0];
                let word = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
                match e {
                    FrameError::UnexpectedType(t) => {
                        assert_eq!(t, tag);
                        assert_eq!(max_len(tag, limits), None);
                    }
                    FrameError::BadLength { tag: t, len } => {
                        assert_eq!((t, len), (tag, word));
                        assert!(max_len(tag, limits).is_some());
                        assert!(len < 4);
                    }
                    FrameError::TooLong { tag: t, len, max } => {
                        assert_eq!((t, len), (tag, word));
                        assert_eq!(max_len(tag, limits), Some(max));
                        assert!(len > max);
                    }
                }
                // The message is what a client sees: it must format without panicking.
                let _ = e.to_string();
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for limits in ALL_LIMITS {
        walk(data, limits);
    }
    // Server messages of every type are framed (unknown ones are relayed, not refused).
    if let Some(&tag) = data.first() {
        assert!(max_len(tag, Limits::Backend).is_some());
    }
});
