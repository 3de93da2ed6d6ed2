//! The accept loop: it only admits connections (or refuses them over the client limit with
//! FATAL 53300) and spawns sessions. Shutdown: stop accepting, let sessions end as the
//! shutdown rules say, wait for them within a bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::session::{self, Shared};
use crate::wire::messages::PgError;
use crate::wire::sqlstate::SqlState;

/// A bound, ready-to-run proxy.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    admin: Option<Admin>,
}

/// The admin HTTP listener, bound, with what it serves.
struct Admin {
    listener: TcpListener,
    state: crate::admin::AdminState,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot open the state store ({dir}): {error}")]
    State { dir: String, error: String },
    #[error("cannot open the audit log {file}: {error}")]
    Audit { file: String, error: String },
    #[error("cannot read the admin tokens file: {0}")]
    Tokens(String),
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid policy set {dir}:\n{errors}")]
    Policy {
        dir: String,
        errors: crate::policy::PolicyErrors,
    },
}

impl Server {
    /// Binds the listener and prepares TLS; nothing is accepted until [`Server::run`].
    pub async fn bind(config: Config, shutdown: CancellationToken) -> Result<Server, ServerError> {
        let acceptor = match (&config.tls.cert, &config.tls.key) {
            (Some(c), Some(k)) if config.tls.mode != crate::config::ClientTlsMode::Disable => {
                Some(crate::tls::acceptor(c, k)?)
            }
            _ => None,
        };
        let policy =
            crate::policy::load_dir(&config.policies, &config.environment).map_err(|errors| {
                ServerError::Policy {
                    dir: config.policies.display().to_string(),
                    errors,
                }
            })?;
        tracing::info!(rules = policy.rules.len(), version = %policy.version, environment = %policy.environment, mode = ?config.mode, "policy loaded");
        let connector = crate::tls::connector(config.upstream.tls, config.upstream.ca.as_deref())?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let events = crate::approval::events::EventSink::new();
        let metrics = crate::telemetry::install();
        crate::telemetry::watch_events(&events);
        crate::alerts::start(config.webhooks.clone(), &events, shutdown.clone());
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let approvals = open_state(&config, port, events.clone()).await?;
        let tokens = Arc::new(match &config.admin.tokens {
            Some(p) => crate::admin::auth::TokenSet::load(p)
                .map_err(|e| ServerError::Tokens(e.to_string()))?,
            None => crate::admin::auth::TokenSet::empty(),
        });
        let admin_tls = match (&config.admin.tls_cert, &config.admin.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::http_acceptor(c, k)?),
            _ => None,
        };
        let admin_listener = match config.admin.listen {
            Some(addr) => Some(
                crate::admin::bind(addr)
                    .await
                    .map_err(|source| ServerError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        let audit = match &config.audit.file {
            Some(file) => Some(
                crate::audit::AuditLog::start(&config.audit, &config.state_dir, &events).map_err(
                    |e| ServerError::Audit {
                        file: file.display().to_string(),
                        error: e.to_string(),
                    },
                )?,
            ),
            None => None,
        };
        events.emit(crate::approval::events::Event::PolicyLoaded {
            version: policy.version.clone(),
        });
        let mut shared = Shared::new(
            Arc::new(config),
            acceptor,
            connector,
            shutdown,
            policy,
            Some(approvals.clone()),
            tokens.clone(),
        );
        shared.audit = audit;
        let shared = Arc::new(shared);
        let admin = admin_listener.map(|listener| {
            let policy_shared = shared.clone();
            let readiness = crate::admin::Readiness::new(
                move || {
                    let p = policy_shared.policy.load();
                    if p.version == "empty" {
                        Err("no policy loaded".into())
                    } else {
                        Ok(())
                    }
                },
                Some(shared.upstream.address.clone()),
            );
            let readiness = match shared.audit.clone() {
                Some(log) => readiness.audit(move || match log.failing() {
                    Some(e) => Err(format!("the audit log cannot be written: {e}")),
                    None => Ok(()),
                }),
                None => readiness,
            };
            Admin {
                listener,
                state: crate::admin::AdminState::with_live(
                    approvals,
                    tokens,
                    readiness,
                    Some(crate::admin::live::Live {
                        events: shared.events.clone(),
                        audit: shared.audit.clone(),
                        metrics: Some(metrics),
                        shutdown: shared.shutdown.clone(),
                    }),
                ),
                tls: admin_tls,
            }
        });
        Ok(Server {
            listener,
            shared,
            admin,
        })
    }

    /// The admin API's address, when it listens.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|a| a.listener.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts until the shutdown token fires, then waits for sessions to end.
    pub async fn run(self) {
        let tracker = TaskTracker::new();
        let workers = match crate::workers::Workers::start(self.shared.config.workers) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the session workers");
                return;
            }
        };
        let limit = Arc::new(Semaphore::new(self.shared.config.max_client_connections));
        let shutdown = self.shared.shutdown.clone();
        tracing::info!(listen = %self.local_addr(), upstream = %self.shared.upstream.address, "pgwarden serving");
        let watched = self.shared.clone();
        tokio::spawn(crate::reload::watch(
            self.shared.config.policies.clone(),
            Duration::from_secs(2),
            shutdown.clone(),
            move || crate::reload::reload_and_log(watched.reload_target(), "policy files changed"),
        ));
        let expiry = self.shared.approvals.as_ref().map(|a| a.spawn_expiry());
        let _remote = self
            .shared
            .approvals
            .as_ref()
            .and_then(|a| a.spawn_remote())
            .map(tokio_util::task::AbortOnDropHandle::new);
        let admin = self.admin.map(|a| {
            tracing::info!(address = ?a.listener.local_addr().ok(), "admin API serving");
            tokio::spawn(crate::admin::serve(
                a.listener,
                crate::admin::router(a.state),
                a.tls,
                shutdown.clone(),
            ))
        });
        loop {
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = self.shared.clone();
                    metrics::counter!(crate::telemetry::CLIENT_CONNECTIONS_TOTAL).increment(1);
                    metrics::gauge!(crate::telemetry::CLIENT_CONNECTIONS).increment(1.0);
                    // The session moves to a worker: its socket is registered there.
                    let tcp = match tcp.into_std() {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepted connection unusable");
                            metrics::gauge!(crate::telemetry::CLIENT_CONNECTIONS).decrement(1.0);
                            continue;
                        }
                    };
                    let token = tracker.token();
                    workers.spawn(move || async move {
                        if let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) {
                            session::run(shared, tcp, peer).await;
                        }
                        metrics::gauge!(crate::telemetry::CLIENT_CONNECTIONS).decrement(1.0);
                        drop(permit);
                        drop(token);
                    });
                }
                Err(_) => {
                    tracker.spawn(async move {
                        let mut tcp = tcp;
                        let e = PgError::fatal(
                            SqlState::TOO_MANY_CONNECTIONS,
                            "sorry, too many clients already",
                        )
                        .with_detail("pgwarden's max_client_connections is reached.");
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            let _ = tcp.write_all(&e.to_bytes()).await;
                            let _ = tcp.shutdown().await;
                        })
                        .await;
                    });
                }
            }
        }
        drop(self.listener);
        tracker.close();
        let bound = self.shared.config.shutdown_grace + Duration::from_secs(5);
        if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
            tracing::warn!("sessions still open after the shutdown bound; exiting anyway");
        }
        // Sessions are over (or past the bound): their workers stop, off the event loop.
        let _ = tokio::task::spawn_blocking(move || drop(workers)).await;
        if let Some(a) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
        }
        if let Some(e) = expiry {
            e.abort();
        }
        if let Some(log) = &self.shared.audit {
            // Everything recorded is on disk, with a checkpoint of the final head.
            let _ = tokio::time::timeout(Duration::from_secs(10), log.flush()).await;
        }
        tracing::info!("pgwarden stopped");
    }
}

