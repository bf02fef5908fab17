//! The body of every response the proxy sends: a streamed upstream body or a small
//! generated one, counting the bytes that reach the client and writing the request's
//! access-log line when it ends (or is dropped unfinished).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::access::AccessRecord;

/// A response body. Frames pass through as they arrive: nothing is buffered, so
/// server-sent events reach the client one by one and large downloads use bounded
/// memory.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    bytes: u64,
    record: Option<AccessRecord>,
}

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
            bytes: 0,
            record: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// An upstream body, streamed.
    pub fn upstream(body: Incoming) -> Self {
        Self {
            inner: Inner::Upstream(body),
            bytes: 0,
            record: None,
        }
    }

    /// Log `record` when this body ends.
    pub(crate) fn logged(mut self, record: AccessRecord) -> Self {
        self.record = Some(record);
        self
    }

    /// Write the access-log line now, as complete, without sending the body: a
    /// decision logged before its answer can be delivered (a transparent TLS denial
    /// is logged before the handshake that would carry it).
    pub(crate) fn log_now(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            record.emit(self.bytes, complete);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}
