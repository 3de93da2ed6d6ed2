//! The client side of the startup phase, before any upstream exists: direct TLS (first byte
//! 0x16, ALPN `postgresql`), SSLRequest and GSSENCRequest negotiation, CancelRequest, and the
//! StartupMessage. Refusals here are FATALs written straight to the client.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Shared;
use crate::config::ClientTlsMode;
use crate::net::Stream;
use crate::tls::ALPN_POSTGRESQL;
use crate::wire::messages::PgError;
use crate::wire::sqlstate::SqlState;
use crate::wire::startup::{parse_packet, Packet, Startup, StartupError};

/// The first byte of a TLS handshake record: a PostgreSQL 17 client using direct SSL.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// How the startup phase ended.
pub enum Opening {
    /// A session to relay: the client link, its StartupMessage (parsed and raw), and any bytes
    /// the client sent after it.
    Session {
        client: Stream,
        startup: Startup,
        packet: BytesMut,
        rest: BytesMut,
    },
    /// A CancelRequest, handled; the connection is done.
    Cancel,
    /// The client went away or was refused (already told why).
    Closed,
}

/// Runs the startup phase on a freshly accepted connection.
pub async fn negotiate(tcp: TcpStream, shared: &Shared) -> Opening {
    let mut first = [0u8; 1];
    let direct_tls = match tcp.peek(&mut first).await {
        Ok(0) | Err(_) => return Opening::Closed,
        Ok(_) => first[0] == TLS_HANDSHAKE_BYTE,
    };
    let mut stream = if direct_tls {
        // A TLS ClientHello cannot be answered with a PostgreSQL error: without TLS
        // configured the connection is just closed.
        let Some(acceptor) = shared.acceptor.as_ref() else {
            tracing::info!("direct TLS connection refused: TLS is disabled");
            return Opening::Closed;
        };
        match acceptor.accept(tcp).await {
            Ok(tls) if tls.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL) => {
                Stream::ServerTls(Box::new(tls))
            }
            Ok(mut tls) => {
                let e = PgError::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    "received direct SSL connection request without ALPN protocol negotiation extension",
                );
                let _ = tls.write_all(&e.to_bytes()).await;
                let _ = tls.shutdown().await;
                return Opening::Closed;
            }
            Err(e) => {
                tracing::info!(error = %e, "direct TLS handshake failed");
                return Opening::Closed;
            }
        }
    } else {
        Stream::Tcp(tcp)
    };

    let mut buf = BytesMut::with_capacity(512);
    loop {
        let (packet, len) = match read_packet(&mut stream, &mut buf).await {
            Ok(Some(p)) => p,
            Ok(None) => return Opening::Closed,
            Err(e @ StartupError::UnsupportedProtocol { .. }) => {
                // Which versions are supported is the server's to say: its own answer
                // (FATAL or NegotiateProtocolVersion) goes to the client.
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                let packet = buf.split_to(len.min(buf.len()));
                return server_answers(stream, &packet, shared, e).await;
            }
            Err(e) => {
                return refuse(
                    stream,
                    PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()),
                )
                .await;
            }
        };
        match packet {
            Packet::SslRequest | Packet::GssEncRequest => {
                buf.advance(len);
                let what = if packet == Packet::SslRequest {
                    "SSL"
                } else {
                    "GSSAPI encryption"
                };
                if !buf.is_empty() {
                    // Bytes sent before the answer would be read as if they had come over
                    // the encrypted link (CVE-2021-23214).
                    return refuse(
                        stream,
                        PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            format!("received unencrypted data after {what} request"),
                        )
                        .with_detail("This could be either a client-software bug or evidence of an attempted man-in-the-middle attack."),
                    )
                    .await;
                }
                let acceptor = shared.acceptor.as_ref();
                let accept_tls =
                    packet == Packet::SslRequest && acceptor.is_some() && !stream.is_tls();
                if packet == Packet::SslRequest && stream.is_tls() {
                    return refuse(
                        stream,
                        PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            "received SSLRequest on an encrypted connection",
                        ),
                    )
                    .await;
                }
                let answer = if accept_tls { b'S' } else { b'N' };
                if stream.write_all(&[answer]).await.is_err() {
                    return Opening::Closed;
                }
                if accept_tls {
                    let Stream::Tcp(tcp) = stream else {
                        unreachable!("checked above: the stream is not TLS yet")
                    };
                    match acceptor.expect("checked above").accept(tcp).await {
                        Ok(tls) => stream = Stream::ServerTls(Box::new(tls)),
                        Err(e) => {
                            tracing::info!(error = %e, "TLS handshake failed");
                            return Opening::Closed;
                        }
                    }
                }
            }
            Packet::Cancel(key) => {
                let target = shared.cancels.lookup(&key);
                if let Some(t) = &target {
                    t.signal.ring();
                }
                let upstream = target
                    .map(|t| t.upstream)
                    .unwrap_or_else(|| shared.upstream.clone());
                if let Err(e) =
                    crate::cancel::forward(&key, &upstream, shared.connector.as_ref()).await
                {
                    tracing::warn!(error = %e, "forwarding cancel request failed");
                }
                return Opening::Cancel;
            }
            Packet::Startup(startup) => {
                if let Some(dup) = startup.duplicate_parameter() {
                    return refuse(
                        stream,
                        PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            format!("pgwarden: startup parameter \"{dup}\" given more than once"),
                        ),
                    )
                    .await;
                }
                if shared.config.tls.mode == ClientTlsMode::Require && !stream.is_tls() {
                    return refuse(
                        stream,
                        PgError::fatal(
                            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                            "pgwarden: this proxy accepts only TLS connections",
                        )
                        .with_hint("Connect with sslmode=require (or verify-full)."),
                    )
                    .await;
                }
                if startup.is_replication() && !shared.config.allow_replication {
                    return refuse(
                        stream,
                        PgError::fatal(
                            SqlState::FEATURE_NOT_SUPPORTED,
                            "pgwarden: replication connections are not relayed",
                        )
                        .with_hint("Connect replication clients to PostgreSQL directly, or set allow_replication = true in the pgwarden config."),
                    )
                    .await;
                }
                let packet = buf.split_to(len);
                return Opening::Session {
                    client: stream,
                    startup,
                    packet,
                    rest: buf,
                };
            }
        }
    }
}

