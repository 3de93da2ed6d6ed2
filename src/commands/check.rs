//! `pgwarden check FILE...`: decide offline on SQL files (migrations) with the same code as
//! the wire; with `--ticket ID`, as the proxy would with that change ticket attached (read
//! from the admin API). Output as text, JSON or SARIF (for code-scanning UIs).

use std::io::Read;
use std::path::Path;

use serde_json::json;

use super::client::{segment, AdminClient, CliError, ClientArgs, OutputFormat};
use super::{line_at, load_or_report, EXIT_ERROR, EXIT_OK, EXIT_REFUSED};
use crate::approval::model::Ticket;
use crate::catalog::client::CatalogConfig;
use crate::catalog::Catalog;
use crate::policy::{Action, Decision, Mode, OnMissingTicket, Policy, SessionContext};
use crate::sql::{self, Inspection, ReadAs};
use crate::workflow::offline::{offline, Attached, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Sarif,
}

/// The session the files are decided for.
pub struct Session<'a> {
    pub environment: &'a str,
    pub user: &'a str,
    pub database: &'a str,
}

/// `--ticket`: the ticket as the store has it (none: unknown) and what a missing cover does.
pub struct WithTicket {
    pub id: String,
    pub ticket: Option<Ticket>,
    pub on_missing_ticket: OnMissingTicket,
}

impl WithTicket {
    /// Reads ticket `id` from the admin API at `admin` (404: unknown to the store).
    pub fn fetch(
        id: &str,
        admin: &str,
        token: Option<&str>,
        on_missing_ticket: OnMissingTicket,
    ) -> Result<WithTicket, String> {
        let args = ClientArgs {
            admin: admin.to_owned(),
            token: token.map(str::to_owned),
            format: OutputFormat::Text,
        };
        let client = AdminClient::new(&args).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let path = format!("/api/tickets/{}", segment(id));
        let ticket = match rt.block_on(client.get::<Ticket>(&path)) {
            Ok(a) => Some(a.value),
            Err(CliError::Refused { status: 404, .. }) => None,
            Err(e) => return Err(format!("reading ticket {id}: {e}")),
        };
        Ok(WithTicket {
            id: id.to_owned(),
            ticket,
            on_missing_ticket,
        })
    }
}

/// One file's decision.
pub struct FileResult {
    pub path: String,
    pub text: String,
    pub decision: Decision,
    /// With `--ticket`: where the file ends up with the ticket attached.
    pub outcome: Option<Outcome>,
    pub statements: Vec<usize>,
    /// Lookups that failed, and rules decided as if every table were large (no catalog).
    pub notes: Vec<String>,
}

/// A live catalog for `check --catalog`: the same facts the proxy would use.
pub struct LiveCatalog {
    pub catalog: Catalog,
    pub database: String,
    /// The user whose default search_path estimates use (the DSN's).
    pub user: String,
    pub runtime: tokio::runtime::Runtime,
}

impl LiveCatalog {
    /// Connects lazily to `dsn`'s database (or `database`) with `[catalog]` settings `settings`.
    pub fn new(
        mut settings: CatalogConfig,
        dsn: &str,
        database: Option<&str>,
    ) -> Result<LiveCatalog, String> {
        let parsed: tokio_postgres::Config =
            dsn.parse().map_err(|e| format!("invalid --catalog: {e}"))?;
        let database = database
            .map(str::to_owned)
            .or_else(|| parsed.get_dbname().map(str::to_owned))
            .or_else(|| parsed.get_user().map(str::to_owned))
            .unwrap_or_else(|| "postgres".into());
        settings.dsn = dsn.to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let user = parsed.get_user().unwrap_or("postgres").to_owned();
        Ok(LiveCatalog {
            catalog: Catalog::new(settings)?,
            database,
            user,
            runtime,
        })
    }
}

/// The inspection (with catalog facts folded in), the decision, and notes: lookups that
/// failed, and without a catalog the rules decided as if every table were large.
pub fn inspect_and_decide(
    policy: &Policy,
    text: &str,
    user: &str,
    catalog: Option<&LiveCatalog>,
) -> (Inspection, Decision, Vec<String>) {
    let mut ins = sql::inspect(text, ReadAs::default());
    let session = SessionContext {
        user: user.to_owned(),
        ..SessionContext::default()
    };
    let mut notes = Vec::new();
    if let Some(live) = catalog {
        let qs = crate::catalog::questions(&ins, policy.needs_for(&ins), &session.created);
        if !qs.is_empty() {
            let source = crate::catalog::client::Source::new(
                text,
                ReadAs::default(),
                ins.statements.len(),
                &crate::catalog::client::default_search_path(&live.user),
            );
            let answers = live
                .runtime
                .block_on(live.catalog.fetch(&live.database, &qs, &source));
            ins = crate::catalog::enrich(
                &ins,
                &answers,
                &session.created,
                &live.catalog.settings.thresholds,
            );
            notes.extend(ins.notes.iter().cloned());
        }
    }
    let d = policy.decide(&ins, &session, Mode::Enforce);
    if catalog.is_none() {
        let mut assumed: Vec<&str> = d
            .matches
            .iter()
            .filter(|m| {
                policy
                    .rules
                    .iter()
                    .any(|r| r.id == m.rule && r.small_action.is_some())
            })
            .map(|m| m.rule.as_str())
            .collect();
        assumed.dedup();
        if !assumed.is_empty() {
            notes.push(format!(
                "decided as if every table were large (no --catalog to read sizes from): {}",
                assumed.join(", ")
            ));
        }
        if policy.needs.estimates {
            // The statements a catalog would have estimated.
            let planner = crate::catalog::Needs {
                estimates: true,
                ..Default::default()
            };
            if !crate::catalog::questions(&ins, planner, &session.created).is_empty() {
                let rules: Vec<&str> = policy
                    .rules
                    .iter()
                    .filter(|r| r.needs.estimates)
                    .map(|r| r.id.as_str())
                    .collect();
                notes.push(format!(
                    "not evaluated without --catalog (they need the planner's row estimate): {}",
                    rules.join(", ")
                ));
            }
        }
    }
    (ins, d, notes)
}

