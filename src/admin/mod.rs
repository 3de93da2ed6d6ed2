//! The admin HTTP listener: `/healthz` (the process is up), `/readyz` (policy loaded,
//! upstream reachable, state store answering) and the JSON API under `/api/` through which
//! approvers list and answer holds, manage tickets and mark break-glass uses reviewed.
//!
//! - [`auth`]: the tokens file, secrets and the `Authorization: Bearer` extractor; roles.
//! - `handlers`: one function per route; each authenticates, checks the role, calls
//!   [`Approvals`] and returns its JSON verbatim.
//! - [`error`]: [`ApiError`], every refusal as `{"error": "..."}` with its status.
//! - [`live`]: `/metrics` (Prometheus) and `/api/events` (Server-Sent Events).
//!
//! The server builds an [`AdminState`], makes the [`router`] and runs [`serve`] on a bound
//! listener until its shutdown token is cancelled; on SIGHUP it calls
//! [`TokenSet::reload`] through [`AdminState::tokens`].

pub mod auth;
mod capped;
pub mod error;
mod handlers;
pub mod live;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use auth::{Authenticated, NewToken, TokenError, TokenSet};
pub use error::ApiError;

use crate::approval::Approvals;
use crate::config::UpstreamAddr;
use capped::Capped;

/// Is the policy loaded? `Err` says why not (shown in `/readyz`).
pub type PolicyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What `/readyz` checks besides the state store.
#[derive(Clone)]
pub struct Readiness {
    policy: PolicyCheck,
    upstream: Option<UpstreamAddr>,
    connect_timeout: Duration,
    audit: Option<PolicyCheck>,
}

impl Readiness {
    /// `policy_loaded` answers whether a policy is in force; `upstream` (if any) must accept
    /// a connection within one second (see [`Readiness::connect_timeout`]).
    pub fn new(
        policy_loaded: impl Fn() -> Result<(), String> + Send + Sync + 'static,
        upstream: Option<UpstreamAddr>,
    ) -> Self {
        Readiness {
            policy: Arc::new(policy_loaded),
            upstream,
            connect_timeout: Duration::from_secs(1),
            audit: None,
        }
    }

    /// Adds the audit log's check: unready while it cannot be written.
    pub fn audit(mut self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.audit = Some(Arc::new(check));
        self
    }

    /// The audit check's answer (`None`: no audit log).
    pub(crate) fn audit_check(&self) -> Option<Result<(), String>> {
        self.audit.as_ref().map(|c| c())
    }

    /// How long the upstream connect may take before the check fails.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub(crate) fn policy(&self) -> Result<(), String> {
        (self.policy)()
    }

    /// A TCP (or Unix socket) connect, closed at once without sending anything
    /// (PostgreSQL does not log a connection that ends before its first byte).
    pub(crate) async fn upstream(&self) -> Result<(), String> {
        let Some(addr) = &self.upstream else {
            return Ok(());
        };
        let attempt = async {
            match addr {
                UpstreamAddr::Tcp { host, port } => {
                    TcpStream::connect((host.as_str(), *port)).await.map(drop)
                }
                UpstreamAddr::Unix(path) => tokio::net::UnixStream::connect(path).await.map(drop),
            }
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Err(_) => Err(format!(
                "{addr}: no connection within {}",
                humantime::format_duration(self.connect_timeout)
            )),
        }
    }
}

/// Everything the handlers share; a cheap clone.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    approvals: Approvals,
    tokens: Arc<TokenSet>,
    readiness: Readiness,
    live: Option<live::Live>,
}

impl AdminState {
    pub fn new(approvals: Approvals, tokens: Arc<TokenSet>, readiness: Readiness) -> Self {
        Self::with_live(approvals, tokens, readiness, None)
    }

    /// With `/metrics` and `/api/events` served from `live`.
    pub fn with_live(
        approvals: Approvals,
        tokens: Arc<TokenSet>,
        readiness: Readiness,
        live: Option<live::Live>,
    ) -> Self {
        AdminState {
            inner: Arc::new(Inner {
                approvals,
                tokens,
                readiness,
                live,
            }),
        }
    }

    pub(crate) fn live(&self) -> Option<&live::Live> {
        self.inner.live.as_ref()
    }

    pub fn approvals(&self) -> &Approvals {
        &self.inner.approvals
    }

    /// The accepted tokens (call [`TokenSet::reload`] on SIGHUP).
    pub fn tokens(&self) -> &Arc<TokenSet> {
        &self.inner.tokens
    }

    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }
}

/// All routes of the admin listener.
pub fn router(state: AdminState) -> Router {
    use handlers as h;
    Router::new()
        .route("/healthz", get(h::healthz))
        .route("/readyz", get(h::readyz))
        .route("/metrics", get(live::metrics))
        .route("/api/events", get(live::events))
        .route("/api/tickets", get(h::list_tickets).post(h::create_ticket))
        .route("/api/tickets/{id}", get(h::get_ticket))
        .route("/api/tickets/{id}/approve", post(h::approve_ticket))
        .route("/api/tickets/{id}/reject", post(h::reject_ticket))
        .route("/api/tickets/{id}/revoke", post(h::revoke_ticket))
        .route("/api/holds", get(h::list_holds))
        .route("/api/holds/{id}", get(h::get_hold))
        .route("/api/holds/{id}/approve", post(h::approve_hold))
        .route("/api/holds/{id}/deny", post(h::deny_hold))
        .route("/api/holds/{id}/revoke", post(h::revoke_hold))
        .route("/api/reviews", get(h::list_reviews))
        .route("/api/reviews/{id}/reviewed", post(h::mark_reviewed))
        .fallback(h::no_route)
        .method_not_allowed_fallback(h::wrong_method)
        .with_state(state)
}

/// Binds the admin listener's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown` is
/// cancelled; requests in flight then finish, idle connections close.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let stop = shutdown.clone().cancelled_owned();
    match tls {
        None => {
            let capped = Capped::new(listener, capped::MAX_CONNECTIONS);
            axum::serve(capped, router)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(acceptor) => {
            let tls = TlsListener::new(listener, acceptor)?;
            let capped = Capped::new(tls, capped::MAX_CONNECTIONS);
            axum::serve(capped, router)
                .with_graceful_shutdown(stop)
                .await
        }
    }
}

/// TLS handshakes of the admin listener that may be under way at once.
const MAX_HANDSHAKES: usize = 64;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener that hands axum only connections whose TLS handshake completed. Handshakes
/// run in their own tasks so one slow client does not stop others from connecting.
struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _acceptor: AbortOnDropHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, then go on.
                        tracing::warn!(error = %e, "admin listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin listener: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "admin listener: TLS handshake timed out")
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            _acceptor: AbortOnDropHandle::new(task),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends when the listener is dropped; until then wait.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests;
