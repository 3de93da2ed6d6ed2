//! The SQLSTATE codes pgwarden itself raises, named as PostgreSQL's `errcodes.txt` names them.

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// 08006: the upstream could not be reached or went away.
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState("00000");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// 08P01: a message violated the protocol.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// 0A000: a protocol feature pgwarden refuses (replication, protocol 4).
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// 28000: the connection's authentication setup cannot work as asked (TLS, channel binding).
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    /// 42501: refused by policy.
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// 53300: too many client connections.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// 54000: a statement too large for pgwarden to inspect.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// 57P01: the proxy is shutting down.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// 57014: what PostgreSQL raises when authentication times out.
    pub const QUERY_CANCELED: SqlState = SqlState("57014");

    /// 58030: pgwarden cannot write its audit log.
    pub const IO_ERROR: SqlState = SqlState("58030");

    pub fn code(&self) -> &'static str {
        self.0
    }
}
