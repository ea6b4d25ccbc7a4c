//! gzip/deflate support, as Triton has it: compressed HTTP request bodies
//! (`Content-Encoding`), compressed HTTP infer responses (`Accept-Encoding`), and
//! compressed gRPC request messages (`grpc-encoding`).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use hyper::body::{Body, Frame, SizeHint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A content coding the mock understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    /// The zlib format, which is what HTTP and gRPC call "deflate".
    Deflate,
}

impl Coding {
    /// Parses one coding token; `Ok(None)` is identity, `Err` an unsupported coding.
    pub(crate) fn parse(token: &[u8]) -> Result<Option<Coding>, ()> {
        let token = token.trim_ascii();
        if token.is_empty() || token.eq_ignore_ascii_case(b"identity") {
            Ok(None)
        } else if token.eq_ignore_ascii_case(b"gzip") || token.eq_ignore_ascii_case(b"x-gzip") {
            Ok(Some(Coding::Gzip))
        } else if token.eq_ignore_ascii_case(b"deflate") {
            Ok(Some(Coding::Deflate))
        } else {
            Err(())
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// Decompresses a whole buffer. "deflate" also accepts raw DEFLATE, which some HTTP
/// clients send instead of zlib.
pub(crate) fn inflate(coding: Coding, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(2));
    match coding {
        Coding::Gzip => {
            GzDecoder::new(data).read_to_end(&mut out)?;
        }
        Coding::Deflate => {
            if ZlibDecoder::new(data).read_to_end(&mut out).is_err() {
                out.clear();
                DeflateDecoder::new(data).read_to_end(&mut out)?;
            }
        }
    }
    Ok(out)
}

/// Compresses `chunks` as one stream.
pub(crate) fn deflate(coding: Coding, chunks: &[Bytes]) -> std::io::Result<Vec<u8>> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let out = Vec::with_capacity(total / 2);
    match coding {
        Coding::Gzip => {
            let mut enc = GzEncoder::new(out, Compression::fast());
            for c in chunks {
                enc.write_all(c)?;
            }
            enc.finish()
        }
        Coding::Deflate => {
            let mut enc = ZlibEncoder::new(out, Compression::fast());
            for c in chunks {
                enc.write_all(c)?;
            }
            enc.finish()
        }
    }
}

/// The coding to answer with for an `Accept-Encoding` value: the first of gzip/deflate
/// the client lists without `q=0`.
pub(crate) fn accepted(accept_encoding: &[u8]) -> Option<Coding> {
    accept_encoding.split(|&b| b == b',').find_map(|item| {
        let mut parts = item.split(|&b| b == b';');
        let coding = Coding::parse(parts.next()?).ok().flatten()?;
        let refused = parts.any(|p| {
            let p = p.trim_ascii();
            p.strip_prefix(b"q=")
                .is_some_and(|q| q.iter().all(|&b| b == b'0' || b == b'.') && !q.is_empty())
        });
        (!refused).then_some(coding)
    })
}

/// A request body that rewrites compressed gRPC messages (flag byte 1) into plain ones,
/// frame by frame, so tonic (built without compression features) can decode them and
/// bidirectional streams keep flowing message by message.
pub(crate) struct GrpcInflateBody<B> {
    inner: B,
    coding: Option<Coding>,
    buf: BytesMut,
    ready: VecDeque<Bytes>,
    inner_done: bool,
}

impl<B> GrpcInflateBody<B> {
    /// `coding` of `None` passes the body through untouched.
    pub(crate) fn new(inner: B, coding: Option<Coding>) -> Self {
        GrpcInflateBody {
            inner,
            coding,
            buf: BytesMut::new(),
            ready: VecDeque::new(),
            inner_done: false,
        }
    }

    /// Moves every complete message from `buf` to `ready`, decompressing as needed.
    fn drain_messages(&mut self, coding: Coding) -> Result<(), BoxError> {
        loop {
            let Some(header) = self.buf.get(..5) else {
                return Ok(());
            };
            let compressed = header[0];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if self.buf.len() - 5 < len {
                return Ok(());
            }
            self.buf.advance(5);
            let payload = self.buf.split_to(len);
            let message = match compressed {
                0 => payload.freeze(),
                1 => Bytes::from(inflate(coding, &payload)?),
                flag => return Err(format!("invalid gRPC compression flag {flag}").into()),
            };
            let len = u32::try_from(message.len())
                .map_err(|_| "decompressed gRPC message exceeds 4 GiB")?;
            let mut frame = BytesMut::with_capacity(5 + message.len());
            frame.put_u8(0);
            frame.put_u32(len);
            frame.extend_from_slice(&message);
            self.ready.push_back(frame.freeze());
        }
    }
}

impl<B> Body for GrpcInflateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(coding) = this.coding else {
            return Pin::new(&mut this.inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into)));
        };
        loop {
            if let Some(message) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            if this.inner_done {
                if !this.buf.is_empty() {
                    this.buf.clear();
                    return Poll::Ready(Some(Err("truncated gRPC message".into())));
                }
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        this.drain_messages(coding)?;
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.inner_done = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.coding {
            None => self.inner.is_end_stream(),
            Some(_) => self.inner_done && self.ready.is_empty() && self.buf.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.coding {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn roundtrips_and_accept_encoding() {
        let chunks = [Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        for coding in [Coding::Gzip, Coding::Deflate] {
            let packed = deflate(coding, &chunks).expect("compress");
            assert_eq!(inflate(coding, &packed).expect("inflate"), b"hello world");
            assert!(inflate(coding, b"not compressed at all").is_err());
        }
        assert_eq!(accepted(b"br, gzip;q=0.8"), Some(Coding::Gzip));
        assert_eq!(accepted(b"gzip;q=0, deflate"), Some(Coding::Deflate));
        assert_eq!(accepted(b"identity"), None);
        assert_eq!(Coding::parse(b"snappy"), Err(()));
    }

    #[tokio::test]
    async fn grpc_frames_are_inflated() {
        let message = vec![9u8; 1000];
        let packed = deflate(Coding::Gzip, &[Bytes::from(message.clone())]).expect("gzip");
        let mut wire = vec![1];
        wire.extend((packed.len() as u32).to_be_bytes());
        wire.extend(&packed);
        wire.extend([0, 0, 0, 0, 1, 7]);
        let body = GrpcInflateBody::new(Full::new(Bytes::from(wire)), Some(Coding::Gzip));
        let out = body.collect().await.expect("body").to_bytes();
        let mut expected = vec![0, 0, 0, 0x03, 0xe8];
        expected.extend(&message);
        expected.extend([0, 0, 0, 0, 1, 7]);
        assert_eq!(&out[..], &expected[..]);

        let truncated = GrpcInflateBody::new(
            Full::new(Bytes::from_static(&[1, 0, 0])),
            Some(Coding::Gzip),
        );
        assert!(truncated.collect().await.is_err());
    }
}
