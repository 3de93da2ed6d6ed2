//! `pgwarden audit verify FILE... [--checkpoints FILE --public-key KEY]`: reads the files and
//! prints what [`crate::audit::verify`] found. Exit 0 only for an intact log; 1 when a record
//! is broken (the first one, and why); 2 when a file cannot be read or the key is malformed.

use std::path::{Path, PathBuf};

use super::{EXIT_ERROR, EXIT_OK, EXIT_REFUSED};
use crate::audit::checkpoint::parse_public_key;
use crate::audit::verify::verify as check;

pub fn verify(files: &[PathBuf], checkpoints: Option<&Path>, public_key: Option<&str>) -> i32 {
    let mut read = Vec::new();
    for f in files {
        match std::fs::read(f) {
            Ok(b) => read.push((f.display().to_string(), b)),
            Err(e) => {
                eprintln!("pgwarden: cannot read {}: {e}", f.display());
                return EXIT_ERROR;
            }
        }
    }
    let cp = match checkpoints {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some((p.display().to_string(), b)),
            Err(e) => {
                eprintln!("pgwarden: cannot read {}: {e}", p.display());
                return EXIT_ERROR;
            }
        },
        None => None,
    };
    let key = match public_key.map(parse_public_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return EXIT_ERROR;
        }
    };
    if cp.is_some() && key.is_none() {
        eprintln!(
            "pgwarden: --checkpoints needs --public-key: an unsigned checkpoint proves nothing"
        );
        return EXIT_ERROR;
    }
    let r = check(
        &read,
        cp.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
        key.as_ref(),
    );
    for n in &r.notes {
        println!("note: {n}");
    }
    match &r.problem {
        None => {
            let range = match (r.first_seq, r.last_seq) {
                (Some(a), Some(b)) => format!("seq {a} to {b}"),
                _ => "no records".into(),
            };
            let cps = match (cp.is_some(), r.last_checkpoint) {
                (false, _) => {
                    "no checkpoints given: records cut from the end would not be noticed".into()
                }
                (true, Some(last)) => format!(
                    "{} checkpoint(s) verified, the last at seq {last}",
                    r.checkpoints_verified
                ),
                (true, None) => "no checkpoint of this log covers these records".into(),
            };
            println!(
                "intact: {} records ({range}) of log {}; {cps}",
                r.records,
                r.log_id.as_deref().unwrap_or("-")
            );
            EXIT_OK
        }
        Some(p) => {
            println!("broken: {p}");
            EXIT_REFUSED
        }
    }
}
