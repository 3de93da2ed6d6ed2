//! pgwarden: a PostgreSQL wire-protocol proxy that enforces database change-management policy.
//!
//! # Layout
//!
//! ```text
//! client ──TLS?──▶ server (accept loop) ─▶ session (one task per client) ─▶ upstream PostgreSQL
//!                                            │ startup: TLS, SSLRequest, cancel, StartupMessage
//!                                            │ relay: both directions at once, frame by frame
//!                                            ▼
//!                                          state: what the protocol says about the session
//!                                            │ gate: every Query / Parse → sql::inspect → policy::decide
//!                                            ▼
//!              forward, refuse (42501) with the server kept in step, or wait (a ticket check,
//!              a hold until approvers decide) while the client is still read
//! ```
//!
//! - [`config`]: the TOML file and flags, validated, all errors at once.
//! - [`approval`]: tickets, holds, approvals and break-glass reviews; their store and events.
//! - [`admin`]: the admin HTTP listener: health, readiness, the JSON API for approvers,
//!   `/metrics` and the live event stream.
//! - [`audit`]: the tamper-evident audit log: records synced before a statement runs, hash
//!   chain, rotation, signed checkpoints, verification.
//! - [`telemetry`]: every Prometheus metric, named in one place; the recorder.
//! - [`server`]: the accept loop, connection limit and shutdown.
//! - [`session`]: startup phase, relay loop, session state; the one place that sequences the wire.
//! - [`wire`]: sans-IO protocol: the framer, startup packets, the messages pgwarden reads and
//!   writes, SQLSTATEs.
//! - [`upstream`]: connecting to PostgreSQL (TCP or Unix socket, libpq-style TLS).
//! - [`tls`]: rustls acceptor and connector.
//! - [`cancel`]: the cancel-key map and CancelRequest forwarding.
//! - [`sql`]: statement inspection with PostgreSQL's grammar (pg_query) → facts; pure, cached.
//! - [`policy`]: policy files → compiled rules → `decide(facts, session)`; pure.
//! - [`workflow`]: workflow as code, pure: a refusing decision → forward, refuse, check a
//!   ticket, hold for approval, break-glass; the texts clients see; `policy test` cases.
//! - [`alerts`]: webhooks for refusals, holds, approvals, break-glass and instance alarms:
//!   a bounded queue per webhook, retries with backoff, Standard Webhooks signatures.
//! - [`reload`]: policy hot reload (SIGHUP, file watch), validated and tested before the swap.
//! - [`commands`]: `check`, `explain`, `policy validate|test`: the same decisions offline;
//!   `holds`, `tickets`, `reviews`: clients of the admin API; `tokens add`; `audit verify`,
//!   `policy replay`, `webhook verify`.
//! - [`net`]: one stream type over TCP, Unix sockets and TLS.
//! - [`audit_report`]: audit logs read offline → `pgwarden audit report` (text, CSV, JSON,
//!   HTML with SVG charts); the reader `policy replay` uses too.

pub mod admin;
pub mod alerts;
pub mod approval;
pub mod audit;
pub mod audit_report;
pub mod cancel;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod net;
pub mod policy;
pub mod reload;
pub mod server;
pub mod session;
pub mod sql;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wire;
pub mod workers;
pub mod workflow;
