//! Connecting to PostgreSQL: TCP or Unix socket, then TLS negotiated the way libpq does
//! (SSLRequest, `S` or `N`), bounded by the connect timeout.

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Upstream, UpstreamAddr, UpstreamTlsMode};
use crate::net::Stream;
use crate::wire::startup::SSL_REQUEST_CODE;

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("could not connect to server {addr}: timed out after {secs:.1}s")]
    Timeout { addr: String, secs: f64 },
    #[error("server {addr} does not support TLS, and upstream.tls requires it")]
    NoTls { addr: String },
    #[error("TLS handshake with server {addr} failed: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("server {addr} sent an unexpected answer to SSLRequest")]
    BadSslAnswer { addr: String },
}

/// Opens a connection to the upstream, negotiating TLS as configured.
pub async fn connect(
    up: &Upstream,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Stream, UpstreamError> {
    let addr = up.address.to_string();
    match tokio::time::timeout(up.connect_timeout, connect_inner(up, tls, &addr)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout {
            addr,
            secs: up.connect_timeout.as_secs_f64(),
        }),
    }
}

async fn connect_inner(
    up: &Upstream,
    tls: Option<&tokio_rustls::TlsConnector>,
    addr: &str,
) -> Result<Stream, UpstreamError> {
    let connect_err = |source| UpstreamError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let (host, mut tcp) = match &up.address {
        UpstreamAddr::Unix(path) => {
            return UnixStream::connect(path)
                .await
                .map(Stream::Unix)
                .map_err(connect_err);
        }
        UpstreamAddr::Tcp { host, port } => {
            let tcp = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(connect_err)?;
            tcp.set_nodelay(true).map_err(connect_err)?;
            (host, tcp)
        }
    };
    let Some(connector) = tls.filter(|_| up.tls != UpstreamTlsMode::Disable) else {
        return Ok(Stream::Tcp(tcp));
    };
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&8u32.to_be_bytes());
    req[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&req).await.map_err(connect_err)?;
    match tcp.read_u8().await.map_err(connect_err)? {
        b'S' => {}
        b'N' if up.tls == UpstreamTlsMode::Prefer => return Ok(Stream::Tcp(tcp)),
        b'N' => {
            return Err(UpstreamError::NoTls {
                addr: addr.to_owned(),
            })
        }
        _ => {
            return Err(UpstreamError::BadSslAnswer {
                addr: addr.to_owned(),
            })
        }
    }
    let name = up.server_name.clone().unwrap_or_else(|| host.clone());
    let name =
        rustls::pki_types::ServerName::try_from(name).map_err(|e| UpstreamError::Handshake {
            addr: addr.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
    let s = connector
        .connect(name, tcp)
        .await
        .map_err(|source| UpstreamError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(Stream::ClientTls(Box::new(s)))
}