/// Reads until one whole startup-phase packet is in `buf`. `Ok(None)`: the client left.
async fn read_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<(Packet, usize)>, StartupError> {
    loop {
        if let Some(p) = parse_packet(buf)? {
            return Ok(Some(p));
        }
        // Allocate only what the packet still needs (at most the 10,000-byte limit). A read
        // may take bytes the client sent after the packet: that is how data smuggled after a
        // negotiation request is seen, and after a StartupMessage they go on to the relay.
        let want = if buf.len() < 4 {
            4 - buf.len()
        } else {
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize - buf.len()
        };
        buf.reserve(want.max(64));
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Sends `packet` (a startup packet pgwarden does not speak) to the server and relays its
/// answer to the client until the server closes (bounded in size and time). When the server
/// cannot be asked, pgwarden answers with `fallback`.
async fn server_answers(
    mut stream: Stream,
    packet: &[u8],
    shared: &Shared,
    fallback: StartupError,
) -> Opening {
    const MAX_ANSWER: usize = 64 * 1024;
    let ask = async {
        let mut server = crate::upstream::connect(&shared.upstream, shared.connector.as_ref())
            .await
            .ok()?;
        server.write_all(packet).await.ok()?;
        server.flush().await.ok()?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while answer.len() < MAX_ANSWER {
            match server.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
        (!answer.is_empty()).then_some(answer)
    };
    match tokio::time::timeout(shared.config.startup_timeout, ask).await {
        Ok(Some(answer)) => {
            tracing::info!(error = %fallback, "startup refused by the server");
            let _ = stream.write_all(&answer).await;
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
            Opening::Closed
        }
        _ => {
            refuse(
                stream,
                PgError::fatal(SqlState::FEATURE_NOT_SUPPORTED, fallback.to_string()),
            )
            .await
        }
    }
}

async fn refuse(mut stream: Stream, e: PgError) -> Opening {
    tracing::info!(code = e.code.code(), message = %e.message, "startup refused");
    let _ = stream.write_all(&e.to_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    Opening::Closed
}
