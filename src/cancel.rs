//! Cancellation: a concurrent map from the server's cancel key (BackendKeyData, passed to the
//! client unchanged) to the session that owns it, and forwarding of CancelRequest packets to
//! that session's upstream. A key this instance does not know is forwarded to the configured
//! upstream anyway, so a cancel works whichever pgwarden instance behind a load balancer
//! receives it.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Upstream;
use crate::wire::startup::{CancelKey, CANCEL_REQUEST_CODE};

/// Who owns a cancel key.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub session_id: u64,
    pub upstream: Arc<Upstream>,
    /// Tells the session itself: a statement waiting at pgwarden (a hold) is cancelled
    /// there, since the server has nothing running to cancel.
    pub signal: CancelSignal,
}

/// A session's cancel bell: every CancelRequest for its key rings it once. The session
/// listens only while a statement waits at pgwarden, and only to rings after the wait began.
#[derive(Debug, Clone)]
pub struct CancelSignal(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for CancelSignal {
    fn default() -> Self {
        CancelSignal(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl CancelSignal {
    pub fn ring(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A listener that has seen every ring so far.
    pub fn listen(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// A cheap-clone handle over the key → session map.
#[derive(Debug, Clone, Default)]
pub struct CancelRegistry {
    map: Arc<DashMap<CancelKey, CancelTarget>>,
}

impl CancelRegistry {
    /// Records `key` for a session; the returned guard removes it when the session ends.
    pub fn register(&self, key: CancelKey, target: CancelTarget) -> CancelGuard {
        self.map.insert(key.clone(), target);
        CancelGuard {
            map: self.map.clone(),
            key,
        }
    }

    pub fn lookup(&self, key: &CancelKey) -> Option<CancelTarget> {
        self.map.get(key).map(|t| t.clone())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Removes its key from the registry on drop.
#[derive(Debug)]
pub struct CancelGuard {
    map: Arc<DashMap<CancelKey, CancelTarget>>,
    key: CancelKey,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.map.remove(&self.key);
    }
}

/// The CancelRequest packet for `key`, byte for byte as a client sends it.
pub fn cancel_packet(key: &CancelKey) -> Vec<u8> {
    let len = 12 + key.secret.len();
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    p.extend_from_slice(&key.pid.to_be_bytes());
    p.extend_from_slice(&key.secret);
    p
}

/// Sends the cancel to `upstream` and waits (briefly) for the server to close the link, which
/// is how PostgreSQL acknowledges a cancel.
pub async fn forward(
    key: &CancelKey,
    upstream: &Upstream,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(), crate::upstream::UpstreamError> {
    let mut s = crate::upstream::connect(upstream, tls).await?;
    let io = |source| crate::upstream::UpstreamError::Connect {
        addr: upstream.address.to_string(),
        source,
    };
    s.write_all(&cancel_packet(key)).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::wire::startup::{parse_packet, Packet};

    #[test]
    fn packet_round_trips_through_the_startup_parser() {
        let key = CancelKey {
            pid: 42,
            secret: vec![1, 2, 3, 4, 5, 6, 7, 8],
        };
        let p = cancel_packet(&key);
        assert_eq!(parse_packet(&p).unwrap().unwrap().0, Packet::Cancel(key));
    }

    #[test]
    fn guard_unregisters() {
        let reg = CancelRegistry::default();
        let key = CancelKey {
            pid: 1,
            secret: vec![0; 4],
        };
        let target = CancelTarget {
            session_id: 7,
            upstream: Arc::new(Config::default().upstream),
            signal: CancelSignal::default(),
        };
        {
            let _g = reg.register(key.clone(), target);
            assert_eq!(reg.lookup(&key).unwrap().session_id, 7);
        }
        assert!(reg.lookup(&key).is_none());
    }
}
