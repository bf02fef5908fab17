//! The body of every request the proxy forwards: the client's body streamed as it
//! arrives, or — after a body decision — the bytes held for the policy, then the rest
//! of the client's body streamed, then its trailers. Either way the upstream gets
//! exactly the bytes the client sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// A forwarded request body.
#[derive(Debug)]
pub struct ForwardBody {
    /// Held bytes not yet sent.
    held: Option<Bytes>,
    /// The rest of the client's body (none once it has ended).
    rest: Option<Incoming>,
    /// Trailers read while holding the body.
    trailers: Option<HeaderMap>,
    /// The share of the inspection memory budget the held bytes use; returned when
    /// this body is dropped (the upstream client keeps the held bytes in its send
    /// buffers until they are written, so handing them on does not free them).
    _permit: Option<OwnedSemaphorePermit>,
}

impl ForwardBody {
    /// The client's body, streamed.
    pub fn streamed(body: Incoming) -> Self {
        Self {
            held: None,
            rest: Some(body),
            trailers: None,
            _permit: None,
        }
    }

    /// Held bytes first, then `rest` (if the body had not ended) or `trailers`.
    pub(crate) fn held(
        held: Bytes,
        rest: Option<Incoming>,
        trailers: Option<HeaderMap>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            held: (!held.is_empty()).then_some(held),
            rest,
            trailers,
            _permit: permit,
        }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(Ok(Frame::data(held))));
        }
        if let Some(rest) = &mut this.rest {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Ready(None) => this.rest = None,
                other => return other,
            }
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.len() as u64);
        let rest = match &self.rest {
            Some(rest) => rest.size_hint(),
            None => SizeHint::with_exact(0),
        };
        // Upper first: `set_lower` refuses a lower bound above the upper one.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint.set_lower(rest.lower().saturating_add(held));
        hint
    }
}
