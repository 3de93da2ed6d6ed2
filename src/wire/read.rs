//! The few messages pgwarden reads, each decoded from one frame that the framer already cut:
//! ReadyForQuery, BackendKeyData, ParameterStatus, ErrorResponse, Authentication requests
//! from the server, and SASLInitialResponse from the client. Everything else passes as bytes.

use super::frame::{read_cstr, read_i32};
use super::startup::CancelKey;

/// Transaction status from ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InBlock,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InBlock),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

/// ReadyForQuery body: exactly one status byte.
pub fn ready_for_query(body: &[u8]) -> Option<TxStatus> {
    match body {
        [b] => TxStatus::from_byte(*b),
        _ => None,
    }
}

/// BackendKeyData body: process id and a 4..=256 byte secret (protocol 3.2 made it variable).
pub fn backend_key_data(body: &[u8]) -> Option<CancelKey> {
    if body.len() < 8 || body.len() > 4 + 256 {
        return None;
    }
    Some(CancelKey {
        pid: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        secret: body[4..].to_vec(),
    })
}

/// ParameterStatus body: name and value.
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut pos = 0;
    let name = read_cstr(body, &mut pos)?;
    let value = read_cstr(body, &mut pos)?;
    (pos == body.len()).then_some((name, value))
}

/// The fields of an ErrorResponse / NoticeResponse that pgwarden looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Non-localized severity ('V'), falling back to 'S'.
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

pub fn error_fields(body: &[u8]) -> Option<ErrorFields> {
    let mut f = ErrorFields::default();
    let mut localized = None;
    let mut pos = 0;
    loop {
        let t = *body.get(pos)?;
        pos += 1;
        if t == 0 {
            break;
        }
        let v = String::from_utf8_lossy(read_cstr(body, &mut pos)?).into_owned();
        match t {
            b'V' => f.severity = v,
            b'S' => localized = Some(v),
            b'C' => f.code = v,
            b'M' => f.message = v,
            _ => {}
        }
    }
    if f.severity.is_empty() {
        f.severity = localized.unwrap_or_default();
    }
    Some(f)
}

/// What an Authentication ('R') message asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    CleartextPassword,
    Md5Password,
    /// SASL, with the mechanisms the server offers.
    Sasl(Vec<String>),
    SaslContinue,
    SaslFinal,
    /// GSS, SSPI and anything newer: relayed as is.
    Other(i32),
}

pub fn auth_request(body: &[u8]) -> Option<AuthRequest> {
    let mut pos = 0;
    let code = read_i32(body, &mut pos)?;
    Some(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => AuthRequest::Md5Password,
        10 => {
            let mut mechs = Vec::new();
            loop {
                let m = read_cstr(body, &mut pos)?;
                if m.is_empty() {
                    break;
                }
                mechs.push(String::from_utf8_lossy(m).into_owned());
            }
            AuthRequest::Sasl(mechs)
        }
        11 => AuthRequest::SaslContinue,
        12 => AuthRequest::SaslFinal,
        other => AuthRequest::Other(other),
    })
}

/// The channel-binding flag of a SCRAM client-first-message (RFC 5802 gs2-cbind-flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingFlag {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports it but believes the server does not.
    ClientOnly,
    /// `p=...`: the client uses channel binding.
    Used,
}

/// SASLInitialResponse body: the chosen mechanism and the gs2 flag of its first message.
pub fn sasl_initial_response(body: &[u8]) -> Option<(String, Option<ChannelBindingFlag>)> {
    let mut pos = 0;
    let mech = String::from_utf8_lossy(read_cstr(body, &mut pos)?).into_owned();
    let len = read_i32(body, &mut pos)?;
    let data = if len < 0 { &[][..] } else { body.get(pos..)? };
    let flag = match data.first() {
        Some(b'n') => Some(ChannelBindingFlag::NotSupported),
        Some(b'y') => Some(ChannelBindingFlag::ClientOnly),
        Some(b'p') => Some(ChannelBindingFlag::Used),
        _ => None,
    };
    Some((mech, flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ready_for_query() {
        assert_eq!(ready_for_query(b"T"), Some(TxStatus::InBlock));
        assert_eq!(ready_for_query(b"X"), None);
        assert_eq!(ready_for_query(b"II"), None);
    }

    #[test]
    fn reads_sasl_mechanisms() {
        let body = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        assert_eq!(
            auth_request(body),
            Some(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into()
            ]))
        );
    }

    #[test]
    fn reads_sasl_initial_response() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        let first = b"y,,n=,r=abc";
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first);
        assert_eq!(
            sasl_initial_response(&body),
            Some(("SCRAM-SHA-256".into(), Some(ChannelBindingFlag::ClientOnly)))
        );
    }

    #[test]
    fn reads_error_severity() {
        let body = b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0";
        let f = error_fields(body).unwrap();
        assert!(f.is_fatal());
        assert_eq!(f.code, "57P01");
        assert_eq!(error_fields(b"Sx"), None);
    }

    #[test]
    fn reads_variable_length_cancel_keys() {
        assert!(backend_key_data(&[0, 0, 0, 1, 9, 9, 9, 9]).is_some());
        assert!(backend_key_data(&[0, 0, 0, 1, 9, 9]).is_none());
        let long = [7u8; 4 + 32];
        assert_eq!(backend_key_data(&long).unwrap().secret.len(), 32);
    }
}
