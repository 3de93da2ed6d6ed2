//! Every Prometheus metric pgwarden exports, named in one place (`pgwarden_` prefix, base
//! units, `_total` for counters, labels from bounded sets only: class, action, rule id,
//! webhook name, outcome), with its description. Code records through the `metrics` macros
//! with these names; without an installed recorder (tests, offline commands) they cost nothing.

/// Client sessions open now (gauge).
pub const CLIENT_CONNECTIONS: &str = "pgwarden_client_connections";
/// Client connections accepted (counter).
pub const CLIENT_CONNECTIONS_TOTAL: &str = "pgwarden_client_connections_total";
/// Connections to the PostgreSQL server open now (gauge).
pub const UPSTREAM_CONNECTIONS: &str = "pgwarden_upstream_connections";
/// Connections to the PostgreSQL server that could not be made (counter).
pub const UPSTREAM_CONNECT_FAILURES_TOTAL: &str = "pgwarden_upstream_connect_failures_total";
/// Statements decided, by `class` and `action` (counter).
pub const STATEMENTS_TOTAL: &str = "pgwarden_statements_total";
/// Statements refused, by `rule` (counter).
pub const REFUSALS_TOTAL: &str = "pgwarden_refusals_total";
/// Holds waiting for approval now (gauge).
pub const HOLDS_PENDING: &str = "pgwarden_holds_pending";
/// How long held statements waited, by `outcome` (histogram, seconds).
pub const HOLD_WAIT_SECONDS: &str = "pgwarden_hold_wait_seconds";
/// Time to inspect a statement text (parse and facts), cache misses only (histogram).
pub const INSPECTION_SECONDS: &str = "pgwarden_inspection_seconds";
/// Time pgwarden held a statement before forwarding it (inspection, decision, audit
/// write; not time spent waiting for an approval) (histogram).
pub const ADDED_LATENCY_SECONDS: &str = "pgwarden_added_latency_seconds";
/// Inspection cache lookups that were answered from the cache (counter).
pub const INSPECTION_CACHE_HITS_TOTAL: &str = "pgwarden_inspection_cache_hits_total";
/// Inspection cache lookups that had to parse (counter).
pub const INSPECTION_CACHE_MISSES_TOTAL: &str = "pgwarden_inspection_cache_misses_total";
/// Audit records written (counter).
pub const AUDIT_RECORDS_TOTAL: &str = "pgwarden_audit_records_total";
/// Time to write and sync one group of audit records (histogram).
pub const AUDIT_WRITE_SECONDS: &str = "pgwarden_audit_write_seconds";
/// Audit writes that failed (counter).
pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "pgwarden_audit_write_failures_total";
/// Statements refused because the audit log could not record them (counter).
pub const AUDIT_REFUSALS_TOTAL: &str = "pgwarden_audit_refusals_total";
/// Alert deliveries by `webhook` and `outcome` (delivered, failed, retried) (counter).
pub const ALERT_DELIVERIES_TOTAL: &str = "pgwarden_alert_deliveries_total";
/// Alerts dropped because a webhook's queue was full, by `webhook` (counter).
pub const ALERT_QUEUE_DROPS_TOTAL: &str = "pgwarden_alert_queue_drops_total";
/// Policy reloads by `outcome` (ok, failed) (counter).
pub const POLICY_RELOADS_TOTAL: &str = "pgwarden_policy_reloads_total";
/// The policy in force: 1, with its `version` label (gauge).
pub const POLICY_INFO: &str = "pgwarden_policy_info";

/// Every metric with its kind and help text, for the exporter and the dashboard test.
pub const ALL: &[(&str, Kind, &str)] = &[
    (CLIENT_CONNECTIONS, Kind::Gauge, "Client sessions open now."),
    (
        CLIENT_CONNECTIONS_TOTAL,
        Kind::Counter,
        "Client connections accepted.",
    ),
    (
        UPSTREAM_CONNECTIONS,
        Kind::Gauge,
        "Connections to the PostgreSQL server open now.",
    ),
    (
        UPSTREAM_CONNECT_FAILURES_TOTAL,
        Kind::Counter,
        "Connections to the PostgreSQL server that could not be made.",
    ),
    (
        STATEMENTS_TOTAL,
        Kind::Counter,
        "Statements decided, by class and action.",
    ),
    (
        REFUSALS_TOTAL,
        Kind::Counter,
        "Statements refused, by rule.",
    ),
    (
        HOLDS_PENDING,
        Kind::Gauge,
        "Holds waiting for approval now.",
    ),
    (
        HOLD_WAIT_SECONDS,
        Kind::Histogram,
        "How long held statements waited for their verdict.",
    ),
    (
        INSPECTION_SECONDS,
        Kind::Histogram,
        "Time to inspect a statement text (cache misses).",
    ),
    (
        ADDED_LATENCY_SECONDS,
        Kind::Histogram,
        "Time pgwarden held a statement before forwarding it, approvals excluded.",
    ),
    (
        INSPECTION_CACHE_HITS_TOTAL,
        Kind::Counter,
        "Inspection cache lookups answered from the cache.",
    ),
    (
        INSPECTION_CACHE_MISSES_TOTAL,
        Kind::Counter,
        "Inspection cache lookups that had to parse.",
    ),
    (AUDIT_RECORDS_TOTAL, Kind::Counter, "Audit records written."),
    (
        AUDIT_WRITE_SECONDS,
        Kind::Histogram,
        "Time to write and sync one group of audit records.",
    ),
    (
        AUDIT_WRITE_FAILURES_TOTAL,
        Kind::Counter,
        "Audit writes that failed.",
    ),
    (
        AUDIT_REFUSALS_TOTAL,
        Kind::Counter,
        "Statements refused because the audit log could not record them.",
    ),
    (
        ALERT_DELIVERIES_TOTAL,
        Kind::Counter,
        "Alert deliveries by webhook and outcome.",
    ),
    (
        ALERT_QUEUE_DROPS_TOTAL,
        Kind::Counter,
        "Alerts dropped because a webhook's queue was full.",
    ),
    (
        POLICY_RELOADS_TOTAL,
        Kind::Counter,
        "Policy reloads by outcome.",
    ),
    (
        POLICY_INFO,
        Kind::Gauge,
        "The policy in force (value 1, version label).",
    ),
];

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}
