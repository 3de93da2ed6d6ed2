//! Configuration: a TOML file read strictly (every unknown key or bad value is an error naming
//! the file, the key and the line, and all errors are reported at once), then command-line
//! flags that override it, giving one validated [`Config`].

pub mod catalog;
mod parse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use parse::{ConfigError, ConfigErrors};

/// The validated configuration of `pgwarden serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Client sessions allowed at once; one more gets FATAL 53300.
    pub max_client_connections: usize,
    /// Session worker threads (one event loop each); default: one per core. 0: sessions
    /// share the main multi-threaded runtime (work stealing) instead.
    pub workers: usize,
    /// Time from accept until the session is ready (TLS, startup, authentication).
    pub startup_timeout: Duration,
    /// On SIGTERM, how long sessions inside a transaction may go on before they are closed.
    pub shutdown_grace: Duration,
    /// Whether replication connections (`replication=...` in the startup packet) are relayed.
    pub allow_replication: bool,
    pub tls: ClientTls,
    pub upstream: Upstream,
    /// Directory of policy files (`*.toml`, tests in `tests/`).
    pub policies: PathBuf,
    /// The environment the policy is compiled for (`[rule.environments.NAME]`).
    pub environment: String,
    /// `enforce`, or `monitor` (decide and report, refuse nothing).
    pub mode: crate::policy::Mode,
    /// The optional catalog connection for live facts (table sizes, planner estimates…).
    pub catalog: Option<catalog::CatalogConfig>,
    /// The admin HTTP listener (`[admin]`).
    pub admin: Admin,
    /// Where durable state (tickets, holds, reviews) lives (`[state] dir`): the embedded
    /// store's file and the audit log's default place.
    pub state_dir: PathBuf,
    /// Which store keeps that state (`[state] backend`, `dsn`, `schema`, `instance`).
    pub state: State,
    /// How held statements wait (`[holds]`).
    pub holds: Holds,
    /// The audit log (`[audit]`, `--audit-file`).
    pub audit: Audit,
    /// Where alerts go (`[[webhook]]`); none by default.
    pub webhooks: Vec<crate::alerts::WebhookConfig>,
    /// Sizes pgwarden holds to (`[limits]`).
    pub limits: Limits,
}

/// `[limits]`: how much of a client's traffic pgwarden holds in memory at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest statement (Query, Parse or FunctionCall message) inspected; a larger one is
    /// refused with ERROR 54000 and its bytes are skipped as they arrive, never held.
    pub max_statement_bytes: usize,
}

impl Limits {
    /// The default statement limit (PostgreSQL itself accepts up to 1 GB).
    pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 64 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_statement_bytes: Limits::DEFAULT_MAX_STATEMENT_BYTES,
        }
    }
}

/// `[audit]`: the tamper-evident audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The log file (JSON Lines); `None`: no audit log.
    pub file: Option<PathBuf>,
    /// Where signed checkpoints go; default the log file's name with `.checkpoints`.
    pub checkpoints: Option<PathBuf>,
    /// The ed25519 signing key (made on first use); default `audit-signing.key` in the state dir.
    pub signing_key: Option<PathBuf>,
    /// Statement classes recorded before they run (refused, held, ticketed, break-glass and
    /// rule-matching statements are recorded whatever their class).
    pub record: Vec<crate::sql::Class>,
    /// Whether statement texts are recorded with literals replaced by `$n`.
    pub redact_literals: bool,
    /// What happens to statements that must be recorded when the log cannot be written.
    pub on_failure: AuditOnFailure,
    /// The active file is rotated (renamed `FILE.000001`, ...) once it is this large.
    pub max_file_size: u64,
    /// A checkpoint is signed at least this often while records come.
    pub checkpoint_interval: Duration,
    /// ...and whenever no record came for this long.
    pub checkpoint_idle: Duration,
}

/// `[audit] on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOnFailure {
    /// Statements that must be recorded are refused (SQLSTATE 58030) while the log fails.
    Refuse,
    /// They run unrecorded; every record lost is counted and logged.
    Continue,
}

impl Audit {
    /// Where checkpoints go.
    pub fn checkpoints_path(&self) -> Option<PathBuf> {
        self.checkpoints.clone().or_else(|| {
            self.file.as_ref().map(|f| {
                let mut s = f.as_os_str().to_owned();
                s.push(".checkpoints");
                PathBuf::from(s)
            })
        })
    }
}

/// The admin HTTP listener: health, readiness and the JSON API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Address to listen on; `None` when disabled (`listen = "off"`).
    pub listen: Option<SocketAddr>,
    /// The tokens file (`pgwarden tokens add ... --file FILE`); without one every API call
    /// is refused with 401.
    pub tokens: Option<PathBuf>,
    /// PEM certificate and key: when both are set the listener speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `[state]`: the store of tickets, holds and reviews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub backend: StateBackend,
    /// This instance's name among those sharing a PostgreSQL store; stored with the holds
    /// it opens. Default: `<hostname>:<listen port>`.
    pub instance: Option<String>,
}

