//! The `pgwarden` command line: parse flags, load the configuration, start telemetry, run.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use pgwarden::config::{Config, Overrides};
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
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
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
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let server = Server::bind(config, shutdown.clone()).await?;
        let signals = tokio::spawn(wait_for_signal(shutdown));
        server.run().await;
        signals.abort();
        anyhow::Ok(())
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
