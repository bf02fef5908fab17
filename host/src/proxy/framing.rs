//! A watch on HTTP/1.1 request framing, for what hyper accepts but the proxy refuses.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is the classic
//! request-smuggling vector. hyper handles it as RFC 9112 §6.3 allows (the transfer
//! coding wins, the length is dropped, the connection closes after the response), so
//! nothing can be smuggled through it, but it also drops the `Content-Length` before
//! the proxy sees the request, and this proxy refuses such a request outright rather
//! than forward a re-framed version of it.
//!
//! So the bytes of a client's HTTP/1.1 connection are followed as hyper reads them:
//! each request head is parsed (with `httparse`, as hyper does), its body skipped by
//! its framing (`Content-Length` bytes, or chunk by chunk), and a head carrying both
//! headers marks the connection. The flag is raised before hyper parses that head, so
//! the request handler sees it for that request (and for any request pipelined before
//! it still waiting for its turn): they are answered 400 and the connection closes.
//!
//! The watch stops following the bytes (and stops costing anything) after a CONNECT
//! or an `Upgrade` request, and after anything it cannot parse (which hyper refuses on
//! its own).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header fields parsed without a heap allocation (the default limit is 100).
const STACK_HEADERS: usize = 128;
/// The longest chunk-size or trailer line followed.
const MAX_LINE: usize = 8 * 1024;

/// Shared between a [`FramingWatch`] and the handler of its connection's requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ambiguity(Arc<AtomicBool>);

