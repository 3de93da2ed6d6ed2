//! With a store several instances share ([`super::store::PgStore`]): one task per instance
//! that `LISTEN`s on the control schema's channel and shows a hold's new state to the
//! session of this instance that waits on it, when an approver answered through another
//! instance. Notifications can be missed while the connection is down, so every
//! (re)connection, and every [`RESYNC`] besides, re-reads the holds this instance waits on
//! from the store: a lost notification delays a session, never strands it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::task::AbortOnDropHandle;

use super::store::{Changed, Notice, PgTarget};
use super::{lock, Approvals, Shared};

/// How often the waited-on holds are re-read even without a notification.
pub const RESYNC: Duration = Duration::from_secs(5);
/// Reconnection backoff, doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

impl Approvals {
    /// Starts the listener when the store is shared (none otherwise). It ends when the last
    /// handle is dropped.
    pub fn spawn_remote(&self) -> Option<tokio::task::JoinHandle<()>> {
        let target = self.shared.store.remote()?.clone();
        let weak = Arc::downgrade(&self.shared);
        Some(tokio::spawn(listen(weak, target)))
    }
}

async fn listen(weak: Weak<Shared>, target: PgTarget) {
    let mut config: tokio_postgres::Config = match target.dsn.parse() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "state.dsn: the listener cannot start");
            return;
        }
    };
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config.application_name("pgwarden listener");
    let mut backoff = BACKOFF.0;
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                if session(&weak, &client, connection, &target).await {
                    backoff = BACKOFF.0;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "control database: the listener cannot connect; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// One connection's life: LISTEN, catch up, then follow notifications until it ends.
/// True when it got as far as listening.
async fn session<S, T>(
    weak: &Weak<Shared>,
    client: &tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    target: &PgTarget,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _driver = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "control database: the listener's connection ended");
                    return;
                }
            }
        }
    }));
    if let Err(e) = client
        .batch_execute(&format!("LISTEN {}", target.channel()))
        .await
    {
        tracing::warn!(error = %e, "control database: LISTEN failed");
        return false;
    }
    tracing::info!(
        channel = target.channel(),
        "listening for other instances' changes"
    );
    // What changed while nobody listened.
    resync(weak, None).await;
    let mut tick = tokio::time::interval(RESYNC);
    tick.reset();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(payload) => {
                    let Ok(notice) = serde_json::from_str::<Notice<'_>>(&payload) else {
                        tracing::warn!(payload, "control database: a notification pgwarden did not send");
                        continue;
                    };
                    if let (Changed::Hold(id), false) = (notice.change, notice.from == target.instance) {
                        resync(weak, Some(id)).await;
                    }
                }
                None => return true,
            },
            _ = tick.tick() => resync(weak, None).await,
        }
    }
}

/// Re-reads hold `id` (or every hold this instance waits on) and shows it to its session.
async fn resync(weak: &Weak<Shared>, id: Option<u64>) {
    let Some(shared) = weak.upgrade() else {
        return;
    };
    let ids: Vec<u64> = {
        let live = lock(&shared.live);
        match id {
            Some(id) if live.contains_key(&id) => vec![id],
            Some(_) => return,
            None => live.keys().copied().collect(),
        }
    };
    if ids.is_empty() {
        return;
    }
    let done = tokio::task::spawn_blocking(move || {
        for id in ids {
            if let Err(e) = shared.resync(id) {
                tracing::warn!(hold = id, error = %e, "re-reading a hold failed");
                return;
            }
        }
    })
    .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "re-reading holds did not finish");
    }
}
