//! The `pgwarden` command line: parse flags, load the configuration, start telemetry, run.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use pgwarden::commands::{self, check::Format};
use pgwarden::config::{Config, Overrides};
use pgwarden::policy::Mode;
use pgwarden::server::Server;

/// A PostgreSQL wire-protocol proxy that enforces database change-management policy as code.
#[derive(Parser)]
#[command(name = "pgwarden", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in front of PostgreSQL.
    Serve(ServeArgs),
    /// Decide offline on SQL files (migrations). Exit 0: nothing refused; 1: something
    /// refused or held; 2: usage or input error.
    Check(CheckArgs),
    /// Print the facts pgwarden sees in SQL and the policy's decision.
    Explain(ExplainArgs),
    /// Validate, test or replay a policy directory.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Held statements waiting for approval: list, show, approve, deny (admin API client).
    Holds(commands::holds::HoldsArgs),
    /// Change tickets: list, show, create, approve, reject, revoke (admin API client).
    Tickets(commands::tickets::TicketsArgs),
    /// Break-glass uses to review: list, mark (admin API client).
    Reviews(commands::reviews::ReviewsArgs),
    /// Admin API tokens.
    Tokens {
        #[command(subcommand)]
        command: commands::tokens::TokensCommand,
    },
    /// Webhook deliveries: check a saved one's signature.
    Webhook {
        #[command(subcommand)]
        command: commands::webhook::WebhookCommand,
    },
    /// The audit log, offline: verify its chain and checkpoints; report on it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that audit files (rotated ones first, in order, then the active one) form one
    /// intact chain per log (files of several instances are grouped by their log_id); with
    /// checkpoints, that nothing was cut off the end. Exit 0 only when every log is intact;
    /// 1 names the first broken record and why.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A signed checkpoints file (default: none); once per log when the files are of
        /// several instances' logs.
        #[arg(long, value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// A checkpoint signing key's public half: 64 hex digits or a file of them
        /// (`audit-signing.pub` in the state dir); once per instance's key.
        #[arg(long, value_name = "KEY")]
        public_key: Vec<String>,
    },
    /// Changes by ticket, user and database; refusals; holds and their approvers;
    /// break-glass uses.
    ///
    /// CSV: one row per statement record (columns: log_id, seq, ts,
    /// session, user, role, database, application_name, client_addr, change, action,
    /// refused, mode, rules, ticket, break_glass, hold, approvers, classes, tags, objects,
    /// outcome, sqlstate, error, rows, duration_us, policy_version, fingerprint, text).
    Report {
        /// Audit log files (JSON Lines), in order.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Leave out records before T: RFC 3339 or a date (YYYY-MM-DD, 00:00 UTC).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Leave out records at or after T: RFC 3339 or a date (YYYY-MM-DD, 00:00 UTC).
        #[arg(long, value_name = "T")]
        until: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: commands::audit_report::Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Enforce,
    Monitor,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see README.md, "Configuration"). Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept clients on [default: 127.0.0.1:6432].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// PostgreSQL to relay to: HOST:PORT or the path of a Unix socket file
    /// (e.g. /var/run/postgresql/.s.PGSQL.5432) [default: 127.0.0.1:5432].
    #[arg(long, value_name = "HOST:PORT")]
    upstream: Option<String>,
    /// Policy directory [default: ./policies].
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Environment the policy is applied for [default: production].
    #[arg(long = "env", value_name = "NAME")]
    environment: Option<String>,
    /// enforce: refuse what policy refuses; monitor: decide and report only [default: enforce].
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Admin HTTP listener (health, readiness, API), or `off` [default: 127.0.0.1:6433].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Admin API tokens file (written by `pgwarden tokens add`); re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    admin_tokens: Option<PathBuf>,
    /// Directory of durable state: tickets, holds, reviews [default: ./pgwarden-state].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Write the tamper-evident audit log to FILE (JSON Lines) [config: audit.file].
    #[arg(long, value_name = "FILE")]
    audit_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Policy directory.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Environment to decide for.
    #[arg(long = "env", value_name = "NAME", default_value = "production")]
    environment: String,
    /// User the statements run as (for session conditions).
    #[arg(long, value_name = "NAME", default_value = "")]
    user: String,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Live catalog to read table sizes and planner estimates from, as the proxy's
    /// `[catalog]` connection would (e.g. a staging database): "host=... user=... dbname=...".
    #[arg(long, value_name = "DSN")]
    catalog: Option<String>,
    /// Configuration file whose `[catalog]` thresholds (and dsn, unless --catalog) apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Decide as the proxy would with this change ticket attached, read from the admin API
    /// (`--admin`, `--token`): whether it covers each file, and if not, why.
    #[arg(long, value_name = "ID")]
    ticket: Option<String>,
    /// Database the statements run in (for session conditions and ticket scopes).
    #[arg(long, value_name = "NAME", default_value = "")]
    database: String,
    /// Admin API the ticket is read from (with --ticket).
    #[arg(
        long,
        env = "PGWARDEN_ADMIN_URL",
        default_value = commands::client::DEFAULT_ADMIN_URL,
        value_name = "URL"
    )]
    admin: String,
    /// API token (with --ticket); prefer the environment variable.
    #[arg(
        long,
        env = "PGWARDEN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// SQL files; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
}

