//! Request bodies for the policy's body phase: the limits, the content codings a body
//! has, and the bytes `decide-body` sees — decoded with a cap, so that a compression
//! bomb is refused rather than expanded. Used by the proxy (on bytes held from the
//! network) and by `policy eval` / `policy test` (on bytes from the command line or a
//! case file), so both decide the same way.
//!
//! The holder (proxy or CLI) keeps reading the raw body until it ends or more than
//! `limit` bytes are held, `limit` being the policy's `max-bytes` clamped to
//! `--max-inspect-body`. Then [`policy_body`]:
//!
//! | body                                   | whole body needed | a prefix is enough            |
//! |----------------------------------------|-------------------|-------------------------------|
//! | ended within `limit`                   | complete          | complete                      |
//! | more than `limit` raw bytes            | 413               | first `limit` bytes, partial  |
//! | decodes to more than `limit` bytes     | 413               | first `limit` decoded, partial|
//! | coding not gzip/deflate/br/zstd        | 415               | 415                           |
//! | corrupt (whole raw body held)          | 400               | 400                           |

use std::io::Read;

use crate::policy::{BodyNeed, PolicyBody};

/// Default cap on the bytes held for one body decision (`--max-inspect-body`).
pub const DEFAULT_MAX_INSPECT_BODY: u64 = 1 << 20;
/// Default bound on receiving a held body (`--body-read-timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default budget for all bodies held at once, in bytes (`--inspect-memory`).
pub const DEFAULT_INSPECT_MEMORY: u64 = 64 << 20;

/// A content coding the host can decode for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` (and `x-gzip`), multi-member.
    Gzip,
    /// `deflate`: zlib-wrapped as RFC 9110 says, or raw deflate as some clients send.
    Deflate,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// Why a body could not be held for the policy. Each is a refusal of the request,
/// answered with [`BodyRefusal::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefusal {
    /// More raw bytes than the policy may inspect, and it needs the whole body.
    #[error(
        "the request body is larger than the {limit} bytes the egress policy inspects, and the policy needs all of it"
    )]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The body decodes to more than the limit (a compression bomb, or just large).
    #[error(
        "the request body decodes ({coding}) to more than the {limit} bytes the egress policy inspects; refused without expanding it further"
    )]
    DecodedTooLarge {
        /// The coding.
        coding: &'static str,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A content coding the host cannot decode.
    #[error(
        "the request body's content-encoding `{0}` cannot be inspected by the egress policy (it decodes gzip, deflate, br and zstd)"
    )]
    Unsupported(String),
    /// The body is not valid in its coding.
    #[error("the request body is not valid {coding}: {why}")]
    Corrupt {
        /// The coding.
        coding: &'static str,
        /// The decoder's message.
        why: String,
    },
    /// The client did not send the body in time.
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// Holding the body would exceed the memory budget for held bodies.
    #[error(
        "the egress proxy is holding as many request bodies for inspection as its memory budget allows (--inspect-memory); retry shortly"
    )]
    Busy,
    /// The client's body stream failed.
    #[error("the request body could not be read: {0}")]
    Read(String),
}

impl BodyRefusal {
    /// The status the client is answered with.
    pub fn status(&self) -> u16 {
        match self {
            BodyRefusal::TooLarge { .. } | BodyRefusal::DecodedTooLarge { .. } => 413,
            BodyRefusal::Unsupported(_) => 415,
            BodyRefusal::Corrupt { .. } | BodyRefusal::Read(_) => 400,
            BodyRefusal::Timeout(_) => 408,
            BodyRefusal::Busy => 503,
        }
    }

    /// A stable label for the deny body and the log.
    pub fn code(&self) -> &'static str {
        match self {
            BodyRefusal::TooLarge { .. } | BodyRefusal::DecodedTooLarge { .. } => "body_too_large",
            BodyRefusal::Unsupported(_) => "unsupported_content_encoding",
            BodyRefusal::Corrupt { .. } => "corrupt_body",
            BodyRefusal::Timeout(_) => "body_timeout",
            BodyRefusal::Busy => "inspection_busy",
            BodyRefusal::Read(_) => "body_read_failed",
        }
    }
}

/// How many bytes to hold for `need`: its `max-bytes`, clamped to `cap`.
pub fn limit(need: BodyNeed, cap: u64) -> u64 {
    need.max_bytes.min(cap)
}

