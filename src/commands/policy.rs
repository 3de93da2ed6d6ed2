//! `pgwarden policy validate [DIR]`, `pgwarden policy test [DIR]` and
//! `pgwarden policy explain-workflow RULE`.

use std::path::Path;

use super::{load_or_report, EXIT_ERROR, EXIT_OK, EXIT_REFUSED};
use crate::workflow::cases as testcases;

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

pub fn explain_workflow(dir: &Path, env: &str, rule: &str, config: Option<&Path>) -> i32 {
    let holds = match config {
        None => crate::config::Config::default().holds,
        Some(f) => match crate::config::Config::load(Some(f), &crate::config::Overrides::default())
        {
            Ok(c) => c.holds,
            Err(e) => {
                eprintln!("pgwarden: {e}");
                return EXIT_ERROR;
            }
        },
    };
    let Some(policy) = load_or_report(dir, env) else {
        return EXIT_ERROR;
    };
    let Some(r) = policy.rules.iter().find(|r| r.id == rule) else {
        eprintln!(
            "pgwarden: no rule {rule:?} in {} (environment {env})",
            dir.display()
        );
        return EXIT_ERROR;
    };
    for line in crate::workflow::stages::stages(&policy, r, &holds) {
        println!("{line}");
    }
    EXIT_OK
}