#[derive(clap::Args)]
struct ExplainArgs {
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    #[arg(long = "env", value_name = "NAME", default_value = "production")]
    environment: String,
    #[arg(long, value_name = "NAME", default_value = "")]
    user: String,
    /// Live catalog to read sizes and estimates from (as `check --catalog`).
    #[arg(long, value_name = "DSN")]
    catalog: Option<String>,
    /// Configuration file whose `[catalog]` applies.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The SQL text.
    sql: String,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load and compile a policy directory, reporting every error.
    Validate {
        #[arg(default_value = "policies")]
        dir: PathBuf,
        #[arg(long = "env", value_name = "NAME", default_value = "production")]
        environment: String,
    },
    /// Run the test cases in DIR/tests; ends with "N passed, M failed".
    Test {
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// The stages a statement of RULE goes through: windows, ticket, hold, approvals, timeout.
    ExplainWorkflow {
        rule: String,
        #[arg(long, value_name = "DIR", default_value = "policies")]
        policies: PathBuf,
        #[arg(long = "env", value_name = "NAME", default_value = "production")]
        environment: String,
        /// The proxy's config file, for its [holds] defaults (timeout, reminder, on_missing_ticket).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Re-decide the statements of audit logs with another policy set: what it would newly
    /// refuse and newly allow, per rule. Exit 0.
    Replay {
        /// Audit log files (JSON Lines), in order.
        #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
        audit: Vec<PathBuf>,
        /// The policy set to re-decide with.
        #[arg(long, value_name = "DIR")]
        policies: PathBuf,
        /// Environment to decide for.
        #[arg(long, alias = "env", value_name = "E", default_value = "production")]
        environment: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match cli.command {
        Command::Serve(args) => return serve(args),
        Command::Check(a) => match (
            live_catalog(a.catalog.as_deref(), a.config.as_deref()),
            check_ticket(&a),
        ) {
            (Ok(live), Ok(ticket)) => commands::check::run(
                &commands::check::Session {
                    environment: &a.environment,
                    user: &a.user,
                    database: &a.database,
                },
                &a.policies,
                a.format,
                &a.files,
                live.as_ref(),
                ticket.as_ref(),
            ),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("pgwarden: {e}");
                commands::EXIT_ERROR
            }
        },
        Command::Explain(a) => match live_catalog(a.catalog.as_deref(), a.config.as_deref()) {
            Ok(live) => {
                commands::explain::run(&a.policies, &a.environment, &a.user, &a.sql, live.as_ref())
            }
            Err(e) => {
                eprintln!("pgwarden: {e}");
                commands::EXIT_ERROR
            }
        },
        Command::Policy { command } => match command {
            PolicyCommand::Validate { dir, environment } => {
                commands::policy::validate(&dir, &environment)
            }
            PolicyCommand::Test { dir } => commands::policy::test(&dir),
            PolicyCommand::ExplainWorkflow {
                rule,
                policies,
                environment,
                config,
            } => commands::policy::explain_workflow(
                &policies,
                &environment,
                &rule,
                config.as_deref(),
            ),
            PolicyCommand::Replay {
                audit,
                policies,
                environment,
            } => commands::replay::run(&audit, &policies, &environment),
        },
        Command::Audit { command } => match command {
            AuditCommand::Report {
                files,
                since,
                until,
                format,
            } => commands::audit_report::run(&commands::audit_report::Args {
                files: &files,
                since: since.as_deref(),
                until: until.as_deref(),
                format,
            }),
            AuditCommand::Verify {
                files,
                checkpoints,
                public_key,
            } => commands::audit::verify(&files, &checkpoints, &public_key),
        },
        Command::Holds(a) => commands::holds::run(a),
        Command::Tickets(a) => commands::tickets::run(a),
        Command::Reviews(a) => commands::reviews::run(a),
        Command::Tokens { command } => commands::tokens::run(command),
        Command::Webhook { command } => commands::webhook::run(command),
    };
    std::process::exit(code);
}

/// The ticket `check --ticket` decides with, read from the admin API, with the proxy's
/// `[holds] on_missing_ticket` from `--config`.
fn check_ticket(a: &CheckArgs) -> Result<Option<commands::check::WithTicket>, String> {
    let Some(id) = &a.ticket else {
        return Ok(None);
    };
    let on_missing_ticket = match &a.config {
        Some(f) => {
            Config::load(Some(f), &Overrides::default())
                .map_err(|e| e.to_string())?
                .holds
                .on_missing_ticket
        }
        None => Config::default().holds.on_missing_ticket,
    };
    commands::check::WithTicket::fetch(id, &a.admin, a.token.as_deref(), on_missing_ticket)
        .map(Some)
}

/// The live catalog `check` and `explain` read from: `--catalog`, else the config file's
/// `[catalog]` (whose thresholds apply either way).
fn live_catalog(
    catalog: Option<&str>,
    config: Option<&std::path::Path>,
) -> Result<Option<commands::check::LiveCatalog>, String> {
    let settings = match config {
        Some(f) => {
            Config::load(Some(f), &Overrides::default())
                .map_err(|e| e.to_string())?
                .catalog
        }
        None => None,
    };
    let dsn = catalog
        .map(str::to_owned)
        .or_else(|| settings.as_ref().map(|s| s.dsn.clone()));
    match dsn {
        None => Ok(None),
        Some(dsn) => {
            commands::check::LiveCatalog::new(settings.unwrap_or_default(), &dsn, None).map(Some)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
        policies: args.policies,
        environment: args.environment,
        mode: args.mode.map(|m| match m {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Monitor => Mode::Monitor,
        }),
        admin_listen: args.admin_listen,
        admin_tokens: args.admin_tokens,
        state_dir: args.state_dir,
        audit_file: args.audit_file,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("pgwarden: invalid configuration:\n{errors}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let server = match Server::bind(config, shutdown.clone()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pgwarden: {e}");
                std::process::exit(2);
            }
        };
        let signals = tokio::spawn(wait_for_signal(shutdown, server.shared()));
        server.run().await;
        signals.abort();
        anyhow::Ok(())
    })
}

async fn wait_for_signal(
    shutdown: CancellationToken,
    shared: std::sync::Arc<pgwarden::session::Shared>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            _ = hup.recv() => {
                pgwarden::reload::reload_and_log(shared.reload_target(), "SIGHUP");
                match shared.tokens.reload() {
                    Ok(n) => tracing::info!(tokens = n, "admin tokens re-read"),
                    Err(e) => tracing::error!(error = %e, "admin tokens file refused; the running tokens stay"),
                }
            }
        }
    }
    shutdown.cancel();
}