/// The codings of a request, in the order they were applied, from its
/// `content-encoding` headers (names lower-case). `identity` is skipped; an unknown
/// coding is refused.
pub fn codings<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Coding>, BodyRefusal> {
    let mut out = Vec::new();
    for (name, value) in headers {
        if name != "content-encoding" {
            continue;
        }
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            out.push(match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                "zstd" => Coding::Zstd,
                _ => return Err(BodyRefusal::Unsupported(token.to_owned())),
            });
        }
    }
    Ok(out)
}

/// What `decide-body` sees of a held body: `raw` is what was held (all of it when
/// `ended`, else more than the limit), `codings` as [`codings`] returned them.
pub fn policy_body(
    raw: &bytes::Bytes,
    ended: bool,
    codings: &[Coding],
    need: BodyNeed,
    cap: u64,
) -> Result<PolicyBody, BodyRefusal> {
    let limit = limit(need, cap);
    let limit_len = usize::try_from(limit).unwrap_or(usize::MAX);
    let over = raw.len() > limit_len || !ended;
    if over && !need.prefix {
        return Err(BodyRefusal::TooLarge { limit });
    }
    let Some(&outer) = codings.last() else {
        return Ok(PolicyBody {
            bytes: raw.slice(..raw.len().min(limit_len)),
            complete: !over,
        });
    };
    let mut reader: Box<dyn Read + '_> = Box::new(&raw[..]);
    for &coding in codings.iter().rev() {
        reader = decoder(coding, reader);
    }
    let mut decoded = Vec::new();
    let wanted = limit.saturating_add(1);
    let result = reader.take(wanted).read_to_end(&mut decoded);
    if let Err(err) = result
        && !over
    {
        return Err(BodyRefusal::Corrupt {
            coding: outer.name(),
            why: err.to_string(),
        });
    }
    if decoded.len() > limit_len {
        if !need.prefix {
            return Err(BodyRefusal::DecodedTooLarge {
                coding: outer.name(),
                limit,
            });
        }
        decoded.truncate(limit_len);
        return Ok(PolicyBody {
            bytes: decoded.into(),
            complete: false,
        });
    }
    Ok(PolicyBody {
        bytes: decoded.into(),
        complete: !over,
    })
}

fn decoder<'a>(coding: Coding, inner: Box<dyn Read + 'a>) -> Box<dyn Read + 'a> {
    match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        Coding::Deflate => Box::new(Deflate::new(inner)),
        Coding::Brotli => Box::new(brotli_decompressor::Decompressor::new(inner, 8192)),
        Coding::Zstd => Box::new(Zstd::new(inner)),
    }
}

/// The input of a deflate decoder: the two bytes looked at, then the rest.
type Peeked<'a> = std::io::Chain<std::io::Cursor<Vec<u8>>, Box<dyn Read + 'a>>;

/// `deflate` as servers accept it: zlib-wrapped (RFC 9110), or raw when the first two
/// bytes are not a zlib header.
enum Deflate<'a> {
    Pending(Option<Box<dyn Read + 'a>>),
    Zlib(flate2::read::ZlibDecoder<Peeked<'a>>),
    Raw(flate2::read::DeflateDecoder<Peeked<'a>>),
}

impl<'a> Deflate<'a> {
    fn new(inner: Box<dyn Read + 'a>) -> Self {
        Self::Pending(Some(inner))
    }
}

impl Read for Deflate<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Deflate::Pending(inner) = self {
            let Some(mut inner) = inner.take() else {
                return Ok(0);
            };
            let mut head = Vec::with_capacity(2);
            (&mut inner).take(2).read_to_end(&mut head)?;
            // RFC 1950: CM = 8, and the 16-bit header is a multiple of 31.
            let zlib = head.len() == 2
                && head[0] & 0x0f == 8
                && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
            let stream = std::io::Cursor::new(head).chain(inner);
            *self = if zlib {
                Deflate::Zlib(flate2::read::ZlibDecoder::new(stream))
            } else {
                Deflate::Raw(flate2::read::DeflateDecoder::new(stream))
            };
        }
        match self {
            Deflate::Zlib(d) => d.read(buf),
            Deflate::Raw(d) => d.read(buf),
            Deflate::Pending(_) => Ok(0),
        }
    }
}

/// ruzstd's streaming decoder, started on first read (its constructor reads the frame
/// header and can fail).
enum Zstd<'a> {
    Pending(Option<Box<dyn Read + 'a>>),
    Running(
        Box<ruzstd::decoding::StreamingDecoder<Box<dyn Read + 'a>, ruzstd::decoding::FrameDecoder>>,
    ),
}

