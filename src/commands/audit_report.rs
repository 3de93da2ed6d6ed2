//! `pgwarden audit report FILE... [--since T] [--until T] [--format text|csv|json|html]`:
//! reads audit logs offline and prints what changed, by ticket, user and database, what was
//! refused, which holds were approved by whom, and break-glass uses. The report itself is
//! pure ([`crate::audit_report`]); this reads the files, warns about skipped lines on
//! stderr and prints.

use std::path::PathBuf;

use super::{EXIT_ERROR, EXIT_OK};
use crate::audit_report::{self, html, read, render};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Csv,
    Json,
    Html,
}

pub struct Args<'a> {
    pub files: &'a [PathBuf],
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub format: Format,
}

/// The report over `files` in `[since, until)`, rendered in `format`.
pub fn report(a: &Args<'_>) -> Result<(String, Vec<read::Skipped>), String> {
    let bound = |s: Option<&str>, flag: &str| {
        s.map(|s| read::parse_bound(s).map_err(|e| format!("{flag}: {e}")))
            .transpose()
    };
    let range = read::Range {
        since: bound(a.since, "--since")?,
        until: bound(a.until, "--until")?,
    };
    let log = read::read_files(a.files)?;
    let names: Vec<String> = a.files.iter().map(|f| f.display().to_string()).collect();
    let r = audit_report::build(&log, range, &names);
    let out = match a.format {
        Format::Text => render::text(&r),
        Format::Csv => render::csv(&r),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&render::json(&r)).expect("json");
            s.push('\n');
            s
        }
        Format::Html => html::html(&r),
    };
    Ok((out, log.skipped))
}

pub fn run(a: &Args<'_>) -> i32 {
    match report(a) {
        Ok((out, skipped)) => {
            for s in &skipped {
                eprintln!("pgwarden: warning: {s}");
            }
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
            EXIT_OK
        }
        Err(e) => {
            eprintln!("pgwarden: {e}");
            EXIT_ERROR
        }
    }
}
