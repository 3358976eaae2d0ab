//! A connection to the upstream: plain TCP or TLS, behind one type.
//!
//! The plain path stays what it was: [`UpstreamStream::into_split`] uses
//! `TcpStream::into_split` (no lock), and each I/O call is one `match` away from the
//! socket. TLS uses `tokio::io::split`, whose halves share the stream under a lock held
//! only while polling; that is sound here because after the handshake the read half only
//! reads and the write half only writes (rustls sends nothing on the read path unless the
//! connection is failing anyway).
//!
//! TLS buffers records: a write may leave bytes inside rustls until the next flush. So
//! `write_all` is an inherent method on both types here that writes *and* flushes; being
//! inherent, it is what `stream.write_all(..)` calls, also in code written for a
//! `TcpStream`, and no request can sit unsent in a buffer while its reply is awaited.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to the upstream (after the TLS handshake, if any).
pub enum UpstreamStream {
    Tcp(TcpStream),
    // Boxed: a TLS session is a few kilobytes, a TcpStream a few words.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The reading half of a split [`UpstreamStream`].
pub enum UpstreamReadHalf {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The writing half of a split [`UpstreamStream`].
pub enum UpstreamWriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl UpstreamStream {
    /// Splits into halves that a reader task and a writer task own.
    pub fn into_split(self) -> (UpstreamReadHalf, UpstreamWriteHalf) {
        match self {
            UpstreamStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (UpstreamReadHalf::Tcp(r), UpstreamWriteHalf::Tcp(w))
            }
            UpstreamStream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (UpstreamReadHalf::Tls(r), UpstreamWriteHalf::Tls(w))
            }
        }
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// Writes all of `buf` and flushes it (see the module doc: with TLS, a write without a
    /// flush may leave the request inside rustls).
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => AsyncWriteExt::write_all(s, buf).await,
            UpstreamStream::Tls(s) => {
                AsyncWriteExt::write_all(s, buf).await?;
                s.flush().await
            }
        }
    }

    /// Reads what is already available without waiting: `Err(WouldBlock)` when nothing is,
    /// `Ok(0)` when the upstream closed the connection. Used to find a connection the
    /// upstream closed while it sat idle, before a request is written into it.
    ///
    /// TCP: `TcpStream::try_read`. TLS: one poll of the TLS stream with a no-op waker —
    /// rustls reads and decrypts whatever records the socket holds; a `close_notify` or
    /// EOF shows as `Ok(0)`, a reset or a TCP close without `close_notify` as an error,
    /// and nothing at all as `Pending`, reported as `WouldBlock`. The no-op waker is
    /// harmless: the next real read registers its own.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            UpstreamStream::Tcp(s) => s.try_read(buf),
            UpstreamStream::Tls(s) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut rb = ReadBuf::new(buf);
                match Pin::new(s.as_mut()).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) => Ok(rb.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

impl UpstreamWriteHalf {
    /// Writes all of `buf` and flushes it (see [`UpstreamStream::write_all`]).
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            UpstreamWriteHalf::Tcp(s) => AsyncWriteExt::write_all(s, buf).await,
            UpstreamWriteHalf::Tls(s) => {
                AsyncWriteExt::write_all(s, buf).await?;
                s.flush().await
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for UpstreamReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamWriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamWriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamWriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamWriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamWriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
