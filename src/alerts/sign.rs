//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), both ways: the
//! sender's `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, and the
//! receiver's check of a delivery as it was captured (`pgwarden webhook verify`).
//! A secret `whsec_<base64>` is keyed by its decoded bytes; any other secret by its bytes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a delivery does not verify (or a secret is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the secret after whsec_ is not base64")]
    BadSecret,
    #[error("the secret is empty")]
    EmptySecret,
    #[error("no blank line ends the headers")]
    NoBody,
    #[error("no {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp {0:?} is not unix seconds")]
    BadTimestamp(String),
    #[error("webhook-timestamp {ts} is {off}s from now, more than the tolerance of {tolerance}s")]
    OutsideTolerance { ts: i64, off: i64, tolerance: u64 },
    #[error("no v1 signature in webhook-signature")]
    NoV1Signature,
    #[error("no signature matches the secret")]
    Mismatch,
}

/// The HMAC key of `secret`.
pub fn key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let k = match secret.strip_prefix(SECRET_PREFIX) {
        Some(b64) => B64.decode(b64.trim()).map_err(|_| VerifyError::BadSecret)?,
        None => secret.as_bytes().to_vec(),
    };
    if k.is_empty() {
        return Err(VerifyError::EmptySecret);
    }
    Ok(k)
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// The `webhook-signature` value for one attempt.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1,{}",
        B64.encode(mac(key, id, &timestamp.to_string(), body))
    )
}

/// A fresh `webhook-id` (`msg_` and 128 random bits, hex): unique per alert, the same
/// across its retries.
pub fn message_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("msg_{hex}")
}

/// Checks `signatures` (the header's space-separated list; any `v1,` one may match) against
/// `id.timestamp.body`, comparing in constant time.
pub fn verify(
    key: &[u8],
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
) -> Result<(), VerifyError> {
    let want = mac(key, id, timestamp, body);
    let mut any_v1 = false;
    let mut ok = false;
    for s in signatures.split_whitespace() {
        let Some(b64) = s.strip_prefix("v1,") else {
            continue;
        };
        any_v1 = true;
        if let Ok(got) = B64.decode(b64) {
            ok |= bool::from(got.as_slice().ct_eq(&want));
        }
    }
    match (any_v1, ok) {
        (_, true) => Ok(()),
        (false, _) => Err(VerifyError::NoV1Signature),
        (true, false) => Err(VerifyError::Mismatch),
    }
}

/// What a verified delivery says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: String,
    pub timestamp: i64,
}

/// Checks a delivery as a receiver captured it: an optional request line, header lines,
/// a blank line, the body (CRLF or LF; `Content-Length`, when given, bounds the body).
/// With `tolerance`, a timestamp further than that from `now` (unix seconds) is refused.
pub fn verify_saved(
    key: &[u8],
    saved: &[u8],
    tolerance: Option<std::time::Duration>,
    now: i64,
) -> Result<Verified, VerifyError> {
    let (headers, body) = split_saved(saved)?;
    let header = |name: &'static str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .ok_or(VerifyError::MissingHeader(name))
    };
    let id = header("webhook-id")?;
    let ts_text = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let body = match header("content-length")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    };
    let ts: i64 = ts_text
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(ts_text.to_owned()))?;
    verify(key, id, ts_text, body, signatures)?;
    if let Some(t) = tolerance {
        let off = now.saturating_sub(ts);
        if off.unsigned_abs() > t.as_secs() {
            return Err(VerifyError::OutsideTolerance {
                ts,
                off,
                tolerance: t.as_secs(),
            });
        }
    }
    Ok(Verified {
        id: id.to_owned(),
        timestamp: ts,
    })
}

/// A header line of a saved request: (name, value).
type Header = (String, String);

