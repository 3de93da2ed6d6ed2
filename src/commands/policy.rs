//! `pgwarden policy validate [DIR]` and `pgwarden policy test [DIR]`.

use std::path::Path;

use super::{load_or_report, EXIT_ERROR, EXIT_OK, EXIT_REFUSED};
use crate::policy::testcases;

pub fn validate(dir: &Path, env: &str) -> i32 {
    match load_or_report(dir, env) {
        Some(p) => {
            println!(
                "{}: {} rules, version {} (environment {})",
                dir.display(),
                p.rules.len(),
                p.version,
                p.environment
            );
            EXIT_OK
        }
        None => EXIT_ERROR,
    }
}

pub fn test(dir: &Path) -> i32 {
    let results = match testcases::run_dir(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return EXIT_ERROR;
        }
    };
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    for r in &failed {
        println!("FAIL {}: {}: {}", r.file.display(), r.name, r.detail);
    }
    let passed = results.len() - failed.len();
    println!("{passed} passed, {} failed", failed.len());
    if failed.is_empty() && !results.is_empty() {
        EXIT_OK
    } else if results.is_empty() {
        eprintln!("pgwarden: no test cases in {}/tests", dir.display());
        EXIT_ERROR
    } else {
        EXIT_REFUSED
    }
}