impl Ambiguity {
    /// Whether a request head on the connection had both `Content-Length` and
    /// `Transfer-Encoding`.
    pub(crate) fn seen(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
enum Line {
    ChunkSize,
    ChunkEnd,
    Trailer,
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkData(u64),
    Line(Line, Vec<u8>),
    Off,
}

/// Follows the request framing of the bytes read from `S`.
#[derive(Debug)]
pub(crate) struct FramingWatch<S> {
    inner: S,
    state: State,
    ambiguity: Ambiguity,
    max_head: usize,
    max_headers: usize,
}

impl<S> FramingWatch<S> {
    /// Watch `inner`; heads over `max_head` bytes or `max_headers` fields end the
    /// watch (hyper refuses them).
    pub(crate) fn new(inner: S, max_head: usize, max_headers: usize) -> (Self, Ambiguity) {
        let ambiguity = Ambiguity::default();
        let watch = Self {
            inner,
            state: State::Head(Vec::new()),
            ambiguity: ambiguity.clone(),
            max_head,
            max_headers,
        };
        (watch, ambiguity)
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Body(remaining) | State::ChunkData(remaining) => {
                    let n = (*remaining).min(data.len() as u64);
                    *remaining -= n;
                    data = &data[n as usize..];
                    if *remaining == 0 {
                        self.state = match self.state {
                            State::ChunkData(_) => State::Line(Line::ChunkEnd, Vec::new()),
                            _ => State::Head(Vec::new()),
                        };
                    }
                }
                State::Line(_, line) => {
                    let Some(end) = data.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > MAX_LINE {
                            self.state = State::Off;
                        }
                        return;
                    };
                    line.extend_from_slice(&data[..=end]);
                    data = &data[end + 1..];
                    self.state = match std::mem::replace(&mut self.state, State::Off) {
                        State::Line(kind, line) => after_line(kind, &line),
                        other => other,
                    };
                }
                State::Head(buf) if buf.is_empty() => {
                    // The usual case: a whole head in one read, parsed where it lies.
                    match self.parse_head(data) {
                        Parsed::Complete(len, next) => {
                            data = &data[len.min(data.len())..];
                            self.state = next;
                        }
                        Parsed::Partial => {
                            if data.len() > self.max_head {
                                self.state = State::Off;
                                return;
                            }
                            self.state = State::Head(data.to_vec());
                            return;
                        }
                        Parsed::Invalid => {
                            self.state = State::Off;
                            return;
                        }
                    }
                }
                State::Head(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    let tail = &buf[before.saturating_sub(3)..];
                    let blank = tail.windows(2).any(|w| w == b"\n\n")
                        || tail.windows(3).any(|w| w == b"\n\r\n");
                    if !blank {
                        if buf.len() > self.max_head {
                            self.state = State::Off;
                        }
                        return;
                    }
                    let State::Head(buf) = &self.state else {
                        return;
                    };
                    match self.parse_head(buf) {
                        Parsed::Complete(len, next) => {
                            // The head was incomplete before these bytes: it ends
                            // inside them.
                            data = &data[len.saturating_sub(before).min(data.len())..];
                            self.state = next;
                        }
                        Parsed::Partial => return,
                        Parsed::Invalid => {
                            self.state = State::Off;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The request head at the start of `bytes`: its length and the state after it.
    fn parse_head(&self, bytes: &[u8]) -> Parsed {
        // On the stack, uninitialised, for the usual limits: this runs for every
        // request head.
        let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut on_heap = Vec::new();
        let headers: &mut [MaybeUninit<httparse::Header<'_>>] = if self.max_headers <= STACK_HEADERS
        {
            &mut on_stack[..self.max_headers.max(1)]
        } else {
            on_heap.resize_with(self.max_headers, MaybeUninit::uninit);
            &mut on_heap
        };
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(bytes, headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Invalid,
        };
        if request.method == Some("CONNECT") {
            return Parsed::Complete(len, State::Off);
        }
        // hyper frames by the first Content-Length (it refuses conflicting ones).
        let mut length: Option<&[u8]> = None;
        let mut last_coding: Option<&[u8]> = None;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length.get_or_insert(header.value);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                last_coding = Some(header.value);
            } else if header.name.eq_ignore_ascii_case("upgrade") {
                return Parsed::Complete(len, State::Off);
            }
        }
        if last_coding.is_some() && length.is_some() {
            self.ambiguity.0.store(true, Ordering::Release);
        }
        let next = match last_coding {
            Some(coding) if ends_with_chunked(coding) => State::Line(Line::ChunkSize, Vec::new()),
            Some(_) => State::Off,
            None => match length.map(parse_length) {
                None => State::Head(Vec::new()),
                Some(Some(0)) => State::Head(Vec::new()),
                Some(Some(n)) => State::Body(n),
                Some(None) => State::Off,
            },
        };
        Parsed::Complete(len, next)
    }
}

/// What [`FramingWatch::parse_head`] found.
enum Parsed {
    /// A head of this many bytes, and the state after it.
    Complete(usize, State),
    Partial,
    /// Not HTTP/1.1 as hyper reads it (hyper refuses it on its own): the watch stops.
    Invalid,
}

fn ends_with_chunked(coding: &[u8]) -> bool {
    coding
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let mut values = text.split(',').map(|v| v.trim().parse::<u64>());
    let first = values.next()?.ok()?;
    values.all(|v| v.is_ok_and(|v| v == first)).then_some(first)
}

fn after_line(kind: Line, line: &[u8]) -> State {
    let content = line
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line);
    match kind {
        Line::ChunkSize => {
            let digits = content.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            let size = std::str::from_utf8(&content[..digits])
                .ok()
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            match size {
                None => State::Off,
                Some(0) => State::Line(Line::Trailer, Vec::new()),
                Some(n) => State::ChunkData(n),
            }
        }
        Line::ChunkEnd if content.is_empty() => State::Line(Line::ChunkSize, Vec::new()),
        Line::ChunkEnd => State::Off,
        Line::Trailer if content.is_empty() => State::Head(Vec::new()),
        Line::Trailer => State::Line(Line::Trailer, Vec::new()),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingWatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && !matches!(this.state, State::Off) {
            let filled = buf.filled();
            this.observe(&filled[before..]);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingWatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `bytes` in pieces of `step`; whether the ambiguity was seen, and whether
    /// the watch is still following.
    fn feed(bytes: &[u8], step: usize) -> (bool, bool) {
        let (mut watch, ambiguity) = FramingWatch::new((), 64 * 1024, 100);
        for piece in bytes.chunks(step) {
            watch.observe(piece);
        }
        (ambiguity.seen(), !matches!(watch.state, State::Off))
    }

    const CLEAN: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn clean_pipelines_are_followed_in_any_read_size() {
        for step in [1, 2, 3, 7, 64, CLEAN.len()] {
            assert_eq!(feed(CLEAN, step), (false, true), "step {step}");
        }
    }

    #[test]
    fn both_length_and_chunked_are_seen_wherever_they_are() {
        let smuggle = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG";
        let te_first =
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 6\r\n\r\n0\r\n\r\n";
        for step in [1, 5, 1000] {
            assert!(feed(smuggle, step).0, "step {step}");
            assert!(feed(te_first, step).0, "step {step}");
            // Behind a clean pipeline, too: the body bytes are not mistaken for heads.
            let behind = [CLEAN, &smuggle[..]].concat();
            assert!(feed(&behind, step).0, "step {step}");
        }
        // Header-like text inside a body is body, not a head.
        let in_body = b"POST /x HTTP/1.1\r\nContent-Length: 61\r\n\r\nPOST /y HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        assert_eq!(feed(in_body, 3), (false, true));
    }

    #[test]
    fn connect_upgrade_and_garbage_end_the_watch() {
        assert_eq!(
            feed(
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01",
                4
            ),
            (false, false)
        );
        assert_eq!(
            feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 4),
            (false, false)
        );
        assert_eq!(feed(b"\x16\x03\x01\x02\x00\r\n\r\n", 4), (false, false));
        assert_eq!(
            feed(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                4
            ),
            (false, false)
        );
    }
}
