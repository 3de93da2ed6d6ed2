//! The server parameters a session follows from ParameterStatus: they decide how the server
//! reads the next statement (standard_conforming_strings, client_encoding) and who runs it.

/// Server parameters the session tracks from ParameterStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerParams {
    pub server_version: Option<String>,
    pub client_encoding: Option<String>,
    pub standard_conforming_strings: Option<bool>,
    pub session_authorization: Option<String>,
    /// Reported by servers that report `role` (PostgreSQL 18+ via GUC_REPORT).
    pub role: Option<String>,
    pub is_superuser: Option<bool>,
}

impl ServerParams {
    pub(super) fn set(&mut self, name: &[u8], value: &[u8]) {
        let v = || String::from_utf8_lossy(value).into_owned();
        match name {
            b"server_version" => self.server_version = Some(v()),
            b"client_encoding" => self.client_encoding = Some(v()),
            b"standard_conforming_strings" => {
                self.standard_conforming_strings = Some(value == b"on")
            }
            b"session_authorization" => self.session_authorization = Some(v()),
            b"role" => self.role = Some(v()),
            b"is_superuser" => self.is_superuser = Some(value == b"on"),
            _ => {}
        }
    }

    /// The role statements run as, as far as the server has told.
    pub fn effective_role(&self) -> Option<&str> {
        match self.role.as_deref() {
            Some(r) if r != "none" => Some(r),
            _ => self.session_authorization.as_deref(),
        }
    }
}