/// The headers and the body of a saved request.
fn split_saved(saved: &[u8]) -> Result<(Vec<Header>, &[u8]), VerifyError> {
    let crlf = find(saved, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(saved, b"\n\n").map(|i| (i, 2));
    let (end, sep) = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).ok_or(VerifyError::NoBody)?,
    };
    let head = String::from_utf8_lossy(&saved[..end]);
    let mut headers = Vec::new();
    for line in head.lines() {
        // A header name has no spaces; a request line (`POST /hook HTTP/1.1`) does, and
        // is skipped like any line that is not a header.
        if let Some((name, value)) = line.trim_end_matches('\r').split_once(':') {
            if !name.is_empty() && !name.contains(char::is_whitespace) {
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
    }
    Ok((headers, &saved[end + sep..]))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_standard_webhooks_test_vector_reproduces() {
        let k = key(SECRET).unwrap();
        assert_eq!(sign(&k, ID, TS, BODY), SIG);
        assert_eq!(verify(&k, ID, "1614265330", BODY, SIG), Ok(()));
    }

    #[test]
    fn any_of_several_signatures_may_match_and_others_do_not() {
        let k = key(SECRET).unwrap();
        let several = format!("v1a,zzz v1,bm9wZQ== {SIG}");
        assert_eq!(verify(&k, ID, "1614265330", BODY, &several), Ok(()));
        assert_eq!(
            verify(&k, ID, "1614265330", b"{}", SIG),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&k, ID, "1614265331", BODY, SIG),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&k, ID, "1614265330", BODY, "v1a,abc"),
            Err(VerifyError::NoV1Signature)
        );
    }

    #[test]
    fn secrets_with_and_without_the_prefix() {
        assert_eq!(key("plain").unwrap(), b"plain");
        assert_eq!(key("whsec_cGxhaW4=").unwrap(), b"plain");
        assert_eq!(key("whsec_!!!"), Err(VerifyError::BadSecret));
        assert_eq!(key(""), Err(VerifyError::EmptySecret));
        let a = message_id();
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
        assert_ne!(a, message_id());
    }

    fn saved(eol: &str, request_line: bool) -> Vec<u8> {
        let mut s = String::new();
        if request_line {
            s.push_str(&format!("POST http://127.0.0.1:9/hook HTTP/1.1{eol}"));
        }
        for h in [
            "Content-Type: application/json".to_owned(),
            format!("Webhook-Id: {ID}"),
            format!("webhook-timestamp: {TS}"),
            format!("webhook-signature: {SIG}"),
        ] {
            s.push_str(&h);
            s.push_str(eol);
        }
        s.push_str(eol);
        let mut v = s.into_bytes();
        v.extend_from_slice(BODY);
        v
    }

    #[test]
    fn saved_deliveries_with_crlf_or_lf_and_an_optional_request_line() {
        let k = key(SECRET).unwrap();
        for (eol, rl) in [("\r\n", true), ("\n", false), ("\n", true)] {
            let got = verify_saved(&k, &saved(eol, rl), None, 0).unwrap();
            assert_eq!((got.id.as_str(), got.timestamp), (ID, TS));
        }
        // A trailing newline a capture tool added is cut by Content-Length.
        let mut with_len = b"content-length: 20\n".to_vec();
        with_len.extend_from_slice(&saved("\n", false));
        with_len.push(b'\n');
        assert!(verify_saved(&k, &with_len, None, 0).is_ok());
        let mut tampered = saved("\n", false);
        *tampered.last_mut().unwrap() = b' ';
        assert_eq!(
            verify_saved(&k, &tampered, None, 0),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_saved(&k, b"webhook-id: x", None, 0),
            Err(VerifyError::NoBody)
        );
        assert_eq!(
            verify_saved(&k, b"webhook-id: x\n\n{}", None, 0),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
    }

    #[test]
    fn tolerance_refuses_old_and_future_timestamps() {
        let k = key(SECRET).unwrap();
        let s = saved("\n", false);
        let five_min = Some(std::time::Duration::from_secs(300));
        assert!(verify_saved(&k, &s, five_min, TS + 300).is_ok());
        assert!(matches!(
            verify_saved(&k, &s, five_min, TS + 301),
            Err(VerifyError::OutsideTolerance { off: 301, .. })
        ));
        assert!(matches!(
            verify_saved(&k, &s, five_min, TS - 301),
            Err(VerifyError::OutsideTolerance { off: -301, .. })
        ));
    }
}
