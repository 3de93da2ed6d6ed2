//! A cap on the admin listener's open connections: each accepted connection holds a permit
//! until it closes, and at the cap the listener stops accepting (new connections wait in the
//! kernel's backlog), so clients that open connections and never finish a request cannot use
//! up the process's file descriptors, which the PostgreSQL listener needs too.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admin connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 256;

/// A listener whose connections are counted against a cap.
pub struct Capped<L> {
    inner: L,
    permits: Arc<Semaphore>,
}

impl<L> Capped<L> {
    pub fn new(inner: L, max: usize) -> Self {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

/// A connection that gives its permit back when it closes.
pub struct Held<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<L> axum::serve::Listener for Capped<L>
where
    L: axum::serve::Listener,
{
    type Io = Held<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        };
        let (io, addr) = self.inner.accept().await;
        (
            Held {
                io,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Held<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Held<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::serve::Listener;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_next_connection_waits_until_one_closes() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut capped = Capped::new(tcp, 1);
        let _a = TcpStream::connect(addr).await.unwrap();
        let (first, _) = capped.accept().await;
        let _b = TcpStream::connect(addr).await.unwrap();
        // The second is not accepted while the first is open...
        assert!(
            tokio::time::timeout(Duration::from_millis(200), capped.accept())
                .await
                .is_err()
        );
        // ...and is once it closes.
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), capped.accept())
            .await
            .expect("accepted after the first closed");
    }
}
