//! `pgwarden webhook verify --secret S [FILE]`: checks a saved webhook delivery (the HTTP
//! request as a receiver captured it: an optional request line, headers, a blank line, the
//! body) against its Standard Webhooks signature, with the same code the proxy signs with.
//! Exit 0: `valid: ...`; 1: `invalid: <reason>`; 2: the input or secret cannot be read.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use super::{EXIT_ERROR, EXIT_OK, EXIT_REFUSED};
use crate::alerts::sign;

#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// Check the signature of a saved delivery (FILE, or standard input).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The webhook's secret (`whsec_<base64>`, or raw).
    #[arg(long, value_name = "S", required_unless_present = "secret_file")]
    pub secret: Option<String>,
    /// A file holding the secret (as `secret_file` in the config).
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,
    /// Refuse a webhook-timestamp further than this from now (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub tolerance: Option<Duration>,
    /// The saved delivery; `-` or none: standard input.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

pub fn run(command: WebhookCommand) -> i32 {
    match command {
        WebhookCommand::Verify(a) => verify(&a),
    }
}

fn verify(a: &VerifyArgs) -> i32 {
    let secret = match (&a.secret, &a.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(s) => s.trim().to_owned(),
            Err(e) => {
                eprintln!("pgwarden: cannot read {}: {e}", f.display());
                return EXIT_ERROR;
            }
        },
        (None, None) => {
            eprintln!("pgwarden: --secret or --secret-file is needed");
            return EXIT_ERROR;
        }
    };
    let key = match sign::key(&secret) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return EXIT_ERROR;
        }
    };
    let saved = match a.file.as_deref() {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).map_err(|e| (p.display().to_string(), e))
        }
        _ => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map(|_| v)
                .map_err(|e| ("standard input".to_owned(), e))
        }
    };
    let saved = match saved {
        Ok(s) => s,
        Err((what, e)) => {
            eprintln!("pgwarden: cannot read {what}: {e}");
            return EXIT_ERROR;
        }
    };
    let now = jiff::Timestamp::now().as_second();
    match sign::verify_saved(&key, &saved, a.tolerance, now) {
        Ok(v) => {
            println!("valid: webhook-id {}, timestamp {}", v.id, v.timestamp);
            EXIT_OK
        }
        Err(e) => {
            println!("invalid: {e}");
            EXIT_REFUSED
        }
    }
}