impl<'a> Zstd<'a> {
    fn new(inner: Box<dyn Read + 'a>) -> Self {
        Self::Pending(Some(inner))
    }
}

impl Read for Zstd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Zstd::Pending(inner) = self {
            let Some(inner) = inner.take() else {
                return Ok(0);
            };
            let decoder = ruzstd::decoding::StreamingDecoder::new(inner)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            *self = Zstd::Running(Box::new(decoder));
        }
        match self {
            Zstd::Running(d) => d.read(buf),
            Zstd::Pending(_) => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn need(max_bytes: u64, prefix: bool) -> BodyNeed {
        BodyNeed { max_bytes, prefix }
    }

    fn gzip(data: &[u8]) -> bytes::Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn identity_bodies_by_size_and_mode() {
        let raw = bytes::Bytes::from_static(b"0123456789");
        let body = policy_body(&raw, true, &[], need(10, false), 100).unwrap();
        assert_eq!((&body.bytes[..], body.complete), (&b"0123456789"[..], true));
        assert_eq!(
            policy_body(&raw, true, &[], need(9, false), 100),
            Err(BodyRefusal::TooLarge { limit: 9 })
        );
        let body = policy_body(&raw, true, &[], need(4, true), 100).unwrap();
        assert_eq!((&body.bytes[..], body.complete), (&b"0123"[..], false));
        // The host's cap wins over the policy's ask.
        assert_eq!(
            policy_body(&raw, true, &[], need(1 << 30, false), 5),
            Err(BodyRefusal::TooLarge { limit: 5 })
        );
    }

    #[test]
    fn gzip_is_decoded_and_bombs_refused() {
        let raw = gzip(b"{\"a\":1}");
        let body = policy_body(&raw, true, &[Coding::Gzip], need(100, false), 100).unwrap();
        assert_eq!(&body.bytes[..], b"{\"a\":1}");
        assert!(body.complete);
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert_eq!(
            policy_body(&bomb, true, &[Coding::Gzip], need(1 << 20, false), 1 << 20),
            Err(BodyRefusal::DecodedTooLarge {
                coding: "gzip",
                limit: 1 << 20
            })
        );
        let prefix = policy_body(&bomb, true, &[Coding::Gzip], need(1000, true), 1 << 20).unwrap();
        assert_eq!((prefix.bytes.len(), prefix.complete), (1000, false));
        let corrupt = bytes::Bytes::from_static(b"\x1f\x8bnot gzip at all");
        let err = policy_body(&corrupt, true, &[Coding::Gzip], need(100, false), 100).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn deflate_both_forms_brotli_and_zstd() {
        let text = b"hello, policy";
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(text).unwrap();
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        d.write_all(text).unwrap();
        for raw in [z.finish().unwrap(), d.finish().unwrap()] {
            let body = policy_body(&raw.into(), true, &[Coding::Deflate], need(100, false), 100);
            assert_eq!(&body.unwrap().bytes[..], text);
        }
        // "hello, policy" compressed by Brotli (quality 5) and `zstd -3`.
        let br = bytes::Bytes::from_static(&[
            0x0b, 0x06, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x2c, 0x20, 0x70, 0x6f, 0x6c, 0x69,
            0x63, 0x79, 0x03,
        ]);
        let body = policy_body(&br, true, &[Coding::Brotli], need(100, false), 100).unwrap();
        assert_eq!(&body.bytes[..], text);
        let zstd = bytes::Bytes::from_static(&[
            0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58, 0x69, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
            0x2c, 0x20, 0x70, 0x6f, 0x6c, 0x69, 0x63, 0x79, 0x71, 0x6c, 0x4c, 0xe2,
        ]);
        let body = policy_body(&zstd, true, &[Coding::Zstd], need(100, false), 100).unwrap();
        assert_eq!(&body.bytes[..], text);
    }

    #[test]
    fn codings_parse_in_order_and_refuse_unknown() {
        let h = [
            ("content-encoding", "gzip, br"),
            ("content-encoding", "identity"),
        ];
        assert_eq!(codings(h), Ok(vec![Coding::Gzip, Coding::Brotli]));
        assert_eq!(
            codings([("content-encoding", "compress")]),
            Err(BodyRefusal::Unsupported("compress".into()))
        );
        assert_eq!(codings([("content-type", "gzip")]), Ok(vec![]));
    }
}
