//! The `[catalog]` section: how pgwarden's own catalog sessions connect and when a table or a
//! write counts as large. Plain settings; the catalog module ([`crate::catalog`]) uses them.

use std::time::Duration;

/// The `[catalog]` section of the configuration.
#[derive(Clone, PartialEq)]
pub struct CatalogConfig {
    /// libpq-style connection string (`host=... port=... user=... password=...`); the
    /// database is the client session's.
    pub dsn: String,
    /// How long an answer is reused.
    pub ttl: Duration,
    /// How long a statement may wait for its answers before they count as failed.
    pub timeout: Duration,
    pub thresholds: Thresholds,
    /// Roles (besides superuser-like attributes and the powerful predefined roles) whose
    /// members count as privileged.
    pub admin_roles: Vec<String>,
    /// Catalog sessions per database, used in turn.
    pub connections: usize,
}

impl std::fmt::Debug for CatalogConfig {
    /// The DSN may carry a password: it is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("dsn", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("thresholds", &self.thresholds)
            .field("admin_roles", &self.admin_roles)
            .field("connections", &self.connections)
            .finish()
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            dsn: String::new(),
            ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            thresholds: Thresholds::default(),
            admin_roles: Vec::new(),
            connections: 4,
        }
    }
}

/// When a relation or a write counts as large. Defaults from the policy catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Estimated rows (`reltuples`, summed over partitions) from which a table is large.
    pub large_rows: f64,
    /// Total size (heap, TOAST, indexes) from which a table is large.
    pub large_bytes: u64,
    /// Planner-estimated rows from which a write is large (`dml.large-write`).
    pub large_write_rows: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            large_rows: 100_000.0,
            large_bytes: 1 << 30,
            large_write_rows: 10_000.0,
        }
    }
}
