//! Fuzzes the startup phase: `pgwarden::wire::startup::parse_packet` on arbitrary bytes, the
//! `Startup` accessors (`option_settings`, `is_replication`, `database`, `user`), and
//! `split_options` / `parse_option_settings` on arbitrary UTF-8.
//!
//! Checked: no panic; `Ok(Some((p, n)))` has `8 <= n <= input.len()`, `n` equal to the
//! packet's length word and at most `MAX_STARTUP_LEN`; `Ok(None)` only when the length word
//! or the packet is not all there; `BadLength` exactly for length words outside 8..=10000;
//! a Startup is protocol 3.x and re-encoding its parameters parses back to the same packet;
//! cancel secrets are 4..=256 bytes; option words never hold unescaped whitespace and setting
//! names are lower-case with `_` for `-`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::wire::startup::{
    parse_option_settings, parse_packet, split_options, Packet, Startup, StartupError,
    MAX_STARTUP_LEN, MIN_STARTUP_LEN,
};

fn encode_startup(s: &Startup) -> Vec<u8> {
    let mut body = ((s.major as u32) << 16 | s.minor as u32)
        .to_be_bytes()
        .to_vec();
    for (k, v) in &s.params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn check_options(s: &str) {
    let words = split_options(s);
    let input_chars = s.chars().count();
    let word_chars: usize = words.iter().map(|w| w.chars().count()).sum();
    assert!(
        word_chars <= input_chars,
        "split_options invented characters"
    );
    if !s.contains('\\') {
        // Without escapes, words are exactly the whitespace-separated pieces.
        for w in &words {
            assert!(!w.is_empty(), "empty word without escapes: {s:?}");
            assert!(
                !w.chars()
                    .any(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')),
                "unescaped whitespace kept in word {w:?} of {s:?}"
            );
        }
    }
    for (name, _value) in parse_option_settings(&words) {
        assert!(!name.contains('-'), "setting name {name:?} keeps a '-'");
        assert!(
            !name.chars().any(|c| c.is_ascii_uppercase()),
            "setting name {name:?} not lower-cased"
        );
    }
}

fn check_startup(s: &Startup) {
    assert_eq!(s.major, 3);
    let _ = s.is_replication();
    let db = s.database();
    let user = s.user();
    if s.param("database").is_none_or(|d| d.is_empty()) {
        assert_eq!(db, user);
    }
    for (name, _value) in s.option_settings() {
        assert!(!name.contains('-'));
    }
    for (k, v) in &s.params {
        assert!(!k.is_empty(), "empty parameter name accepted");
        assert!(!k.contains('\0') && !v.contains('\0'));
    }
    if let Some(o) = s.param("options") {
        check_options(o);
    }
    // Re-encoding the (lossily decoded) parameters parses back to the same packet.
    let enc = encode_startup(s);
    if enc.len() <= MAX_STARTUP_LEN as usize {
        match parse_packet(&enc) {
            Ok(Some((Packet::Startup(s2), n))) => {
                assert_eq!(n, enc.len());
                assert_eq!(&s2, s);
            }
            other => panic!("re-encoded startup did not parse back: {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_packet(data) {
        Ok(Some((p, n))) => {
            assert!(n <= data.len(), "consumed {n} > input {}", data.len());
            assert!(n >= MIN_STARTUP_LEN as usize, "consumed {n} < 8");
            assert!(n <= MAX_STARTUP_LEN as usize);
            let word = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            assert_eq!(n, word as usize);
            // Only the packet itself is read: trailing bytes change nothing.
            assert_eq!(parse_packet(&data[..n]), Ok(Some((p.clone(), n))));
            match &p {
                Packet::Startup(s) => check_startup(s),
                Packet::Cancel(k) => {
                    assert!((4..=256).contains(&k.secret.len()));
                    assert_eq!(k.secret.len() + 12, n);
                }
                Packet::SslRequest | Packet::GssEncRequest => assert_eq!(n, 8),
            }
        }
        Ok(None) => {
            if data.len() >= 4 {
                let word = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                assert!((MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&word));
                assert!(
                    data.len() < word as usize,
                    "Ok(None) with the whole packet present"
                );
            }
        }
        Err(e) => {
            let word = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let bad_len = !(MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&word);
            assert_eq!(
                matches!(e, StartupError::BadLength(_)),
                bad_len,
                "{e:?} for {word}"
            );
            if let StartupError::BadLength(l) = e {
                assert_eq!(l, word);
            }
            let _ = e.to_string();
        }
    }

    // The options parser on arbitrary text (not only what fits a startup packet).
    check_options(&String::from_utf8_lossy(data));
});