/// Opens the state store the config names: the embedded file, or the shared control schema
/// (connected and migrated off the async threads).
async fn open_state(
    config: &Config,
    port: u16,
    events: crate::approval::events::EventSink,
) -> Result<crate::approval::Approvals, ServerError> {
    use crate::config::StateBackend;
    match &config.state.backend {
        StateBackend::Sqlite => crate::approval::Approvals::open(&config.state_dir, events)
            .map_err(|e| ServerError::State {
                dir: config.state_dir.display().to_string(),
                error: e.to_string(),
            }),
        StateBackend::Postgres { dsn, schema } => {
            let target = crate::approval::store::PgTarget {
                dsn: dsn.clone(),
                schema: schema.clone(),
                instance: config
                    .state
                    .instance
                    .clone()
                    .unwrap_or_else(|| default_instance(port)),
            };
            let what = format!("control schema {schema} ({})", target.instance);
            let opened = tokio::task::spawn_blocking(move || {
                crate::approval::Approvals::open_postgres(target, events)
            })
            .await;
            let opened = match opened {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            opened.map_err(|error| ServerError::State { dir: what, error })
        }
    }
}

/// `<hostname>:<listen port>`: distinct for instances on one host, stable across restarts.
fn default_instance(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgwarden".into());
    format!("{host}:{port}")
}
