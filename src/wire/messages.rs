//! Messages pgwarden writes itself, encoded with pgwire's message types.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::Message;

use super::sqlstate::SqlState;

/// The severity of an ErrorResponse pgwarden sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Sent as a NoticeResponse: the statement goes on.
    Notice,
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Notice => "NOTICE",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error pgwarden reports to a client, in PostgreSQL's field layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An ERROR: the statement fails, the session goes on.
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            ..PgError::fatal(code, message)
        }
    }

    /// A NoticeResponse (SQLSTATE 00000, as PostgreSQL's own notices).
    pub fn notice(message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Notice,
            code: SqlState::SUCCESSFUL_COMPLETION,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the ErrorResponse frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let sev = self.severity.as_str();
        let mut fields = vec![
            (b'S', sev.to_owned()),
            (b'V', sev.to_owned()),
            (b'C', self.code.code().to_owned()),
            (b'M', no_nul(&self.message)),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', no_nul(d)));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', no_nul(h)));
        }
        let r = match self.severity {
            Severity::Notice => NoticeResponse::new(fields).encode(out),
            _ => ErrorResponse::new(fields).encode(out),
        };
        r.expect("pgwarden's own messages are far below the frame limit");
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b
    }
}

/// The ERROR for a statement message (Query, Parse, FunctionCall) larger than pgwarden
/// inspects: 54000 program_limit_exceeded, the code PostgreSQL gives what it cannot take.
pub fn statement_too_large(tag: u8, len: u32, max: usize) -> PgError {
    let what = match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        _ => "FunctionCall",
    };
    PgError::error(
        SqlState::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "pgwarden: a {what} message of {} bytes exceeds pgwarden's limit of {max} bytes for statements it inspects",
            u64::from(len) + 1
        ),
    )
    .with_hint("Send large data as parameters (Bind) or with COPY, which pgwarden streams; or raise [limits] max_statement_bytes.")
}

/// A C string field cannot hold NUL: replace it rather than emit a corrupt frame.
fn no_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// The Terminate message ('X') pgwarden sends upstream when it ends a session itself.
pub const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let e = PgError::fatal(SqlState::ADMIN_SHUTDOWN, "bye").with_hint("h");
        let b = e.to_bytes();
        assert_eq!(b[0], b'E');
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let body = &b[5..];
        assert_eq!(body, b"SFATAL\0VFATAL\0C57P01\0Mbye\0Hh\0\0");
    }
}