pub fn run(
    session: &Session<'_>,
    policies: &Path,
    format: Format,
    files: &[String],
    catalog: Option<&LiveCatalog>,
    ticket: Option<&WithTicket>,
) -> i32 {
    let Some(policy) = load_or_report(policies, session.environment) else {
        return EXIT_ERROR;
    };
    let user = session.user;
    let mut results = Vec::new();
    for f in files {
        let text = if f == "-" {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("pgwarden: cannot read standard input: {e}");
                return EXIT_ERROR;
            }
            s
        } else {
            match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("pgwarden: cannot read {f}: {e}");
                    return EXIT_ERROR;
                }
            }
        };
        let (ins, decision, notes) = inspect_and_decide(&policy, &text, user, catalog);
        let outcome = ticket.map(|t| {
            let ctx = SessionContext {
                user: user.to_owned(),
                database: session.database.to_owned(),
                ticket: Some(t.id.clone()),
                ..SessionContext::default()
            };
            let attached = Attached {
                ticket: Some(&t.id),
                known: t.ticket.as_ref(),
                break_glass: None,
            };
            offline(
                &policy,
                &ins,
                &decision,
                &ctx,
                attached,
                t.on_missing_ticket,
            )
        });
        results.push(FileResult {
            path: f.clone(),
            statements: ins.statements.iter().map(|s| s.location).collect(),
            text,
            decision,
            outcome,
            notes,
        });
    }
    match format {
        Format::Text => print_text(&results),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&results, &policy)).expect("json")
        ),
        Format::Sarif => println!(
            "{}",
            serde_json::to_string_pretty(&sarif(&results, &policy)).expect("json")
        ),
    }
    if results.iter().any(|r| r.action().refuses()) {
        EXIT_REFUSED
    } else {
        EXIT_OK
    }
}

impl FileResult {
    /// Where the file ends up: with `--ticket` the routed outcome, else the decision.
    pub fn action(&self) -> Action {
        self.outcome
            .as_ref()
            .map_or(self.decision.action, |o| o.action)
    }
}

fn line_of_match(r: &FileResult, statement: usize) -> usize {
    line_at(&r.text, r.statements.get(statement).copied().unwrap_or(0))
}

fn print_text(results: &[FileResult]) {
    for r in results {
        for m in &r.decision.matches {
            println!(
                "{}:{}: {}{}: {}: {}",
                r.path,
                line_of_match(r, m.statement),
                m.action.name(),
                if m.monitor { " (monitor)" } else { "" },
                m.rule,
                m.message
            );
            if let Some(h) = &m.hint {
                println!("    hint: {h}");
            }
        }
        for n in &r.notes {
            println!("{}: note: {n}", r.path);
        }
        if let Some(o) = &r.outcome {
            match (&o.ticket, &o.why) {
                (Some(t), _) => println!("{}: ticket {t} covers it", r.path),
                (None, Some(why)) => println!("{}: {why}", r.path),
                (None, None) => {}
            }
        }
        println!("{}: {}", r.path, r.action().name());
    }
}

fn json_report(results: &[FileResult], policy: &Policy) -> serde_json::Value {
    json!({
        "policy_version": policy.version,
        "environment": policy.environment,
        "files": results.iter().map(|r| json!({
            "path": r.path,
            "action": r.action(),
            "decision": r.decision.action,
            "ticket": r.outcome.as_ref().map(|o| json!({
                "covered_by": o.ticket,
                "why": o.why,
            })),
            "notes": r.notes,
            "matches": r.decision.matches.iter().map(|m| json!({
                "rule": m.rule,
                "action": m.action,
                "severity": m.severity,
                "monitor": m.monitor,
                "line": line_of_match(r, m.statement),
                "message": m.message,
                "hint": m.hint,
                "policy_file": m.file,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn sarif_level(a: Action) -> &'static str {
    match a {
        Action::Block | Action::RequireTicket | Action::Hold => "error",
        Action::Alert => "warning",
        Action::Allow => "note",
    }
}

fn sarif(results: &[FileResult], policy: &Policy) -> serde_json::Value {
    json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": {"driver": {
                "name": "pgwarden",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": policy.rules.iter().map(|r| json!({
                    "id": r.id,
                    "shortDescription": {"text": r.message},
                    "fullDescription": {"text": r.description},
                    "help": {"text": r.hint.clone().unwrap_or_default()},
                    "properties": {"action": r.action, "severity": r.severity},
                })).collect::<Vec<_>>(),
            }},
            "properties": {"policy_version": policy.version, "environment": policy.environment},
            "results": results.iter().flat_map(|r| r.decision.matches.iter().map(move |m| json!({
                "ruleId": m.rule,
                "level": sarif_level(m.action),
                "message": {"text": format!("{} ({})", m.message, m.action.name())},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": r.path},
                    "region": {"startLine": line_of_match(r, m.statement)},
                }}],
            }))).collect::<Vec<_>>(),
        }],
    })
}