/// `[state] backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    /// `"sqlite"` (the default): `<state dir>/pgwarden.db`, for one instance.
    Sqlite,
    /// `"postgres"`: a control schema many instances share.
    Postgres {
        /// `[state] dsn` (or `PGWARDEN_STATE_DSN`).
        dsn: String,
        /// `[state] schema`, default `pgwarden`.
        schema: String,
    },
}

/// The control schema's default name.
pub const DEFAULT_STATE_SCHEMA: &str = "pgwarden";

/// How held statements wait for a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holds {
    /// How long a hold waits before it expires (the statement is then refused).
    pub timeout: Duration,
    /// How often the waiting client gets a NOTICE that it is still held.
    pub reminder: Duration,
    /// Whether the hold shows the statement with its literal values (else redacted).
    pub show_literals: bool,
    /// What happens to a statement that needs a ticket and has none.
    pub on_missing_ticket: OnMissingTicket,
}

/// `[holds] on_missing_ticket`: refuse (42501, with a hint to attach a ticket) or hold.
pub use crate::policy::OnMissingTicket;

/// TLS between clients and pgwarden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What pgwarden does with a client's request for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsMode {
    /// Answer SSLRequest with `N`; refuse direct TLS.
    Disable,
    /// Accept TLS when the client asks; plaintext is fine.
    Allow,
    /// As `allow` on the wire (a server cannot make a client use TLS); plaintext sessions are
    /// logged at info level.
    Prefer,
    /// Plaintext startup packets are refused with FATAL 28000.
    Require,
}

/// The PostgreSQL server behind pgwarden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub address: UpstreamAddr,
    pub tls: UpstreamTlsMode,
    /// CA bundle for `verify-ca` / `verify-full`.
    pub ca: Option<PathBuf>,
    /// Name checked against the server certificate in `verify-full`; defaults to the host.
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Tcp {
        host: String,
        port: u16,
    },
    /// Path of the server's socket file, e.g. `/var/run/postgresql/.s.PGSQL.5432`.
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            UpstreamAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// TLS between pgwarden and PostgreSQL, with libpq's `sslmode` meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsMode {
    Disable,
    /// TLS if the server offers it, without verifying the certificate.
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate chain verified against `ca`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the server.
    VerifyFull,
}

/// Where the admin listener is unless configured otherwise (also the CLI's default URL).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:6433";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6432".parse().expect("valid literal"),
            max_client_connections: 1000,
            workers: crate::workers::default_count(),
            startup_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            allow_replication: false,
            tls: ClientTls {
                mode: ClientTlsMode::Disable,
                cert: None,
                key: None,
            },
            upstream: Upstream {
                address: UpstreamAddr::Tcp {
                    host: "127.0.0.1".into(),
                    port: 5432,
                },
                tls: UpstreamTlsMode::Disable,
                ca: None,
                server_name: None,
                connect_timeout: Duration::from_secs(5),
            },
            policies: PathBuf::from("policies"),
            environment: "production".into(),
            mode: crate::policy::Mode::Enforce,
            catalog: None,
            admin: Admin {
                listen: Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid literal")),
                tokens: None,
                tls_cert: None,
                tls_key: None,
            },
            state_dir: PathBuf::from("pgwarden-state"),
            state: State {
                backend: StateBackend::Sqlite,
                instance: None,
            },
            holds: Holds {
                timeout: Duration::from_secs(15 * 60),
                reminder: Duration::from_secs(30),
                show_literals: false,
                on_missing_ticket: OnMissingTicket::Refuse,
            },
            audit: Audit {
                file: None,
                checkpoints: None,
                signing_key: None,
                // Everything but plain reads.
                record: crate::sql::Class::ALL[1..].to_vec(),
                redact_literals: true,
                on_failure: AuditOnFailure::Refuse,
                max_file_size: 100 << 20,
                checkpoint_interval: Duration::from_secs(60),
                checkpoint_idle: Duration::from_secs(2),
            },
            webhooks: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// Values given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub policies: Option<PathBuf>,
    pub environment: Option<String>,
    pub mode: Option<crate::policy::Mode>,
    /// `--admin-listen ADDR` or `off`.
    pub admin_listen: Option<String>,
    pub admin_tokens: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// `--audit-file FILE`.
    pub audit_file: Option<PathBuf>,
}

impl Config {
    /// Reads `file` (if any), applies `overrides`, and validates the result.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigErrors> {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => parse::apply_toml(&mut cfg, path, &text, &mut errors),
                Err(e) => errors.push(ConfigError::new(path, 0, "", format!("cannot read: {e}"))),
            }
        }
        parse::apply_overrides(&mut cfg, overrides, &mut errors);
        parse::check(&cfg, file, &mut errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parses a config from text (for tests and `policy` tooling); `path` is only for messages.
    pub fn from_toml(path: &std::path::Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        parse::apply_toml(&mut cfg, path, text, &mut errors);
        parse::check(&cfg, Some(path), &mut errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}
