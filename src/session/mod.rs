//! One task per client connection: the startup phase ([`startup`]), the connection to
//! PostgreSQL, then the relay ([`relay`]) that moves frames both ways while the session
//! state ([`state`]) follows the protocol. This is the one place that sequences the wire
//! with everything else pgwarden does.

pub mod batches;
pub mod gate;
pub mod ledger;
pub mod params;
pub mod prepared;
pub mod refusal;
pub mod relay;
pub mod startup;
pub mod state;
pub mod verdict;
pub mod waits;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cancel::CancelRegistry;
use crate::config::{Config, Upstream};
use crate::policy::Policy;
use crate::policy::SessionContext;
use crate::sql::cache::InspectCache;
use crate::wire::messages::PgError;
use crate::wire::sqlstate::SqlState;

/// What every session shares: configuration, TLS, the cancel map, the shutdown signal.
pub struct Shared {
    pub config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub connector: Option<tokio_rustls::TlsConnector>,
    pub cancels: CancelRegistry,
    pub shutdown: CancellationToken,
    /// The running policy; replaced whole on reload.
    pub policy: arc_swap::ArcSwap<Policy>,
    pub cache: InspectCache,
    /// The live catalog, when `[catalog]` is configured.
    pub catalog: Option<Arc<crate::catalog::Catalog>>,
    /// Tickets, holds and reviews (the state store); without it holds and tickets refuse.
    pub approvals: Option<crate::approval::Approvals>,
    /// The admin API's tokens (re-read on SIGHUP).
    pub tokens: Arc<crate::admin::auth::TokenSet>,
    /// Every decision and lifecycle event goes out through here.
    pub events: crate::approval::events::EventSink,
    /// The audit log, when `[audit] file` is set.
    pub audit: Option<crate::audit::AuditLog>,
    next_id: AtomicU64,
}

impl Shared {
    /// What a policy reload reads and replaces.
    pub fn reload_target(&self) -> crate::reload::Target<'_> {
        crate::reload::Target {
            dir: &self.config.policies,
            environment: &self.config.environment,
            policy: &self.policy,
            events: &self.events,
        }
    }

    pub fn new(
        config: Arc<Config>,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        connector: Option<tokio_rustls::TlsConnector>,
        shutdown: CancellationToken,
        policy: Policy,
        approvals: Option<crate::approval::Approvals>,
        tokens: Arc<crate::admin::auth::TokenSet>,
    ) -> Self {
        let catalog = config.catalog.clone().and_then(|c| {
            crate::catalog::Catalog::new(c)
                .map_err(|e| tracing::error!(error = %e, "catalog connection not configured"))
                .ok()
                .map(Arc::new)
        });
        let events = approvals
            .as_ref()
            .map(|a| a.events().clone())
            .unwrap_or_default();
        Shared {
            catalog,
            approvals,
            tokens,
            events,
            audit: None,
            policy: arc_swap::ArcSwap::from_pointee(policy),
            cache: InspectCache::default(),
            upstream: Arc::new(config.upstream.clone()),
            config,
            acceptor,
            connector,
            cancels: CancelRegistry::default(),
            shutdown,
            next_id: AtomicU64::new(1),
        }
    }
}

/// Serves one client connection to its end.
pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        session.id = id,
        client.addr = %peer,
        user = tracing::field::Empty,
        database = tracing::field::Empty,
        application_name = tracing::field::Empty,
    );
    serve(shared, tcp, peer, id).instrument(span).await
}

async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, id: u64) {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.config.startup_timeout;
    let opening = tokio::select! {
        o = startup::negotiate(tcp, &shared) => o,
        _ = tokio::time::sleep_until(deadline) => {
            // The stream is owned by the dropped future; dropping it closes the connection.
            tracing::info!("startup timed out");
            return;
        }
        _ = shared.shutdown.cancelled() => return,
    };
    let (mut client, startup, packet, rest) = match opening {
        startup::Opening::Session {
            client,
            startup,
            packet,
            rest,
        } => (client, startup, packet, rest),
        startup::Opening::Cancel | startup::Opening::Closed => return,
    };
    let span = tracing::Span::current();
    span.record("user", startup.user());
    span.record("database", startup.database());
    if let Some(app) = startup.param("application_name") {
        span.record("application_name", app);
    }
    tracing::debug!(protocol = %format!("{}.{}", startup.major, startup.minor), "startup");

    let server = match crate::upstream::connect(&shared.upstream, shared.connector.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            metrics::counter!(crate::telemetry::UPSTREAM_CONNECT_FAILURES_TOTAL).increment(1);
            shared
                .events
                .emit(crate::approval::events::Event::UpstreamDown {
                    error: e.to_string(),
                });
            let fatal = PgError::fatal(SqlState::CONNECTION_FAILURE, format!("pgwarden: {e}"))
                .with_hint("Check that PostgreSQL is running and that pgwarden's upstream setting points at it.");
            let _ = client.write_all(&fatal.to_bytes()).await;
            let _ = client.shutdown().await;
            return;
        }
    };
    let base = SessionContext {
        user: startup.user().to_owned(),
        database: startup.database().to_owned(),
        role: None,
        application: startup.param("application_name").unwrap_or("").to_owned(),
        client_addr: Some(peer.ip()),
        tls: client.is_tls(),
        in_transaction: false,
        ticket: None,
        unreadable_encoding: false,
        created: Default::default(),
        lock_timeout_set: false,
        now: jiff::Timestamp::now(),
    };
    let mut gate = gate::PolicyGate::new(shared.clone(), base, id);
    // Settings in the startup packet (`role=...`, `options=-c role=...`) are decided like SET
    // statements.
    if let Err(refusal) = gate.check_startup_settings(&startup.all_settings()) {
        let _ = client.write_all(&refusal.to_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    let ctx = relay::Context {
        shared: &shared,
        session_id: id,
        startup_deadline: deadline,
        cancel: crate::cancel::CancelSignal::default(),
    };
    let started = std::time::Instant::now();
    shared
        .events
        .emit(crate::approval::events::Event::SessionStarted {
            session: id,
            user: startup.user().to_owned(),
            database: startup.database().to_owned(),
            application_name: startup.param("application_name").map(str::to_owned),
            client_addr: Some(peer.ip().to_string()),
            tls: client.is_tls(),
        });
    metrics::gauge!(crate::telemetry::UPSTREAM_CONNECTIONS).increment(1.0);
    let end = relay::run(ctx, client, server, packet, rest, &mut gate).await;
    metrics::gauge!(crate::telemetry::UPSTREAM_CONNECTIONS).decrement(1.0);
    tracing::info!(end = ?end, "session closed");
    shared
        .events
        .emit(crate::approval::events::Event::SessionEnded {
            session: id,
            user: startup.user().to_owned(),
            database: startup.database().to_owned(),
            reason: format!("{end:?}"),
            duration_ms: started.elapsed().as_millis() as u64,
        });
}
