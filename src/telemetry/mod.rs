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

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::approval::events::{Event, EventSink};
use crate::approval::model::HoldStatus;

/// Histogram buckets for the seconds histograms: 50 µs to 15 minutes.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls share it) and describes
/// every metric. The handle renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed: /metrics stays empty");
            }
            for (name, kind, help) in ALL {
                match kind {
                    Kind::Counter => metrics::describe_counter!(*name, *help),
                    Kind::Gauge => metrics::describe_gauge!(*name, *help),
                    Kind::Histogram => {
                        metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help)
                    }
                }
            }
            // Every series exists from the start (at zero), so dashboards and alerts see it.
            metrics::gauge!(CLIENT_CONNECTIONS).set(0.0);
            metrics::gauge!(HOLDS_PENDING).set(0.0);
            metrics::counter!(CLIENT_CONNECTIONS_TOTAL).absolute(0);
            metrics::counter!(AUDIT_WRITE_FAILURES_TOTAL).absolute(0);
            metrics::counter!(AUDIT_REFUSALS_TOTAL).absolute(0);
            metrics::counter!(UPSTREAM_CONNECT_FAILURES_TOTAL).absolute(0);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("pgwarden-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("a thread can be started");
            handle
        })
        .clone()
}

/// What an event changes in the metrics (pure over the event; the recorder is global).
pub fn record_event(e: &Event) {
    match e {
        Event::HoldOpened { .. } => metrics::gauge!(HOLDS_PENDING).increment(1.0),
        Event::HoldApproved { hold }
        | Event::HoldDenied { hold }
        | Event::HoldExpired { hold }
        | Event::HoldWithdrawn { hold }
            if hold.status != HoldStatus::Pending =>
        {
            metrics::gauge!(HOLDS_PENDING).decrement(1.0);
            let waited = hold
                .closed_at
                .map(|c| c.duration_since(hold.opened_at).as_secs_f64())
                .unwrap_or(0.0);
            metrics::histogram!(HOLD_WAIT_SECONDS, "outcome" => hold.status.name())
                .record(waited.max(0.0));
        }
        Event::PolicyLoaded { version } => {
            metrics::gauge!(POLICY_INFO, "version" => version.clone()).set(1.0);
        }
        Event::PolicyReloaded { version, ok, .. } => {
            let outcome = if *ok { "ok" } else { "failed" };
            metrics::counter!(POLICY_RELOADS_TOTAL, "outcome" => outcome).increment(1);
            if *ok {
                policy_version(version);
            }
        }
        _ => {}
    }
}

/// The policy version in force: the gauge of the old version goes to 0.
fn policy_version(version: &str) {
    static CURRENT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut cur = CURRENT.lock().expect("not poisoned");
    if let Some(old) = cur.replace(version.to_owned()) {
        if old != version {
            metrics::gauge!(POLICY_INFO, "version" => old).set(0.0);
        }
    }
    metrics::gauge!(POLICY_INFO, "version" => version.to_owned()).set(1.0);
}

/// Follows `events` and records what they change, until the sink is gone.
pub fn watch_events(events: &EventSink) {
    let mut rx = events.subscribe();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(e) => record_event(&e.event),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "metrics fell behind the event stream")
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the shipped Grafana dashboard queries is one pgwarden exports, and every
    /// exported metric is on the dashboard.
    #[test]
    fn the_dashboard_queries_exactly_the_exported_metrics() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/pgwarden.json");
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut queried = std::collections::BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(i) = rest.find("pgwarden_") {
                    let name: String = rest[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[i + name.len()..];
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name)
                        .to_owned();
                    queried.insert(base);
                }
            }
        }
        let exported: std::collections::BTreeSet<String> =
            ALL.iter().map(|(n, _, _)| n.to_string()).collect();
        let unknown: Vec<_> = queried.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "the dashboard queries unknown metrics: {unknown:?}"
        );
        let missing: Vec<_> = exported.difference(&queried).collect();
        assert!(
            missing.is_empty(),
            "metrics not on the dashboard: {missing:?}"
        );
    }

    #[test]
    fn names_follow_the_conventions() {
        for (name, kind, _) in ALL {
            assert!(name.starts_with("pgwarden_"), "{name}");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Histogram => assert!(name.ends_with("_seconds"), "{name}"),
                Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
    }
}
