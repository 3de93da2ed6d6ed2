//! The commands besides `serve`, each returning the process exit status.
//!
//! Offline, with the same inspection and decision code as the wire: `check` (decide on SQL
//! files), `explain` (facts and decision for one string), `policy validate` / `policy test`,
//! `policy replay` (recorded statements re-decided with another policy set).
//! Over audit logs, offline: `audit report`.
//!
//! Clients of a running instance's admin API ([`client`]): `holds`, `tickets`, `reviews`.
//! And `tokens add`, which writes the admin API's tokens file; `audit verify`, which checks
//! an audit log's chain and signed checkpoints; `webhook verify`, which checks a saved
//! webhook delivery's signature.

pub mod audit;
pub mod audit_report;
pub mod check;
pub mod client;
pub mod explain;
pub mod holds;
pub mod policy;
pub mod replay;
pub mod reviews;
pub mod tickets;
pub mod tokens;
pub mod webhook;

use std::path::Path;

use crate::policy::{load_dir, Policy};

/// Exit status: nothing refused.
pub const EXIT_OK: i32 = 0;
/// Exit status: something refused or held.
pub const EXIT_REFUSED: i32 = 1;
/// Exit status: usage or input error.
pub const EXIT_ERROR: i32 = 2;

/// Loads a policy directory, printing every error on failure.
pub fn load_or_report(dir: &Path, env: &str) -> Option<Policy> {
    match load_dir(dir, env) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("pgwarden: invalid policy set {}:\n{e}", dir.display());
            None
        }
    }
}

/// 1-based line of byte `offset` in `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
