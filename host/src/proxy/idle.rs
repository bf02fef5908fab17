//! Idle timeout for a byte stream: a connection on which no byte has moved in either
//! direction for the timeout fails its next read or write with `TimedOut`, which
//! closes it. Used on client connections (covering keep-alive gaps, tunnels and
//! upgraded streams alike) and on upstream connections.
//!
//! Cheap on the hot path: a read or write that moves bytes only records the time; the
//! timer is re-armed when it fires early.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `S` with an idle timeout.
#[derive(Debug)]
pub struct Idle<S> {
    inner: S,
    timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Idle<S> {
    /// Wrap `inner`; the clock starts now.
    pub fn new(inner: S, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timeout,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Called when the inner stream is not ready: fails once the connection has been
    /// idle for the timeout, else makes sure the task is woken when it would be.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last_activity + self.timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no data in either direction for {}",
                        humantime::format_duration(self.timeout)
                    ),
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connection> Connection for Idle<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_times_out_and_activity_postpones_it() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut idle = Idle::new(near, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(8)).await;
        far.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        idle.read_exact(&mut byte).await.unwrap();
        // 8 s after the last byte: still open.
        let early = tokio::time::timeout(Duration::from_secs(8), idle.read(&mut byte)).await;
        assert!(early.is_err(), "timed out too early");
        // Past 10 s since the last byte: the read fails.
        let err = idle.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_count_as_activity() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut idle = Idle::new(near, Duration::from_secs(10));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            idle.write_all(b"tick").await.unwrap();
        }
        let mut ticks = [0u8; 20];
        far.read_exact(&mut ticks).await.unwrap();
        // 30 s in, no read ever succeeded, but the writes kept it alive.
        far.write_all(b"y").await.unwrap();
        let mut byte = [0u8; 1];
        idle.read_exact(&mut byte).await.unwrap();
    }
}
