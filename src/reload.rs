//! Policy hot reload: on SIGHUP, and when the policy files change (polled every two seconds),
//! the whole set is loaded, validated and its own test cases run; only a set that passes
//! replaces the running one, atomically. A bad set is logged and the running one stays.
//! It works on a [`Target`] (the directory, the environment, the running policy's slot and the
//! event sink), not on the session layer's shared state.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::approval::events::{Event, EventSink};
use crate::policy::{load_dir, Policy};
use crate::workflow::cases as testcases;

/// What a reload reads and replaces.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub dir: &'a Path,
    pub environment: &'a str,
    pub policy: &'a ArcSwap<Policy>,
    pub events: &'a EventSink,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid policy set:\n{0}")]
    Invalid(crate::policy::PolicyErrors),
    #[error("policy tests failed: {0}")]
    TestsFailed(String),
}

/// Loads, validates and tests the policy directory, then swaps it in. Returns the version.
pub fn reload(t: Target<'_>) -> Result<String, ReloadError> {
    let dir = t.dir;
    let policy = load_dir(dir, t.environment).map_err(ReloadError::Invalid)?;
    let results = testcases::run_dir(dir).map_err(ReloadError::Invalid)?;
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    if !failed.is_empty() {
        return Err(ReloadError::TestsFailed(failed.join("; ")));
    }
    let version = policy.version.clone();
    t.policy.store(Arc::new(policy));
    Ok(version)
}

/// Reloads and logs the outcome.
pub fn reload_and_log(t: Target<'_>, why: &str) {
    let old = t.policy.load().version.clone();
    match reload(t) {
        Ok(v) if v == old => tracing::info!(version = %v, why, "policy unchanged"),
        Ok(v) => {
            tracing::info!(version = %v, previous = %old, why, "policy reloaded");
            t.events.emit(Event::PolicyReloaded {
                version: v,
                ok: true,
                error: None,
            });
        }
        Err(e) => {
            tracing::error!(error = %e, version = %old, why, "policy reload refused; the running policy stays");
            t.events.emit(Event::PolicyReloaded {
                version: old,
                ok: false,
                error: Some(e.to_string()),
            });
        }
    }
}

/// What the policy directory looks like now: names, sizes, modification times.
fn fingerprint(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join("tests")] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                out.push((e.path().display().to_string(), m.len(), m.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Watches the policy directory until shutdown, calling `changed` when its files change.
pub async fn watch(
    dir: std::path::PathBuf,
    every: Duration,
    shutdown: CancellationToken,
    changed: impl Fn(),
) {
    let mut last = fingerprint(&dir);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = fingerprint(&dir);
        if now != last {
            last = now;
            changed();
        }
    }
}
